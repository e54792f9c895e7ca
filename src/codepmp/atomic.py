"""Atomic local writes: a hidden temp file in the same folder, then `os.replace`, so readers and retries
see a whole file or none, never a truncated one."""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
DISK_FULL_TEXTS = ("No space left on device", "File too large", "Disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    """A write failed for want of space: ENOSPC, EDQUOT, or EFBIG (a file-size limit). Arrow's IO errors carry
    no errno, only the system's message, so that is matched too."""
    if not isinstance(exc, OSError):
        return False
    return exc.errno in DISK_FULL_ERRNOS or any(text in str(exc) for text in DISK_FULL_TEXTS)


def _remove_stale(path: Path) -> None:
    """Remove temp files (or folders) for `path` left by a writer that was killed (SIGKILL runs no cleanup),
    so a rerun does not pile them up. A temp of a process that is still alive is another writer's: kept."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write; it replaces `path` only if the block finishes without error."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove_stale(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        # A failed write() names no file; name the final path, so the error can say where the disk is full.
        if is_disk_full(exc) and not exc.filename:
            exc.filename = str(path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_table(table: pa.Table, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder to fill; it replaces folder `path` only if the block finishes without error."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove_stale(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
