import pytest

from codepmp.config import load_config
from codepmp.crawl import read_shards
from codepmp.stages import crawl_location
from codepmp.storage import ObjectStore, parse_s3_uri
from codepmp_kfp.components.crawl.component import crawl, crawl_ranks


def test_ranks_follow_world_size():
    assert crawl_ranks.python_func(profile="tiny", overrides={}) == [0]
    assert crawl_ranks.python_func(profile="tiny", overrides={"crawl": {"world_size": 3}}) == [0, 1, 2]


@pytest.mark.integration
def test_python_func_writes_rank_shards_to_the_store(stack_env, tiny_overrides):
    overrides = {**tiny_overrides, "crawl": {**tiny_overrides["crawl"], "world_size": 2}}
    results = [crawl.python_func(profile="tiny", overrides=overrides, run_name="crawl-t1", rank=r) for r in (0, 1)]
    assert [r["rank"] for r in results] == [0, 1]
    bucket, prefix = parse_s3_uri(crawl_location(load_config("tiny", overrides), "crawl-t1"))
    keys = ObjectStore.from_env(bucket=bucket).list(prefix)
    for rank in (0, 1):
        assert f"{prefix}/rank-{rank:05d}/_SUCCESS" in keys and f"{prefix}/rank-{rank:05d}/manifest.json" in keys
    assert sum(r["files_kept"] for r in results) >= 6


@pytest.mark.integration
def test_bad_source_exits_with_one_line(stack_env, tiny_overrides, tmp_path, capsys):
    overrides = {**tiny_overrides, "crawl": {"sources": [str(tmp_path / "missing")]}}
    with pytest.raises(SystemExit) as exc:
        crawl.python_func(profile="tiny", overrides=overrides, run_name="t1", rank=0)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0] and err[0].startswith("codepmp crawl: error:")


@pytest.mark.integration
def test_kfp_local(local_chain):
    rows = read_shards(local_chain["crawl_merge"] / "shards")
    assert len(rows) == 8 and all(r["language"] == "python" for r in rows)  # tiny: crawl.max_files=8
