"""Tier 1 against a stand-in for the Kubernetes API with Kubeflow Trainer v2.3.0's TrainJob CRD installed
(tests/trainer_upstream.py: the upstream schema, checked with the API server's pruning and Strict-validation
semantics). It plays the Trainer's part for a stored TrainJob: it runs the job's own command the way the
torch runtime does on one node (PET_* variables, env resolved from the Secret and ConfigMap it names), then
reports the Complete or Failed condition. Everything else is real: object store, MLflow, torchrun, DeepSpeed.

There is no tier-2 test: `kfp.local` has no cluster to create a TrainJob on. tests/pipeline checks that
the compiled pipeline uses this component when `ClusterSpec.pretrain_nodes` > 1, and that every TrainJob
it can write conforms to the Trainer releases' schemas.
"""

import os
import subprocess
import sys
import threading

import mlflow
import pytest
from kfp import dsl

from codepmp.models import load_reward_model
from codepmp_kfp.components.pretrain_trainjob.component import pretrain_trainjob
from tests.trainer_upstream import FakeKubeApi, node_pod_template


class FakeTrainer:
    """Runs each stored TrainJob's command on this machine; `runs` counts the jobs actually started."""

    def __init__(self, env: dict[str, str]):
        self.env, self.runs, self.logs = env, 0, []

    def start(self, job: dict) -> None:
        self.runs += 1
        threading.Thread(target=self._run, args=(job,), daemon=True).start()

    def _value(self, source: dict) -> str | None:
        """A key's value; None (the variable is left unset, as Kubernetes does) for a missing optional key."""
        ref = source.get("secretKeyRef") or source.get("configMapKeyRef")
        assert ref["name"] in ("codepmp-s3", "codepmp-env"), ref
        return self.env.get(ref["key"]) if ref.get("optional") else self.env[ref["key"]]

    def _run(self, job: dict) -> None:
        trainer = job["spec"]["trainer"]
        env = {k: v for k, v in os.environ.items() if k not in self.env and not k.startswith(("RANK", "WORLD"))}
        values = {e["name"]: e["value"] if "value" in e else self._value(e["valueFrom"]) for e in trainer["env"]}
        env.update({name: value for name, value in values.items() if value is not None})
        env.update(PET_NNODES=str(trainer["numNodes"]), PET_NPROC_PER_NODE=str(trainer["numProcPerNode"]),
                   PET_NODE_RANK="0", PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT="29533", OMP_NUM_THREADS="1")
        assert trainer["command"][0] == "torchrun"
        command = [sys.executable, "-m", "torch.distributed.run", *trainer["command"][1:]]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        self.logs.append(proc.stdout + proc.stderr)
        condition = {"type": "Complete" if proc.returncode == 0 else "Failed", "status": "True",
                     "reason": "" if proc.returncode == 0 else "BackoffLimitExceeded",
                     "message": "" if proc.returncode == 0 else "jobset failed"}
        job["status"] = {"conditions": [{"type": "Created", "status": "True"}, condition]}


TRAINER_RELEASE = "v2.3.0"


@pytest.fixture
def kube_api(stack_env, monkeypatch):
    trainer = FakeTrainer(dict(stack_env))
    with FakeKubeApi(TRAINER_RELEASE, on_create=trainer.start) as api:
        monkeypatch.setenv("CODEPMP_KUBE_API", api.url)
        trainer.api = api
        yield trainer


SETTINGS = {"image": "registry.example/codepmp-gpu:1", "nodes": 1.0, "gpus_per_node": 2.0, "poll_s": 0.5,
            "node_selector": {"pool": "h100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}


def _run(overrides, tiny_lm, pairs_dir, out, run_name="tj-1", settings=SETTINGS):
    pretrain_trainjob.python_func(profile="tiny", overrides=overrides, run_name=run_name, job_id="job-tj",
                                  trainjob=settings, base=dsl.Model(uri=tiny_lm), pairs=dsl.Dataset(uri=pairs_dir),
                                  model=dsl.Model(uri=str(out)))


@pytest.mark.integration
def test_python_func_runs_a_trainjob_and_outputs_its_model(kube_api, tiny_overrides, tiny_lm, pairs_dir, tmp_path):
    overrides = {**tiny_overrides, "pretrain": {**tiny_overrides["pretrain"], "deepspeed_stage": 2}}
    _run(overrides, tiny_lm, pairs_dir, tmp_path / "pmp")
    assert kube_api.runs == 1, kube_api.logs
    load_reward_model(str(tmp_path / "pmp"))
    (job,) = kube_api.api.jobs.values()
    trainer = job["spec"]["trainer"]
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (1, 2)  # ints, though the parameter held floats
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "2"
    # The stored object is what the server kept after checking it against the CRD; the node pods get the settings.
    pod = node_pod_template(job, TRAINER_RELEASE)
    assert pod["spec"]["nodeSelector"] == {"pool": "h100"}
    assert pod["metadata"]["labels"]["codepmp.io/pipeline-pod"] == "true"
    assert all(query["fieldValidation"] == "Strict" for query in kube_api.api.created())
    assert not any("value" in e and e["name"].startswith("AWS_") for e in trainer["env"])  # refs, not values
    (run,) = mlflow.search_runs(experiment_names=[tiny_overrides["experiment"]], output_format="list",
                                filter_string="tags.`codepmp.run` = 'tj-1'")
    assert run.data.metrics["processes"] == 2 and run.data.metrics["nodes"] == 1
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [1]  # rank 0 of the job logged to the task's run, once

    # A retried task finds its TrainJob (HTTP 409) and waits for it instead of training again.
    _run(overrides, tiny_lm, pairs_dir, tmp_path / "again")
    assert kube_api.runs == 1
    load_reward_model(str(tmp_path / "again"))


@pytest.mark.integration
def test_bad_config_in_the_trainjob_is_the_task_error(kube_api, tiny_overrides, tiny_lm, pairs_dir, tmp_path,
                                                      capsys):
    overrides = {**tiny_overrides, "pretrain": {**tiny_overrides["pretrain"], "deepspeed_stage": 2,
                                                "schedule": "linear"}}
    with pytest.raises(SystemExit) as exit_info:
        _run(overrides, tiny_lm, pairs_dir, tmp_path / "pmp", run_name="tj-bad")
    assert exit_info.value.code == 2
    assert "unknown schedule 'linear'" in capsys.readouterr().err
    assert kube_api.runs == 1  # the job itself hit the error, on its node


def test_unknown_settings_and_unreachable_api_are_clear_errors(stack_env, tiny_overrides, tiny_lm, pairs_dir,
                                                               tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        _run(tiny_overrides, tiny_lm, pairs_dir, tmp_path / "x", settings={**SETTINGS, "gpu": 8})
    assert "unknown TrainJob setting(s) ['gpu']" in capsys.readouterr().err
    monkeypatch.setenv("CODEPMP_KUBE_API", "http://127.0.0.1:9")
    with pytest.raises(SystemExit):
        _run(tiny_overrides, tiny_lm, pairs_dir, tmp_path / "y", run_name="tj-unreachable")
    assert "could not reach the Kubernetes API to read TrainJob default/codepmp-pretrain-" in capsys.readouterr().err
