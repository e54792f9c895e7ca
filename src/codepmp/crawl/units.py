"""Work units of a crawl: every source becomes an ordered stream of units, grouped into chunks per rank.

A unit is what one rank reads as a whole: a file of a local directory or tarball, a row of a Hugging Face
dataset, a repository of the GitHub source. Units carry a partition key (`rank_of(key)` picks the rank) and a
size known before reading, so chunk boundaries are the same on every rerun and a finished chunk is skipped
without reading its content (a GitHub repository of a finished chunk is not even downloaded).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from codepmp.config import CrawlConfig
from codepmp.crawl.sources import (
    STDLIB_EXCLUDED_DIRS,
    Entry,
    check_source,
    default_source,
    is_tarball,
    iter_entries,
)
from codepmp.errors import InputError

GITHUB = "github"
HUB_PREFIX = "hf:"
GITHUB_PLAN = "github-plan.json"


@dataclass(frozen=True)
class Unit:
    source: str
    """The source spec the unit came from, as configured."""
    key: str
    """Partition key: relative path of a file, `owner/name` of a repository."""
    size: int
    """Bytes expected (metadata, before reading); decides chunk boundaries."""
    entries: Callable[[], Iterable[Entry]]
    """The unit's files; called only for chunks that are not finished yet."""


def rank_of(key: str, world_size: int) -> int:
    """The worker that owns a unit: a stable hash (sha256, not Python's salted `hash`) mod world_size.

    Hashing the relative path, not the source, sends copies of one tree given as two sources to the
    same worker, where exact dedup catches them.
    """
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % world_size


def source_specs(cfg: CrawlConfig) -> list[str]:
    """The configured sources (default: this Python's stdlib), checked; InputError names a bad one."""
    specs = list(cfg.sources) or [default_source()]
    for spec in specs:
        if spec != GITHUB and not spec.startswith(HUB_PREFIX):
            check_source(spec)
        elif spec.startswith(HUB_PREFIX) and not spec[len(HUB_PREFIX):]:
            raise InputError(f"crawl source '{spec}' names no dataset (use hf:OWNER/NAME or hf:/local/folder)")
    return specs


def iter_units(cfg: CrawlConfig, folder=None) -> Iterator[Unit]:
    """Units of every configured source, in order. `folder` (a `codepmp.storage` folder) keeps the GitHub plan."""
    excluded = STDLIB_EXCLUDED_DIRS if not cfg.sources else frozenset()
    for spec in source_specs(cfg):
        if spec == GITHUB:
            yield from _github_units(cfg, folder)
        elif spec.startswith(HUB_PREFIX):
            yield from _hub_units(cfg, spec)
        else:
            streamed = is_tarball(spec) and not os.path.isdir(spec)
            for entry in iter_entries(spec, excluded, cfg.max_archive_members, cfg.max_archive_bytes):
                yield Unit(spec, entry.path, entry.size, _just(_buffered(entry, cfg) if streamed else entry))


def _buffered(entry: Entry, cfg: CrawlConfig) -> Entry:
    """A tarball member with its bytes read now: the tar stream moves on before the chunk is processed.

    Members the crawl would refuse by size are not read; a chunk holds at most about `shard_bytes` of them.
    """
    from codepmp.crawl.filters import read_limit

    limit = read_limit(entry.path, cfg)
    if entry.skip or entry.size >= limit:
        return entry
    data = entry.read(limit)
    return dataclasses.replace(entry, read=lambda n: data[:n])


def _just(entry: Entry) -> Callable[[], Iterable[Entry]]:
    return lambda: (entry,)


def _hub_units(cfg: CrawlConfig, spec: str) -> Iterator[Unit]:
    from codepmp.crawl.hub import HubSource

    source = HubSource(spec, cfg.hub, licenses=cfg.github.licenses)
    for index, entry in enumerate(source.entries()):
        yield Unit(spec, f"{entry.repo or ''}/{entry.path}#{index}", entry.size, _just(entry))


def github_plan(cfg: CrawlConfig, folder=None) -> list[dict]:
    """The repositories to crawl, pinned to commits: read from `folder` when a rank already planned this crawl,
    else searched now and saved there, so every rank and every rerun reads the same repositories."""
    if folder is not None and folder.exists(GITHUB_PLAN):
        return folder.get_json(GITHUB_PLAN)["repos"]
    source = _github_source(cfg)
    plan = source.plan()
    if folder is not None:
        folder.put_json(GITHUB_PLAN, {"repos": plan, "skipped": dict(source.skipped)})
    return plan


def _github_source(cfg: CrawlConfig):
    from codepmp.crawl.github import GitHubSource

    return GitHubSource(cfg.github, languages=cfg.languages, max_archive_bytes=cfg.max_archive_bytes,
                        max_archive_members=cfg.max_archive_members, environ=os.environ)


def _github_units(cfg: CrawlConfig, folder) -> Iterator[Unit]:
    source = _github_source(cfg)
    for repo in github_plan(cfg, folder):
        size = int(repo.get("size_kb") or 1024) * 1024
        yield Unit(GITHUB, repo["repo"], size, lambda repo=repo: source.entries(repo))


def chunks(units: Iterable[Unit], rank: int, world_size: int, chunk_bytes: int) -> Iterator[list[Unit]]:
    """This rank's units, grouped into consecutive chunks of about `chunk_bytes` (at least one unit each)."""
    chunk: list[Unit] = []
    size = 0
    for unit in units:
        if world_size > 1 and rank_of(unit.key, world_size) != rank:
            continue
        chunk.append(unit)
        size += max(unit.size, 1)
        if size >= chunk_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def chunk_fingerprint(chunk: list[Unit]) -> str:
    """Identity of a chunk's input (sources, keys, sizes): a finished chunk is reused only if it matches."""
    digest = hashlib.sha256()
    for unit in chunk:
        digest.update(f"{unit.source}\0{unit.key}\0{unit.size}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()
