import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from kfp import dsl

from codepmp.config import load_config
from codepmp.crawl import run_crawl
from codepmp_kfp.components.synthesize.component import synthesize, synthesize_shards

COLUMNS = {"id", "language", "code", "description", "chosen", "rejected", "summarizer_model", "strong_model",
           "weak_model", "sampling", "chosen_chars", "chosen_tokens", "chosen_parses", "rejected_chars",
           "rejected_tokens", "rejected_parses"}


def test_shards_are_the_world_size():
    assert synthesize_shards.python_func(profile="tiny", overrides={"synthesize": {"world_size": 3}}) == [0, 1, 2]


@pytest.mark.integration
def test_python_func_one_shard_resumes_from_the_object_store(stack_env, tiny_overrides, tmp_path):
    overrides = {**tiny_overrides, "synthesize": {**tiny_overrides["synthesize"], "world_size": 2, "chunk_rows": 1}}
    run_crawl(load_config("tiny", overrides).crawl, tmp_path / "shards", progress=False)
    outputs = []
    for attempt in ("first", "retry"):  # a retried task finds the shard's marker in the object store
        out = dsl.Dataset(uri=str(tmp_path / attempt))
        synthesize.python_func(profile="tiny", overrides=overrides, run_name="synth-t1", rank=1,
                               shards=dsl.Dataset(uri=str(tmp_path / "shards")), pairs=out)
        outputs.append(out.path)
    table = pq.read_table(Path(outputs[0]) / "pairs.parquet")
    stats = json.loads((Path(outputs[0]) / "stats.json").read_text())
    assert set(table.column_names) == COLUMNS
    assert stats["rank"] == 1 and stats["files"] == 2 and stats["pairs"] + sum(stats["dropped"].values()) == 2
    assert (Path(outputs[1]) / "pairs.parquet").read_bytes() == (Path(outputs[0]) / "pairs.parquet").read_bytes()
    assert json.loads((Path(outputs[1]) / "stats.json").read_text()) == stats


@pytest.mark.integration
def test_kfp_local(local_chain):
    table = pq.read_table(local_chain["synthesize"] / "pairs" / "pairs.parquet")
    stats = json.loads((local_chain["synthesize"] / "pairs" / "stats.json").read_text())
    assert stats["rank"] == 0 and stats["tokens_per_s"] > 0 and table.num_rows == stats["pairs"] >= 1
    assert set(table.column_names) == COLUMNS
