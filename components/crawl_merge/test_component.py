import json
from pathlib import Path

import pytest
from kfp import dsl

from codepmp.crawl import read_shards
from codepmp_kfp.components.crawl.component import crawl
from codepmp_kfp.components.crawl_merge.component import crawl_merge


@pytest.mark.integration
def test_python_func_merges_ranks_into_the_artifact(stack_env, tiny_overrides, tmp_path):
    overrides = {**tiny_overrides, "crawl": {**tiny_overrides["crawl"], "world_size": 2}}
    out = dsl.Dataset(uri=str(tmp_path / "shards"))
    with pytest.raises(SystemExit):  # no rank has run for this run name yet
        crawl_merge.python_func(profile="tiny", overrides=overrides, run_name="merge-t1", shards=out)
    for rank in (0, 1):
        crawl.python_func(profile="tiny", overrides=overrides, run_name="merge-t1", rank=rank)
    crawl_merge.python_func(profile="tiny", overrides=overrides, run_name="merge-t1", shards=out)
    manifest = json.loads((Path(out.path) / "manifest.json").read_text())
    assert manifest["location"].startswith("s3://") and len(manifest["keep"]) == 6
    stats = json.loads((Path(out.path) / "stats.json").read_text())
    assert stats["files_kept"] == len(read_shards(out.path)) == 6


@pytest.mark.integration
def test_kfp_local(local_chain):
    stats = json.loads((local_chain["crawl_merge"] / "shards" / "stats.json").read_text())
    assert stats["files_kept"] == 8 and stats["dropped"]["max_files"] > 0
