"""The register stage's promotion gate on real tiny reward models, the real evaluate stage and the private MLflow.

Two dev sets: A (the reasoning data stage's) and B (A with every dev pair's chosen and rejected swapped, so
its dev hash differs). A model trained on A's dev pairs ranks them right and B's wrong, and the other way
round; so a number a champion earned on B says nothing about it on A, which is what the gate must not use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import uuid
from pathlib import Path

import mlflow
import pytest

from codepmp import stages
from codepmp.errors import InputError
from codepmp.registry import TAG_PREFIX, promote
from codepmp.testing import write_tiny_model

pytestmark = pytest.mark.integration

PROFILE = "tiny"
MAX_LENGTH = 512  # the whole prompt is kept, and a tiny-tokenizer GSM8K prompt runs to ~300 tokens
DEV_PROBLEMS = 12


def _swap_dev_sides(source: Path, out: Path) -> Path:
    import pyarrow.parquet as pq

    shutil.copytree(source, out)
    table = pq.read_table(source / "dev_pairs.parquet")
    names = [{"chosen": "rejected", "rejected": "chosen"}.get(n, n) for n in table.column_names]
    pq.write_table(table.rename_columns(names).select(table.column_names), out / "dev_pairs.parquet")
    stats = json.loads((out / "stats.json").read_text())
    stats["sha256"]["dev"] = hashlib.sha256((out / "dev_pairs.parquet").read_bytes()).hexdigest()
    (out / "stats.json").write_text(json.dumps(stats))
    return out


def _train_on_dev(path: Path, data_dir: Path, seed: int = 0, steps: int = 3) -> Path:
    """A tiny reward model trained (Bradley-Terry) to rank `data_dir`'s dev pairs, scored as the evaluate code
    scores: the score head on the last token's hidden state."""
    import torch

    from codepmp.models import load_reward_model
    from codepmp.pairs import read_reasoning_table
    from codepmp.encoding import encode

    write_tiny_model(path, reward=True, seed=seed)
    model, tokenizer = load_reward_model(str(path))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def reward(prompt: str, response: str) -> torch.Tensor:
        ids = torch.tensor([encode(tokenizer, prompt, response, MAX_LENGTH).ids])
        return model.score(model.model(input_ids=ids).last_hidden_state[:, -1]).squeeze()

    for _ in range(steps):
        for row in read_reasoning_table(data_dir, "dev"):
            loss = -torch.nn.functional.logsigmoid(reward(row["prompt"], row["chosen"])
                                                   - reward(row["prompt"], row["rejected"]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from codepmp.config import load_config
    from codepmp.reasoning.build import build_reasoning_data

    root = tmp_path_factory.mktemp("gate")
    data_a = root / "data-a"
    build_reasoning_data(dataclasses.replace(load_config(PROFILE).reasoning, dev_problems=DEV_PROBLEMS), data_a)
    data_b = _swap_dev_sides(data_a, root / "data-b")
    return {"data_a": data_a, "data_b": data_b,
            "good_on_a": _train_on_dev(root / "good-on-a", data_a),
            "good_on_b": _train_on_dev(root / "good-on-b", data_b),
            "random_0": write_tiny_model(root / "random-0", reward=True, seed=0),
            "random_1": write_tiny_model(root / "random-1", reward=True, seed=1)}


class Registry:
    """One registered model of its own, and the evaluate -> register stages of the pipeline run on it."""

    def __init__(self, tmp_path: Path, gate_metric: str = "pairwise_accuracy"):
        self.name, self.tmp = f"gate-{uuid.uuid4().hex[:8]}", tmp_path
        self.overrides = {"experiment": f"{self.name}-exp", "promote": {"registered_model": self.name},
                          "evaluate": {"max_length": MAX_LENGTH, "gate_metric": gate_metric}}
        self.runs = 0

    def evaluate(self, pmp: Path, control: Path, data_dir: Path) -> Path:
        self.runs += 1
        results = self.tmp / f"results-{self.runs}.json"
        stages.evaluate(PROFILE, self.overrides, f"run-{self.runs}", models={"pmp": str(pmp), "control": str(control)},
                        data_dir=str(data_dir), report_path=str(self.tmp / f"report-{self.runs}.html"),
                        results_path=str(results))
        return results

    def register(self, pmp: Path, control: Path, data_dir: Path) -> dict:
        results = self.evaluate(pmp, control, data_dir)
        return stages.register(PROFILE, self.overrides, f"run-{self.runs}", model_dir=str(pmp),
                               results_path=str(results), data_dir=str(data_dir), job_id="job-1")

    def tags(self, version: int) -> dict[str, str]:
        return mlflow.MlflowClient().get_model_version(self.name, str(version)).tags

    def stored(self, version: int, metric: str = "pairwise_accuracy") -> float:
        """The gate metric that `version`'s own run logged: a number from the data that version was evaluated on."""
        client = mlflow.MlflowClient()
        return client.get_run(client.get_model_version(self.name, str(version)).run_id).data.metrics[metric]

    def holder(self, alias: str = "champion") -> str | None:
        return mlflow.MlflowClient().get_registered_model(self.name).aliases.get(alias)


def _comparison(tags: dict[str, str], against: str) -> tuple[float, float, float]:
    return tuple(float(tags[f"{TAG_PREFIX}{against}.{field}"]) for field in ("mean", "low", "high"))


def test_a_lead_over_the_control_inside_the_noise_leaves_the_first_version_challenger(
        stack_env: dict[str, str], world: dict[str, Path], tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    outcome = registry.register(world["random_1"], world["random_0"], world["data_a"])
    print(outcome["gate_summary"])
    differences = json.loads((tmp_path / "results-1.json").read_text())["differences"]
    mean, low, high = (differences[k] for k in ("pairwise_accuracy", "pairwise_accuracy_ci_low",
                                                 "pairwise_accuracy_ci_high"))
    assert mean > 0 >= low, "the case needs a positive lead whose interval still reaches 0"
    assert outcome["promoted"] == 0 and outcome["alias"] == "challenger" and registry.holder() is None
    assert outcome["gate_reason"] == "control_not_beaten" and outcome["gate_champion_version"] == "none"
    tags = registry.tags(outcome["version"])
    assert _comparison(tags, "control") == (mean, low, high)
    assert tags[f"{TAG_PREFIX}verdict"] == "challenger" and tags[f"{TAG_PREFIX}reason"] == "control_not_beaten"
    summary = tags[f"{TAG_PREFIX}summary"]
    assert f"pmp - control pairwise_accuracy {mean:+.4f} [95% CI {low:+.4f}, {high:+.4f}]" in summary
    assert "no champion to beat" in summary
    # The full metric set stays on the run; the version carries the gate and lineage only.
    assert "pairwise_accuracy" not in tags and not any(".bon" in key for key in tags)
    assert tags["codepmp.data_sha256.dev"] == json.loads((world["data_a"] / "stats.json").read_text())["sha256"]["dev"]
    assert tags["codepmp.pipeline_run"] == "run-1" and "codepmp.base_model" in tags


def test_the_gate_rescores_a_champion_whose_stored_number_came_from_other_data(
        stack_env: dict[str, str], world: dict[str, Path], tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    first = registry.register(world["good_on_b"], world["good_on_a"], world["data_b"])
    print(first["gate_summary"])
    assert first["promoted"] == 1 and first["alias"] == "champion" and registry.holder() == "1"
    assert first["gate_reason"] == "beats_control_no_champion" and first["gate_control_low"] > 0

    second = registry.register(world["good_on_a"], world["good_on_b"], world["data_a"])
    print(second["gate_summary"])
    pmp_on_a = json.loads((tmp_path / "results-2.json").read_text())["metrics"]["pmp"]["pairwise_accuracy"]
    # Version 1's stored number (earned on B) is no lower than the new model's on A: a gate reading it would
    # have kept version 1. Re-scored on A, version 1 ranks A's pairs backwards.
    assert registry.stored(1) >= pmp_on_a
    assert second["gate_champion_version"] == "1" and second["gate_champion_low"] > 0
    assert second["promoted"] == 1 and second["gate_reason"] == "beats_control_and_champion"
    assert registry.holder() == "2"
    tags = registry.tags(2)
    assert _comparison(tags, "champion") == (second["gate_champion_mean"], second["gate_champion_low"],
                                             second["gate_champion_high"])
    assert "pmp - champion version 1 pairwise_accuracy" in tags[f"{TAG_PREFIX}summary"]

    with pytest.raises(InputError, match="not evaluated on the same data .*dev: "):
        promote(registry.name, 1)  # unforced, across different dev hashes
    assert registry.holder() == "2"


def test_a_champion_that_looked_worse_on_other_data_holds_when_rescored(
        stack_env: dict[str, str], world: dict[str, Path], tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    first = registry.register(world["good_on_a"], world["good_on_b"], world["data_b"])
    print(first["gate_summary"])
    assert first["promoted"] == 0 and first["alias"] == "challenger" and first["gate_reason"] == "control_not_beaten"
    forced = promote(registry.name, 1, force=True, who="alice", why="pin the A-ranker")
    assert forced["promoted"] and forced["reason"] == "forced" and registry.holder() == "1"
    assert registry.tags(1)["codepmp.promoted_by"] == "alice"

    same_weights = shutil.copytree(world["good_on_a"], tmp_path / "candidate")
    second = registry.register(same_weights, world["good_on_b"], world["data_a"])
    print(second["gate_summary"])
    pmp_on_a = json.loads((tmp_path / "results-2.json").read_text())["metrics"]["pmp"]["pairwise_accuracy"]
    # Version 1's stored number (earned on B) is far below the candidate's on A: a gate reading it would promote.
    # Re-scored on A, version 1 is the same ranker, so the candidate has no lead.
    assert registry.stored(1) < pmp_on_a
    assert second["gate_control_low"] > 0
    assert (second["gate_champion_mean"], second["gate_champion_low"], second["gate_champion_high"]) == (0, 0, 0)
    assert second["promoted"] == 0 and second["alias"] == "challenger"
    assert second["gate_reason"] == "champion_not_beaten" and registry.holder() == "1"
    assert registry.tags(2)[f"{TAG_PREFIX}reason"] == "champion_not_beaten"

    with pytest.raises(InputError, match="not evaluated on the same data"):
        promote(registry.name, 2)
    assert registry.holder() == "1"


@pytest.mark.parametrize(("gate_metric", "message"), [
    ("gsm8k.accuracy", "'gsm8k.accuracy' is not a gate metric"),
    ("math.pairwise_accuracy", "has no PMP - control difference with an interval in the evaluation results"),
])
def test_a_gate_metric_it_cannot_decide_on_fails_before_registering(
        stack_env: dict[str, str], world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
        gate_metric: str, message: str) -> None:
    registry = Registry(tmp_path, gate_metric=gate_metric)
    with pytest.raises(SystemExit):
        registry.register(world["good_on_a"], world["random_0"], world["data_a"])
    assert message in capsys.readouterr().err
    assert mlflow.MlflowClient().search_registered_models(f"name = '{registry.name}'") == []
