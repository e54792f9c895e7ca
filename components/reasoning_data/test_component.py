import json
from pathlib import Path

import pytest
from kfp import dsl

from codepmp.pairs import read_reasoning_table
from codepmp_kfp.components.reasoning_data.component import reasoning_data


@pytest.mark.integration
def test_python_func(stack_env, tmp_path):
    out = dsl.Dataset(uri=str(tmp_path / "data"))
    reasoning_data.python_func(profile="tiny", overrides={"reasoning": {"train_problems": 6}}, run_name="t1",
                               data=out)
    stats = json.loads((Path(out.path) / "stats.json").read_text())
    assert (stats["train"], stats["dev"], stats["pool"]) == (6, 4, 16)
    pool = read_reasoning_table(out.path, "pool")
    assert sum(r["correct"] for r in pool) == 4  # exactly the reference solution per problem


@pytest.mark.integration
def test_kfp_local(local_chain):
    assert len(read_reasoning_table(local_chain["reasoning_data"] / "data", "train")) == 4
