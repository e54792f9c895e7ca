import json
import uuid
from pathlib import Path

import mlflow
import pytest
from kfp import dsl

from codepmp.testing import write_tiny_model
from codepmp_kfp.components.register.component import register


def _results(path: Path, control_low: float) -> dsl.Artifact:
    """An evaluate results file whose PMP - control pairwise-accuracy interval starts at `control_low`."""
    differences = {"pairwise_accuracy": control_low + 0.1, "pairwise_accuracy_ci_low": control_low,
                   "pairwise_accuracy_ci_high": control_low + 0.2}
    path.write_text(json.dumps({"metrics": {"pmp": {"pairwise_accuracy": 0.6}, "control": {"pairwise_accuracy": 0.5}},
                                "differences": differences}))
    return dsl.Artifact(uri=str(path))


@pytest.mark.integration
def test_python_func_promotes_only_past_both_paired_comparisons(stack_env, tiny_overrides, reasoning_dir, tmp_path):
    name = f"register-component-{uuid.uuid4().hex[:8]}"
    # The whole prompt is kept when scoring, and the tiny tokenizer spends ~300 tokens on a GSM8K prompt.
    overrides = {**tiny_overrides, "promote": {"registered_model": name}, "evaluate": {"max_length": 512}}
    model = dsl.Model(uri=str(write_tiny_model(tmp_path / "rm", reward=True)))
    outcomes = [json.loads(register.python_func(profile="tiny", overrides=overrides, run_name=f"r{i}", job_id="j1",
                                                model=model, results=_results(tmp_path / f"res{i}.json", low),
                                                data=dsl.Dataset(uri=reasoning_dir)))
                for i, low in enumerate([0.02, 0.02, -0.01])]
    # 1: nothing to beat, lead over control above 0. 2: the champion re-scored on the same dev data is the same
    # model, so no lead over it. 3: no lead over the control either.
    assert [o["alias"] for o in outcomes] == ["champion", "challenger", "challenger"]
    assert [o["gate_reason"] for o in outcomes] == ["beats_control_no_champion", "champion_not_beaten",
                                                    "control_and_champion_not_beaten"]
    assert outcomes[1]["gate_champion_version"] == "1" and outcomes[1]["gate_champion_mean"] == 0
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(name, "champion")
    assert int(champion.version) == outcomes[0]["version"]
    stats = json.loads((Path(reasoning_dir) / "stats.json").read_text())
    assert champion.tags["codepmp.data_sha256.dev"] == stats["sha256"]["dev"]
    assert champion.tags["codepmp.pipeline_job"] == "j1" and champion.tags["codepmp.gate.verdict"] == "champion"
    assert float(champion.tags["codepmp.gate.control.low"]) == 0.02


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
    differences = json.loads((tiny_pipeline_run["tasks"]["evaluate"] / "results").read_text())["differences"]
    assert float(version.tags["codepmp.gate.control.mean"]) == differences[version.tags["codepmp.gate.metric"]]
    assert version.tags["codepmp.gate.verdict"] == outcome["alias"]
    assert "codepmp.data_sha256.train" in version.tags
