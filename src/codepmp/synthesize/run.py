"""Code preference pairs from crawled files: description (summarizer) -> chosen (strong) / rejected (weak).

    python -c "from codepmp.synthesize.run import run_synthesis; ..."   # normally via `codepmp synthesize`
"""

from __future__ import annotations

import gc
import json
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from codepmp.atomic import write_json, write_table
from codepmp.config import SynthesizeConfig
from codepmp.crawl import read_shards
from codepmp.errors import ConfigError, InputError
from codepmp.synthesize.backend import Sampling, TransformersBackend
from codepmp.synthesize.prompts import description_prompt, pair_prompt
from codepmp.train.data import Pair

PAIRS_FILE = "pairs.parquet"


def is_empty(text: str) -> bool:
    """Blank, or nothing but code fences (a model that opened a block and wrote no code)."""
    return not "".join(line for line in text.splitlines() if not line.strip().startswith("```")).strip()


class _OneModel:
    """Keeps at most one generator in memory, reusing it when consecutive roles share a model."""

    def __init__(self, cfg: SynthesizeConfig):
        self.cfg, self.spec, self.backend = cfg, None, None

    def get(self, spec: str):
        if spec != self.spec:
            self.backend = None
            gc.collect()
            self.backend, self.spec = _backend(self.cfg, spec), spec
        return self.backend


def _backend(cfg: SynthesizeConfig, spec: str):
    if cfg.backend == "transformers":
        return TransformersBackend(spec, cfg.batch_size)
    if cfg.backend == "openai":
        from codepmp.synthesize.http_backend import OpenAIBackend

        if not cfg.endpoint:
            raise ConfigError("synthesize.backend is 'openai' but synthesize.endpoint is empty")
        return OpenAIBackend(cfg.endpoint, spec, concurrency=cfg.concurrency)
    raise ConfigError(f"unknown synthesize.backend '{cfg.backend}' (known: transformers, openai)")


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


def run_synthesis(cfg: SynthesizeConfig, crawl_dir: str | Path, out_dir: str | Path) -> dict:
    rows = select_files(read_shards(crawl_dir), cfg, str(crawl_dir))
    models = _OneModel(cfg)
    describe = Sampling(cfg.description_tokens, cfg.temperature, cfg.top_p, cfg.seed)
    # Distinct seeds so that a profile using one model for both roles still samples two different answers.
    implement_strong = Sampling(cfg.code_tokens, cfg.temperature, cfg.top_p, cfg.seed + 1)
    implement_weak = Sampling(cfg.code_tokens, cfg.temperature, cfg.top_p, cfg.seed + 2)
    dropped = {"empty_description": 0, "empty_chosen": 0, "empty_rejected": 0, "identical": 0}

    descriptions = models.get(cfg.summarizer_model).generate(
        [description_prompt(r["content"], cfg.max_code_chars) for r in rows], describe, desc="describe")
    kept = [(r, d) for r, d in zip(rows, descriptions) if not is_empty(d)]
    dropped["empty_description"] = len(rows) - len(kept)
    prompts = [pair_prompt(d) for _, d in kept]
    chosen = models.get(cfg.strong_model).generate(prompts, implement_strong, desc="chosen")
    rejected = models.get(cfg.weak_model).generate(prompts, implement_weak, desc="rejected")

    records = []
    for (row, description), good, bad in zip(kept, chosen, rejected):
        reason = ("empty_chosen" if is_empty(good) else "empty_rejected" if is_empty(bad)
                  else "identical" if good.strip() == bad.strip() else None)
        if reason:
            dropped[reason] += 1
            continue
        records.append({"id": row["id"], "language": row["language"], "code": row["content"],
                        "description": description, "chosen": good, "rejected": bad,
                        "summarizer_model": cfg.summarizer_model, "strong_model": cfg.strong_model,
                        "weak_model": cfg.weak_model, "sampling": json.dumps(asdict(cfg), sort_keys=True)})
    if not records:
        raise InputError(f"synthesize: every one of {len(rows)} files was dropped ({dropped}); "
                         "raise synthesize.description_tokens/code_tokens or check the models")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_table(pa.Table.from_pylist(records), out / PAIRS_FILE)
    stats = {"files": len(rows), "pairs": len(records), "dropped": dropped}
    write_json(stats, out / "stats.json")
    return stats


def read_pairs(pairs_dir: str | Path) -> list[Pair]:
    """Training pairs: the paper's pair prompt with the description, then each implementation."""
    path = Path(pairs_dir) / PAIRS_FILE
    if not path.exists():
        raise InputError(f"no {PAIRS_FILE} in '{pairs_dir}' (run the synthesize stage first)")
    return [Pair(pair_prompt(r["description"]), "\n" + r["chosen"], "\n" + r["rejected"])
            for r in pq.read_table(path).to_pylist()]
