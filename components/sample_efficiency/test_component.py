import json

import mlflow
import pytest
from kfp import dsl

from codepmp_kfp.components.sample_efficiency.component import sample_efficiency


def _results(tmp_path, rows, seed=0):
    """Finetune `result` artifacts of one seed over the same 20 dev pairs; `right` of them ranked correctly."""
    artifacts = []
    for i, (variant, subset, right) in enumerate(rows):
        path = tmp_path / f"{variant}-{subset}-{seed}-{i}.json"
        correct = [1.0] * right + [0.0] * (20 - right)
        path.write_text(json.dumps({"variant": variant, "subset": subset, "seed": seed, "train_pairs": subset,
                                    "dev_pairs": 20, "dev_pairwise_accuracy": right / 20, "dev_correct": correct}))
        artifacts.append(dsl.Artifact(uri=str(path)))
    return artifacts


def _run(tiny_overrides, tmp_path, run_name, pmp, control):
    sample_efficiency.python_func(profile="tiny", overrides=tiny_overrides, run_name=run_name, pmp_results=pmp,
                                  control_results=control, report=dsl.Markdown(uri=str(tmp_path / "report.md")),
                                  table=dsl.Artifact(uri=str(tmp_path / "table.json")))
    return json.loads((tmp_path / "table.json").read_text())


@pytest.mark.integration
def test_python_func_tabulates_pmp_against_control_with_intervals(stack_env, tiny_overrides, tmp_path):
    rows = _run(tiny_overrides, tmp_path, "se-1", _results(tmp_path, [("pmp", 24, 15), ("pmp", 8, 12)]),
                _results(tmp_path, [("control", 8, 11), ("control", 24, 16)]))
    assert [r["pairs"] for r in rows] == [8, 24]
    first = rows[0]
    assert (first["pmp"]["mean"], first["control"]["mean"]) == (0.6, 0.55)
    assert first["pmp"]["low"] < 0.6 < first["pmp"]["high"]
    assert first["difference"]["mean"] == pytest.approx(0.05)
    assert first["difference"]["low"] <= 0.05 <= first["difference"]["high"]
    report = (tmp_path / "report.md").read_text()
    assert "| 8 | 0.6000 [" in report and "| 24 | 0.7500 [" in report
    (run,) = mlflow.search_runs(experiment_names=[tiny_overrides["experiment"]], output_format="list",
                                filter_string="tags.`codepmp.run` = 'se-1'")
    curve = mlflow.MlflowClient().get_metric_history(run.info.run_id, "pmp_pairwise_accuracy")
    assert sorted((m.step, m.value) for m in curve) == [(8, 0.6), (24, 0.75)]  # x axis: finetuning pairs
    assert run.data.metrics["diff.n24_ci_low"] <= run.data.metrics["diff.n24"] == pytest.approx(-0.05)


@pytest.mark.integration
def test_python_func_gives_the_spread_over_two_seeds(stack_env, tiny_overrides, tmp_path):
    # Seed 123: pmp 12/20, control 11/20; seed 124: pmp 16/20, control 11/20 (tasks arrive in any order).
    pmp = _results(tmp_path, [("pmp", 8, 16)], seed=124) + _results(tmp_path, [("pmp", 8, 12)], seed=123)
    control = _results(tmp_path, [("control", 8, 11)], seed=123) + _results(tmp_path, [("control", 8, 11)], seed=124)
    (row,) = _run(tiny_overrides, tmp_path, "se-seeds", pmp, control)
    assert row["pmp"]["over_seeds"]["seeds"] == [123, 124] and row["pmp"]["over_seeds"]["values"] == [0.6, 0.8]
    assert row["pmp"]["mean"] == pytest.approx(0.7)
    assert row["pmp"]["over_seeds"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert row["difference"]["over_seeds"]["values"] == pytest.approx([0.05, 0.25])
    assert "pmp - control over 2 seeds" in (tmp_path / "report.md").read_text()
    (run,) = mlflow.search_runs(experiment_names=[tiny_overrides["experiment"]], output_format="list",
                                filter_string="tags.`codepmp.run` = 'se-seeds'")
    assert run.data.metrics["seeds"] == 2 and run.data.metrics["diff_seeds.n8_max"] == pytest.approx(0.25)


@pytest.mark.integration
def test_a_size_without_its_control_is_a_clear_error(stack_env, tiny_overrides, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _run(tiny_overrides, tmp_path, "se-2", _results(tmp_path, [("pmp", 8, 12)]), [])
    assert "incomplete sizes: [8]" in capsys.readouterr().err
    assert not (tmp_path / "report.md").exists()


@pytest.mark.integration
def test_no_sweep_sizes_gives_an_empty_table(stack_env, tiny_overrides, tmp_path):
    assert _run(tiny_overrides, tmp_path, "se-3", [], []) == []
    assert "No sweep sizes" in (tmp_path / "report.md").read_text()


@pytest.mark.integration
def test_kfp_local(local_chain):
    report = (local_chain["sample_efficiency"] / "report").read_text()
    assert "| 2 | " in report  # the tiny profile sweeps one size
