"""MLflow helpers against a real tracking server whose artifacts are proxied into S3."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest

from codepmp.errors import InputError, ServiceError
from codepmp.storage import ObjectStore
from codepmp.testing import write_tiny_model
from codepmp.tracking import promote, register_reward_model, stage_run

pytestmark = pytest.mark.integration

GATE = "pairwise_accuracy"


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("rm") / "model", reward=True)


@pytest.fixture
def names() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {"experiment": f"exp-{suffix}", "model": f"rm-{suffix}", "run": f"run-{suffix}"}


def closed_port_uri() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_stage_run_logs_name_tags_params_and_metrics(stack_env: dict[str, str], names: dict[str, str]) -> None:
    import mlflow

    params = {"pretrain": {"lr": 1e-5, "batch_size": 2}, "best_of_n": [1, 2, 4], "base_model": "tiny"}
    with stage_run(names["experiment"], "pretrain", names["run"], params) as run:
        mlflow.log_metric("loss", 0.25, step=3)
    logged = mlflow.MlflowClient().get_run(run.info.run_id)
    assert logged.info.run_name == f"{names['run']}/pretrain"
    assert logged.info.status == "FINISHED"
    assert logged.data.tags["codepmp.run"] == names["run"] and logged.data.tags["codepmp.stage"] == "pretrain"
    assert logged.data.params == {"pretrain.lr": "1e-05", "pretrain.batch_size": "2",
                                  "best_of_n": "[1, 2, 4]", "base_model": "tiny"}
    assert logged.data.metrics == {"loss": 0.25}


def test_stage_run_marks_a_failing_stage_failed(stack_env: dict[str, str], names: dict[str, str]) -> None:
    import mlflow

    with pytest.raises(RuntimeError), stage_run(names["experiment"], "crawl", names["run"]) as run:
        raise RuntimeError("stage crashed")
    assert mlflow.MlflowClient().get_run(run.info.run_id).info.status == "FAILED"


def test_champion_alias_moves_only_to_a_version_better_by_more_than_its_ci(
        stack_env: dict[str, str], names: dict[str, str], reward_model_dir: Path) -> None:
    import mlflow

    def register(value: float, margin: float = 0.02) -> dict:
        return register_reward_model(reward_model_dir, names["model"], {GATE: value, "best_of_4": 0.5}, GATE,
                                     run_name=names["run"], experiment=names["experiment"], margin=margin,
                                     lineage={"codepmp.data_sha256": "ab12", "codepmp.pipeline_job": "job-7"})

    first = register(0.60)
    assert first["promoted"] is True and first["version"] == "1" and first["alias"] == "champion"
    assert first["reason"] == "no version held 'champion'"
    equal = register(0.60)
    assert equal["promoted"] is False and equal["alias"] == "challenger" and equal["previous_version"] == "1"
    within_noise = register(0.615)
    assert within_noise["promoted"] is False and within_noise["alias"] == "challenger"
    assert "does not beat 'champion' version 1 (0.6000) by more than the CI half-width 0.0200" \
        in within_noise["reason"]
    worse = register(0.55)
    assert worse["promoted"] is False and worse["previous_value"] == 0.60
    better = register(0.70)
    assert better["promoted"] is True and better["previous_version"] == "1" and "beats" in better["reason"]

    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(names["model"], "champion")
    assert champion.version == "5"
    assert client.get_model_version_by_alias(names["model"], "challenger").version == "4"  # the last one that lost
    assert float(champion.tags[GATE]) == 0.70 and float(champion.tags["best_of_4"]) == 0.5
    assert champion.tags["codepmp.data_sha256"] == "ab12" and champion.tags["codepmp.pipeline_job"] == "job-7"
    assert champion.tags["codepmp.gate_margin"] == "0.02" and "beats" in champion.tags["codepmp.gate_reason"]
    assert client.get_model_version(names["model"], "3").tags["codepmp.gate_reason"] == within_noise["reason"]

    assert promote(names["model"], 2, "champion", GATE)["promoted"] is False
    with pytest.raises(InputError, match="needs who is promoting and why"):
        promote(names["model"], 2, "champion", GATE, force=True)
    forced = promote(names["model"], 2, "champion", GATE, force=True, who="alice", why="rollback: v5 regressed")
    assert forced["promoted"] is True and forced["previous_version"] == "5" and forced["reason"] == "forced"
    version = client.get_model_version_by_alias(names["model"], "champion")
    assert version.version == "2"
    assert version.tags["codepmp.promoted_by"] == "alice" and version.tags["codepmp.promote_reason"] == "rollback: v5 regressed"
    assert version.tags["codepmp.promoted_over"] == "5" and version.tags["codepmp.promote_forced"] == "true"
    with pytest.raises(InputError, match="no numeric 'missing_metric'"):
        promote(names["model"], 1, "champion", "missing_metric")
    with pytest.raises(InputError):
        promote(names["model"], 99, "champion", GATE)


def test_registered_model_lands_in_s3_and_scores_without_sigmoid(
        stack_env: dict[str, str], names: dict[str, str], reward_model_dir: Path) -> None:
    import mlflow
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    register_reward_model(reward_model_dir, names["model"], {GATE: 0.5}, GATE,
                          run_name=names["run"], experiment=names["experiment"])
    experiment_id = mlflow.get_experiment_by_name(names["experiment"]).experiment_id
    artifacts = ObjectStore.from_env(bucket="mlflow-artifacts").list(f"{experiment_id}/")
    assert any(key.endswith("/MLmodel") for key in artifacts)
    assert any(key.endswith("model.safetensors") for key in artifacts)

    pipeline = mlflow.transformers.load_model(f"models:/{names['model']}@champion")
    text = "def add(a, b):\n    return a + b\n"
    tokenizer = AutoTokenizer.from_pretrained(reward_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir)
    with torch.no_grad():
        reward = model(**tokenizer(text, return_tensors="pt")).logits.item()
    assert pipeline(text)[0]["score"] == pytest.approx(reward, abs=1e-4)


def test_register_rejects_a_model_without_a_regression_head(stack_env: dict[str, str], tmp_path: Path) -> None:
    lm_dir = write_tiny_model(tmp_path / "lm", reward=False)
    with pytest.raises(InputError, match="num_labels=1"):
        register_reward_model(lm_dir, "never-registered", {GATE: 1.0}, GATE)
    with pytest.raises(InputError, match="gate metric"):
        register_reward_model(write_tiny_model(tmp_path / "rm", reward=True), "never-registered", {}, GATE)


def test_unreachable_tracking_server_fails_fast_naming_the_uri(
        stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    uri = closed_port_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    with pytest.raises(ServiceError, match=uri), stage_run("never", "crawl", "never"):
        pass
    with pytest.raises(ServiceError, match=uri):
        promote("never", 1, "champion", GATE)
    assert time.monotonic() - started < 5
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ServiceError, match="MLFLOW_TRACKING_URI is not set"):
        stage_run("never", "crawl", "never").__enter__()


@pytest.mark.parametrize("password", [None, "wrong-password-123"])
def test_a_stage_without_the_right_mlflow_login_fails_at_start_naming_the_variables(
        stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, password: str | None) -> None:
    """The embedded MLflow answers /health to anyone, so the start probe also makes one signed-in call."""
    if password is None:
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        expected = "requires credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        expected = "refuses the credentials in MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"
    with pytest.raises(ServiceError, match=expected) as caught, stage_run("never", "crawl", "never"):
        pass
    assert "HTTP 401" in str(caught.value) and (password or stack_env["MLFLOW_TRACKING_PASSWORD"]) not in str(caught.value)
