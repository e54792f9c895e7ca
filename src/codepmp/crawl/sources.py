"""Crawl sources: local directories and tarballs, read in place as a stream of `Entry`s.

    from codepmp.crawl.sources import iter_entries
    for entry in iter_entries("/path/to/repo.tar.gz"):
        data = entry.read(100_000) if entry.skip is None else None

Nothing is ever extracted to disk and symlinks are never followed: a crawled tree or tarball is
untrusted input. Entries that must not be read (symlinks, hardlinks, devices, and tarball members
whose names are absolute or climb out with "..") are still yielded, with `skip` set to the reason,
so the crawl can count them.

With no sources configured the crawl reads the running Python's standard library
(`default_source()`), minus the directories in `STDLIB_EXCLUDED_DIRS`.
"""

from __future__ import annotations

import os
import posixpath
import sysconfig
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from codepmp.errors import InputError

TARBALL_SUFFIXES = (".tar", ".tar.gz", ".tgz")

MAX_TAR_MEMBERS = 2_000_000
"""A tarball with more members than this is refused (headers alone are a cheap decompression bomb)."""

STDLIB_EXCLUDED_DIRS = frozenset({
    "site-packages",  # third-party packages installed into this Python, not the standard library
    "dist-packages",  # the same on Debian-style Pythons
    "test",           # CPython's test suite: deliberately broken fixtures (bad encodings, syntax errors)
    "tests",          # package test suites (lib2to3, ...), same kind of fixture data
    "idle_test",
    "__pycache__",    # bytecode only
})
"""Directory names pruned from the default stdlib source, at any depth."""


@dataclass(frozen=True)
class Entry:
    """One file-like entry of a source.

    `read(limit)` returns at most `limit` bytes of the content. For tarballs it is only valid until
    the iterator advances to the next entry (members are read as a stream).
    """

    path: str
    """Relative POSIX path inside the source."""
    size: int
    """Size in bytes from metadata (stat or tar header), known before reading."""
    skip: str | None
    """None for a regular file; "not_regular" or "unsafe_path" for entries that must not be read."""
    read: Callable[[int], bytes]


def default_source() -> str:
    """The standard-library directory of the running Python."""
    return sysconfig.get_paths()["stdlib"]


def is_tarball(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(TARBALL_SUFFIXES)


def check_source(source: str) -> None:
    """Raise InputError unless `source` is an existing directory or a file with a tarball suffix."""
    if not os.path.lexists(source):
        raise InputError(f"crawl source {source} does not exist")
    if os.path.isdir(source):
        return
    if not (os.path.isfile(source) and is_tarball(source)):
        raise InputError(
            f"crawl source {source} is neither a directory nor a tarball ({', '.join(TARBALL_SUFFIXES)})"
        )


def iter_entries(source: str, excluded_dirs: frozenset[str] = frozenset()) -> Iterator[Entry]:
    """Entries of a directory (sorted walk) or tarball (member order); `excluded_dirs` prunes directory names."""
    check_source(source)
    if os.path.isdir(source):
        return walk_directory(Path(source), excluded_dirs)
    return iter_tarball(source)


def _read_file(path: Path) -> Callable[[int], bytes]:
    def read(limit: int) -> bytes:
        with open(path, "rb") as f:
            return f.read(limit)
    return read


def _unreadable(limit: int) -> bytes:
    raise OSError("entry is not readable")


def walk_directory(root: Path, excluded_dirs: frozenset[str] = frozenset(), _prefix: str = "") -> Iterator[Entry]:
    """Regular files under `root` in sorted order; symlinks and special files come back with skip set."""
    with os.scandir(root) as it:
        children = sorted(it, key=lambda e: e.name)
    for child in children:
        rel = f"{_prefix}{child.name}"
        if child.is_symlink():
            yield Entry(rel, 0, "not_regular", _unreadable)
        elif child.is_dir(follow_symlinks=False):
            if child.name not in excluded_dirs:
                yield from walk_directory(Path(child.path), excluded_dirs, f"{rel}/")
        elif child.is_file(follow_symlinks=False):
            yield Entry(rel, child.stat(follow_symlinks=False).st_size, None, _read_file(Path(child.path)))
        else:
            yield Entry(rel, 0, "not_regular", _unreadable)


def safe_member_path(name: str) -> str | None:
    """The member name as a clean relative path, or None when it is absolute or climbs out with "..".

    Checked on the raw name before normalising, so "a/../../etc" is refused rather than folded.
    """
    if not name or name.startswith("/") or "\\" in name:
        return None
    if ".." in name.split("/"):
        return None
    path = posixpath.normpath(name)
    return None if path in (".", "") else path


def iter_tarball(source: str) -> Iterator[Entry]:
    """Members of a .tar/.tar.gz/.tgz as a stream, never extracted; raises InputError on a corrupt file."""
    try:
        with tarfile.open(source, mode="r|*") as tar:
            yield from _members(tar, source)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise InputError(f"crawl source {source} is not a readable tarball: {e}") from None


def _members(tar: tarfile.TarFile, source: str) -> Iterator[Entry]:
    n_members = 0
    while (member := tar.next()) is not None:
        # TarFile keeps every header for random access we never use; drop them so a
        # tarball with millions of members does not hold them all in memory.
        tar.members.clear()
        n_members += 1
        if n_members > MAX_TAR_MEMBERS:
            raise InputError(f"crawl source {source} has more than {MAX_TAR_MEMBERS} members; refusing it")
        if member.isdir():
            continue
        path = safe_member_path(member.name)
        if path is None:
            yield Entry(member.name, member.size, "unsafe_path", _unreadable)
        elif not member.isreg():
            yield Entry(path, 0, "not_regular", _unreadable)
        else:
            yield Entry(path, member.size, None, _member_reader(tar, member, source))


def _member_reader(tar: tarfile.TarFile, member: tarfile.TarInfo, source: str) -> Callable[[int], bytes]:
    def read(limit: int) -> bytes:
        try:
            f = tar.extractfile(member)
            return f.read(min(limit, member.size)) if f is not None else b""
        except (tarfile.TarError, EOFError) as e:  # a stream cut short inside a member's data
            raise InputError(f"crawl source {source} is not a readable tarball: {e}") from None
    return read
