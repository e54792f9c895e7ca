"""Disk full: the crawl stage writes its output onto a filesystem too small for it.

The output folder is a 64 KiB tmpfs mounted for the test (this needs root; the test runs as root here). Where
`mount` is refused, the stage's process gets RLIMIT_FSIZE instead (set in `preexec_fn`, with SIGXFSZ ignored),
so every write past the limit fails with EFBIG: the same failure path, reached without a mount. The test's
`detail` says which one ran. The stage must exit non-zero with one clear error line naming the path and the
full disk (no traceback), every chunk it finished before the fault must be intact (its shard present with the
hash its marker recorded), and no half-written file may be left under a final name or a temp name.

    CODEPMP_FAULTS=1 .venv/bin/python -m pytest -q tests/reliability/test_disk_full.py
"""

from __future__ import annotations

import hashlib
import os
import json
import random
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_kill_resume
from test_kill_resume import _cli, files, temp_files

# The kill tests' private-stack fixture, taken over by name: this module gets a stack of its own (module scope).
kill_stack = test_kill_resume.kill_stack

LIMIT_BYTES = 64 * 1024


def _big_corpus(folder: Path) -> Path:
    """Files of random identifiers (they compress poorly): their shards outgrow the small disk."""
    folder.mkdir(parents=True)
    rng = random.Random(11)
    for i in range(24):
        lines = [f"    v{rng.getrandbits(64):x} = {rng.getrandbits(48)}  # {rng.getrandbits(64):x}" for _ in range(80)]
        (folder / f"big_{i:02d}.py").write_text(f"def f_{i}():\n" + "\n".join(lines) + "\n    return 0\n")
    return folder


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(folder on a full-able filesystem, how: "tmpfs" or "rlimit")."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={LIMIT_BYTES}", "tmpfs", str(mount_point)],
                          capture_output=True)
    if done.returncode != 0:
        yield mount_point, "rlimit"
        return
    try:
        yield mount_point, "tmpfs"
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def _limit_file_size() -> None:
    """In the child: writes past LIMIT_BYTES fail with EFBIG instead of the process dying of SIGXFSZ."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))


@pytest.mark.faults
def test_crawl_onto_a_full_disk_fails_clearly_and_keeps_finished_chunks(kill_stack, small_disk, tmp_path,
                                                                       record) -> None:
    disk, how = small_disk
    corpus = _big_corpus(tmp_path / "corpus")
    out = disk / "crawl"
    command = _cli("crawl", "--out", str(out), "--run-name", "disk-full",
                   "--set", f"crawl.sources={json.dumps([str(corpus)])}", "--set", "crawl.shard_bytes=8000",
                   "--set", "crawl.decontam.enabled=false", "--set", "crawl.max_bytes=100000")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          preexec_fn=_limit_file_size if how == "rlimit" else None)
    stderr_lines = [line for line in done.stderr.splitlines() if line.strip()]
    error_lines = [line for line in stderr_lines if line.startswith("codepmp crawl: error:")]
    clear = (len(error_lines) == 1 and str(disk) in error_lines[0]
             and ("disk full" in error_lines[0] or "No space" in error_lines[0] or "too large" in error_lines[0]))
    traceback = "Traceback" in done.stderr

    written = files(out) if out.exists() else {}
    markers = {name: json.loads(data) for name, data in written.items() if "/chunk-" in name}
    broken = []
    for name, marker in markers.items():
        shard = marker.get("shard")
        if shard and hashlib.sha256(written.get(shard["name"], b"")).hexdigest() != shard["sha256"]:
            broken.append(shard["name"])
    # A shard with no marker is an orphan a rerun overwrites, but it must still be a whole Parquet file.
    import pyarrow.parquet as pq

    for name in written:
        if name.endswith(".parquet"):
            try:
                pq.read_metadata(out / name)
            except Exception:  # any unreadable file counts as corrupted
                broken.append(name)
    leftovers = temp_files(out) if out.exists() else []
    finished = "manifest.json" in written
    ok = done.returncode != 0 and clear and not traceback and not broken and not leftovers and not finished
    record("fault", f"disk full under the crawl output ({how}, {LIMIT_BYTES // 1024} KiB)", ok,
           rows_lost=len(broken),
           detail=f"exit {done.returncode}; error line={error_lines[-1] if error_lines else stderr_lines[-1:]}; "
                  f"traceback={traceback}; chunks finished before the fault={len(markers)}; broken files={broken}; "
                  f"temp files left={leftovers}; final manifest written={finished}")

    assert done.returncode != 0
    assert not traceback, done.stderr[-3000:]
    assert clear, done.stderr[-3000:]
    assert markers, "the disk filled before any chunk finished: the test proves nothing about earlier outputs"
    assert broken == [] and leftovers == []
    assert not finished


def test_the_rlimit_fallback_really_limits_writes(tmp_path) -> None:
    """The fallback must make a write fail with EFBIG (not kill the process), or the fault test proves nothing."""
    script = ("import sys\ntry:\n    open(sys.argv[1], 'wb').write(b'x' * (2 * %d))\nexcept OSError as exc:\n"
              "    print(exc.errno)\n" % LIMIT_BYTES)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "big")], capture_output=True, text=True,
                          preexec_fn=_limit_file_size, timeout=60)
    import errno

    assert done.returncode == 0 and done.stdout.strip() == str(errno.EFBIG), (done.returncode, done.stdout)


@pytest.mark.parametrize("code", ["ENOSPC", "EFBIG", "EDQUOT"])
def test_a_failed_atomic_write_for_want_of_space_is_one_line_naming_the_file(code, tmp_path, monkeypatch,
                                                                             capsys) -> None:
    """The CLI's mapping in seconds, without a stage: the error names the final path, no temp file is left."""
    import errno

    from codepmp import cli
    from codepmp.atomic import atomic_path

    target = tmp_path / "out" / "stats.json"
    target.parent.mkdir()

    def fill_the_disk(args) -> None:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"{")
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(cli, "cmd_status", fill_the_disk)
    assert cli.main(["status"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("codepmp status: error: disk full: could not write "), err
    assert str(target) in err[0]
    assert list(target.parent.iterdir()) == []  # neither the final file nor the temp file


def test_other_os_errors_are_not_reported_as_a_full_disk(tmp_path, monkeypatch) -> None:
    from codepmp import cli

    def denied(args) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(cli, "cmd_status", denied)
    with pytest.raises(PermissionError):
        cli.main(["status"])
