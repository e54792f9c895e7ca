"""The crawl stage: sources -> filters -> decontamination -> exact + near dedup -> Parquet shards + manifest.

    codepmp crawl --out out/crawl --set crawl.max_files=8                      # stdlib of this Python
    codepmp crawl --out s3://codepmp/crawl/run1 --set 'crawl.sources=["github"]' --set crawl.github.min_stars=500

or from Python:

    from codepmp.config import CrawlConfig
    from codepmp.crawl import run_crawl, read_shards
    stats = run_crawl(CrawlConfig(max_files=8), "out/crawl")
    rows = read_shards("out/crawl")

Layout of the output folder (a local directory or an `s3://` prefix), datatrove style:

    rank-00000/shard-00000.parquet   one shard per chunk of input (bounded by `shard_bytes` of input)
    rank-00000/chunk-00000.json      the chunk's completion marker: input fingerprint, shard hash, stats
    rank-00000/manifest.json         the rank's shards, counts, bytes, hashes, repository commits, stats
    rank-00000/_SUCCESS
    manifest.json, stats.json        written by `finalize_crawl` once every rank is done
    _SUCCESS

Every object is written atomically (temp name, then rename or server-side copy), a chunk's marker is written
after its shard, and a rerun reuses every chunk whose marker matches its input and the config, rebuilding the
dedup state from the finished shards: a killed or retried task redoes at most one chunk and ends with the same
bytes as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from typing import Any, NamedTuple

import pyarrow as pa

from codepmp.config import CrawlConfig
from codepmp.crawl import filters
from codepmp.crawl.dedup import (
    Deduplicator,
    batch_ngram_hashes,
    content_hash,
    signature_bytes,
    signature_from_bytes,
    word_ids,
    words,
)
from codepmp.crawl.sources import Entry
from codepmp.crawl.units import Unit, chunk_fingerprint, chunks, iter_units, source_specs
from codepmp.errors import ConfigError, InputError
from codepmp.progress import progress as progress_bar
from codepmp.storage import open_folder

log = logging.getLogger(__name__)

SOURCE_REASONS = ("not_regular", "unsafe_path", "bad_archive", "license", "unreadable")
STATE_REASONS = ("contaminated", "duplicate", "near_duplicate", "cross_rank_duplicate", "max_files")
DEDUP_BATCH_CHARS = 4_000_000
"""Text per words/shingles/signatures batch: big enough to amortize numpy calls, small enough for memory."""
MANIFEST = "manifest.json"
DONE = "_SUCCESS"

SCHEMA = pa.schema([
    ("id", pa.string()),
    ("source", pa.string()),
    ("path", pa.string()),
    ("language", pa.string()),
    # large_string: 64-bit offsets, so a shard of many large files cannot overflow 2 GiB of text
    ("content", pa.large_string()),
    ("size_bytes", pa.int64()),
    ("n_lines", pa.int64()),
    ("repo", pa.string()),
    ("commit", pa.string()),
    ("license", pa.string()),
    ("content_hash", pa.string()),
    ("minhash", pa.binary()),
    ("category", pa.string()),
    ("engineering_prob", pa.float64()),
])


def drop_reasons() -> tuple[str, ...]:
    """Every reason a file can be dropped for, in the order the checks run (stats list them in this order)."""
    return tuple(dict.fromkeys((*SOURCE_REASONS[:4], *filters.PATH_REASONS, "too_large", SOURCE_REASONS[4],
                                *filters.CONTENT_REASONS, *STATE_REASONS)))


def config_fingerprint(cfg: CrawlConfig) -> str:
    """Hash of everything that changes what a crawl keeps; finished chunks of another config are never reused."""
    import dataclasses

    return hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def rank_dir(rank: int) -> str:
    return f"rank-{rank:05d}/"


def _check_args(cfg: CrawlConfig, rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"crawl rank {rank} is not in [0, world_size={world_size})")
    unknown = sorted(set(cfg.languages) - filters.LANGUAGES)
    if unknown:
        raise ConfigError(f"unknown language(s) {', '.join(unknown)} in crawl.languages "
                          f"(known: {', '.join(sorted(filters.LANGUAGES))})")
    for name in ("shard_bytes", "max_bytes", "max_archive_bytes", "max_archive_members"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"crawl.{name} must be positive, got {getattr(cfg, name)}")
    if cfg.max_files < 0:
        raise ConfigError(f"crawl.max_files must be >= 0, got {cfg.max_files}")


def run_crawl(cfg: CrawlConfig, out: str | os.PathLike, rank: int = 0, world_size: int = 1,
              progress: bool = True) -> dict[str, Any]:
    """Crawl this rank's share of `cfg.sources` into `out` (local folder or s3:// prefix); return the stats.

    Ranks partition the units (files, rows, repositories) by a stable hash of their key; run one call per
    rank with the same `cfg`, `out` and `world_size`, then `finalize_crawl` once (with `world_size == 1`
    this call finalizes itself). Stats: files_seen, files_kept, bytes_seen, bytes_kept, dropped by reason,
    shards; `files_seen == files_kept + sum(dropped.values())`.

    Raises InputError for a missing or unreadable source, ConfigError for bad settings, and, with
    `world_size == 1`, InputError for a corpus that filters to nothing.
    """
    _check_args(cfg, rank, world_size)
    source_specs(cfg)
    folder = open_folder(out)
    worker = _RankWorker(cfg, folder, rank)
    units = iter_units(cfg, folder)
    for index, chunk in enumerate(chunks(units, rank, world_size, cfg.shard_bytes)):
        worker.run_chunk(index, chunk, progress)
    manifest = worker.finish(world_size)
    if world_size == 1:
        return finalize_crawl(cfg, out, world_size=1)["stats"]
    return manifest["stats"]


class _Candidate(NamedTuple):
    """A file that passed the filters, waiting for decontamination and dedup."""

    unit: Unit
    entry: Entry
    verdict: filters.Verdict
    row_id: str
    size: int


class _RankWorker:
    """One rank's crawl: chunks in order, each either reused (marker matches) or processed and written."""

    def __init__(self, cfg: CrawlConfig, folder, rank: int):
        self.cfg, self.folder, self.rank = cfg, folder, rank
        self.fingerprint = config_fingerprint(cfg)
        self.dedup = Deduplicator(cfg.dedup)
        self._decontam = None
        self._classifier = None
        self.markers: list[dict[str, Any]] = []

    @property
    def decontam(self):
        if self._decontam is None and self.cfg.decontam.enabled:
            from codepmp.crawl.decontam import Decontaminator

            self._decontam = Decontaminator.from_config(self.cfg.decontam)
            log.info("decontamination: %d n-grams from %d evaluation files", self._decontam.size,
                     len(self._decontam.sources))
        return self._decontam

    def run_chunk(self, index: int, chunk: list[Unit], progress: bool) -> None:
        name = f"{rank_dir(self.rank)}chunk-{index:05d}.json"
        fingerprint = chunk_fingerprint(chunk)
        if self.folder.exists(name):
            marker = self.folder.get_json(name)
            if marker.get("input") == fingerprint and marker.get("config") == self.fingerprint:
                self._restore(marker)
                self.markers.append(marker)
                return
        rows, stats, repos = self._process(chunk, index, progress)
        shard = None
        if rows:
            shard = f"{rank_dir(self.rank)}shard-{index:05d}.parquet"
            data = self.folder.put_table(shard, pa.Table.from_pylist(rows, schema=SCHEMA))
            shard = {"name": shard, "rows": len(rows), "bytes": len(data),
                     "sha256": hashlib.sha256(data).hexdigest()}
        marker = {"input": fingerprint, "config": self.fingerprint, "shard": shard, "stats": stats,
                  "repos": repos}
        self.folder.put_json(name, marker)
        self.markers.append(marker)

    def _restore(self, marker: dict[str, Any]) -> None:
        """Put a finished chunk's kept files back into the dedup state, as if it had just been processed."""
        if not marker["shard"]:
            return
        table = self.folder.get_table(marker["shard"]["name"], ["content_hash", "minhash"])
        for key, sig in zip(table.column("content_hash").to_pylist(), table.column("minhash").to_pylist()):
            self.dedup.add(key, signature_from_bytes(sig))

    def _process(self, chunk: list[Unit], index: int, progress: bool):
        dropped: Counter[str] = Counter()
        candidates: list[_Candidate] = []
        seen = bytes_seen = 0
        units = progress_bar(chunk, desc=f"crawl rank {self.rank} chunk {index}", unit="unit", disable=not progress)
        for unit in units:
            for entry in unit.entries():
                seen += 1
                bytes_seen += entry.size
                reason, verdict, data = self._check_entry(entry)
                if reason:
                    dropped[reason] += 1
                else:
                    # Raw bytes are not kept, only their hash and size: a chunk's text is memory enough.
                    candidates.append(_Candidate(unit, entry, verdict, filters.content_id(data), len(data)))
        rows = self._dedup(candidates, dropped)
        if rows and self.cfg.classify.enabled:
            self._classify(rows)
        repos = {row["repo"]: row["commit"] for row in rows if row["repo"] and row["commit"]}
        stats = {"files_seen": seen, "files_kept": len(rows), "bytes_seen": bytes_seen,
                 "bytes_kept": sum(row["size_bytes"] for row in rows), "dropped": dict(dropped)}
        return rows, stats, dict(sorted(repos.items()))

    def _check_entry(self, entry):
        if entry.skip:
            return entry.skip, None, None
        reason = filters.path_drop_reason(entry.path, self.cfg)
        if reason:
            return reason, None, None
        # Sizes known from metadata are checked before reading, so an oversized file (or a tarball
        # member claiming gigabytes) is never read into memory.
        limit = filters.read_limit(entry.path, self.cfg)
        if entry.size >= limit:
            return "too_large", None, None
        try:
            data = entry.read(limit)
        except OSError:
            return "unreadable", None, None
        verdict = filters.check_content(data, entry.path, self.cfg)
        return verdict.reason, verdict, data

    def _dedup(self, candidates, dropped: Counter[str]) -> list[dict[str, Any]]:
        """Decontaminate, then exact and near dedup in input order; the kept files become rows.

        Words and shingles are computed for a few MB of text at a time: a word list costs ~50 bytes per word
        as Python objects, several times the text itself.
        """
        rows = []
        start = 0
        while start < len(candidates):
            stop, chars = start, 0
            while stop < len(candidates) and (stop == start or chars < DEDUP_BATCH_CHARS):
                chars += len(candidates[stop].verdict.text)
                stop += 1
            rows += self._dedup_batch(candidates[start:stop], dropped)
            start = stop
        return rows

    def _dedup_batch(self, candidates, dropped: Counter[str]) -> list[dict[str, Any]]:
        token_lists = [words(c.verdict.text) for c in candidates]
        id_arrays = [word_ids(tokens) for tokens in token_lists]
        contaminated = (self.decontam.contaminated(token_lists, id_arrays) if self.decontam is not None
                        else [False] * len(candidates))
        del token_lists
        clean = [i for i, bad in enumerate(contaminated) if not bad]
        shingles = batch_ngram_hashes([id_arrays[i] for i in clean], self.cfg.dedup.ngram)
        del id_arrays
        signatures = dict(zip(clean, self.dedup.signatures_of_shingles(shingles)))
        rows = []
        for i, candidate in enumerate(candidates):
            if contaminated[i]:
                dropped["contaminated"] += 1
                continue
            entry, text = candidate.entry, candidate.verdict.text
            key = content_hash(text)
            reason = self.dedup.check(key, signatures[i])
            if reason:
                dropped[reason] += 1
                continue
            rows.append({
                "id": candidate.row_id, "source": candidate.unit.source, "path": entry.path,
                "language": candidate.verdict.language, "content": text, "size_bytes": candidate.size,
                "n_lines": candidate.verdict.n_lines, "repo": entry.repo, "commit": entry.commit,
                "license": entry.license, "content_hash": key, "minhash": signature_bytes(signatures[i]),
                "category": None, "engineering_prob": None,
            })
        return rows

    def _classify(self, rows: list[dict[str, Any]]) -> None:
        if self._classifier is None:
            from codepmp.crawl.classify import CodeClassifier

            self._classifier = CodeClassifier(self.cfg.classify)
        labels = self._classifier.classify([r["content"] for r in rows], [r["language"] for r in rows])
        for row, (category, prob) in zip(rows, labels):
            row["category"], row["engineering_prob"] = category, float(prob)

    def finish(self, world_size: int) -> dict[str, Any]:
        stats = _sum_stats([m["stats"] for m in self.markers])
        shards = [m["shard"] for m in self.markers if m["shard"]]
        repos = {k: v for m in self.markers for k, v in m.get("repos", {}).items()}
        manifest = {"rank": self.rank, "world_size": world_size, "config": self.fingerprint, "shards": shards,
                    "repos": dict(sorted(repos.items())), "stats": {**stats, "shards": len(shards)}}
        self.folder.put_json(rank_dir(self.rank) + MANIFEST, manifest)
        self.folder.put_json(rank_dir(self.rank) + DONE, {"files_kept": stats["files_kept"]})
        log.info("crawl rank %d kept %d of %d files (%d bytes) in %d shards", self.rank, stats["files_kept"],
                 stats["files_seen"], stats["bytes_kept"], len(shards))
        return manifest


def _sum_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    dropped: Counter[str] = Counter()
    totals = Counter()
    for part in parts:
        dropped.update(part["dropped"])
        for key in ("files_seen", "files_kept", "bytes_seen", "bytes_kept"):
            totals[key] += part[key]
    return {**{k: totals[k] for k in ("files_seen", "files_kept", "bytes_seen", "bytes_kept")},
            "dropped": _ordered(dropped)}


def _ordered(dropped: Counter[str]) -> dict[str, int]:
    order = drop_reasons()
    known = [r for r in order if dropped.get(r)]
    return {r: dropped[r] for r in known + sorted(set(dropped) - set(order)) if dropped[r]}


def finalize_crawl(cfg: CrawlConfig, out: str | os.PathLike, world_size: int) -> dict[str, Any]:
    """Merge the rank manifests of a finished crawl into `manifest.json` + `stats.json`; return the manifest.

    Near and exact duplicates across ranks (files each rank kept on its own) are found from the stored
    signatures and listed in `excluded`; `max_files` then keeps the files with the smallest ids (a
    content-hash sample, the same on every rerun), listed in `keep`. Readers (`read_shards`) apply both.
    InputError when a rank has not finished or the corpus filtered to nothing.
    """
    folder = open_folder(out)
    fingerprint = config_fingerprint(cfg)
    manifests = []
    for rank in range(world_size):
        if not folder.exists(rank_dir(rank) + DONE):
            raise InputError(f"crawl rank {rank} of {world_size} has not finished in {folder.location}")
        manifest = folder.get_json(rank_dir(rank) + MANIFEST)
        if manifest["config"] != fingerprint or manifest["world_size"] != world_size:
            raise InputError(f"crawl rank {rank} in {folder.location} was written by another config or world size")
        manifests.append(manifest)
    stats = _sum_stats([m["stats"] for m in manifests])
    shards = [shard for m in manifests for shard in m["shards"]]
    excluded, ids = _cross_rank_duplicates(cfg, folder, manifests) if world_size > 1 else ([], None)
    dropped = Counter(stats["dropped"])
    dropped["cross_rank_duplicate"] += len(excluded)
    keep = None
    if cfg.max_files:
        if ids is None:
            ids = [i for shard in shards for i in _column(folder, shard, "id")]
        survivors = sorted(set(ids) - set(excluded))
        keep = survivors[:cfg.max_files]
        dropped["max_files"] += len(survivors) - len(keep)
    files_kept = stats["files_seen"] - sum(dropped.values())
    stats = {**stats, "files_kept": files_kept, "dropped": _ordered(dropped), "shards": len(shards),
             "world_size": world_size, "sources": source_specs(cfg)}
    if files_kept == 0:
        detail = ", ".join(f"{k}={v}" for k, v in stats["dropped"].items()) or "nothing"
        raise InputError(f"crawl kept 0 of {stats['files_seen']} files from {', '.join(stats['sources'])}; "
                         f"dropped: {detail}")
    # Only a store location is recorded: a local folder may be moved, and then the manifest sits beside its shards.
    location = folder.location if folder.location.startswith("s3://") else None
    manifest = {"location": location, "config": fingerprint, "shards": shards, "excluded": excluded,
                "keep": keep, "repos": {k: v for m in manifests for k, v in m["repos"].items()}, "stats": stats}
    folder.put_json(MANIFEST, manifest)
    folder.put_json("stats.json", stats)
    folder.put_json(DONE, {"files_kept": files_kept})
    log.info("crawl kept %d of %d files in %d shards", files_kept, stats["files_seen"], len(shards))
    return manifest


def _column(folder, shard: dict[str, Any], column: str) -> list:
    return folder.get_table(shard["name"], [column]).column(column).to_pylist()


def _cross_rank_duplicates(cfg: CrawlConfig, folder, manifests) -> tuple[list[str], list[str]]:
    """Ids that an earlier rank already kept (exactly or nearly), in rank order; and every id seen."""
    dedup = Deduplicator(cfg.dedup)
    excluded: list[str] = []
    ids: list[str] = []
    for manifest in manifests:
        for shard in manifest["shards"]:
            table = folder.get_table(shard["name"], ["id", "content_hash", "minhash"])
            for row_id, key, sig in zip(*(table.column(c).to_pylist() for c in ("id", "content_hash", "minhash"))):
                ids.append(row_id)
                if dedup.check(key, signature_from_bytes(sig)):
                    excluded.append(row_id)
    return sorted(excluded), ids
