"""Two runs at once against one stack: no cross-talk in the object store or in MLflow.

Two pretrain stages (tiny profile, a checkpoint every step, so both write to the object store all along) run
at the same time as two CLI processes with different run names and different seeds, against a private stack
of this module; then each runs again alone under another name. The seeds differ on purpose: had the runs the
same config, one reading the other's checkpoints would end with the same model and go unnoticed.

Checked: every object key of a run is under runs/<its run name>/, the checkpoints a run left equal those of its
solo run byte for byte, its model files equal its solo run's, and each run name has exactly one MLflow run,
holding its own seed and the same loss history as its solo run. The pretrain stage registers no model, so
the model registry is not exercised here. Two stages creating the same new MLflow experiment at once used
to file one run under the Default experiment; `tracking.stage_run` now resolves the experiment id itself.

    CODEPMP_FAULTS=1 .venv/bin/python -m pytest -q tests/reliability/test_concurrent_runs.py
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import test_kill_resume
from test_kill_resume import EXPERIMENT, TINY_PAIR_TOKENS, _cli, files, run_to_end

# The kill tests' fixtures, taken over by name: this module gets a stack and inputs of its own (module scope).
kill_stack = test_kill_resume.kill_stack
kill_inputs = test_kill_resume.kill_inputs

SEEDS = {"together-a": 3, "together-b": 5}
SOLO = {"together-a": "solo-a", "together-b": "solo-b"}


def _command(inputs, run_name: str, seed: int, out) -> list[str]:
    return _cli("pretrain", "--base", str(inputs["base"]), "--pairs", str(inputs["pairs"]), "--out", str(out),
                "--run-name", run_name, "--set", "pretrain.checkpoint_every=1", "--set", f"pretrain.seed={seed}",
                "--set", f"pretrain.max_length={TINY_PAIR_TOKENS}")


def _objects(store, prefix: str) -> dict[str, bytes]:
    return {key[len(prefix):]: store.get_bytes(key) for key in store._list_all(prefix)}


def _mlflow_runs(client, experiment_id: str, run_name: str) -> list:
    return client.search_runs([experiment_id], f"tags.`codepmp.run` = '{run_name}'")


@pytest.mark.faults
def test_two_pretrain_runs_at_once_do_not_cross(kill_stack, kill_inputs, tmp_path, record) -> None:
    from mlflow.tracking import MlflowClient

    from codepmp.storage import ObjectStore

    procs, logs = {}, {}
    started = time.monotonic()
    for name, seed in SEEDS.items():
        logs[name] = (tmp_path / f"{name}.log").open("wb")
        procs[name] = subprocess.Popen(_command(kill_inputs, name, seed, tmp_path / name), stdout=logs[name],
                                       stderr=subprocess.STDOUT, start_new_session=True)
    codes = {name: proc.wait(timeout=600) for name, proc in procs.items()}
    together_s = time.monotonic() - started
    for log in logs.values():
        log.close()
    for name, seed in SEEDS.items():
        code, _, stderr = run_to_end(_command(kill_inputs, SOLO[name], seed, tmp_path / SOLO[name]),
                                     tmp_path / f"{SOLO[name]}.log")
        assert code == 0, stderr[-3000:]

    store = ObjectStore.from_env()
    keys = store._list_all("runs/")
    own = set(SEEDS) | set(SOLO.values())
    stray = [k for k in keys if k.split("/")[1] not in own]  # written under no run's prefix
    checkpoint_diff, model_diff, mlflow_problems, misfiled = {}, {}, [], 0
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    for name, seed in SEEDS.items():
        mine, solo = _objects(store, f"runs/{name}/"), _objects(store, f"runs/{SOLO[name]}/")
        checkpoint_diff[name] = sorted(k for k in mine.keys() | solo.keys() if mine.get(k) != solo.get(k))
        together_files, solo_files = files(tmp_path / name), files(tmp_path / SOLO[name])
        model_diff[name] = sorted(k for k in together_files.keys() | solo_files.keys()
                                  if together_files.get(k) != solo_files.get(k)) if codes[name] == 0 else ["<none>"]
        runs, solo_runs = _mlflow_runs(client, experiment.experiment_id, name), \
            _mlflow_runs(client, experiment.experiment_id, SOLO[name])
        if len(runs) != 1 or len(solo_runs) != 1:
            elsewhere = [r.info.experiment_id for r in client.search_runs(
                [e.experiment_id for e in client.search_experiments()], f"tags.`codepmp.run` = '{name}'")]
            mlflow_problems.append(f"{name}: {len(runs)} MLflow runs in {EXPERIMENT}, solo {len(solo_runs)}; "
                                   f"runs of that name by experiment id: {elsewhere}")
            misfiled += len(runs) == 0 and len(elsewhere) == 1
            continue
        if runs[0].data.params.get("pretrain.seed") != str(seed):
            mlflow_problems.append(f"{name}: seed param {runs[0].data.params.get('pretrain.seed')} != {seed}")
        losses = [(m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, "loss")]
        solo_losses = [(m.step, m.value) for m in client.get_metric_history(solo_runs[0].info.run_id, "loss")]
        if sorted(losses) != sorted(solo_losses) or not losses:
            mlflow_problems.append(f"{name}: loss history differs from its solo run's")
    # The two seeds must give different models, or equal-to-solo would not show that the runs kept apart.
    distinct = files(tmp_path / "together-a") != files(tmp_path / "together-b")
    differing = sum(len(v) for v in checkpoint_diff.values()) + sum(len(v) for v in model_diff.values())
    ok = all(c == 0 for c in codes.values()) and not stray and differing == 0 and not mlflow_problems and distinct
    record("fault", "two pretrain runs at once on one stack (tiny)", ok, rows_lost=differing,
           detail=f"exit codes {codes}; together {together_s:.0f}s; keys={len(keys)}; stray keys={stray[:5]}; "
                  f"checkpoint objects differing from solo={checkpoint_diff}; model files differing={model_diff}; "
                  f"MLflow problems={mlflow_problems}; models of the two seeds differ={distinct}")

    assert all(c == 0 for c in codes.values()), codes
    assert stray == []
    assert differing == 0, (checkpoint_diff, model_diff)
    assert distinct
    assert mlflow_problems == []
