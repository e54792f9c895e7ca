from pathlib import Path

import pytest
from kfp import dsl

from codepmp.models import load_reward_model
from components.pretrain.component import pretrain


@pytest.mark.integration
def test_python_func(stack_env, tiny_overrides, tiny_lm, pairs_dir, tmp_path):
    out = dsl.Model(uri=str(tmp_path / "pmp"))
    pretrain.python_func(profile="tiny", overrides=tiny_overrides, run_name="t1", job_id="job-1",
                         base=dsl.Model(uri=tiny_lm), pairs=dsl.Dataset(uri=pairs_dir), model=out)
    model, _ = load_reward_model(out.path)
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    assert (Path(out.path) / "lm_head.safetensors").exists()  # the tiny model's LM head is untied


@pytest.mark.integration
def test_kfp_local(local_chain):
    assert (local_chain["pretrain"] / "model" / "config.json").exists()
