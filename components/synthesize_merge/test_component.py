import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kfp import dsl

from codepmp_kfp.components.synthesize_merge.component import synthesize_merge


def _shard(folder: Path, rank: int, ids: list[str]) -> dsl.Dataset:
    folder.mkdir(parents=True)
    rows = [{"id": i, "description": f"d{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in ids]
    pq.write_table(pa.Table.from_pylist(rows), folder / "pairs.parquet")
    dropped = {"empty_description": 0, "unfinished_description": 0, "empty_chosen": 1, "unfinished_chosen": 0,
               "empty_rejected": 0, "unfinished_rejected": 0, "identical": rank}
    stats = {"rank": rank, "files": len(ids) + 1 + rank, "pairs": len(ids), "dropped": dropped,
             "truncated_kept": {"description": 1, "chosen": 0, "rejected": 0}, "generated_tokens": 100,
             "generate_s": 2.0}
    (folder / "stats.json").write_text(json.dumps(stats))
    return dsl.Dataset(uri=str(folder))


@pytest.mark.integration
def test_python_func_concatenates_shards_in_rank_order(stack_env, tiny_overrides, tmp_path):
    shards = [_shard(tmp_path / "b", 1, ["c", "d"]), _shard(tmp_path / "a", 0, ["a", "b"])]
    out = dsl.Dataset(uri=str(tmp_path / "pairs"))
    synthesize_merge.python_func(profile="tiny", overrides=tiny_overrides, run_name="merge-synth", shards=shards,
                                 pairs=out)
    assert pq.read_table(Path(out.path) / "pairs.parquet")["id"].to_pylist() == ["a", "b", "c", "d"]
    stats = json.loads((Path(out.path) / "stats.json").read_text())
    assert (stats["shards"], stats["files"], stats["pairs"]) == (2, 7, 4)
    assert stats["dropped"]["empty_chosen"] == 2 and stats["dropped"]["identical"] == 1
    assert stats["truncated_kept"]["description"] == 2 and stats["generated_tokens"] == 200


@pytest.mark.integration
def test_kfp_local(local_chain):
    merged = pq.read_table(local_chain["synthesize_merge"] / "pairs" / "pairs.parquet")
    shard = pq.read_table(local_chain["synthesize"] / "pairs" / "pairs.parquet")
    assert merged.num_rows == shard.num_rows >= 1  # the tiny profile has one shard
