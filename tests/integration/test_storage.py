"""ObjectStore against a real S3 server: atomic puts, listing, markers, folder sync, clear errors."""

from __future__ import annotations

import io
import os
import socket
import time
import uuid

import pytest

from codepmp.errors import InputError, ServiceError
from codepmp.storage import ObjectStore, is_temporary_key, parse_s3_uri

pytestmark = pytest.mark.integration


@pytest.fixture
def store(stack_env: dict[str, str]) -> ObjectStore:
    return ObjectStore.from_env()


@pytest.fixture
def prefix() -> str:
    return f"tests/{uuid.uuid4().hex}"


def raw_keys(store: ObjectStore, prefix: str) -> list[str]:
    """Every key under `prefix`, temporary ones included."""
    return sorted(obj.object_name for obj in store.client.list_objects(store.bucket, prefix, recursive=True))


class ProbingStream(io.RawIOBase):
    """Serves `size` bytes in small reads; on the first read calls `probe`; raises after `fail_after` bytes."""

    def __init__(self, size: int, probe=None, fail_after: int | None = None):
        self.size, self.sent, self.probe, self.fail_after = size, 0, probe, fail_after

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.probe is not None:
            self.probe()
            self.probe = None
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise OSError("disk vanished while uploading")
        chunk = min(self.size - self.sent, 64 * 1024 if n < 0 else min(n, 64 * 1024))
        self.sent += chunk
        return b"x" * chunk


def test_put_is_visible_only_at_its_final_key_when_complete(store: ObjectStore, prefix: str) -> None:
    key = f"{prefix}/shard-0.bin"
    seen_during_upload = {}

    def probe() -> None:
        seen_during_upload["exists"] = store.exists(key)
        seen_during_upload["listed"] = store.list(prefix)

    store.put_stream(key, ProbingStream(200_000, probe=probe), 200_000)
    assert seen_during_upload == {"exists": False, "listed": []}
    assert store.get_bytes(key) == b"x" * 200_000
    assert raw_keys(store, prefix) == [key]


def test_failed_put_leaves_no_final_and_no_temporary_key(store: ObjectStore, prefix: str) -> None:
    key = f"{prefix}/model.safetensors"
    with pytest.raises(OSError, match="disk vanished"):
        store.put_stream(key, ProbingStream(1_000_000, fail_after=300_000), 1_000_000)
    with pytest.raises(OSError, match="disk vanished"):
        store.put_stream(key, ProbingStream(40 << 20, fail_after=20 << 20))
    assert raw_keys(store, prefix) == []
    assert not store.exists(key)


def test_failed_overwrite_keeps_the_previous_object(store: ObjectStore, prefix: str) -> None:
    key = f"{prefix}/stats.json"
    store.put_json(key, {"version": 1})
    with pytest.raises(OSError):
        store.put_stream(key, ProbingStream(100_000, fail_after=10_000), 100_000)
    assert store.get_json(key) == {"version": 1}
    assert raw_keys(store, prefix) == [key]


def test_list_exists_and_missing_keys(store: ObjectStore, prefix: str) -> None:
    for name in ("b/2.txt", "a.txt", "b/1.txt", "c/d/e.txt"):
        store.put_bytes(f"{prefix}/{name}", name.encode())
    assert store.list(prefix) == [f"{prefix}/{n}" for n in ("a.txt", "b/1.txt", "b/2.txt", "c/d/e.txt")]
    assert store.list(f"{prefix}/b/") == [f"{prefix}/b/1.txt", f"{prefix}/b/2.txt"]
    assert store.exists(f"{prefix}/a.txt") and not store.exists(f"{prefix}/zzz")
    with pytest.raises(InputError, match=f"s3://{store.bucket}/{prefix}/zzz"):
        store.get_bytes(f"{prefix}/zzz")
    with pytest.raises(InputError, match=f"s3://{store.bucket}/{prefix}/zzz"):
        store.get_file(f"{prefix}/zzz", "unused")
    assert store.delete_prefix(prefix) == 4
    assert store.list(prefix) == []


def test_completion_markers(store: ObjectStore, prefix: str) -> None:
    assert not store.is_done(prefix)
    with pytest.raises(InputError, match="_SUCCESS"):
        store.done_info(prefix)
    store.mark_done(prefix, {"shards": 3, "rows": 120})
    assert store.is_done(prefix) and store.is_done(f"{prefix}/")
    assert store.done_info(prefix) == {"shards": 3, "rows": 120}
    assert store.list(prefix) == [f"{prefix}/_SUCCESS"]


def test_upload_and_download_dir_round_trip(store: ObjectStore, prefix: str, tmp_path) -> None:
    source = tmp_path / "model"
    files = {"config.json": b'{"a": 1}', "weights/part-0.bin": os.urandom(300_000), "tok/vocab.txt": b"a\nb\n"}
    for name, data in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    (source / "_SUCCESS").write_text("{}")
    keys = store.upload_dir(source, prefix)
    assert keys == sorted(f"{prefix}/{name}" for name in files)
    store.mark_done(prefix, {"files": len(files)})
    paths = store.download_dir(prefix, tmp_path / "copy")
    assert {p.relative_to(tmp_path / "copy").as_posix(): p.read_bytes() for p in paths} == files
    assert not (tmp_path / "copy" / "_SUCCESS").exists()
    with pytest.raises(InputError, match="holds no objects"):
        store.download_dir(f"{prefix}-nothing", tmp_path / "none")


def test_unreachable_endpoint_fails_fast_naming_it(stack_env: dict[str, str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{closed_port}"
    started = time.monotonic()
    with pytest.raises(ServiceError, match=endpoint):
        ObjectStore.from_env(environ={**stack_env, "CODEPMP_S3_ENDPOINT": endpoint})
    assert time.monotonic() - started < 5


def test_missing_variables_and_wrong_secret(stack_env: dict[str, str]) -> None:
    with pytest.raises(ServiceError, match="CODEPMP_S3_ENDPOINT"):
        ObjectStore.from_env(environ={})
    with pytest.raises(ServiceError, match=r"SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        ObjectStore.from_env(environ={**stack_env, "AWS_SECRET_ACCESS_KEY": "wrong"})


def test_parse_s3_uri_and_temporary_keys() -> None:
    assert parse_s3_uri("s3://bucket/runs/r1/model") == ("bucket", "runs/r1/model")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(InputError):
        parse_s3_uri("/local/path")
    assert is_temporary_key("a/b/.tmp-0123-model.bin") and not is_temporary_key("a/.tmpfile/model.bin")
