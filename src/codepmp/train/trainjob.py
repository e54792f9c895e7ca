"""Pretraining across nodes: a Kubeflow Trainer TrainJob that the pipeline's pretrain task creates and waits for.

The task (a small pod) stages the base model, the pairs and a `TrainSpec` in the object store, creates a
TrainJob (Kubeflow Trainer v2, `trainer.kubeflow.org/v1alpha1`, `torch-distributed` runtime) whose nodes run

    torchrun -m codepmp.train.launch s3://<bucket>/runs/<run>/<job>/pretrain/trainjob/spec.json

(torchrun takes nodes, node rank and rendezvous from the PET_* variables the runtime sets), waits for its
Complete or Failed condition, and copies the model and summary back into its own outputs. A retried task
finds the TrainJob it created by name and waits for it again instead of starting a second one.

Trainer releases moved the node pod settings: v2.0 `podSpecOverrides` (cannot label pods: unsupported),
v2.1 `podTemplateOverrides`, v2.2 and later `runtimePatches`. The API server prunes fields its CRD does not
know, silently unless asked otherwise, so every create here asks for `fieldValidation=Strict`; with
`trainer_api="auto"` Strict server-side dry runs find the shape the installed CRD takes.
tests/pipeline/test_trainjob_conformance.py checks each shape against the upstream CRDs.

The Kubernetes API is the in-cluster one (the task's ServiceAccount needs the TrainJob rights in
manifests/components/pipeline-access/rbac.yaml), `$CODEPMP_KUBE_API` when set (e.g. `kubectl proxy`'s
http://127.0.0.1:8001), else the local kubeconfig.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field

from codepmp.errors import ConfigError, ServiceError
from codepmp.env import CONFIG_MAP_VARS, LOGIN_VARS, SECRET_VARS

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
API_VAR = "CODEPMP_KUBE_API"


TRAINER_APIS = {
    "v2.1": "Kubeflow Trainer v2.1.x (node pod settings in spec.podTemplateOverrides)",
    "v2.2": "Kubeflow Trainer v2.2.0 and later, v2.3.x included (node pod settings in spec.runtimePatches)",
}
"""The TrainJob shapes this module writes. Trainer v2.0 (spec.podSpecOverrides) is not among them: its
overrides cannot label the node pods, so the NetworkPolicies would keep them from the object store."""
AUTO = "auto"
POD_SERVICE_ACCOUNT_VAR = "CODEPMP_POD_SERVICE_ACCOUNT"
"""Set on the pretrain task from its pod's spec.serviceAccountName (downward API): the TrainJob's pods run
under the same identity as the run's other pods, with that ServiceAccount's image pull secrets."""
PATCH_MANAGER = "codepmp.io/pipeline"
NODE_JOB = "node"
"""The replicated job and container of the `torch-distributed` runtime that the node settings target."""
NON_ROOT = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000}
"""The images' user (images/*/Dockerfile: USER 1000:1000)."""


@dataclass
class TrainJobSettings:
    """Where and how big the TrainJob is; the pipeline compiles these in from its ClusterSpec."""

    image: str
    """Image of every node (the gpu image: codepmp, torch, DeepSpeed)."""
    nodes: int = 2
    """Nodes (pods) of the job."""
    gpus_per_node: int = 8
    """GPUs per node; one training process each."""
    accelerator: str = "nvidia.com/gpu"
    """Extended resource name of the GPUs."""
    cpu: str = "80"
    memory: str = "768G"
    """CPU and memory requested (and memory limited) per node; the ClusterSpec scales them with the GPUs."""
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)
    runtime: str = "torch-distributed"
    """ClusterTrainingRuntime the job runs on."""
    trainer_api: str = AUTO
    """TrainJob shape: "v2.1" or "v2.2" (see TRAINER_APIS), or "auto" to ask the cluster's API server,
    which validates a server-side dry run against its installed TrainJob CRD."""
    namespace: str = ""
    """Namespace of the job; "" is the pipeline pod's own namespace."""
    service_account: str = ""
    """ServiceAccount of the job's pods; "" is the pipeline task's own (see POD_SERVICE_ACCOUNT_VAR)."""
    image_pull_secrets: list[str] = field(default_factory=list)
    """Secrets the nodes pull the image with, beyond those of the ServiceAccount."""
    secret: str = "codepmp-s3"
    """Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for the object store, and optionally
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD for an MLflow server that requires a login."""
    config_map: str = "codepmp-env"
    """ConfigMap with CODEPMP_S3_ENDPOINT, CODEPMP_BUCKET and MLFLOW_TRACKING_URI."""
    shm_size: str = "64Gi"
    """Memory-backed /dev/shm per node (NCCL)."""
    poll_s: float = 30.0
    """Seconds between status checks while waiting."""
    timeout_s: float = 7 * 24 * 3600
    """Give up waiting after this long (the TrainJob itself keeps running)."""

    @classmethod
    def from_dict(cls, values: dict) -> "TrainJobSettings":
        """From a pipeline parameter: unknown keys are a ConfigError; whole-number floats (JSON structs
        carry every number as a float) become the ints Kubernetes expects."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(f"unknown TrainJob setting(s) {unknown} (known: {', '.join(sorted(fields))})")
        settings = cls(**values)
        for name in ("nodes", "gpus_per_node"):
            value = getattr(settings, name)
            if not float(value).is_integer() or value < 1:
                raise ConfigError(f"TrainJob setting '{name}' must be a whole number >= 1, got {value!r}")
            setattr(settings, name, int(value))
        check_trainer_api(settings.trainer_api)
        return settings


def check_trainer_api(value: str) -> None:
    if value != AUTO and value not in TRAINER_APIS:
        raise ConfigError(f"trainer_api {value!r} is not supported; use {AUTO!r} or one of: "
                          + "; ".join(f"{key} = {what}" for key, what in TRAINER_APIS.items()))


def job_name(run_name: str, job_id: str) -> str:
    """A DNS-1123 name that is the same for every retry of one pipeline task."""
    digest = hashlib.sha256(f"{run_name}/{job_id}".encode()).hexdigest()[:12]
    return f"codepmp-pretrain-{digest}"


def _node_pod(settings: TrainJobSettings, trainer_api: str) -> tuple[dict, dict]:
    """(metadata, spec) of the node pods, in the fields the given TrainJob shape can carry."""
    metadata = {
        # The NetworkPolicies in manifests/ admit MinIO and MLflow traffic only from pods with this label.
        "labels": {"app.kubernetes.io/part-of": "codepmp", "codepmp.io/pipeline-pod": "true"},
        # Kubeflow profile namespaces inject Istio sidecars, which never exit and so keep a finished node
        # pod (and the job) running.
        "annotations": {"sidecar.istio.io/inject": "false"},
    }
    container = {"name": NODE_JOB, "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}
    spec = {"volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}}],
            "containers": [container]}
    if trainer_api != "v2.1":
        # v2.1's overrides have no securityContext: there the image's USER 1000 is what runs.
        spec["securityContext"] = dict(NON_ROOT)
        container["securityContext"] = {"allowPrivilegeEscalation": False}
    if settings.node_selector:
        spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        spec["tolerations"] = [dict(t) for t in settings.tolerations]
    service_account = settings.service_account or os.environ.get(POD_SERVICE_ACCOUNT_VAR, "")
    if service_account:
        spec["serviceAccountName"] = service_account
    if settings.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in settings.image_pull_secrets]
    return metadata, spec


def _node_overrides(settings: TrainJobSettings, trainer_api: str) -> dict:
    """The spec fields that put the node pod settings into a TrainJob of the given shape."""
    metadata, pod_spec = _node_pod(settings, trainer_api)
    if trainer_api == "v2.1":
        return {"podTemplateOverrides": [{"targetJobs": [{"name": NODE_JOB}], "metadata": metadata,
                                          "spec": pod_spec}]}
    pod_template = {"spec": {"template": {"metadata": metadata, "spec": pod_spec}}}
    return {"runtimePatches": [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {
        "replicatedJobs": [{"name": NODE_JOB, "template": pod_template}]}}}}]}


def manifest(settings: TrainJobSettings, name: str, spec_uri: str, labels: dict[str, str] | None = None,
             trainer_api: str = "v2.2") -> dict:
    """The TrainJob object, in the shape of `trainer_api` (a key of TRAINER_APIS)."""
    check_trainer_api(trainer_api)
    if trainer_api == AUTO:
        raise ConfigError("manifest() needs a concrete trainer_api; run_trainjob resolves 'auto' on the cluster")
    secret_env = [{"name": key, "valueFrom": {"secretKeyRef": {"name": settings.secret, "key": key}}}
                  for key in SECRET_VARS]
    secret_env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": settings.secret, "key": key, "optional": True}}}
                   for key in LOGIN_VARS]
    config_env = [{"name": key, "valueFrom": {"configMapKeyRef": {"name": settings.config_map, "key": key}}}
                  for key in CONFIG_MAP_VARS]
    resources = {"cpu": settings.cpu, "memory": settings.memory, settings.accelerator: str(settings.gpus_per_node)}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "codepmp", **(labels or {})}},
        "spec": {
            "runtimeRef": {"name": settings.runtime, "apiGroup": GROUP, "kind": "ClusterTrainingRuntime"},
            "trainer": {
                "image": settings.image,
                "command": ["torchrun", "-m", "codepmp.train.launch", spec_uri],
                "numNodes": settings.nodes,
                "numProcPerNode": settings.gpus_per_node,
                "resourcesPerNode": {"requests": dict(resources),
                                     "limits": {"memory": settings.memory,
                                                settings.accelerator: str(settings.gpus_per_node)}},
                "env": [*secret_env, *config_env, {"name": "PYTHONUNBUFFERED", "value": "1"}],
            },
            **_node_overrides(settings, trainer_api),
        },
    }


def _api():
    from kubernetes import client, config

    if os.environ.get(API_VAR):
        configuration = client.Configuration()
        configuration.host = os.environ[API_VAR]
        return client.CustomObjectsApi(client.ApiClient(configuration))
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise ServiceError(f"no Kubernetes API to create the TrainJob on: not in a cluster, no kubeconfig "
                               f"({exc}), and {API_VAR} is not set") from None
    return client.CustomObjectsApi()


def _namespace(settings: TrainJobSettings) -> str:
    if settings.namespace:
        return settings.namespace
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    return open(path).read().strip() if os.path.exists(path) else "default"


def _status_message(exc) -> str:
    """The message of a Kubernetes Status body, else the raw body."""
    try:
        return json.loads(exc.body).get("message") or exc.body
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or exc.reason)


def _unknown_fields(exc) -> list[str]:
    """Fields a Strict request was refused for (kube-apiserver: `strict decoding error: unknown field "x"`)."""
    return re.findall(r'unknown field "([^"]+)"', _status_message(exc)) if exc.status == 400 else []


SUPPORTED = "supported: " + "; ".join(TRAINER_APIS.values())


def _create(api, namespace: str, job: dict, where: str, trainer_api: str, dry_run: bool = False) -> None:
    """Create with server-side field validation `Strict`: a field the installed CRD does not know fails the
    request instead of being pruned silently (which would drop the node labels and placement)."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job, field_validation="Strict",
                                            **({"dry_run": "All"} if dry_run else {}))
    except ApiException as exc:
        if exc.status == 409:
            raise
        unknown = _unknown_fields(exc)
        if unknown:
            raise UnknownTrainJobFields(
                f"the cluster's TrainJob API does not know {', '.join(unknown)} (it would have dropped "
                f"{'them' if len(unknown) > 1 else 'it'} silently): trainer_api {trainer_api!r} writes the shape "
                f"of {TRAINER_APIS[trainer_api]}; set trainer_api in the cluster spec to the installed Trainer's "
                f"or {AUTO!r} ({SUPPORTED})", unknown) from None
        if exc.status == 404:
            raise ServiceError(f"could not create {where}: the cluster has no {PLURAL}.{GROUP}/{VERSION} API "
                               f"(Kubeflow Trainer is not installed; {SUPPORTED})") from None
        raise ServiceError(f"could not create {where}: HTTP {exc.status} {exc.reason}: "
                           f"{' '.join(_status_message(exc).split())}") from None
    except (OSError, urllib3.exceptions.HTTPError) as exc:
        raise ServiceError(f"could not reach the Kubernetes API to create {where}: {exc}") from None


class UnknownTrainJobFields(ServiceError):
    def __init__(self, message: str, fields: list[str]):
        super().__init__(message)
        self.fields = fields


def detect_trainer_api(api, namespace: str, settings: TrainJobSettings, name: str, spec_uri: str) -> str:
    """The TrainJob shape the cluster's installed CRD accepts, newest first, asked with Strict server-side dry
    runs: the API server checks each against its own schema, and nothing is created."""
    from kubernetes.client.exceptions import ApiException

    refused = {}
    for trainer_api in sorted(TRAINER_APIS, reverse=True):
        job = manifest(settings, name, spec_uri, trainer_api=trainer_api)
        try:
            _create(api, namespace, job, f"TrainJob {namespace}/{name} (dry run)", trainer_api, dry_run=True)
            return trainer_api
        except UnknownTrainJobFields as exc:
            refused[trainer_api] = exc.fields
        except ApiException as exc:  # 409: it exists already, in the shape tried (a retry raced us)
            if exc.status == 409:
                return trainer_api
            raise
    tried = "; ".join(f"{key} shape refused for {', '.join(fields)}" for key, fields in refused.items())
    raise ServiceError(f"the cluster's Kubeflow Trainer accepts no TrainJob shape codepmp writes ({tried}); "
                       f"{SUPPORTED}. Trainer v2.0 is not supported: its overrides cannot label the node pods")


def run_trainjob(settings: TrainJobSettings, name: str, spec_uri: str, log=print) -> dict:
    """Create the TrainJob (or find the one a previous try of this task created) and wait for it to finish;
    returns its final status. A Failed condition or the timeout is a ServiceError naming the job."""
    from kubernetes.client.exceptions import ApiException

    api, namespace = _api(), _namespace(settings)
    where = f"TrainJob {namespace}/{name}"
    if _read(api, namespace, name, where) is not None:
        log(f"[pretrain] {where} exists (a retried task): waiting for it")
    else:
        trainer_api = settings.trainer_api
        if trainer_api == AUTO:
            trainer_api = detect_trainer_api(api, namespace, settings, name, spec_uri)
            log(f"[pretrain] the cluster takes the TrainJob shape of {TRAINER_APIS[trainer_api]}")
        try:
            _create(api, namespace, manifest(settings, name, spec_uri, trainer_api=trainer_api), where, trainer_api)
            log(f"[pretrain] created {where}: {settings.nodes} nodes x {settings.gpus_per_node} GPUs")
        except ApiException:  # 409: a retry of this task created it meanwhile
            log(f"[pretrain] {where} exists (a retried task): waiting for it")
    deadline = time.monotonic() + settings.timeout_s
    while True:
        job = _read(api, namespace, name, where)
        if job is None:
            raise ServiceError(f"{where} disappeared while waiting for it (deleted?)")
        conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []
                      if c.get("status") == "True"}
        if "Complete" in conditions:
            log(f"[pretrain] {where} completed")
            return job.get("status") or {}
        if "Failed" in conditions:
            failed = conditions["Failed"]
            raise ServiceError(f"{where} failed: {failed.get('reason', '')} {failed.get('message', '')}".strip()
                               + f" (kubectl -n {namespace} logs -l jobset.sigs.k8s.io/jobset-name={name})")
        if time.monotonic() > deadline:
            raise ServiceError(f"{where} did not finish within {settings.timeout_s:.0f}s; it keeps running")
        time.sleep(settings.poll_s)


def _read(api, namespace: str, name: str, where: str) -> dict | None:
    """The TrainJob, or None if there is none of that name."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    try:
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404 and "NotFound" in str(exc.body):
            return None
        if exc.status == 404:
            raise ServiceError(f"could not read {where}: the cluster has no {PLURAL}.{GROUP}/{VERSION} API "
                               f"(Kubeflow Trainer is not installed; {SUPPORTED})") from None
        raise ServiceError(f"could not read {where}: HTTP {exc.status} {exc.reason}") from None
    except (OSError, urllib3.exceptions.HTTPError) as exc:
        raise ServiceError(f"could not reach the Kubernetes API to read {where}: {exc}") from None


def pretrain_on_trainjob(train_cfg, settings: TrainJobSettings, base_dir: str, pairs: list, out_dir: str,
                         checkpoints, run_name: str, job_id: str, tracking: tuple[str, str]) -> dict:
    """Train on several nodes: stage the base model (once), the pairs and a `TrainSpec` in the object store, run
    the TrainJob (its rank 0 logs into the MLflow run `tracking` = (URI, run id)), and copy its model back into
    `out_dir`. A bad input or config that the job's rank 0 recorded is raised here as that error. Returns the
    job's training summary with its node count."""
    import pyarrow as pa

    from codepmp.errors import CodepmpError
    from codepmp.storage import ObjectStore, StoreFolder
    from codepmp.train.launch import TrainSpec, recorded_error

    store = ObjectStore.from_env()
    store.ensure_bucket()
    prefix = f"runs/{run_name}/{job_id or 'local'}/pretrain/trainjob"
    if not store.is_done(f"{prefix}/init"):
        store.upload_dir(base_dir, f"{prefix}/init")
        store.mark_done(f"{prefix}/init")
    StoreFolder(store, prefix).put_table("pairs.parquet", pa.Table.from_pylist([dataclasses.asdict(p) for p in pairs]))
    spec = TrainSpec(config=dataclasses.asdict(dataclasses.replace(train_cfg, processes=settings.gpus_per_node)),
                     init_model=store.uri(f"{prefix}/init"), pairs=store.uri(f"{prefix}/pairs.parquet"),
                     out_dir=store.uri(f"{prefix}/model"), summary=store.uri(f"{prefix}/summary.json"),
                     checkpoints=dataclasses.asdict(checkpoints), tracking_uri=tracking[0], mlflow_run_id=tracking[1])
    store.put_json(f"{prefix}/spec.json", dataclasses.asdict(spec))
    try:
        run_trainjob(settings, job_name(run_name, job_id), store.uri(f"{prefix}/spec.json"))
    except ServiceError:
        if store.exists(f"{prefix}/error.json"):  # bad input or config, as rank 0 of the job reported it
            raise recorded_error(store.get_json(f"{prefix}/error.json")) from None
        raise
    if not store.is_done(f"{prefix}/model"):
        raise CodepmpError(f"the TrainJob finished but wrote no model to {store.uri(prefix + '/model')}")
    store.download_dir(f"{prefix}/model", out_dir)
    return {**store.get_json(f"{prefix}/summary.json"), "nodes": settings.nodes}
