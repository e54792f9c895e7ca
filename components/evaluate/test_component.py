import json
from pathlib import Path

import pytest
from kfp import dsl

from codepmp.testing import write_tiny_model
from codepmp_kfp.components.evaluate.component import evaluate


@pytest.mark.integration
def test_python_func(stack_env, tiny_overrides, reasoning_dir, tmp_path):
    pmp = write_tiny_model(tmp_path / "a", reward=True, seed=1)
    control = write_tiny_model(tmp_path / "b", reward=True, seed=2)
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps([{"pairs": 2, "pmp": {"mean": 0.5, "low": 0.25, "high": 0.75}, "control": 0.25,
                                  "difference": {"a": "pmp", "b": "control", "mean": 0.25, "low": 0.0, "high": 0.5}}]))
    metrics, report, results = (dsl.Metrics(uri=str(tmp_path / "metrics")), dsl.HTML(uri=str(tmp_path / "r.html")),
                                dsl.Artifact(uri=str(tmp_path / "results.json")))
    evaluate.python_func(profile="tiny", overrides=tiny_overrides, run_name="t1", pmp_model=dsl.Model(uri=str(pmp)),
                         control_model=dsl.Model(uri=str(control)), data=dsl.Dataset(uri=reasoning_dir),
                         sweep=dsl.Artifact(uri=str(sweep)), metrics=metrics, report=report, results=results)
    values = json.loads(Path(results.path).read_text())
    assert set(values["metrics"]) == {"pmp", "control"}
    for model_metrics in values["metrics"].values():
        assert model_metrics["pairwise_accuracy_ci_low"] <= model_metrics["pairwise_accuracy"] \
            <= model_metrics["pairwise_accuracy_ci_high"]
        assert model_metrics["gsm8k.bon4_oracle"] == 1.0  # every pool holds the reference solution
        assert model_metrics["gsm8k.bon1_oracle"] == model_metrics["gsm8k.bon1_random"]  # one draw: same pick
    difference = values["results"]["domains"]["all"]["metrics"]["pairwise_accuracy"]["difference"]
    assert difference["low"] <= difference["mean"] <= difference["high"]
    page = Path(report.path).read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") >= 2  # BoN + sweep
    assert metrics.metadata["pmp.pairwise_accuracy"] == values["metrics"]["pmp"]["pairwise_accuracy"]
    assert values["scoring"]["texts"] > 0


@pytest.mark.integration
def test_kfp_local(local_chain):
    values = json.loads((local_chain["evaluate"] / "results").read_text())
    assert {"pmp", "control"} == set(values["metrics"])
    assert "<img" in (local_chain["evaluate"] / "report").read_text()
