"""The reasoning dataset stage: finetuning pairs, held-out dev pairs and a best-of-N candidate pool."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from codepmp.atomic import write_json, write_table
from codepmp.config import ReasoningConfig
from codepmp.errors import InputError
from codepmp.reasoning.gsm8k import candidate_pool, load_problems, training_pairs
from codepmp.train.data import Pair, read_text_rows

FILES = {"train": "train_pairs.parquet", "dev": "dev_pairs.parquet", "pool": "bon_pool.parquet"}


def _sample(items: list, n: int, seed: int) -> list:
    if n > len(items):
        raise InputError(f"asked for {n} problems but the split has only {len(items)}")
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), n))]


def build_reasoning_data(cfg: ReasoningConfig, out_dir: str | Path) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = _sample(load_problems(cfg.data_dir, "train"), cfg.train_problems, cfg.seed)
    dev = _sample(load_problems(cfg.data_dir, "dev"), cfg.dev_problems, cfg.seed)
    tables = {
        "train": [vars(p) for p in training_pairs(train, cfg.rejected_per_problem, cfg.seed)],
        "dev": [vars(p) for p in training_pairs(dev, 1, cfg.seed + 1)],
        "pool": candidate_pool(dev, cfg.candidates_per_problem, cfg.seed + 2),
    }
    for name, rows in tables.items():
        write_table(pa.Table.from_pylist(rows), out / FILES[name])
    stats = {name: len(rows) for name, rows in tables.items()}
    stats["pool_correct_fraction"] = sum(r["correct"] for r in tables["pool"]) / max(len(tables["pool"]), 1)
    write_json(stats, out / "stats.json")
    return stats


def read_table(data_dir: str | Path, name: str) -> list[dict]:
    path = Path(data_dir) / FILES[name]
    if not path.exists():
        raise InputError(f"no {FILES[name]} in '{data_dir}' (run the reasoning data stage first)")
    return pq.read_table(path).to_pylist()


def read_pairs(data_dir: str | Path, name: str) -> list[Pair]:
    rows = read_text_rows(Path(data_dir) / FILES[name], ["prompt", "chosen", "rejected"],
                          "run the reasoning data stage first")
    return [Pair(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
