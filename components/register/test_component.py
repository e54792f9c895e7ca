import json
from pathlib import Path

import mlflow
import pytest
from kfp import dsl

from codepmp.testing import write_tiny_model
from components.register.component import register


def _results(path: Path, accuracy: float) -> dsl.Artifact:
    path.write_text(json.dumps({"pmp": {"pairwise_accuracy": accuracy}, "control": {"pairwise_accuracy": 0.5}}))
    return dsl.Artifact(uri=str(path))


@pytest.mark.integration
def test_python_func_promotes_only_better_versions(stack_env, tiny_overrides, tmp_path):
    overrides = {**tiny_overrides, "promote": {"registered_model": "register-component-test"}}
    model = dsl.Model(uri=str(write_tiny_model(tmp_path / "rm", reward=True)))
    outcomes = [json.loads(register.python_func(profile="tiny", overrides=overrides, run_name=f"r{i}", model=model,
                                                results=_results(tmp_path / f"res{i}.json", acc)))
                for i, acc in enumerate([0.6, 0.55, 0.7])]
    assert [o["promoted"] for o in outcomes] == [1, 0, 1]
    champion = mlflow.MlflowClient().get_model_version_by_alias("register-component-test", "champion")
    assert int(champion.version) == outcomes[2]["version"]


@pytest.mark.integration
def test_kfp_local(tiny_pipeline_run):
    output = json.loads((tiny_pipeline_run["tasks"]["register"] / "executor_output.json").read_text())
    outcome = json.loads(output["parameterValues"]["Output"])
    name = tiny_pipeline_run["registered_model"]
    assert outcome["registered_model"] == name and outcome["version"] >= 1
    version = mlflow.MlflowClient().get_model_version(name, str(outcome["version"]))
    assert float(version.tags["pairwise_accuracy"]) == outcome["gate_value"]
