import json
from pathlib import Path

import mlflow
import pytest
from kfp import dsl

from codepmp.testing import write_tiny_model
from components.register.component import register


def _results(path: Path, accuracy: float, half_width: float = 0.05) -> dsl.Artifact:
    metrics = {"pairwise_accuracy": accuracy, "pairwise_accuracy_ci_low": accuracy - half_width,
               "pairwise_accuracy_ci_high": accuracy + half_width}
    path.write_text(json.dumps({"metrics": {"pmp": metrics, "control": {"pairwise_accuracy": 0.5}}}))
    return dsl.Artifact(uri=str(path))


@pytest.mark.integration
def test_python_func_promotes_only_versions_better_by_more_than_their_ci(stack_env, tiny_overrides, tmp_path):
    overrides = {**tiny_overrides, "promote": {"registered_model": "register-component-test"}}
    model = dsl.Model(uri=str(write_tiny_model(tmp_path / "rm", reward=True)))
    data = tmp_path / "data"
    data.mkdir()
    (data / "stats.json").write_text(json.dumps({"sha256": {"train": "aa", "dev": "bb"}}))
    outcomes = [json.loads(register.python_func(profile="tiny", overrides=overrides, run_name=f"r{i}", job_id="j1",
                                                model=model, results=_results(tmp_path / f"res{i}.json", acc),
                                                data=dsl.Dataset(uri=str(data))))
                for i, acc in enumerate([0.6, 0.64, 0.55, 0.7])]
    assert [o["promoted"] for o in outcomes] == [1, 0, 0, 1]  # +0.04 is within the 0.05 half-width
    assert [o["alias"] for o in outcomes] == ["champion", "challenger", "challenger", "champion"]
    assert "CI half-width 0.0500" in outcomes[1]["gate_reason"]
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("register-component-test", "champion")
    assert int(champion.version) == outcomes[3]["version"]
    assert champion.tags["codepmp.data_sha256.train"] == "aa" and champion.tags["codepmp.pipeline_job"] == "j1"


@pytest.mark.integration
def test_results_without_a_pmp_model_are_a_clear_error(stack_env, tiny_overrides, tmp_path, capsys):
    (tmp_path / "res.json").write_text(json.dumps({"metrics": {}}))
    with pytest.raises(SystemExit):
        register.python_func(profile="tiny", overrides=tiny_overrides, run_name="r-bad", job_id="j1",
                             model=dsl.Model(uri=str(write_tiny_model(tmp_path / "rm", reward=True))),
                             results=dsl.Artifact(uri=str(tmp_path / "res.json")),
                             data=dsl.Dataset(uri=str(tmp_path)))
    assert "holds no metrics of a 'pmp' model" in capsys.readouterr().err


@pytest.mark.integration
def test_kfp_local(tiny_pipeline_run):
    output = json.loads((tiny_pipeline_run["tasks"]["register"] / "executor_output.json").read_text())
    outcome = json.loads(output["parameterValues"]["Output"])
    name = tiny_pipeline_run["registered_model"]
    assert outcome["registered_model"] == name and outcome["version"] >= 1
    version = mlflow.MlflowClient().get_model_version(name, str(outcome["version"]))
    assert float(version.tags["pairwise_accuracy"]) == outcome["gate_value"]
    assert "codepmp.data_sha256.train" in version.tags
