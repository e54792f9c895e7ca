"""Every TrainJob codepmp can write, checked against the upstream Kubeflow Trainer releases it claims to
support: the TrainJob CRD schemas of v2.0.0-v2.3.0 with the API server's pruning semantics, the
`torch-distributed` runtime each release ships, and the upstream generated models (kubeflow-trainer-api).

    .venv/bin/python -m pytest -q tests/pipeline/test_trainjob_conformance.py
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

from codepmp.errors import ConfigError, ServiceError
from codepmp.train import trainjob
from codepmp.train.trainjob import (NON_ROOT, POD_SERVICE_ACCOUNT_VAR, TRAINER_APIS, TrainJobSettings, manifest,
                                    run_trainjob)
from codepmp_kfp.pipelines.cluster import ClusterSpec
from codepmp_kfp.pipelines.run import compile_pipeline
from tests.trainer_upstream import FakeKubeApi, node_pod_template, schema_problems, trainjob_schema

REPO = Path(__file__).resolve().parents[2]
SHAPE_OF_RELEASE = {"v2.1.0": "v2.1", "v2.2.0": "v2.2", "v2.3.0": "v2.2"}
"""The supported releases and the TrainJob shape each takes; v2.0.0 takes none (see trainjob.TRAINER_APIS)."""
GPU_CLUSTER = REPO / "manifests/overlays/gpu-cluster/cluster.yaml"


def _compiled_settings(tmp_path, cluster_file: Path | None, extra: dict) -> dict:
    """The TrainJob settings a compiled pipeline carries for this cluster spec (what the task will use)."""
    values = {**(yaml.safe_load(cluster_file.read_text()) if cluster_file else {}), "pretrain_nodes": 4, **extra}
    spec_file = tmp_path / "cluster.yaml"
    spec_file.write_text(yaml.safe_dump(values))
    compiled = next(yaml.safe_load_all(Path(compile_pipeline(str(tmp_path / "p.yaml"), str(spec_file))).read_text()))
    task = compiled["root"]["dag"]["tasks"]["pretrain-trainjob"]
    return task["inputs"]["parameters"]["trainjob"]["runtimeValue"]["constant"]


CLUSTERS = {
    "defaults": (None, {}),
    "gpu-cluster overlay": (GPU_CLUSTER, {}),
    "every option": (GPU_CLUSTER, {"trainjob_service_account": "codepmp-pipeline",
                                   "image_pull_secrets": ["registry-a", "registry-b"]}),
}


@pytest.fixture(scope="module", params=sorted(CLUSTERS))
def cluster(request, tmp_path_factory) -> tuple[ClusterSpec, TrainJobSettings]:
    cluster_file, extra = CLUSTERS[request.param]
    settings = TrainJobSettings.from_dict(_compiled_settings(tmp_path_factory.mktemp("c"), cluster_file, extra))
    spec = ClusterSpec.from_yaml(cluster_file) if cluster_file else ClusterSpec()
    for key, value in extra.items():
        setattr(spec, key, value)
    return spec, settings


@pytest.mark.parametrize("release", sorted(SHAPE_OF_RELEASE))
def test_every_trainjob_conforms_to_the_release_schema_and_reaches_the_node_pods(release, cluster, monkeypatch):
    spec, settings = cluster
    monkeypatch.setenv(POD_SERVICE_ACCOUNT_VAR, "default-editor")  # what the compiled task reads (downward API)
    job = manifest(settings, "codepmp-pretrain-0123456789ab", "s3://codepmp/runs/r/j/pretrain/trainjob/spec.json",
                   trainer_api=SHAPE_OF_RELEASE[release])

    assert schema_problems(trainjob_schema(release), job) == []

    pod = node_pod_template(job, release)
    node = {c["name"]: c for c in pod["spec"]["containers"]}["node"]
    assert pod["metadata"]["labels"]["codepmp.io/pipeline-pod"] == "true"  # the NetworkPolicies admit it
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert pod["spec"].get("nodeSelector", {}) == spec.gpu_node_selector
    assert pod["spec"].get("tolerations", []) == spec.gpu_tolerations
    (shm,) = [v for v in pod["spec"]["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": spec.shm_size}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in node["volumeMounts"]
    assert pod["spec"]["serviceAccountName"] == (spec.trainjob_service_account or "default-editor")
    assert [s["name"] for s in pod["spec"].get("imagePullSecrets", [])] == spec.image_pull_secrets
    cpu, memory = spec.gpu_pod_resources()
    assert node["resources"]["requests"] == {"cpu": cpu, "memory": memory, spec.accelerator_type: str(spec.gpus)}
    assert node["resources"]["limits"][spec.accelerator_type] == str(spec.gpus)
    if SHAPE_OF_RELEASE[release] == "v2.1":
        # v2.1's overrides carry no securityContext: the image's own numeric USER keeps the pod non-root.
        assert "securityContext" not in pod["spec"]
        for image in ("cpu", "gpu"):
            dockerfile = (REPO / f"images/{image}/Dockerfile").read_text()
            (user,) = re.findall(r"^USER (\S+)$", dockerfile, re.M)
            assert user == f"{NON_ROOT['runAsUser']}:{NON_ROOT['runAsGroup']}", image
    else:
        assert pod["spec"]["securityContext"] == NON_ROOT
        assert node["securityContext"] == {"allowPrivilegeEscalation": False}


@pytest.mark.parametrize("release", ["v2.0.0", *sorted(SHAPE_OF_RELEASE)])
@pytest.mark.parametrize("shape", sorted(TRAINER_APIS))
def test_a_shape_the_release_does_not_know_would_be_pruned(release, shape):
    job = manifest(TrainJobSettings(image="gpu:1"), "n", "s3://b/spec.json", trainer_api=shape)
    problems = schema_problems(trainjob_schema(release), job)
    if SHAPE_OF_RELEASE.get(release) == shape:
        assert problems == []
    else:
        field = "podTemplateOverrides" if shape == "v2.1" else "runtimePatches"
        assert problems == [f"spec.{field}: unknown field, the API server would prune it"]


@pytest.mark.parametrize("release", sorted(SHAPE_OF_RELEASE))
def test_the_check_fails_on_a_planted_unknown_field_or_a_wrong_type(release):
    job = manifest(TrainJobSettings(image="gpu:1"), "n", "s3://b/spec.json", trainer_api=SHAPE_OF_RELEASE[release])
    planted = copy.deepcopy(job)
    planted["spec"]["trainer"]["gpusPerNode"] = 8
    assert schema_problems(trainjob_schema(release), planted) == [
        "spec.trainer.gpusPerNode: unknown field, the API server would prune it"]
    wrong = copy.deepcopy(job)
    wrong["spec"]["trainer"]["numNodes"] = "2"
    (problem,) = schema_problems(trainjob_schema(release), wrong)
    assert problem.startswith("spec.trainer.numNodes: must be of type integer")


def test_the_v2_1_overrides_would_have_pruned_a_pod_security_context():
    """What the earlier code sent to v2.1: a pod securityContext its overrides do not have."""
    job = manifest(TrainJobSettings(image="gpu:1"), "n", "s3://b/spec.json", trainer_api="v2.1")
    job["spec"]["podTemplateOverrides"][0]["spec"]["securityContext"] = dict(NON_ROOT)
    assert schema_problems(trainjob_schema("v2.1.0"), job) == [
        "spec.podTemplateOverrides[0].spec.securityContext: unknown field, the API server would prune it"]


def test_the_current_shape_round_trips_through_the_upstream_models(cluster, monkeypatch):
    """kubeflow-trainer-api (the Trainer's generated models, v2.3.0) reads back every field codepmp writes;
    a field they do not model is lost in the round trip, which is what this would catch."""
    _, settings = cluster
    monkeypatch.setenv(POD_SERVICE_ACCOUNT_VAR, "default-editor")
    job = manifest(settings, "n", "s3://b/spec.json", trainer_api="v2.2")
    assert TrainerV1alpha1TrainJob.from_dict(job).to_dict() == job
    job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["bogus"] = 1
    assert TrainerV1alpha1TrainJob.from_dict(job).to_dict() != job


def _complete(job: dict) -> None:
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}


@pytest.fixture
def settings() -> TrainJobSettings:
    return TrainJobSettings(image="gpu:1", nodes=2, poll_s=0.01, node_selector={"pool": "gpu"})


@pytest.mark.parametrize("release", sorted(SHAPE_OF_RELEASE))
def test_auto_picks_the_shape_the_cluster_takes_and_creates_it_strictly(release, settings, monkeypatch):
    with FakeKubeApi(release, on_create=_complete) as api:
        monkeypatch.setenv(trainjob.API_VAR, api.url)
        lines = []
        run_trainjob(settings, "codepmp-pretrain-a", "s3://b/spec.json", log=lines.append)
        (job,) = api.jobs.values()
    assert all(query.get("fieldValidation") == "Strict" for query in api.created())
    assert [q.get("dryRun") for q in api.created()][-1] is None  # the real create comes after the dry runs
    expected = SHAPE_OF_RELEASE[release]
    assert any(TRAINER_APIS[expected] in line for line in lines), lines
    # What the server stored (after pruning) still carries the node settings.
    assert node_pod_template(job, release)["spec"]["nodeSelector"] == {"pool": "gpu"}


def test_a_retried_task_waits_for_its_job_without_creating_or_probing(settings, monkeypatch):
    with FakeKubeApi("v2.3.0", on_create=_complete) as api:
        monkeypatch.setenv(trainjob.API_VAR, api.url)
        run_trainjob(settings, "codepmp-pretrain-b", "s3://b/spec.json", log=lambda _: None)
        posts = len(api.created())
        lines = []
        run_trainjob(settings, "codepmp-pretrain-b", "s3://b/spec.json", log=lines.append)
    assert len(api.created()) == posts
    assert any("exists (a retried task)" in line for line in lines)


@pytest.mark.parametrize("release, shape", [("v2.3.0", "v2.1"), ("v2.1.0", "v2.2")])
def test_a_pinned_shape_the_cluster_does_not_know_fails_naming_the_fields(release, shape, settings, monkeypatch):
    settings.trainer_api = shape
    with FakeKubeApi(release, on_create=_complete) as api:
        monkeypatch.setenv(trainjob.API_VAR, api.url)
        with pytest.raises(ServiceError) as error:
            run_trainjob(settings, "codepmp-pretrain-c", "s3://b/spec.json", log=lambda _: None)
        assert api.jobs == {}  # refused, not created with its node settings pruned
    message = str(error.value)
    field = "podTemplateOverrides" if shape == "v2.1" else "runtimePatches"
    assert f"does not know spec.{field}" in message
    assert all(what in message for what in TRAINER_APIS.values())


def test_without_strict_validation_the_server_would_have_pruned_silently(settings):
    """Why the client asks for Strict: the same request with the default validation succeeds and the stored
    job has lost its node settings."""
    job = manifest(settings, "codepmp-pretrain-d", "s3://b/spec.json", trainer_api="v2.1")
    with FakeKubeApi("v2.3.0") as api:
        code, stored = api.handle("POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/ns/trainjobs", {},
                                  json.dumps(job).encode())
    assert code == 201 and "podTemplateOverrides" not in stored["spec"]
    assert "nodeSelector" not in node_pod_template(stored, "v2.3.0")["spec"]


def test_trainer_v2_0_is_refused_naming_the_supported_versions(settings, monkeypatch):
    with FakeKubeApi("v2.0.0", on_create=_complete) as api:
        monkeypatch.setenv(trainjob.API_VAR, api.url)
        with pytest.raises(ServiceError) as error:
            run_trainjob(settings, "codepmp-pretrain-e", "s3://b/spec.json", log=lambda _: None)
        assert api.jobs == {}
    message = str(error.value)
    assert "accepts no TrainJob shape" in message and "Trainer v2.0 is not supported" in message
    assert all(what in message for what in TRAINER_APIS.values())


def test_a_cluster_without_trainer_is_a_clear_error(settings, monkeypatch):
    with FakeKubeApi(None) as api:
        monkeypatch.setenv(trainjob.API_VAR, api.url)
        with pytest.raises(ServiceError, match="Kubeflow Trainer is not installed"):
            run_trainjob(settings, "codepmp-pretrain-f", "s3://b/spec.json", log=lambda _: None)


@pytest.mark.parametrize("values, message", [
    ({"trainer_api": "v2.0"}, "trainer_api 'v2.0' is not supported"),
    ({"cpu_per_gpu": "ten"}, "'cpu_per_gpu': 'ten' is not a Kubernetes quantity"),
    ({"memory_per_gpu": "96 GB"}, "'memory_per_gpu': '96 GB' is not a Kubernetes quantity"),
])
def test_bad_trainer_settings_in_the_cluster_spec_name_the_field(tmp_path, values, message):
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError) as error:
        ClusterSpec.from_yaml(path)
    assert message in str(error.value) and str(path) in str(error.value)


@pytest.mark.parametrize("gpus, cpu, memory", [(1, "10", "96G"), (8, "80", "768G")])
def test_gpu_pods_are_sized_by_their_gpu_count(tmp_path, gpus, cpu, memory):
    spec = ClusterSpec(gpus=gpus)
    assert spec.gpu_pod_resources() == (cpu, memory)
    settings = spec.trainjob_settings("gpu:1")
    assert (settings["cpu"], settings["memory"]) == (cpu, memory)
    half = ClusterSpec(gpus=gpus, cpu_per_gpu="0.5", memory_per_gpu="60Gi")
    assert half.gpu_pod_resources() == (f"{gpus * 0.5:g}", f"{gpus * 60}Gi")
