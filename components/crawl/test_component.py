import json
from pathlib import Path

import pytest
from kfp import dsl

from codepmp.crawl import read_shards
from components.crawl.component import crawl


@pytest.mark.integration
def test_python_func(stack_env, tiny_overrides, tmp_path):
    out = dsl.Dataset(uri=str(tmp_path / "shards"))
    crawl.python_func(profile="tiny", overrides=tiny_overrides, run_name="t1", shards=out)
    stats = json.loads((Path(out.path) / "stats.json").read_text())
    assert stats["files_kept"] == len(read_shards(out.path)) == 6


@pytest.mark.integration
def test_bad_source_exits_with_one_line(stack_env, tiny_overrides, tmp_path, capsys):
    overrides = {**tiny_overrides, "crawl": {"sources": [str(tmp_path / "missing")]}}
    with pytest.raises(SystemExit) as exc:
        crawl.python_func(profile="tiny", overrides=overrides, run_name="t1",
                          shards=dsl.Dataset(uri=str(tmp_path / "out")))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0] and err[0].startswith("codepmp crawl: error:")


@pytest.mark.integration
def test_kfp_local(local_chain):
    rows = read_shards(local_chain["crawl"] / "shards")
    assert len(rows) == 8 and all(r["language"] == "python" for r in rows)  # tiny: crawl.max_files=8
