"""The storage helpers that need no server: s3:// URIs, temporary keys and local folders with atomic writes
(the object store itself is tested against a real S3 server in tests/integration/test_storage.py)."""

import pyarrow as pa
import pytest

from codepmp.errors import InputError
from codepmp.storage import LocalFolder, is_temporary_key, open_folder, parse_s3_uri


@pytest.mark.parametrize("uri,parts", [("s3://bucket/a/b", ("bucket", "a/b")), ("s3://bucket", ("bucket", "")),
                                       ("s3://bucket/", ("bucket", ""))])
def test_s3_uris_split_into_bucket_and_prefix(uri, parts):
    assert parse_s3_uri(uri) == parts


@pytest.mark.parametrize("uri", ["/local/path", "s3:///no-bucket", "http://host/bucket", "bucket/key"])
def test_anything_else_is_an_input_error_naming_it(uri):
    with pytest.raises(InputError, match="is not an s3://bucket/prefix URI"):
        parse_s3_uri(uri)


def test_temporary_keys_are_told_by_their_name():
    assert is_temporary_key("a/.tmp-1234-pairs.parquet") and not is_temporary_key("a/pairs.parquet")
    assert not is_temporary_key(".tmp-dir/pairs.parquet")  # only the name counts, not a folder


def test_a_local_folder_round_trips_bytes_json_and_tables_without_temp_files(tmp_path):
    folder = open_folder(tmp_path / "out")
    assert isinstance(folder, LocalFolder)
    folder.put_json("nested/stats.json", {"b": 2, "a": 1})
    folder.put_table("t.parquet", pa.table({"id": ["x", "y"]}))
    assert folder.get_json("nested/stats.json") == {"a": 1, "b": 2}
    assert folder.get_table("t.parquet")["id"].to_pylist() == ["x", "y"]
    assert folder.exists("t.parquet") and not folder.exists("missing")
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == ["stats.json", "t.parquet"]


def test_missing_or_broken_local_files_are_input_errors_naming_the_path(tmp_path):
    folder = LocalFolder(tmp_path)
    with pytest.raises(InputError, match=str(tmp_path / "nope.json")):
        folder.get_bytes("nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="bad.json is not valid JSON"):
        folder.get_json("bad.json")
