import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from kfp import dsl

from codepmp.config import load_config
from codepmp.crawl import run_crawl
from components.synthesize.component import synthesize

COLUMNS = {"id", "language", "code", "description", "chosen", "rejected", "summarizer_model", "strong_model",
           "weak_model", "sampling"}


@pytest.mark.integration
def test_python_func(stack_env, tiny_overrides, tmp_path):
    run_crawl(load_config("tiny", tiny_overrides).crawl, tmp_path / "shards", progress=False)
    out = dsl.Dataset(uri=str(tmp_path / "pairs"))
    synthesize.python_func(profile="tiny", overrides=tiny_overrides, run_name="t1",
                           shards=dsl.Dataset(uri=str(tmp_path / "shards")), pairs=out)
    table = pq.read_table(Path(out.path) / "pairs.parquet")
    stats = json.loads((Path(out.path) / "stats.json").read_text())
    assert set(table.column_names) == COLUMNS
    assert stats["pairs"] == table.num_rows and stats["pairs"] + sum(stats["dropped"].values()) == 4


@pytest.mark.integration
def test_kfp_local(local_chain):
    table = pq.read_table(local_chain["synthesize"] / "pairs" / "pairs.parquet")
    assert table.num_rows >= 1
    assert all(c and r and c != r for c, r in zip(table["chosen"].to_pylist(), table["rejected"].to_pylist()))
