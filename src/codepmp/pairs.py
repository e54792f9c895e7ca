"""Preference pairs as the stages hand them on: the pair type, the reader of string columns of a Parquet
table, and the tables of the reasoning data stage (finetuning and dev pairs, the best-of-N pool, logic items),
which finetuning and evaluation read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from codepmp.errors import InputError

REASONING_FILES = {"train": "train_pairs.parquet", "dev": "dev_pairs.parquet", "pool": "bon_pool.parquet",
                   "logic": "logic_dev.parquet"}
MATH_DOMAINS, LOGIC_DOMAINS = ("gsm8k", "math"), ("logiqa2", "reclor")


@dataclass
class Pair:
    prompt: str
    chosen: str
    rejected: str


def read_text_rows(path: str | Path, columns: list[str], hint: str) -> list[dict]:
    """The `columns` of a Parquet file of preference data, each required to be a string column. A missing or
    unreadable file, a missing column or one of another type is an InputError naming the file and column;
    `hint` says which stage writes the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no {path.name} in '{path.parent}' ({hint})")
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path} is not a readable Parquet file: {exc}") from None
    for column in columns:
        if column not in schema.names:
            raise InputError(f"{path} has no column '{column}' (columns: {', '.join(schema.names)})")
        if not (pa.types.is_string(schema.field(column).type) or pa.types.is_large_string(schema.field(column).type)):
            raise InputError(f"{path}: column '{column}' must hold strings, not {schema.field(column).type}")
    rows = pq.read_table(path, columns=columns).to_pylist()
    for number, row in enumerate(rows):
        if any(row[c] is None for c in columns):
            raise InputError(f"{path}: row {number} has a null in {[c for c in columns if row[c] is None]}")
    return rows


def read_reasoning_table(data_dir: str | Path, name: str) -> list[dict]:
    """The rows of one reasoning table (`REASONING_FILES` names them) in a reasoning stage's output folder."""
    path = Path(data_dir) / REASONING_FILES[name]
    if not path.exists():
        raise InputError(f"no {REASONING_FILES[name]} in '{data_dir}' (run the reasoning data stage first)")
    return pq.read_table(path).to_pylist()


def read_reasoning_pairs(data_dir: str | Path, name: str) -> list[Pair]:
    """The train or dev pairs of a reasoning stage's output folder."""
    rows = read_text_rows(Path(data_dir) / REASONING_FILES[name], ["prompt", "chosen", "rejected"],
                          "run the reasoning data stage first")
    return [Pair(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
