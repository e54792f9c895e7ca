"""`codepmp evaluate` on a team's own labelled pool and pair files, with reward models from folders or the
registry, against the private stack; nothing gets registered.

    .venv/bin/python -m pytest -q tests/integration/test_evaluate_external.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pytest

from codepmp.registry import fetch_reward_model
from codepmp.testing import write_tiny_model

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PROMPT = "Instruction:{q}\n\nResponse:"
# Per problem: candidate texts and their labels. Problem 2 has no correct candidate, so the oracle is 2/3.
POOL = {
    "p1": [("3 + 4 = 7.\n#### 7", True), ("3 + 4 = 8.\n#### 8", False), ("It is 7.\n#### 7", True),
           ("No idea.", False)],
    "p2": [("2 * 5 = 11.\n#### 11", False), ("2 * 5 = 12.\n#### 12", False), ("#### 9", False), ("#### 11", False)],
    "p3": [("9 - 1 = 8.\n#### 8", True), ("9 - 1 = 7.\n#### 7", False), ("#### 8", True), ("#### 10", False)],
}
QUESTIONS = {"p1": "What is 3 + 4?", "p2": "What is 2 * 5?", "p3": "What is 9 - 1?"}


def _write_inputs(folder: Path) -> tuple[Path, Path]:
    pool, pairs = folder / "pool.jsonl", folder / "pairs.jsonl"
    pool.write_text("".join(json.dumps({
        "problem_id": pid, "prompt": PROMPT.format(q=QUESTIONS[pid]),
        "candidates": [{"text": text, "is_correct": ok} for text, ok in candidates]}) + "\n"
        for pid, candidates in POOL.items()))
    pairs.write_text("".join(json.dumps({"prompt": PROMPT.format(q=QUESTIONS[pid]), "chosen": " " + good,
                                         "rejected": " " + bad}) + "\n"
                             for pid, candidates in POOL.items()
                             for good in [t for t, ok in candidates if ok][:1]
                             for bad in [t for t, ok in candidates if not ok][:2]))
    return pool, pairs


def _evaluate(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codepmp.cli", "evaluate", "--profile", "tiny",
                           "--set", "evaluate.max_length=256", "--set", "evaluate.bootstrap_resamples=200", *args],
                          capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("external-models")
    return {name: write_tiny_model(root / name, reward=True, seed=seed) for name, seed in (("a", 0), ("b", 1))}


def test_two_models_on_own_pool_and_pairs_with_no_registry_side_effect(stack_env, models, tmp_path):
    pool, pairs = _write_inputs(tmp_path)
    registered = len(mlflow.MlflowClient().search_registered_models())
    done = _evaluate("--pmp", str(models["a"]), "--control", str(models["b"]), "--pool", str(pool),
                     "--pairs", str(pairs), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    pmp, control = saved["metrics"]["pmp"], saved["metrics"]["control"]
    n_pairs = sum(1 for _ in pairs.read_text().splitlines())
    assert pmp["pairs.pairwise_accuracy"] * n_pairs == pytest.approx(round(pmp["pairs.pairwise_accuracy"] * n_pairs))
    # The oracle and random baselines come from the file's labels alone: the same for both models.
    assert pmp["gsm8k.bon4_oracle"] == control["gsm8k.bon4_oracle"] == pytest.approx(2 / 3)
    expected_random = sum(sum(ok for _, ok in c) / len(c) for c in POOL.values()) / len(POOL)
    assert pmp["gsm8k.bon4_random"] == pytest.approx(expected_random)
    assert {"gsm8k.bon2_rm", "gsm8k.bon2_rm_ci_low", "pairs.pairwise_accuracy_ci_high"} <= set(saved["differences"])
    assert not saved["results"]["meta"].get("plumbing_check")  # imported data is not a corrupted copy
    assert (tmp_path / "out" / "report.html").stat().st_size > 0
    assert len(mlflow.MlflowClient().search_registered_models()) == registered


def test_one_model_on_pairs_only(stack_env, models, tmp_path):
    _, pairs = _write_inputs(tmp_path)
    done = _evaluate("--pmp", str(models["a"]), "--pairs", str(pairs), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["metrics"]) == {"pmp"} and "pairs.pairwise_accuracy" in saved["metrics"]["pmp"]


@pytest.mark.parametrize("args, message", [
    (["--pool", "{pool}", "--data", "{tmp}"], "give either --data"),
    ([], "evaluate needs --data, or --pool and/or --pairs"),
    (["--pool", "{tmp}/missing.jsonl"], "missing.jsonl"),
    (["--pool", "{pool}", "--pmp", "models:/no such"], "is not a registry URI"),
])
def test_bad_input_is_one_clear_line(stack_env, models, tmp_path, args, message):
    pool, _ = _write_inputs(tmp_path)
    args = [a.format(pool=pool, tmp=tmp_path) for a in args]
    pmp = [] if "--pmp" in args else ["--pmp", str(models["a"])]
    done = _evaluate(*pmp, *args, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_registry_uris_resolve_to_the_registered_weights(stack_env, models, tmp_path):
    from codepmp.models import load_reward_model
    from codepmp.registry import pip_requirements

    name = f"external-{uuid.uuid4().hex[:8]}"
    with mlflow.start_run():
        info = mlflow.transformers.log_model(transformers_model=dict(zip(("model", "tokenizer"),
                                                                         load_reward_model(str(models["b"])))),
                                             name="model", task="text-classification", registered_model_name=name,
                                             pip_requirements=pip_requirements())
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
    by_alias = Path(fetch_reward_model(f"models:/{name}@champion", tmp_path / "alias"))
    by_version = Path(fetch_reward_model(f"models:/{name}/{version}", tmp_path / "version"))
    original = load_reward_model(str(models["b"]))[0].state_dict()
    for folder in (by_alias, by_version):
        loaded = load_reward_model(str(folder))[0].state_dict()
        assert all((loaded[k] == original[k]).all() for k in original)
    with pytest.raises(Exception, match="holds the alias 'nobody'"):
        fetch_reward_model(f"models:/{name}@nobody", tmp_path / "none")
