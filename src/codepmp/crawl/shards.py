"""Parquet shards of crawled files: atomic writing, and reading them back for the next stage.

    from codepmp.crawl.shards import read_shards
    rows = read_shards("out/crawl")   # [{"id", "source", "path", "language", "content", ...}, ...]

Every file is written under a hidden temporary name in the output directory and moved into place
with `os.replace`, so a killed run leaves whole shards or none, never a truncated one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from codepmp.atomic import write_table
from codepmp.errors import InputError

SCHEMA = pa.schema([
    ("id", pa.string()),
    ("source", pa.string()),
    ("path", pa.string()),
    ("language", pa.string()),
    # large_string: 64-bit offsets, so a shard of many large files cannot overflow 2 GiB of text
    ("content", pa.large_string()),
    ("size_bytes", pa.int64()),
    ("n_lines", pa.int64()),
])

SHARD_GLOB = "shard-*.parquet"


def shard_name(rank: int, index: int) -> str:
    return f"shard-{rank:05d}-{index:05d}.parquet"


def write_parquet_atomic(rows: list[dict[str, Any]], path: Path) -> None:
    write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)


class ShardWriter:
    """Buffers rows and writes a shard every `shard_rows` rows; `close()` returns the shard names.

    `bytes_written` sums the `size_bytes` of every row added.
    """

    def __init__(self, out_dir: Path, rank: int, shard_rows: int):
        self.out_dir, self.rank, self.shard_rows = out_dir, rank, max(1, shard_rows)
        self.rows: list[dict[str, Any]] = []
        self.names: list[str] = []
        self.bytes_written = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.bytes_written += row["size_bytes"]
        if len(self.rows) >= self.shard_rows:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        name = shard_name(self.rank, len(self.names))
        write_parquet_atomic(self.rows, self.out_dir / name)
        self.names.append(name)
        self.rows = []

    def close(self) -> list[str]:
        self._flush()
        return self.names


def read_shards(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of every `shard-*.parquet` in directory `path`, sorted by id.

    Output directories of several ranks may be merged into one directory: a file that two ranks
    both kept (same content at different relative paths) comes back once, from the first shard.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"crawl shards directory {folder} does not exist")
    files = sorted(folder.glob(SHARD_GLOB))
    if not files:
        raise InputError(f"crawl shards directory {folder} has no {SHARD_GLOB} files")
    by_id: dict[str, dict[str, Any]] = {}
    for file in files:
        for row in pq.read_table(file).to_pylist():
            by_id.setdefault(row["id"], row)
    return [by_id[key] for key in sorted(by_id)]
