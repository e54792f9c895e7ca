"""MLflow helpers against a real tracking server whose artifacts are proxied into S3."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest

from codepmp.errors import InputError, ServiceError
from codepmp.registry import Comparison, GateVerdict, promote, register_reward_model
from codepmp.storage import ObjectStore
from codepmp.testing import write_tiny_model
from codepmp.tracking import stage_run

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


def _verdict(control_low: float, champion: tuple[str, float] | None = None) -> GateVerdict:
    """A gate verdict with a control interval starting at `control_low` and, given (version, low), a champion one."""
    return GateVerdict(GATE, Comparison("control", control_low + 0.1, control_low, control_low + 0.2),
                       Comparison("champion", champion[1] + 0.1, champion[1], champion[1] + 0.2) if champion else None,
                       champion[0] if champion else None)


def test_version_tags_carry_the_gate_and_lineage_and_the_run_keeps_the_metrics(
        stack_env: dict[str, str], names: dict[str, str], reward_model_dir: Path) -> None:
    import mlflow

    def register(verdict: GateVerdict) -> dict:
        return register_reward_model(reward_model_dir, names["model"], {GATE: 0.7, "gsm8k.bon4_rm": 0.5}, verdict,
                                     run_name=names["run"], experiment=names["experiment"],
                                     lineage={"codepmp.data_sha256.dev": "ab12", "codepmp.pipeline_job": "job-7"})

    first = register(_verdict(0.05))
    assert first["promoted"] is True and first["version"] == "1" and first["alias"] == "champion"
    assert first["reason"] == "beats_control_no_champion" and first["previous_version"] is None
    within_noise = register(_verdict(0.05, ("1", -0.02)))
    assert within_noise["promoted"] is False and within_noise["alias"] == "challenger"
    assert within_noise["reason"] == "champion_not_beaten" and within_noise["previous_version"] == "1"
    stale = register(_verdict(0.05, ("2", 0.03)))  # scored against a version that no longer holds the alias
    assert stale["promoted"] is False and stale["reason"] == "champion_changed"

    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias(names["model"], "champion").version == "1"
    assert client.get_model_version_by_alias(names["model"], "challenger").version == "3"
    tags = client.get_model_version(names["model"], "2").tags
    assert tags["codepmp.gate.metric"] == GATE and tags["codepmp.gate.verdict"] == "challenger"
    assert float(tags["codepmp.gate.champion.low"]) == -0.02 and tags["codepmp.gate.champion.version"] == "1"
    assert float(tags["codepmp.gate.control.low"]) == 0.05 and tags["codepmp.gate.summary"] == within_noise["summary"]
    assert tags["codepmp.data_sha256.dev"] == "ab12" and tags["codepmp.pipeline_job"] == "job-7"
    assert GATE not in tags and "gsm8k.bon4_rm" not in tags
    run = client.get_run(client.get_model_version(names["model"], "2").run_id)
    assert run.data.metrics == {GATE: 0.7, "gsm8k.bon4_rm": 0.5}

    with pytest.raises(InputError, match="needs who is promoting and why"):
        promote(names["model"], 2, "champion", GATE, force=True)
    with pytest.raises(InputError, match="'gsm8k.accuracy' is not a gate metric"):
        promote(names["model"], 2, "champion", "gsm8k.accuracy")
    with pytest.raises(InputError, match="not evaluated on the same data"):
        promote(names["model"], 2, "champion", GATE)  # no hashes of pool and logic were recorded
    forced = promote(names["model"], 2, "champion", GATE, force=True, who="alice", why="rollback: v1 regressed")
    assert forced["promoted"] is True and forced["previous_version"] == "1" and forced["reason"] == "forced"
    version = client.get_model_version_by_alias(names["model"], "champion")
    assert version.version == "2"
    assert version.tags["codepmp.promoted_by"] == "alice"
    assert version.tags["codepmp.promote_reason"] == "rollback: v1 regressed"
    assert version.tags["codepmp.promoted_over"] == "1" and version.tags["codepmp.promote_forced"] == "true"
    assert promote(names["model"], 2, "champion", GATE)["reason"] == "version 2 already holds 'champion'"
    with pytest.raises(InputError):
        promote(names["model"], 99, "champion", GATE)


def test_unforced_promote_compares_stored_intervals_only_on_the_same_data(
        stack_env: dict[str, str], names: dict[str, str], reward_model_dir: Path) -> None:
    hashes = {f"codepmp.data_sha256.{table}": f"{table}-1" for table in ("dev", "pool", "logic")}

    def register(accuracy: float, control_low: float, lineage: dict[str, str]) -> dict:
        metrics = {GATE: accuracy, f"{GATE}_ci_low": accuracy - 0.05, f"{GATE}_ci_high": accuracy + 0.05}
        return register_reward_model(reward_model_dir, names["model"], metrics, _verdict(control_low),
                                     run_name=names["run"], experiment=names["experiment"], lineage=lineage)

    assert register(0.60, -0.1, hashes)["alias"] == "challenger"  # version 1: no lead over its control
    with pytest.raises(InputError, match="no pairwise_accuracy lead over its control"):
        promote(names["model"], 1, "champion", GATE)
    assert register(0.50, 0.05, hashes)["alias"] == "champion"  # version 2: first past the control gate
    assert register(0.58, 0.05, {**hashes, "codepmp.data_sha256.dev": "dev-2"})["alias"] == "challenger"
    with pytest.raises(InputError, match=r"versions 3 and 2 were not evaluated on the same data \(dev: dev-2 vs dev-1"):
        promote(names["model"], 3, "champion", GATE)
    with pytest.raises(InputError, match="interval's low 0.5500 is not above the champion's high 0.5500"):
        promote(names["model"], 1, "champion", GATE)  # same data, but the intervals touch
    register(0.70, 0.05, hashes)  # version 4 (takes challenger: its verdict names version None, not 2)
    promoted = promote(names["model"], 4, "champion", GATE)
    assert promoted["promoted"] is True and promoted["previous_version"] == "2"
    assert "lies above version 2's" in promoted["reason"]


def test_registered_model_lands_in_s3_and_scores_without_sigmoid(
        stack_env: dict[str, str], names: dict[str, str], reward_model_dir: Path) -> None:
    import mlflow
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    register_reward_model(reward_model_dir, names["model"], {GATE: 0.5}, _verdict(0.05),
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
        register_reward_model(lm_dir, "never-registered", {GATE: 1.0}, _verdict(0.05))


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
