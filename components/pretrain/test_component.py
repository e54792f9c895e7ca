from pathlib import Path

import pytest
from kfp import dsl

from codepmp.models import load_reward_model
from codepmp_kfp.components.pretrain.component import pretrain


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
    """A reward model whose backbone pretraining moved away from the base model's weights."""
    from transformers import AutoModelForCausalLM

    model, _ = load_reward_model(str(local_chain["pretrain"] / "model"))
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    base = AutoModelForCausalLM.from_pretrained(local_chain["base_model"] / "model").state_dict()
    trained = model.state_dict()
    shared = [name for name in trained if name.startswith("model.layers.") and name in base]
    assert shared and any(not trained[name].equal(base[name]) for name in shared)


@pytest.mark.integration
def test_python_func_across_two_processes_logs_once_from_rank_0(stack_env, tiny_overrides, tiny_lm, pairs_dir,
                                                                 tmp_path):
    """`pretrain.processes` 2 starts two gloo processes with torchrun, as on a 2-GPU pod."""
    import mlflow

    out = dsl.Model(uri=str(tmp_path / "pmp2"))
    overrides = {**tiny_overrides, "pretrain": {**tiny_overrides["pretrain"], "processes": 2, "deepspeed_stage": 2}}
    pretrain.python_func(profile="tiny", overrides=overrides, run_name="t-2proc", job_id="job-2",
                         base=dsl.Model(uri=tiny_lm), pairs=dsl.Dataset(uri=pairs_dir), model=out)
    load_reward_model(out.path)
    (run,) = mlflow.search_runs(experiment_names=[tiny_overrides["experiment"]], output_format="list",
                                filter_string="tags.`codepmp.run` = 't-2proc'")
    assert run.data.metrics["processes"] == 2
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    # 4 pairs, 2 per micro-batch, one micro-batch per process: 1 step, logged once (by rank 0 only).
    assert [m.step for m in history] == [int(run.data.metrics["steps"])] == [1]


def test_more_processes_without_deepspeed_is_a_clear_error(stack_env, tiny_overrides, tiny_lm, pairs_dir, tmp_path,
                                                           capsys):
    overrides = {**tiny_overrides, "pretrain": {**tiny_overrides["pretrain"], "processes": 2}}
    with pytest.raises(SystemExit) as exit_info:
        pretrain.python_func(profile="tiny", overrides=overrides, run_name="t-2proc-bad", job_id="job-3",
                             base=dsl.Model(uri=tiny_lm), pairs=dsl.Dataset(uri=pairs_dir),
                             model=dsl.Model(uri=str(tmp_path / "x")))
    assert exit_info.value.code == 2
    assert "deepspeed_stage is -1" in capsys.readouterr().err
