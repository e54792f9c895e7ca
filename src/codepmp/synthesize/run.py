"""Code preference pairs from crawled files: description (summarizer) -> chosen (strong) / rejected (weak).

    codepmp synthesize --crawl runs/crawl --out runs/pairs     # every shard in turn, then the merge

In the pipeline each shard is one ParallelFor task (`synthesize_shard`) and `merge_shards` fans them in.
The selected files are cut into chunks of `chunk_rows`; chunk i belongs to shard i % world_size. A shard
generates role by role (descriptions of all its chunks, then chosen, then rejected: one model in memory at a
time) and caches every finished (role, chunk) before starting the next, under `location`:

    description/chunk-00012.parquet     id, text, finished, tokens   (the row cache; atomic writes)
    chosen/chunk-00012.parquet
    rejected/chunk-00012.parquet
    shard-00003/pairs.parquet           the shard's pairs, then its completion marker
    shard-00003/_SUCCESS                stats JSON

On a cluster `location` is in the object store, so a killed or retried task redoes only the chunks it had not
cached and never writes a pair twice. Each chunk has its own sampling seeds, so the pairs do not depend on how
often the task was interrupted.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from codepmp.atomic import atomic_path, write_json, write_table
from codepmp.config import SynthesizeConfig
from codepmp.shards import read_shards
from codepmp.errors import ConfigError, InputError
from codepmp.progress import progress
from codepmp.storage import open_folder
from codepmp.generate.backend import Backend, Completion, Sampling, TransformersBackend
from codepmp.synthesize.prompts import description_prompt, pair_prompt
from codepmp.synthesize.quality import signals
from codepmp.pairs import Pair, read_text_rows

PAIRS_FILE = "pairs.parquet"
DONE = "_SUCCESS"
ROLES = ("description", "chosen", "rejected")
DROP_REASONS = ("empty_description", "unfinished_description", "empty_chosen", "unfinished_chosen",
                "empty_rejected", "unfinished_rejected", "identical")
BACKENDS = ("transformers", "vllm", "openai")
CACHE_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("finished", pa.bool_()), ("tokens", pa.int64())])
# Settings that change how fast pairs are made, not which: a rerun with other values reuses the cache.
_OPERATIONAL = {"world_size", "batch_size", "backend", "tensor_parallel_size", "endpoint", "concurrency",
                "retries", "drop_unfinished", "quality_signals"}


def is_empty(text: str) -> bool:
    """Blank, or nothing but code fences (a model that opened a block and wrote no code)."""
    return not "".join(line for line in text.splitlines() if not line.strip().startswith("```")).strip()


def make_backend(cfg: SynthesizeConfig, spec: str) -> Backend:
    if cfg.backend == "transformers":
        return TransformersBackend(spec, cfg.batch_size)
    if cfg.backend == "vllm":
        from codepmp.generate.vllm_backend import VLLMBackend

        return VLLMBackend(spec, tensor_parallel_size=cfg.tensor_parallel_size)
    if cfg.backend == "openai":
        from codepmp.generate.http_backend import OpenAIBackend

        if not cfg.endpoint:
            raise ConfigError("synthesize.backend is 'openai' but synthesize.endpoint is empty")
        return OpenAIBackend(cfg.endpoint, spec, concurrency=cfg.concurrency, max_retries=cfg.retries)
    raise ConfigError(f"unknown synthesize.backend '{cfg.backend}' (known: {', '.join(BACKENDS)})")


class _OneModel:
    """Keeps at most one generator in memory, reusing it when consecutive roles share a model."""

    def __init__(self, cfg: SynthesizeConfig, factory: Callable[[SynthesizeConfig, str], Backend]):
        self.cfg, self.factory, self.spec, self.backend = cfg, factory, None, None

    def get(self, spec: str) -> Backend:
        if spec != self.spec:
            self.backend = None
            gc.collect()
            self.backend, self.spec = self.factory(self.cfg, spec), spec
        return self.backend


def select_files(rows: list[dict], cfg: SynthesizeConfig, where: str) -> list[dict]:
    """The crawled files to synthesize from: those of `cfg.categories` (if set), then the first `max_pairs`."""
    if not rows:
        raise InputError(f"synthesize: no crawled files in '{where}'")
    if cfg.categories:
        if all(r.get("category") is None for r in rows):
            raise InputError(f"synthesize.categories is set but the crawl in '{where}' has no categories "
                             "(run it with crawl.classify.enabled=true)")
        rows = [r for r in rows if r.get("category") in cfg.categories]
        if not rows:
            raise InputError(f"synthesize: no crawled file in '{where}' has a category in {cfg.categories}")
    return rows[: cfg.max_pairs] if cfg.max_pairs else rows


def _output_settings(cfg: SynthesizeConfig) -> str:
    """The settings that change which pairs are made, as JSON (the pairs' `sampling` column)."""
    return json.dumps({k: v for k, v in asdict(cfg).items() if k not in _OPERATIONAL}, sort_keys=True)


def fingerprint(cfg: SynthesizeConfig, rows: list[dict]) -> str:
    """What the cached generations depend on: the selected files and the settings that change outputs."""
    digest = hashlib.sha256(_output_settings(cfg).encode())
    for row in rows:
        digest.update(row["id"].encode() + b"\0" + hashlib.sha256(row["content"].encode()).digest())
    return digest.hexdigest()[:16]


def _check(cfg: SynthesizeConfig, rank: int) -> None:
    for name in ("world_size", "chunk_rows", "batch_size", "concurrency", "retries", "tensor_parallel_size",
                 "description_tokens", "code_tokens"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"synthesize.{name} must be at least 1, got {getattr(cfg, name)}")
    if not 0 <= rank < cfg.world_size:
        raise ConfigError(f"synthesize rank {rank} is outside 0..{cfg.world_size - 1} (synthesize.world_size)")
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"unknown synthesize.backend '{cfg.backend}' (known: {', '.join(BACKENDS)})")


class _Shard:
    """One shard's chunks, their row cache in `folder`, and the throughput of what this process generated."""

    def __init__(self, cfg: SynthesizeConfig, rows: list[dict], folder, rank: int):
        self.cfg, self.folder, self.rank = cfg, folder, rank
        size = cfg.chunk_rows
        self.chunks = {i: rows[i * size:(i + 1) * size]
                       for i in range(rank, -(-len(rows) // size), cfg.world_size)}
        self.generated_rows, self.generated_tokens, self.generate_s = 0, 0, 0.0
        # Each (role, chunk) is read from the folder at most once: descriptions feed two roles and assembly.
        self._loaded: dict[tuple[str, int], dict[str, Completion]] = {}

    @staticmethod
    def _name(role: str, chunk: int) -> str:
        return f"{role}/chunk-{chunk:05d}.parquet"

    def cached(self, role: str, chunk: int) -> dict[str, Completion] | None:
        if (role, chunk) not in self._loaded:
            if not self.folder.exists(self._name(role, chunk)):
                return None
            rows = self.folder.get_table(self._name(role, chunk)).to_pylist()
            self._loaded[role, chunk] = {r["id"]: Completion(r["text"], r["finished"], r["tokens"]) for r in rows}
        return self._loaded[role, chunk]

    def store(self, role: str, chunk: int, done: dict[str, Completion]) -> None:
        rows = [{"id": k, "text": c.text, "finished": c.finished, "tokens": c.tokens} for k, c in done.items()]
        self.folder.put_table(self._name(role, chunk), pa.Table.from_pylist(rows, schema=CACHE_SCHEMA))
        self._loaded[role, chunk] = done

    def prompts(self, role: str, chunk: int) -> dict[str, str]:
        rows = self.chunks[chunk]
        if role == "description":
            return {r["id"]: description_prompt(r["content"], self.cfg.max_code_chars) for r in rows}
        described = self.cached("description", chunk) or {}
        return {r["id"]: pair_prompt(described[r["id"]].text) for r in rows
                if r["id"] in described and _description_drop(described[r["id"]], self.cfg) is None}

    def run_role(self, role: str, backend: Callable[[], Backend], sampling: Sampling) -> None:
        todo = [c for c in self.chunks if not self.folder.exists(self._name(role, c))]
        bar = progress(todo, desc=f"shard {self.rank}: {role}", total=len(self.chunks),
                       initial=len(self.chunks) - len(todo), unit="chunk")
        for chunk in bar:
            prompts = self.prompts(role, chunk)
            start = time.perf_counter()
            seeded = dataclasses.replace(sampling, seed=sampling.seed + 3 * chunk + ROLES.index(role))
            done = backend().complete(list(prompts.values()), seeded, desc=role) if prompts else []
            self.generate_s += time.perf_counter() - start
            self.generated_rows += len(done)
            self.generated_tokens += sum(c.tokens for c in done)
            self.store(role, chunk, dict(zip(prompts, done)))
            bar.set_postfix(**self.throughput())

    def throughput(self) -> dict[str, float]:
        seconds = max(self.generate_s, 1e-9)
        return {"rows_per_s": round(self.generated_rows / seconds, 3),
                "tokens_per_s": round(self.generated_tokens / seconds, 1)}


def _description_drop(description: Completion, cfg: SynthesizeConfig) -> str | None:
    if is_empty(description.text):
        return "empty_description"
    if cfg.drop_unfinished and not description.finished:
        return "unfinished_description"
    return None


def _pair_drop(chosen: Completion, rejected: Completion, cfg: SynthesizeConfig) -> str | None:
    for side, done in (("chosen", chosen), ("rejected", rejected)):
        if is_empty(done.text):
            return f"empty_{side}"
        if cfg.drop_unfinished and not done.finished:
            return f"unfinished_{side}"
    return "identical" if chosen.text.strip() == rejected.text.strip() else None


def _assemble(shard: _Shard, cfg: SynthesizeConfig) -> tuple[list[dict], Counter[str], Counter[str]]:
    """The shard's pairs, drops by reason, and kept outputs that hit the token cap (drop_unfinished off)."""
    sampling = _output_settings(cfg)
    records, dropped = [], Counter({reason: 0 for reason in DROP_REASONS})
    truncated = Counter({role: 0 for role in ROLES})
    for chunk, rows in shard.chunks.items():
        described, chosen, rejected = (shard.cached(role, chunk) or {} for role in ROLES)
        for row in rows:
            key = row["id"]
            reason = _description_drop(described[key], cfg) or _pair_drop(chosen[key], rejected[key], cfg)
            if reason:
                dropped[reason] += 1
                continue
            truncated.update(role for role, done in zip(ROLES, (described, chosen, rejected))
                             if not done[key].finished)
            record = {"id": key, "language": row["language"], "code": row["content"],
                      "description": described[key].text, "chosen": chosen[key].text,
                      "rejected": rejected[key].text, "summarizer_model": cfg.summarizer_model,
                      "strong_model": cfg.strong_model, "weak_model": cfg.weak_model, "sampling": sampling}
            if cfg.quality_signals:
                record |= signals(chosen[key].text, chosen[key].tokens, row["language"], "chosen")
                record |= signals(rejected[key].text, rejected[key].tokens, row["language"], "rejected")
            records.append(record)
    return records, dropped, truncated


def synthesize_shard(cfg: SynthesizeConfig, crawl_dir: str | Path, location: str | Path, out_dir: str | Path,
                     rank: int = 0,
                     backend_factory: Callable[[SynthesizeConfig, str], Backend] = make_backend) -> dict[str, Any]:
    """Make shard `rank`'s pairs into `out_dir` (pairs.parquet, stats.json), resuming from the row cache kept
    under `location`/<fingerprint of the files and settings>; returns its stats."""
    _check(cfg, rank)
    rows = select_files(read_shards(crawl_dir), cfg, str(crawl_dir))
    folder = open_folder(f"{str(location).rstrip('/')}/{fingerprint(cfg, rows)}")
    done = f"shard-{rank:05d}/{DONE}"
    if not folder.exists(done):
        _make_shard(cfg, rows, folder, rank, backend_factory)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = folder.get_json(done)
    # Atomic like every other output: a kill or a full disk mid-copy must not leave a truncated pairs file.
    with atomic_path(out / PAIRS_FILE) as tmp:
        tmp.write_bytes(folder.get_bytes(f"shard-{rank:05d}/{PAIRS_FILE}"))
    write_json(stats, out / "stats.json")
    return stats


def _make_shard(cfg: SynthesizeConfig, rows: list[dict], folder, rank: int,
                backend_factory: Callable[[SynthesizeConfig, str], Backend]) -> None:
    shard = _Shard(cfg, rows, folder, rank)
    models = _OneModel(cfg, backend_factory)
    stop = tuple(cfg.stop)
    plans = {"description": (cfg.summarizer_model, cfg.description_tokens),
             "chosen": (cfg.strong_model, cfg.code_tokens), "rejected": (cfg.weak_model, cfg.code_tokens)}
    for role, (spec, max_tokens) in plans.items():
        sampling = Sampling(max_tokens, cfg.temperature, cfg.top_p, cfg.seed, stop)
        shard.run_role(role, lambda spec=spec: models.get(spec), sampling)
    records, dropped, truncated = _assemble(shard, cfg)
    stats = {"rank": rank, "files": sum(len(rows) for rows in shard.chunks.values()), "pairs": len(records),
             "dropped": dict(dropped), "truncated_kept": dict(truncated), "chunks": len(shard.chunks),
             "generated_rows": shard.generated_rows, "generated_tokens": shard.generated_tokens, "generate_s": round(shard.generate_s, 3),
             **shard.throughput()}
    folder.put_table(f"shard-{rank:05d}/{PAIRS_FILE}", pa.Table.from_pylist(records, schema=_pairs_schema(cfg)))
    folder.put_json(f"shard-{rank:05d}/{DONE}", stats)


def _pairs_schema(cfg: SynthesizeConfig) -> pa.Schema:
    fields = [(name, pa.string()) for name in ("id", "language", "code", "description", "chosen", "rejected",
                                               "summarizer_model", "strong_model", "weak_model", "sampling")]
    if cfg.quality_signals:
        for side in ("chosen", "rejected"):
            fields += [(f"{side}_chars", pa.int64()), (f"{side}_tokens", pa.int64()), (f"{side}_parses", pa.bool_())]
    return pa.schema(fields)


def merge_shards(shard_dirs: list[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Concatenate shard outputs (each with pairs.parquet and stats.json) into `out_dir`; sum their stats."""
    if not shard_dirs:
        raise InputError("synthesize merge: no shard outputs to merge")
    for shard in shard_dirs:
        for name in (PAIRS_FILE, "stats.json"):
            if not (Path(shard) / name).is_file():
                raise InputError(f"synthesize merge: shard output '{shard}' has no {name}")
    by_rank = sorted(((json.loads((Path(d) / "stats.json").read_text()), Path(d)) for d in shard_dirs),
                     key=lambda part: part[0]["rank"])
    parts = [stats for stats, _ in by_rank]
    table = pa.concat_tables([pq.read_table(d / PAIRS_FILE) for _, d in by_rank])
    if len(set(table["id"].to_pylist())) != table.num_rows:
        raise InputError("synthesize merge: shards overlap (a file's pair appears twice); were they made with "
                         "different synthesize.world_size or chunk_rows?")
    dropped, truncated = Counter(), Counter()
    for part in parts:
        dropped.update(part["dropped"])
        truncated.update(part["truncated_kept"])
    stats = {"shards": len(parts), "files": sum(p["files"] for p in parts), "pairs": table.num_rows,
             "dropped": {reason: dropped[reason] for reason in DROP_REASONS},
             "truncated_kept": {role: truncated[role] for role in ROLES},
             "generated_tokens": sum(p["generated_tokens"] for p in parts),
             "generate_s": round(sum(p["generate_s"] for p in parts), 3)}
    if not table.num_rows:
        raise InputError(f"synthesize: every one of {stats['files']} files was dropped ({stats['dropped']}); "
                         "raise synthesize.description_tokens/code_tokens or check the models")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_table(table, out / PAIRS_FILE)
    write_json(stats, out / "stats.json")
    return stats


def run_synthesis(cfg: SynthesizeConfig, crawl_dir: str | Path, out_dir: str | Path,
                  location: str | Path | None = None,
                  backend_factory: Callable[[SynthesizeConfig, str], Backend] = make_backend) -> dict[str, Any]:
    """Every shard in this process, then the merge into `out_dir` (row cache under `location`, default
    out_dir/cache, so rerunning the same command resumes)."""
    location = location or Path(out_dir) / "cache"
    shard_dirs = [Path(out_dir) / "shards" / f"shard-{rank:05d}" for rank in range(cfg.world_size)]
    for rank, shard_dir in enumerate(shard_dirs):
        synthesize_shard(cfg, crawl_dir, location, shard_dir, rank, backend_factory)
    return merge_shards(shard_dirs, out_dir)


def read_pairs(pairs_dir: str | Path) -> list[Pair]:
    """Training pairs: the paper's pair prompt with the description, then each implementation."""
    rows = read_text_rows(Path(pairs_dir) / PAIRS_FILE, ["description", "chosen", "rejected"],
                          "run the synthesize stage first")
    return [Pair(pair_prompt(r["description"]), "\n" + r["chosen"], "\n" + r["rejected"]) for r in rows]
