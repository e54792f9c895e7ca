"""The `hf:` crawl source on local Parquet and JSON Lines folders built here; the Hub itself is never reached.

    .venv/bin/python -m pytest tests/unit/test_crawl_hub.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from codepmp.config import CrawlConfig, HubConfig
from codepmp.crawl.hub import HubSource, is_hub_source, local_data_files
from codepmp.errors import InputError, ServiceError

ROWS = [
    {"max_stars_repo_path": "src/a.py", "content": "def a():\n    return 1\n", "max_stars_repo_name": "o/a",
     "max_stars_repo_licenses": ["MIT"]},
    {"max_stars_repo_path": "b.py", "content": "s = 'café'\n", "max_stars_repo_name": "o/b",
     "max_stars_repo_licenses": ["GPL-3.0", "mit"]},
    {"max_stars_repo_path": "c.py", "content": "print('gpl')\n", "max_stars_repo_name": "o/c",
     "max_stars_repo_licenses": ["GPL-3.0"]},
    {"max_stars_repo_path": "d.js", "content": "let d = 4;\n", "max_stars_repo_name": "o/d",
     "max_stars_repo_licenses": []},
    {"max_stars_repo_path": "e.py", "content": "e = 5\n", "max_stars_repo_name": "o/e",
     "max_stars_repo_licenses": ["Apache-2.0"]},
]

STACK = HubConfig(path_field="max_stars_repo_path", repo_field="max_stars_repo_name",
                  license_field="max_stars_repo_licenses")
LICENSES = CrawlConfig().github.licenses


def write_parquet(folder: Path, rows: list[dict], n_files: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    per_file = -(-len(rows) // n_files)
    for i in range(n_files):
        chunk = rows[i * per_file:(i + 1) * per_file]
        pq.write_table(pa.Table.from_pylist(chunk), folder / f"train-{i:05d}.parquet")
    return folder


def write_jsonl(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "part-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[2:]))
    (folder / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    return folder


@pytest.fixture
def parquet_dir(tmp_path: Path) -> Path:
    return write_parquet(tmp_path / "stack", ROWS)


@pytest.fixture
def jsonl_dir(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "stack-jsonl", ROWS)


def entries(source: str, cfg: HubConfig = STACK, licenses=LICENSES) -> list:
    return list(HubSource(source, cfg, licenses=licenses).entries())


def summary(items: list) -> list[tuple]:
    return [(e.path, e.size, e.skip, e.repo, e.license) for e in items]


EXPECTED = [
    ("src/a.py", 22, None, "o/a", "MIT"),
    ("b.py", len("s = 'café'\n".encode()), None, "o/b", "mit"),
    ("c.py", 13, "license", "o/c", "GPL-3.0"),
    ("d.js", 11, "license", "o/d", None),
    ("e.py", 6, None, "o/e", "Apache-2.0"),
]


def test_parquet_folder(parquet_dir: Path):
    items = entries(f"hf:{parquet_dir}")
    assert summary(items) == EXPECTED
    assert items[0].read(1000) == ROWS[0]["content"].encode()
    assert items[1].read(9) == "s = 'caf".encode() + "é".encode()[:1]  # truncated to the byte limit
    assert items[0].commit is None
    with pytest.raises(OSError):
        items[2].read(10)


def test_jsonl_folder_reads_files_in_sorted_order(jsonl_dir: Path):
    assert summary(entries(f"hf:{jsonl_dir}")) == EXPECTED


def test_order_is_deterministic(parquet_dir: Path):
    assert summary(entries(f"hf:{parquet_dir}")) == summary(entries(f"hf:{parquet_dir}"))


def test_license_as_a_single_string(tmp_path: Path):
    rows = [{"path": "a.py", "content": "a = 1\n", "license": "MIT"},
            {"path": "b.py", "content": "b = 2\n", "license": "AGPL-3.0"},
            {"path": "c.py", "content": "c = 3\n", "license": None}]
    folder = write_parquet(tmp_path / "single", rows, n_files=1)
    items = entries(f"hf:{folder}", HubConfig(license_field="license"))
    assert [(e.path, e.skip, e.license) for e in items] == [
        ("a.py", None, "MIT"), ("b.py", "license", "AGPL-3.0"), ("c.py", "license", None)]


def test_no_license_check_without_license_field(parquet_dir: Path):
    items = entries(f"hf:{parquet_dir}", HubConfig(path_field="max_stars_repo_path"))
    assert [e.skip for e in items] == [None] * 5
    assert {e.license for e in items} == {None} and {e.repo for e in items} == {None}


def test_no_allowed_licenses_given_keeps_every_row(parquet_dir: Path):
    items = entries(f"hf:{parquet_dir}", STACK, licenses=None)
    assert [(e.skip, e.license) for e in items] == [
        (None, "MIT"), (None, "GPL-3.0"), (None, "GPL-3.0"), (None, None), (None, "Apache-2.0")]


def test_max_rows_counts_skipped_rows_too(parquet_dir: Path):
    cfg = HubConfig(**{**STACK.__dict__, "max_rows": 3})
    assert [e.path for e in entries(f"hf:{parquet_dir}", cfg)] == ["src/a.py", "b.py", "c.py"]
    cfg = HubConfig(**{**STACK.__dict__, "max_rows": 100})
    assert len(entries(f"hf:{parquet_dir}", cfg)) == 5


def test_data_dir_is_a_sub_folder(tmp_path: Path):
    write_parquet(tmp_path / "stack" / "data" / "python", ROWS[:2], n_files=1)
    write_parquet(tmp_path / "stack" / "data" / "javascript", ROWS[4:], n_files=1)
    cfg = HubConfig(**{**STACK.__dict__, "data_dir": "data/python"})
    assert [e.path for e in entries(f"hf:{tmp_path / 'stack'}", cfg)] == ["src/a.py", "b.py"]
    assert len(entries(f"hf:{tmp_path / 'stack'}")) == 3  # the whole folder, recursively
    cfg = HubConfig(**{**STACK.__dict__, "data_dir": "data/rust"})
    with pytest.raises(InputError, match="no sub-folder 'data/rust'"):
        entries(f"hf:{tmp_path / 'stack'}", cfg)


def test_missing_column_names_it_and_the_columns_that_exist(parquet_dir: Path):
    with pytest.raises(InputError) as err:
        entries(f"hf:{parquet_dir}", HubConfig(path_field="path"))
    message = str(err.value)
    assert "no column 'path' (hub.path_field)" in message
    assert "max_stars_repo_path, content, max_stars_repo_name, max_stars_repo_licenses" in message
    assert "\n" not in message


def test_missing_column_in_a_jsonl_folder(jsonl_dir: Path):
    with pytest.raises(InputError, match=r"no column 'license' \(hub.license_field\)"):
        entries(f"hf:{jsonl_dir}", HubConfig(path_field="max_stars_repo_path", license_field="license"))


def test_folder_without_data_files(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("# a dataset card\n")
    with pytest.raises(InputError, match="no .parquet, .jsonl or .json files"):
        entries(f"hf:{tmp_path / 'empty'}")


def test_folder_mixing_formats(parquet_dir: Path):
    (parquet_dir / "extra.jsonl").write_text("{}\n")
    with pytest.raises(InputError, match="mixes .parquet and .json/.jsonl"):
        entries(f"hf:{parquet_dir}")


def test_hidden_files_are_ignored(parquet_dir: Path):
    (parquet_dir / ".cache").mkdir()
    (parquet_dir / ".cache" / "stale.jsonl").write_text("{}\n")
    assert local_data_files(parquet_dir)[0] == "parquet"


def test_corrupt_parquet_is_a_one_line_input_error(tmp_path: Path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "train.parquet").write_bytes(b"not a parquet file at all")
    with pytest.raises(InputError) as err:
        entries(f"hf:{folder}")
    assert str(err.value).startswith(f"hf dataset {folder} cannot be read:") and "\n" not in str(err.value)


def test_unreachable_hub_id_is_a_one_line_service_error(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ServiceError) as err:
        entries("hf:codepmp-test/no-such-dataset")
    assert str(err.value).startswith("hf dataset codepmp-test/no-such-dataset cannot be read:")
    assert "\n" not in str(err.value)


def test_source_names():
    assert is_hub_source("hf:bigcode/the-stack-smol") and not is_hub_source("/data/hf:x")
    with pytest.raises(InputError, match="names no dataset"):
        HubSource("hf:", STACK)
    assert HubSource("hf:bigcode/the-stack-smol", STACK).local_folder is None
    arguments = HubSource("hf:bigcode/the-stack-smol", HubConfig(data_dir="data/python")).load_arguments()
    assert arguments == {"path": "bigcode/the-stack-smol", "data_dir": "data/python", "split": "train",
                         "streaming": True}


def test_importing_the_crawl_does_not_import_datasets():
    code = "import sys, codepmp.crawl, codepmp.crawl.hub, codepmp.crawl.filters; print('datasets' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_crawl_over_a_hub_folder_keeps_provenance_and_skips_licenses(tmp_path: Path):
    from codepmp.config import DecontamConfig
    from codepmp.crawl import read_shards, run_crawl

    def module(i: int) -> str:
        return "".join(f"def route_{i}_{j}(request, limit={i * 10 + j}):\n    items = request.fetch(limit)\n"
                       f"    return [item.name_{j} for item in items if item.size > {j + i}]\n\n" for j in range(6))

    rows = [{**row, "content": module(i)} for i, row in enumerate(ROWS)]
    folder = write_parquet(tmp_path / "stack", rows)
    cfg = CrawlConfig(sources=[f"hf:{folder}"], hub=STACK, decontam=DecontamConfig(enabled=False))
    stats = run_crawl(cfg, tmp_path / "out", progress=False)
    assert stats["dropped"] == {"license": 2}  # c.py (GPL only) and d.js (no license)
    kept = read_shards(tmp_path / "out")
    assert sorted((r["path"], r["repo"], r["license"]) for r in kept) == [
        ("b.py", "o/b", "mit"), ("e.py", "o/e", "Apache-2.0"), ("src/a.py", "o/a", "MIT")]
