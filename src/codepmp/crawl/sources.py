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

import bz2
import contextlib
import gzip
import lzma
import os
import posixpath
import sysconfig
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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
    repo: str | None = None
    """Repository the file came from (`owner/name` for GitHub, a dataset column for `hf:`), None for local files."""
    commit: str | None = None
    """Pinned commit of `repo` the file was read at, when known."""
    license: str | None = None
    """SPDX license id of `repo`, when known."""


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
        # Refused before any output is written: an empty folder is almost always a wrong path, and a
        # crawl that fails later (kept nothing) would already have replaced a finished crawl's chunk files.
        with os.scandir(source) as it:
            if next(it, None) is None:
                raise InputError(f"crawl source {source} is an empty directory")
        return
    if not (os.path.isfile(source) and is_tarball(source)):
        raise InputError(
            f"crawl source {source} is neither a directory nor a tarball ({', '.join(TARBALL_SUFFIXES)})"
        )


def iter_entries(source: str, excluded_dirs: frozenset[str] = frozenset(), max_archive_members: int | None = None,
                 max_archive_bytes: int | None = None) -> Iterator[Entry]:
    """Entries of a directory (sorted walk) or tarball (member order, within the caps); `excluded_dirs` prunes
    directory names."""
    check_source(source)
    if os.path.isdir(source):
        return walk_directory(Path(source), excluded_dirs)
    return iter_tarball(source, max_members=max_archive_members, max_bytes=max_archive_bytes)


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


TAR_OVERHEAD_PER_MEMBER = 2048
"""Decompressed bytes a member may take beyond its data: its header, a long-name or pax header, block padding."""

TAR_TRAILER_BYTES = 20480
"""The end-of-archive blocks plus padding to the record size, twice over."""

_COMPRESSIONS: tuple[tuple[bytes, Callable[[BinaryIO], BinaryIO]], ...] = (
    (b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
    (b"BZh", bz2.BZ2File),
    (b"\xfd7zXZ\x00", lzma.LZMAFile),
)
"""Magic bytes of the compressions `tarfile`'s "r|*" mode understands, and how to open each."""

_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)
"""What a corrupt or truncated archive raises from tarfile or a decompressor."""


def iter_tarball(
    source: str, max_members: int | None = None, max_bytes: int | None = None
) -> Iterator[Entry]:
    """Members of a .tar/.tar.gz/.tgz as a stream, never extracted.

    Raises InputError on a corrupt file or one over the caps (see `iter_tar_stream`). `max_members`
    defaults to `MAX_TAR_MEMBERS`; `max_bytes` defaults to no limit.
    """
    yield from iter_tar_stream(source, label=f"crawl source {source}", max_members=max_members, max_bytes=max_bytes)


def iter_tar_stream(
    source: str | os.PathLike | BinaryIO,
    *,
    label: str | None = None,
    strip_components: int = 0,
    max_members: int | None = None,
    max_bytes: int | None = None,
) -> Iterator[Entry]:
    """Members of a tar stream (a path or a binary file object, compressed or not) as `Entry`s, never extracted.

    `strip_components` drops that many leading folders from every path, like `tar --strip-components`
    (a GitHub tarball holds everything under one `owner-name-sha/` folder); members with no path left
    are not yielded. Paths are checked for safety before stripping. A file object is read from its
    current position and left open.

    Caps, because an archive is untrusted input whose headers can claim anything: more than
    `max_members` members (default `MAX_TAR_MEMBERS`), or member sizes adding up to more than
    `max_bytes`, raise InputError naming `label`. With `max_bytes` set, the decompressed stream as a
    whole is also capped (`max_bytes` plus `TAR_OVERHEAD_PER_MEMBER` per member), which bounds the
    long-name and pax headers that tarfile reads into memory before a member is seen.
    A corrupt or truncated archive raises InputError too.
    """
    label = label or _describe_source(source)
    members_cap = MAX_TAR_MEMBERS if max_members is None else max_members
    stream_cap = None if max_bytes is None else max_bytes + TAR_OVERHEAD_PER_MEMBER * members_cap + TAR_TRAILER_BYTES
    try:
        with contextlib.ExitStack() as stack:
            raw = source if hasattr(source, "read") else stack.enter_context(open(source, "rb"))
            stream = _CappedReader(stack.enter_context(_decompressed(raw)), stream_cap, label)
            tar = stack.enter_context(tarfile.open(fileobj=stream, mode="r|"))
            yield from _members(tar, label, strip_components, members_cap, max_bytes)
    except _ARCHIVE_ERRORS as e:
        raise InputError(f"{label} is not a readable tarball: {e}") from None


def _describe_source(source: str | os.PathLike | BinaryIO) -> str:
    name = getattr(source, "name", None) if hasattr(source, "read") else source
    return f"tar archive {name}" if isinstance(name, (str, os.PathLike)) else "tar stream"


class _Prefixed:
    """A reader that returns `head` before the rest of `tail`: magic bytes peeked from a stream that cannot seek."""

    def __init__(self, head: bytes, tail: BinaryIO) -> None:
        self._head = head
        self._tail = tail

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._tail.read(size)
        if size is None or size < 0:
            data, self._head = self._head + self._tail.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        return data if len(data) == size else data + self._tail.read(size - len(data))


@contextlib.contextmanager
def _decompressed(raw: BinaryIO) -> Iterator[BinaryIO]:
    """`raw` decompressed by its magic bytes (gzip, bzip2, xz), or as it is: a plain tar."""
    head = raw.read(6)
    prefixed: BinaryIO = _Prefixed(head, raw)  # type: ignore[assignment]
    for magic, opener in _COMPRESSIONS:
        if head.startswith(magic):
            with opener(prefixed) as stream:
                yield stream
            return
    yield prefixed


class _CappedReader:
    """Counts the decompressed bytes tarfile reads and refuses to go past `cap` (None: no cap)."""

    def __init__(self, inner: BinaryIO, cap: int | None, label: str) -> None:
        self._inner = inner
        self._cap = cap
        self._label = label
        self._total = 0

    def read(self, size: int = -1) -> bytes:
        if self._cap is not None and (size is None or size < 0):
            size = self._cap - self._total + 1
        data = self._inner.read(size)
        self._total += len(data)
        if self._cap is not None and self._total > self._cap:
            raise InputError(
                f"{self._label} decompresses to more than {self._cap} bytes; refusing it (decompression bomb?)"
            )
        return data


def _members(
    tar: tarfile.TarFile, label: str, strip_components: int, max_members: int, max_bytes: int | None
) -> Iterator[Entry]:
    n_members = 0
    total_bytes = 0
    while (member := tar.next()) is not None:
        # TarFile keeps every header for random access we never use; drop them so a
        # tarball with millions of members does not hold them all in memory.
        tar.members.clear()
        n_members += 1
        if n_members > max_members:
            raise InputError(f"{label} has more than {max_members} members; refusing it")
        total_bytes += max(member.size, 0)
        if max_bytes is not None and total_bytes > max_bytes:
            raise InputError(
                f"{label} has members adding up to more than {max_bytes} bytes; refusing it (decompression bomb?)"
            )
        if member.isdir():
            continue
        path = safe_member_path(member.name)
        if path is None:
            yield Entry(member.name, member.size, "unsafe_path", _unreadable)
            continue
        path = _strip(path, strip_components)
        if path is None:
            continue
        if not member.isreg():
            yield Entry(path, 0, "not_regular", _unreadable)
        else:
            yield Entry(path, member.size, None, _member_reader(tar, member, label))


def _strip(path: str, components: int) -> str | None:
    """`path` without its first `components` folders; None when nothing is left."""
    if components <= 0:
        return path
    parts = path.split("/")
    return "/".join(parts[components:]) if len(parts) > components else None


def _member_reader(tar: tarfile.TarFile, member: tarfile.TarInfo, label: str) -> Callable[[int], bytes]:
    def read(limit: int) -> bytes:
        try:
            f = tar.extractfile(member)
            return f.read(min(limit, member.size)) if f is not None else b""
        except _ARCHIVE_ERRORS as e:  # a stream cut short inside a member's data
            raise InputError(f"{label} is not a readable tarball: {e}") from None
    return read
