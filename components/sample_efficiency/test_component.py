import json

import mlflow
import pytest
from kfp import dsl

from components.sample_efficiency.component import sample_efficiency


def _results(tmp_path, rows):
    artifacts = []
    for i, (variant, subset, accuracy) in enumerate(rows):
        path = tmp_path / f"r{i}.json"
        path.write_text(json.dumps({"variant": variant, "subset": subset, "train_pairs": subset, "dev_pairs": 20,
                                    "dev_pairwise_accuracy": accuracy}))
        artifacts.append(dsl.Artifact(uri=str(path)))
    return artifacts


@pytest.mark.integration
def test_python_func_tabulates_pmp_against_control(stack_env, tiny_overrides, tmp_path):
    pmp = _results(tmp_path, [("pmp", 24, 0.75), ("pmp", 8, 0.6)])
    control = _results(tmp_path / "..", [("control", 8, 0.55), ("control", 24, 0.8)])
    report = dsl.Markdown(uri=str(tmp_path / "report.md"))
    table = dsl.Artifact(uri=str(tmp_path / "table.json"))
    sample_efficiency.python_func(profile="tiny", overrides=tiny_overrides, run_name="se-1", pmp_results=pmp,
                                  control_results=control, report=report, table=table)
    assert json.loads((tmp_path / "table.json").read_text()) == [{"pairs": 8, "pmp": 0.6, "control": 0.55},
                                                                  {"pairs": 24, "pmp": 0.75, "control": 0.8}]
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert "| 8 | 0.6000 | 0.5500 | +0.0500 |" in lines and "| 24 | 0.7500 | 0.8000 | -0.0500 |" in lines
    assert lines.index("| 8 | 0.6000 | 0.5500 | +0.0500 |") < lines.index("| 24 | 0.7500 | 0.8000 | -0.0500 |")
    (run,) = mlflow.search_runs(experiment_names=[tiny_overrides["experiment"]], output_format="list",
                                filter_string="tags.`codepmp.run` = 'se-1'")
    curve = mlflow.MlflowClient().get_metric_history(run.info.run_id, "pmp_pairwise_accuracy")
    assert sorted((m.step, m.value) for m in curve) == [(8, 0.6), (24, 0.75)]  # x axis: finetuning pairs


@pytest.mark.integration
def test_a_size_without_its_control_is_a_clear_error(stack_env, tiny_overrides, tmp_path, capsys):
    with pytest.raises(SystemExit):
        sample_efficiency.python_func(profile="tiny", overrides=tiny_overrides, run_name="se-2",
                                      pmp_results=_results(tmp_path, [("pmp", 8, 0.6)]), control_results=[],
                                      report=dsl.Markdown(uri=str(tmp_path / "report.md")),
                                      table=dsl.Artifact(uri=str(tmp_path / "table.json")))
    assert "incomplete sizes: [8]" in capsys.readouterr().err
    assert not (tmp_path / "report.md").exists()


@pytest.mark.integration
def test_no_sweep_sizes_gives_an_empty_table(stack_env, tiny_overrides, tmp_path):
    sample_efficiency.python_func(profile="tiny", overrides=tiny_overrides, run_name="se-3", pmp_results=[],
                                  control_results=[], report=dsl.Markdown(uri=str(tmp_path / "report.md")),
                                  table=dsl.Artifact(uri=str(tmp_path / "table.json")))
    assert json.loads((tmp_path / "table.json").read_text()) == []
    assert "No sweep sizes" in (tmp_path / "report.md").read_text()


@pytest.mark.integration
def test_kfp_local(local_chain):
    report = (local_chain["sample_efficiency"] / "report").read_text()
    assert "| 2 | " in report  # the tiny profile sweeps one size
