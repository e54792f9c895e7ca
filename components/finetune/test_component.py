import mlflow
import pytest
from kfp import dsl

from codepmp.models import load_reward_model
from components.finetune.component import finetune


@pytest.mark.integration
def test_python_func_logs_variant_and_metrics(stack_env, tiny_overrides, tiny_lm, reasoning_dir, tmp_path):
    out = dsl.Model(uri=str(tmp_path / "rm"))
    finetune.python_func(profile="tiny", overrides=tiny_overrides, run_name="ft-t1", job_id="job-1", variant="control",
                         init_model=dsl.Model(uri=tiny_lm), data=dsl.Dataset(uri=reasoning_dir), model=out)
    load_reward_model(out.path)
    runs = mlflow.search_runs(experiment_names=[tiny_overrides["experiment"]], output_format="list",
                              filter_string="tags.`codepmp.run` = 'ft-t1'")
    assert len(runs) == 1 and runs[0].data.tags["codepmp.variant"] == "control"
    assert {"rm_loss", "accuracy", "lr", "wall_s"} <= set(runs[0].data.metrics)
    assert "lm_loss" not in runs[0].data.metrics  # finetuning is pure Bradley-Terry


@pytest.mark.integration
def test_kfp_local(local_chain):
    load_reward_model(str(local_chain["finetune"] / "model"))
