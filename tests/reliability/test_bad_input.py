"""Bad input of every kind, fed through the entry points a user hits: the crawl stage, the reasoning loaders,
the preference-pair reader and the config loader.

The rule each case checks: a clear error that names the input and what is wrong with it, or a counted skip
where skipping is the documented behaviour (the crawl drops files with a reason in its stats), and nothing
already written is changed. Every case records its measured outcome before asserting, so the figures table
counts failures too.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from codepmp.config import CrawlConfig, DecontamConfig, load_config
from codepmp.crawl import sources
from codepmp.crawl.crawl import run_crawl
from codepmp.errors import CodepmpError, ConfigError, InputError
from codepmp.reasoning import gsm8k
from codepmp.reasoning.generic import read_preference_pairs
from codepmp.reasoning.logic import read_logiqa2, read_reclor
from codepmp.reasoning.math import read_math
from codepmp.reasoning.pools import imported_pool
from codepmp.reasoning.shepherd import read_shepherd
from codepmp.synthesize.run import read_pairs

REPO = Path(__file__).resolve().parents[2]

GOOD_CODE = textwrap.dedent('''\
    """A small module the filters keep."""


    def area(width, height):
        """Area of a rectangle."""
        total = width * height
        return total if total > 0 else 0


    def perimeter(width, height):
        return 2 * (width + height)
    ''')


def crawl_cfg(*srcs: Path, **overrides) -> CrawlConfig:
    # Decontamination off: it loads the evaluation sets, which is slow and beside the point here.
    values = dict(sources=[str(s) for s in srcs], min_bytes=50, max_bytes=5000,
                  decontam=DecontamConfig(enabled=False))
    values.update(overrides)
    return CrawlConfig(**values)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def good_crawl(tmp_path: Path):
    """A finished crawl of one good file, and its bytes, to check a later bad run leaves it alone."""
    src = tmp_path / "good"
    src.mkdir()
    (src / "good.py").write_text(GOOD_CODE)
    out = tmp_path / "out"
    stats = run_crawl(crawl_cfg(src), out, progress=False)
    assert stats["files_kept"] == 1
    return out, snapshot(out)


def crawl_dropped(tmp_path: Path, src: Path, **overrides) -> dict:
    """Crawl `src` plus one good file (so the run succeeds) and return the stats."""
    good = tmp_path / "good_extra"
    good.mkdir(exist_ok=True)
    (good / "keep.py").write_text(GOOD_CODE)
    return run_crawl(crawl_cfg(src, good, **overrides), tmp_path / "bad_out", progress=False)


# ---------------------------------------------------------------- crawl: files a corpus may hold


def test_binary_file_is_a_counted_skip(tmp_path: Path, record):
    src = tmp_path / "src"
    src.mkdir()
    (src / "blob.py").write_bytes(bytes(range(256)) * 8)
    stats = crawl_dropped(tmp_path, src)
    ok = stats["dropped"].get("binary") == 1 and stats["files_kept"] == 1
    record("bad_input", "crawl: binary file", ok, detail=json.dumps(stats["dropped"]))
    assert ok, stats


def test_invalid_utf8_is_a_counted_skip(tmp_path: Path, record):
    src = tmp_path / "src"
    src.mkdir()
    (src / "bad.py").write_bytes(GOOD_CODE.encode() + b"\n# \xff\xfe\xc3\x28 broken\n")
    stats = crawl_dropped(tmp_path, src)
    ok = stats["dropped"].get("encoding") == 1 and stats["files_kept"] == 1
    record("bad_input", "crawl: invalid UTF-8", ok, detail=json.dumps(stats["dropped"]))
    assert ok, stats


def test_200mb_file_is_skipped_by_size_without_being_read(tmp_path: Path, monkeypatch, record):
    src = tmp_path / "src"
    src.mkdir()
    big = src / "huge.py"
    with big.open("wb") as f:  # sparse: seek past 200 MB and write one byte, so the test writes almost nothing
        f.seek(200 * 1024 * 1024)
        f.write(b"\n")
    read_bytes: dict[str, int] = {}
    real = sources._read_file

    def counting(path: Path):
        inner = real(path)

        def read(limit: int) -> bytes:
            data = inner(limit)
            read_bytes[Path(path).name] = read_bytes.get(Path(path).name, 0) + len(data)
            return data
        return read

    monkeypatch.setattr(sources, "_read_file", counting)
    stats = crawl_dropped(tmp_path, src)
    ok = stats["dropped"].get("too_large") == 1 and read_bytes.get("huge.py", 0) == 0
    record("bad_input", "crawl: 200 MB file", ok, detail=f"{stats['dropped']} read={read_bytes}")
    assert ok, (stats, read_bytes)


def test_one_10mb_line_is_a_counted_skip(tmp_path: Path, record):
    src = tmp_path / "src"
    src.mkdir()
    (src / "oneline.py").write_text("x = '" + "a" * (10 * 1024 * 1024) + "'\n")
    # max_bytes above the file's size, so the long-line filter itself has to handle the 10 MB line.
    stats = crawl_dropped(tmp_path, src, max_bytes=20 * 1024 * 1024)
    ok = stats["dropped"].get("long_line") == 1 and stats["files_kept"] == 1
    record("bad_input", "crawl: one 10 MB line", ok, detail=json.dumps(stats["dropped"]))
    assert ok, stats


def test_symlink_loops_do_not_hang_and_are_counted(tmp_path: Path, record):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "a.py").symlink_to(src / "b.py")
    (src / "b.py").symlink_to(src / "a.py")
    (src / "pkg" / "up").symlink_to(src, target_is_directory=True)  # a directory loop
    (src / "self").symlink_to(src / "self")
    (src / "pkg" / "keep.py").write_text(GOOD_CODE)
    out = tmp_path / "out"
    # A child process, so a hang is a timeout here rather than a stuck suite.
    script = ("import json, sys\nfrom codepmp.config import CrawlConfig, DecontamConfig\n"
              "from codepmp.crawl.crawl import run_crawl\n"
              "s = run_crawl(CrawlConfig(sources=[sys.argv[1]], min_bytes=50, decontam=DecontamConfig(enabled=False)),"
              " sys.argv[2], progress=False)\nprint(json.dumps(s))\n")
    try:
        done = subprocess.run([sys.executable, "-c", script, str(src), str(out)], capture_output=True, text=True,
                              timeout=120, cwd=REPO)
        stats = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except subprocess.TimeoutExpired:
        done, stats = None, None
    ok = stats is not None and stats["dropped"].get("not_regular") == 4 and stats["files_kept"] == 1
    record("bad_input", "crawl: symlink loops", ok, detail=json.dumps(stats) if stats else "hung or failed")
    assert ok, (stats, done.stderr[-2000:] if done else "timed out")


def _tar_with(members: list[tuple[tarfile.TarInfo, bytes | None]], gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_tar_path_traversal_never_writes_outside(tmp_path: Path, record):
    evil = b"EVIL = 'planted by a hostile archive'\n" * 5
    link = tarfile.TarInfo("pkg/passwd.py")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("pkg/hard.py")
    hard.type, hard.linkname = tarfile.LNKTYPE, "../../escaped.py"
    archive = tmp_path / "work" / "corpus.tar"
    archive.parent.mkdir()
    archive.write_bytes(_tar_with([
        _file("../evil.py", evil), _file("pkg/../../evil2.py", evil), _file(f"{tmp_path}/abs_evil.py", evil),
        (link, None), (hard, None), _file("pkg/ok.py", GOOD_CODE.encode()),
    ]))
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "work" / "out"
    stats = run_crawl(crawl_cfg(archive), out, progress=False)
    created = {p for p in tmp_path.rglob("*")} - before
    outside = [p for p in created if out not in p.parents and p != out]
    contents = b"".join(p.read_bytes() for p in out.rglob("*.parquet"))
    ok = (stats["dropped"].get("unsafe_path") == 3 and stats["dropped"].get("not_regular") == 2
          and stats["files_kept"] == 1 and not outside and b"planted by a hostile" not in contents)
    record("bad_input", "crawl: tar path traversal", ok, detail=f"{stats['dropped']} outside={outside}")
    assert ok, (stats, outside)


def test_decompression_bomb_is_refused_and_earlier_output_kept(tmp_path: Path, good_crawl, record):
    out, before = good_crawl
    bomb = tmp_path / "bomb.tar.gz"
    # 64 MB of zeros compresses to ~64 KB; the cap below is 1 MB, so it is refused long before it is inflated.
    with tarfile.open(bomb, "w:gz") as tar:
        info = tarfile.TarInfo("zeros.py")
        info.size = 64 * 1024 * 1024
        tar.addfile(info, _Zeros(info.size))
    assert bomb.stat().st_size < 1024 * 1024
    error = None
    try:
        run_crawl(crawl_cfg(bomb, max_archive_bytes=1024 * 1024), out, progress=False)
    except CodepmpError as exc:
        error = exc
    ok = (isinstance(error, InputError) and str(bomb) in str(error) and "bomb" in str(error)
          and snapshot(out) == before)
    record("bad_input", "crawl: decompression bomb", ok, detail=str(error))
    assert ok, error


def test_gzip_stream_bomb_without_tar_headers_is_bounded(tmp_path: Path, record):
    # A .tar.gz whose gzip inflates to endless zero blocks: tar reads them as end-of-archive padding,
    # so no member header ever counts against the caps; the stream cap has to stop it.
    bomb = tmp_path / "padding.tar.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        chunk = b"\0" * (1024 * 1024)
        for _ in range(64):
            f.write(chunk)
    error = None
    try:
        stats = run_crawl(crawl_cfg(bomb, max_archive_bytes=1024 * 1024, max_archive_members=10),
                          tmp_path / "out", progress=False)
    except CodepmpError as exc:
        error, stats = exc, None
    ok = isinstance(error, InputError) and str(bomb) in str(error)
    record("bad_input", "crawl: gzip padding bomb", ok, detail=str(error or stats))
    assert ok, error or stats


class _Zeros(io.RawIOBase):
    """`size` zero bytes, produced as read, so the bomb is built without holding it in memory."""

    def __init__(self, size: int):
        self.left = size

    def readinto(self, b) -> int:
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n

    def readable(self) -> bool:
        return True


def test_empty_directory_is_an_error_naming_it(tmp_path: Path, good_crawl, record):
    out, before = good_crawl
    empty = tmp_path / "empty"
    empty.mkdir()
    error = None
    try:
        run_crawl(crawl_cfg(empty), out, progress=False)
    except CodepmpError as exc:
        error = exc
    ok = isinstance(error, InputError) and str(empty) in str(error) and snapshot(out) == before
    record("bad_input", "crawl: empty directory", ok, detail=str(error))
    assert ok, (error, sorted(set(snapshot(out)) ^ set(before)))


# ---------------------------------------------------------------- data files


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _gsm8k(path: Path):
    return gsm8k.load_problems(str(path.parent.parent), path.stem)


GOOD_ROWS = {
    "pairs": {"prompt": "p", "chosen": "good", "rejected": "bad"},
    "gsm8k": {"question": "1+1?", "answer": "1+1=2\n#### 2"},
    "math": {"problem": "1+1?", "solution": "It is \\boxed{2}.", "answer": "2"},
    "logiqa2": {"id": 1, "text": "t", "question": "q", "options": ["a", "b"], "answer": 0},
    "shepherd": {"input": "Q? Step 1: x = 2 ки\nThe answer is: 2 ки", "label": "Q? Step 1: x = 2 +\nThe answer is: 2 +",
                 "task": "GSM8K"},
    "pool": {"problem_id": "p1", "prompt": "Q?", "gold": "2", "candidates": [{"text": "2", "is_correct": True}]},
}

LOADERS = {
    "pairs": ("pairs.jsonl", read_preference_pairs),
    "gsm8k": ("gsm8k/train.jsonl", _gsm8k),
    "math": ("math.jsonl", read_math),
    "logiqa2": ("logiqa2.jsonl", read_logiqa2),
    "shepherd": ("shepherd.jsonl", read_shepherd),
    "pool": ("pool.jsonl", lambda p: imported_pool(p, "gsm8k")),
}


def _attempt(load, path: Path):
    try:
        return load(path), None
    except CodepmpError as exc:
        return None, exc


@pytest.mark.parametrize("fmt", sorted(LOADERS))
def test_good_row_loads(tmp_path: Path, fmt: str):
    # The baseline for every bad case below: the same loader reads the well-formed row.
    name, load = LOADERS[fmt]
    assert load(_write(tmp_path / name, json.dumps(GOOD_ROWS[fmt]) + "\n"))


def _bad_cases(fmt: str) -> dict[str, tuple[bytes, str]]:
    """Bad file content -> text the error must contain besides the file name."""
    good = json.dumps(GOOD_ROWS[fmt])
    first_key = next(iter(GOOD_ROWS[fmt]))
    missing = {k: v for k, v in GOOD_ROWS[fmt].items() if k != first_key}
    wrong_type = {**GOOD_ROWS[fmt], first_key: [1, 2]}
    return {
        "malformed JSON line": (f"{good}\n{{\"oops\": \n".encode(), "line 2"),
        "JSON that is not an object": (f"{good}\n[1, 2]\n".encode(), "line 2"),
        "missing column": (f"{good}\n{json.dumps(missing)}\n".encode(), first_key),
        "wrong column type": (f"{json.dumps(wrong_type)}\n".encode(), first_key),
        "empty file": (b"", "empty"),
        "only blank lines": (b"\n  \n\n", "empty"),
        "invalid UTF-8": (good.encode() + b"\n\xff\xfe\n", "UTF-8"),
    }


@pytest.mark.parametrize("fmt", sorted(LOADERS))
def test_bad_data_files_name_the_file_and_problem(tmp_path: Path, fmt: str, record):
    name, load = LOADERS[fmt]
    failures = []
    for case, (content, must_say) in _bad_cases(fmt).items():
        path = _write(tmp_path / case.replace(" ", "_") / name, content)
        rows, error = _attempt(load, path)
        ok = isinstance(error, InputError) and str(path) in str(error) and must_say in str(error)
        record("bad_input", f"{fmt}: {case}", ok, detail=str(error) if error else f"loaded {rows!r:.200}")
        if not ok:
            failures.append((case, error, rows))
    assert not failures, failures


def test_gsm8k_empty_final_answer_is_an_error(tmp_path: Path, record):
    path = _write(tmp_path / "gsm8k" / "train.jsonl", json.dumps({"question": "q", "answer": ""}) + "\n")
    _, error = _attempt(_gsm8k, path)
    ok = isinstance(error, InputError) and str(path) in str(error) and "line 1" in str(error)
    record("bad_input", "gsm8k: empty answer string", ok, detail=str(error))
    assert ok, error


@pytest.mark.parametrize("field", ["chosen", "rejected"])
def test_empty_pair_texts_are_an_error(tmp_path: Path, field: str, record):
    # A pair with an empty side teaches the reward model nothing and usually means a broken export.
    path = _write(tmp_path / "pairs.jsonl", json.dumps({**GOOD_ROWS["pairs"], field: ""}) + "\n")
    _, error = _attempt(read_preference_pairs, path)
    ok = isinstance(error, InputError) and str(path) in str(error) and field in str(error)
    record("bad_input", f"pairs: empty '{field}'", ok, detail=str(error))
    assert ok, error


def test_huge_jsonl_row_loads_intact(tmp_path: Path, record):
    big = "x" * (20 * 1024 * 1024)
    path = _write(tmp_path / "pairs.jsonl", json.dumps({"prompt": "p", "chosen": big, "rejected": "r"}) + "\n")
    rows, error = _attempt(read_preference_pairs, path)
    ok = error is None and len(rows) == 1 and rows[0].chosen == big
    record("bad_input", "pairs: a 20 MB row", ok, detail=str(error))
    assert ok, error


def test_reclor_bad_array_names_the_item(tmp_path: Path, record):
    good = {"id_string": "r1", "context": "c", "question": "q", "answers": ["a", "b"], "label": 0}
    cases = {
        "not an array": (json.dumps(good), "JSON array"),
        "label out of range": (json.dumps([good, {**good, "label": 7}]), "item [1]"),
        "truncated": (json.dumps([good])[:-3], "not valid JSON"),
    }
    failures = []
    for case, (content, must_say) in cases.items():
        path = _write(tmp_path / case.replace(" ", "_") / "reclor.json", content)
        _, error = _attempt(read_reclor, path)
        ok = isinstance(error, InputError) and str(path) in str(error) and must_say in str(error)
        record("bad_input", f"reclor: {case}", ok, detail=str(error))
        if not ok:
            failures.append((case, error))
    assert not failures, failures


# ---------------------------------------------------------------- Parquet pairs (read_pairs)


def _pairs_parquet(folder: Path, table: pa.Table) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "pairs.parquet")
    return folder / "pairs.parquet"


def test_parquet_pairs_bad_tables(tmp_path: Path, record):
    strings = {"description": ["d"], "chosen": ["c"], "rejected": ["r"]}
    cases = {
        "int column": (pa.table({**strings, "chosen": pa.array([3])}), "chosen"),
        "missing column": (pa.table({k: v for k, v in strings.items() if k != "rejected"}), "rejected"),
        "null value": (pa.table({**strings, "description": pa.array([None], pa.string())}), "null"),
        "binary column": (pa.table({**strings, "rejected": pa.array([b"r"])}), "rejected"),
    }
    failures = []
    for case, (table, must_say) in cases.items():
        path = _pairs_parquet(tmp_path / case.replace(" ", "_"), table)
        _, error = _attempt(read_pairs, path.parent)
        ok = isinstance(error, InputError) and str(path) in str(error) and must_say in str(error)
        record("bad_input", f"pairs.parquet: {case}", ok, detail=str(error))
        if not ok:
            failures.append((case, error))
    assert not failures, failures


def test_parquet_that_is_not_parquet(tmp_path: Path, record):
    folder = tmp_path / "pairs"
    path = _write(folder / "pairs.parquet", b"PAR1 this is not a parquet file PAR")
    _, error = _attempt(read_pairs, folder)
    ok = isinstance(error, InputError) and str(path) in str(error)
    record("bad_input", "pairs.parquet: not Parquet", ok, detail=str(error))
    assert ok, error


def test_parquet_huge_row_reads_intact(tmp_path: Path, record):
    big = "y" * (8 * 1024 * 1024)
    _pairs_parquet(tmp_path / "p", pa.table({"description": ["d"], "chosen": [big], "rejected": ["r"]}))
    pairs, error = _attempt(read_pairs, tmp_path / "p")
    ok = error is None and pairs[0].chosen == "\n" + big
    record("bad_input", "pairs.parquet: an 8 MB row", ok, detail=str(error))
    assert ok, error


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("overrides,key", [
    ({"crawl": {"max_bytez": 1}}, "crawl.max_bytez"),
    ({"nonsense": {"a": 1}}, "nonsense"),
    ({"crawl": {"max_bytes": "big"}}, "crawl.max_bytes"),
    ({"crawl": {"languages": "python"}}, "crawl.languages"),
    ({"pretrain": {"lr": [1]}}, "pretrain.lr"),
    ({"crawl": 3}, "crawl"),
    ({"crawl": {"max_bytes": -1}}, "crawl.max_bytes"),
    ({"crawl": {"shard_bytes": -5}}, "crawl.shard_bytes"),
    ({"pretrain": {"batch_size": -2}}, "pretrain.batch_size"),
    ({"reasoning": {"train_problems": -1}}, "reasoning.train_problems"),
    ({"evaluate": {"best_of_n": [1, -4]}}, "evaluate.best_of_n"),
    ({"sweep": {"sizes": [-8]}}, "sweep.sizes"),
    ({"synthesize": {"max_code_chars": -1}}, "synthesize.max_code_chars"),
])
def test_bad_config_is_rejected_naming_the_key(overrides, key, record):
    error = None
    try:
        load_config("local", overrides)
    except CodepmpError as exc:
        error = exc
    ok = isinstance(error, ConfigError) and f"'{key}'" in str(error)
    record("bad_input", f"config: {json.dumps(overrides)}", ok, detail=str(error))
    assert ok, error


def test_legitimate_negative_values_still_load():
    # -1 means "no DeepSpeed" and must stay accepted: the size check covers sizes only.
    assert load_config("local", {"pretrain": {"deepspeed_stage": -1}}).pretrain.deepspeed_stage == -1


@pytest.mark.parametrize("assignment,key", [
    ("crawl.max_bytes=-1", "crawl.max_bytes"),
    ("crawl.no_such_key=1", "crawl.no_such_key"),
    ("pretrain.batch_size=lots", "pretrain.batch_size"),
])
def test_cli_rejects_bad_set_at_start(tmp_path: Path, assignment: str, key: str, record):
    out = tmp_path / "out"
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}  # never reached: the config fails first
    done = subprocess.run([sys.executable, "-m", "codepmp.cli", "crawl", "--out", str(out), "--set", assignment],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    ok = (done.returncode != 0 and f"'{key}'" in done.stderr and "Traceback" not in done.stderr
          and not out.exists())
    record("bad_input", f"cli --set {assignment}", ok, detail=done.stderr.strip()[-300:])
    assert ok, done.stderr
