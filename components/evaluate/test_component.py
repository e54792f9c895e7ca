import json
from pathlib import Path

import pytest
from kfp import dsl

from codepmp.testing import write_tiny_model
from components.evaluate.component import evaluate


@pytest.mark.integration
def test_python_func(stack_env, tiny_overrides, reasoning_dir, tmp_path):
    pmp = write_tiny_model(tmp_path / "a", reward=True, seed=1)
    control = write_tiny_model(tmp_path / "b", reward=True, seed=2)
    metrics, report, results = (dsl.Metrics(uri=str(tmp_path / "metrics")), dsl.Markdown(uri=str(tmp_path / "r.md")),
                                dsl.Artifact(uri=str(tmp_path / "results.json")))
    evaluate.python_func(profile="tiny", overrides=tiny_overrides, run_name="t1", pmp_model=dsl.Model(uri=str(pmp)),
                         control_model=dsl.Model(uri=str(control)), data=dsl.Dataset(uri=reasoning_dir),
                         metrics=metrics, report=report, results=results)
    values = json.loads(Path(results.path).read_text())
    assert set(values) == {"pmp", "control"}
    for model_metrics in values.values():
        assert 0.0 <= model_metrics["pairwise_accuracy"] <= 1.0
        assert model_metrics["bon4_oracle"] == 1.0  # every pool holds the reference solution
    assert "| pairwise_accuracy |" in Path(report.path).read_text()
    assert metrics.metadata["pmp.pairwise_accuracy"] == values["pmp"]["pairwise_accuracy"]


@pytest.mark.integration
def test_kfp_local(local_chain):
    values = json.loads((local_chain["evaluate"] / "results").read_text())
    assert {"pmp", "control"} == set(values)
