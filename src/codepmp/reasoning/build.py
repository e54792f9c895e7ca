"""The reasoning dataset stage: finetuning pairs, held-out dev pairs, best-of-N pools and logic items.

    codepmp reasoning-data --profile local --set reasoning.data_dir=../shared/data --out /tmp/reasoning

Writes to `out_dir` (every table has a `domain` column):
    train_pairs.parquet   prompt, chosen, rejected: what finetuning trains on
    dev_pairs.parquet     prompt, chosen, rejected: held-out pairs for pairwise accuracy
    bon_pool.parquet      gsm8k/math dev problems' candidates (problem_id, candidate, prompt, response, answer,
                          gold, correct) for best-of-N
    logic_dev.parquet     logic dev items, one row per option (item_id, option, prompt, response, gold)
    stats.json            rows per table and domain, sampling statistics, sha256 of every table
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from codepmp.atomic import write_json, write_table
from codepmp.config import ReasoningConfig
from codepmp.errors import ConfigError, InputError
from codepmp.reasoning import gsm8k, logic
from codepmp.reasoning import math as math_source
from codepmp.reasoning.tasks import Task, gsm8k_tasks
from codepmp.synthesize.backend import Backend, Sampling
from codepmp.train.data import Pair, read_text_rows

FILES = {"train": "train_pairs.parquet", "dev": "dev_pairs.parquet", "pool": "bon_pool.parquet",
         "logic": "logic_dev.parquet"}
MATH_DOMAINS, LOGIC_DOMAINS = ("gsm8k", "math"), ("logiqa2", "reclor")
POOL_COLUMNS = ["problem_id", "candidate", "prompt", "response", "answer", "gold", "correct", "domain"]


def _sample(items: list, n: int, seed: int, what: str) -> list:
    if n > len(items):
        raise InputError(f"asked for {n} {what} problems but there are only {len(items)}")
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), n))]


@dataclasses.dataclass
class Domain:
    """One domain's problems: train and dev as source records, and how to turn them into tasks and pairs."""

    name: str
    train: list
    dev: list
    tasks: Callable[[list], list[Task]]
    corrupted_pairs: Callable[[list, int, int], list[Pair]]


def _load(cfg: ReasoningConfig, name: str) -> Domain:
    if name not in MATH_DOMAINS + LOGIC_DOMAINS:
        raise ConfigError(f"unknown reasoning domain '{name}' (known: {', '.join(MATH_DOMAINS + LOGIC_DOMAINS)})")
    if name != "gsm8k" and not cfg.data_dir:
        raise ConfigError(f"reasoning domain '{name}' needs reasoning.data_dir (only a GSM8K sample is packaged)")
    if name == "gsm8k":
        train, dev = gsm8k.load_problems(cfg.data_dir, "train"), gsm8k.load_problems(cfg.data_dir, "dev")
        return Domain(name, train, dev, gsm8k_tasks, gsm8k.training_pairs)
    if name == "math":
        train, dev = math_source.load_math(cfg.data_dir, "train"), math_source.load_math(cfg.data_dir, "dev")
        return Domain(name, train, dev, math_source.math_tasks, math_source.math_corrupted_pairs)
    if name == "logiqa2":
        dev = logic.load_logiqa2(cfg.data_dir, "dev200")
        held_out = {item.id for item in dev}
        train = [item for item in logic.load_logiqa2(cfg.data_dir, "dev") if item.id not in held_out]
    else:
        train = logic.read_reclor(Path(cfg.data_dir) / "reclor" / "train.json")
        dev = logic.read_reclor(Path(cfg.data_dir) / "reclor" / "val.json")
    return Domain(name, train, dev, logic.logic_tasks, lambda items, _n, _seed: logic.logic_pairs(items))


def _corrupted_pool(domain: Domain, problems: list, size: int, seed: int) -> list[dict]:
    """Per problem the reference solution and `size - 1` corruptions, each labelled by the answer checker."""
    rng = random.Random(seed)
    rows = []
    for problem, task in zip(problems, domain.tasks(problems)):
        if domain.name == "gsm8k":
            texts = [problem.solution] + [gsm8k.corrupt(problem, rng) for _ in range(size - 1)]
        else:
            texts = [problem.solution] + [t for _ in range(size - 1)
                                          if (t := math_source.corrupt_math(problem, rng)) is not None]
        rows += [{"problem_id": task.id, "candidate": k, "prompt": task.prompt, "response": " " + text,
                  "answer": task.answer(text), "gold": task.gold, "correct": task.check(text), "domain": domain.name}
                 for k, text in enumerate(texts)]
    return rows


def _extra_pairs(paths: Sequence[str], seed: int) -> list[Pair]:
    from codepmp.reasoning.generic import read_preference_pairs
    from codepmp.reasoning.shepherd import read_shepherd, shepherd_pairs

    pairs = []
    for path in paths:
        if "shepherd" in Path(path).name.lower():
            pairs += shepherd_pairs(read_shepherd(path), max_pairs_per_problem=4, seed=seed)
        else:
            pairs += read_preference_pairs(path)
    return pairs


def build_reasoning_data(cfg: ReasoningConfig, out_dir: str | Path,
                         policy: Callable[[], Backend] | None = None) -> dict:
    """Build every table for `cfg.domains`; `policy` makes the sampling backend for "sampled" pairs/pools."""
    if cfg.pairs not in ("corrupted", "sampled") or cfg.pool not in ("corrupted", "sampled", "import"):
        raise ConfigError(f"reasoning.pairs must be corrupted|sampled and reasoning.pool corrupted|sampled|import "
                          f"(got {cfg.pairs!r}, {cfg.pool!r})")
    if cfg.pool == "import" and not cfg.pool_file:
        raise ConfigError("reasoning.pool is 'import' but reasoning.pool_file is empty")
    backend = None

    def sampler() -> Backend:
        nonlocal backend
        if backend is None:
            if policy is None:
                raise ConfigError("sampled reasoning pairs or pools need a policy backend")
            backend = policy()
        return backend

    sampling = Sampling(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed)
    tables: dict[str, list[dict]] = {name: [] for name in FILES}
    stats: dict = {"domains": {}}
    for offset, name in enumerate(cfg.domains):
        domain = _load(cfg, name)
        seed = cfg.seed + 1000 * offset
        train = _sample(domain.train, cfg.train_problems, seed, f"{name} train")
        dev = _sample(domain.dev, cfg.dev_problems, seed, f"{name} dev")
        domain_stats: dict = {}
        if name in MATH_DOMAINS and cfg.pairs == "sampled":
            from codepmp.reasoning.sampled import sampled_pairs

            train_pairs, sample_stats = sampled_pairs(domain.tasks(train), sampler(), sampling,
                                                      k=max(2, 2 * cfg.rejected_per_problem),
                                                      max_pairs_per_problem=cfg.rejected_per_problem, seed=seed)
            domain_stats["sampling"] = sample_stats.as_dict()
        else:
            train_pairs = domain.corrupted_pairs(train, cfg.rejected_per_problem, seed)
        tables["train"] += [{**dataclasses.asdict(p), "domain": name} for p in train_pairs]
        tables["dev"] += [{**dataclasses.asdict(p), "domain": name} for p in domain.corrupted_pairs(dev, 1, seed + 1)]
        if name in MATH_DOMAINS:
            tables["pool"] += _pool(cfg, domain, dev, sampler, sampling, seed + 2)
        else:
            for item in dev:
                tables["logic"] += [{"item_id": str(item.id), "option": k, "prompt": logic.logic_prompt(item),
                                     "response": logic.option_response(item, k), "gold": item.answer, "domain": name}
                                    for k in range(len(item.options))]
        stats["domains"][name] = domain_stats
    if cfg.extra_pairs:
        tables["train"] += [{**dataclasses.asdict(p), "domain": "extra"} for p in _extra_pairs(cfg.extra_pairs,
                                                                                              cfg.seed)]
    if not tables["train"]:
        raise InputError(f"the reasoning domains {cfg.domains} gave no finetuning pairs")
    return _write(tables, Path(out_dir), stats)


def _pool(cfg: ReasoningConfig, domain: Domain, dev: list, sampler, sampling: Sampling, seed: int) -> list[dict]:
    from codepmp.reasoning.pools import generated_pool, imported_pool

    if cfg.pool == "sampled":
        rows = generated_pool(domain.tasks(dev), sampler(), dataclasses.replace(sampling, seed=seed),
                              cfg.candidates_per_problem)
    elif cfg.pool == "import":
        checker = "math" if domain.name == "math" else "gsm8k"
        rows = imported_pool(cfg.pool_file, checker, domain.tasks(dev))
    else:
        return _corrupted_pool(domain, dev, cfg.candidates_per_problem, seed)
    return [{**row, "domain": domain.name} for row in rows]


PAIR_SCHEMA = pa.schema([("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()),
                         ("domain", pa.string())])
SCHEMAS = {"train": PAIR_SCHEMA, "dev": PAIR_SCHEMA,
           "pool": pa.schema([("problem_id", pa.string()), ("candidate", pa.int64()), ("prompt", pa.string()),
                              ("response", pa.string()), ("answer", pa.string()), ("gold", pa.string()),
                              ("correct", pa.bool_()), ("domain", pa.string())]),
           "logic": pa.schema([("item_id", pa.string()), ("option", pa.int64()), ("prompt", pa.string()),
                               ("response", pa.string()), ("gold", pa.int64()), ("domain", pa.string())])}


def _write(tables: dict[str, list[dict]], out: Path, stats: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    stats["sha256"] = {}
    for name, rows in tables.items():
        path = out / FILES[name]
        write_table(pa.Table.from_pylist(rows, schema=SCHEMAS[name]), path)
        stats["sha256"][name] = hashlib.sha256(path.read_bytes()).hexdigest()
        stats[name] = len(rows)
    pool = tables["pool"]
    stats["pool_correct_fraction"] = sum(r["correct"] for r in pool) / max(len(pool), 1)
    write_json(stats, out / "stats.json")
    return {k: v for k, v in stats.items() if isinstance(v, (int, float))}


def read_table(data_dir: str | Path, name: str) -> list[dict]:
    path = Path(data_dir) / FILES[name]
    if not path.exists():
        raise InputError(f"no {FILES[name]} in '{data_dir}' (run the reasoning data stage first)")
    return pq.read_table(path).to_pylist()


def read_pairs(data_dir: str | Path, name: str) -> list[Pair]:
    rows = read_text_rows(Path(data_dir) / FILES[name], ["prompt", "chosen", "rejected"],
                          "run the reasoning data stage first")
    return [Pair(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
