import mlflow
import pytest
from kfp import dsl

from codepmp.models import load_reward_model
from codepmp_kfp.components.finetune.component import finetune, sweep_points


@pytest.mark.integration
def test_python_func_logs_variant_and_metrics(stack_env, tiny_overrides, tiny_lm, reasoning_dir, tmp_path):
    out = dsl.Model(uri=str(tmp_path / "rm"))
    finetune.python_func(profile="tiny", overrides=tiny_overrides, run_name="ft-t1", job_id="job-1", variant="control",
                         init_model=dsl.Model(uri=tiny_lm), data=dsl.Dataset(uri=reasoning_dir), model=out,
                         result=dsl.Artifact(uri=str(tmp_path / "result.json")))
    load_reward_model(out.path)
    runs = mlflow.search_runs(experiment_names=[tiny_overrides["experiment"]], output_format="list",
                              filter_string="tags.`codepmp.run` = 'ft-t1'")
    assert len(runs) == 1 and runs[0].data.tags["codepmp.variant"] == "control"
    assert {"rm_loss", "accuracy", "lr", "wall_s"} <= set(runs[0].data.metrics)
    assert "lm_loss" not in runs[0].data.metrics  # finetuning is pure Bradley-Terry


@pytest.mark.integration
def test_kfp_local(local_chain):
    import json

    load_reward_model(str(local_chain["finetune"] / "model"))
    for task, variant in (("sweep_pmp", "pmp"), ("sweep_control", "control")):
        result = json.loads((local_chain[task] / "result").read_text())
        assert (result["variant"], result["subset"], result["seed"]) == (variant, 2, 0)
        load_reward_model(str(local_chain[task] / "model"))


@pytest.mark.integration
def test_python_func_on_a_sweep_subset_reports_dev_accuracy(stack_env, tiny_overrides, tiny_lm, reasoning_dir,
                                                             tmp_path):
    import json

    result = tmp_path / "result.json"
    finetune.python_func(profile="tiny", overrides=tiny_overrides, run_name="ft-sweep", job_id="job-1", variant="pmp",
                         init_model=dsl.Model(uri=tiny_lm), data=dsl.Dataset(uri=reasoning_dir),
                         model=dsl.Model(uri=str(tmp_path / "rm")), result=dsl.Artifact(uri=str(result)), subset=2)
    written = json.loads(result.read_text())
    assert (written["variant"], written["subset"], written["train_pairs"]) == ("pmp", 2, 2)
    assert written["dev_pairs"] == 4 and written["dev_pairwise_accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    (run,) = mlflow.search_runs(experiment_names=[tiny_overrides["experiment"]], output_format="list",
                                filter_string="tags.`codepmp.run` = 'ft-sweep'")
    assert run.data.tags["codepmp.subset"] == "2"
    used = run.data.metrics["pairs"] + sum(v for k, v in run.data.metrics.items() if k.startswith("skipped_"))
    assert used == 2  # trained on, or counted as skipped
    assert run.data.metrics["dev_pairwise_accuracy"] == written["dev_pairwise_accuracy"]


def test_sweep_subsets_are_nested_and_bounded():
    from codepmp.errors import ConfigError
    from codepmp.evaluate.sweep import nested_subset

    pairs = list(range(10))
    small, large = nested_subset(pairs, 3, seed=0), nested_subset(pairs, 7, seed=0)
    assert large[:3] == small and len(set(large)) == 7
    assert nested_subset(pairs, 3, seed=1) != small  # the seed picks the subset
    with pytest.raises(ConfigError, match="sweep size 11 must be between 1 and the 10 training pairs"):
        nested_subset(pairs, 11, seed=0)


def test_sweep_points_cross_sizes_with_seeds():
    assert sweep_points.python_func(profile="tiny", overrides={}) == [{"size": 2, "seed": 0}]
    points = sweep_points.python_func(profile="tiny", overrides={"sweep": {"sizes": [2, 4], "seeds": [123, 124]}})
    assert points == [{"size": 2, "seed": 123}, {"size": 2, "seed": 124}, {"size": 4, "seed": 123},
                      {"size": 4, "seed": 124}]
    assert len(sweep_points.python_func(profile="paper", overrides={})) == 5 * 3


@pytest.mark.integration
def test_python_func_seed_initialises_the_score_head(stack_env, tiny_overrides, tiny_lm, reasoning_dir, tmp_path):
    import json

    heads, written = {}, {}
    # Seeds 0 and 4 draw the same 2 of the tiny profile's 4 train pairs: only the training's own randomness differs.
    for name, seed in (("a", 0), ("b", 0), ("c", 4)):
        out, result = tmp_path / f"rm-{name}", tmp_path / f"result-{name}.json"
        finetune.python_func(profile="tiny", overrides=tiny_overrides, run_name="ft-seeds", job_id="job-1",
                             variant="pmp", init_model=dsl.Model(uri=tiny_lm), data=dsl.Dataset(uri=reasoning_dir),
                             model=dsl.Model(uri=str(out)), result=dsl.Artifact(uri=str(result)), subset=2, seed=seed)
        written[name] = json.loads(result.read_text())
        heads[name] = load_reward_model(str(out))[0].score.weight.detach().clone()
    assert [written[n]["seed"] for n in "abc"] == [0, 0, 4]
    assert heads["a"].equal(heads["b"])  # a rerun of one seed trains the same model
    assert not heads["a"].equal(heads["c"])  # the seed, not only the data, sets the score head
    runs = mlflow.search_runs(experiment_names=[tiny_overrides["experiment"]], output_format="list",
                              filter_string="tags.`codepmp.run` = 'ft-seeds'")
    assert sorted(r.data.tags["codepmp.seed"] for r in runs) == ["0", "0", "4"]

