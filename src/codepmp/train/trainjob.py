"""Pretraining across nodes: a Kubeflow Trainer TrainJob that the pipeline's pretrain task creates and waits for.

The task (a small pod) stages the base model, the pairs and a `TrainSpec` in the object store, creates a
TrainJob (Kubeflow Trainer v2, `trainer.kubeflow.org/v1alpha1`, `torch-distributed` runtime) whose nodes run

    torchrun -m codepmp.train.launch s3://<bucket>/runs/<run>/<job>/pretrain/trainjob/spec.json

(torchrun takes nodes, node rank and rendezvous from the PET_* variables the runtime sets), waits for its
Complete or Failed condition, and copies the model and summary back into its own outputs. A retried task
finds the TrainJob it created by name and waits for it again instead of starting a second one.

The Kubernetes API is the in-cluster one (the task's ServiceAccount needs the TrainJob rights in
manifests/components/pipeline-access/rbac.yaml), `$CODEPMP_KUBE_API` when set (e.g. `kubectl proxy`'s
http://127.0.0.1:8001), else the local kubeconfig.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass, field

from codepmp.errors import ConfigError, ServiceError
from codepmp.tracking import LOGIN_VARS

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
API_VAR = "CODEPMP_KUBE_API"


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
    cpu: str = "16"
    memory: str = "256G"
    """CPU and memory requested (and memory limited) per node."""
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)
    runtime: str = "torch-distributed"
    """ClusterTrainingRuntime the job runs on."""
    namespace: str = ""
    """Namespace of the job; "" is the pipeline pod's own namespace."""
    service_account: str = ""
    """ServiceAccount of the job's pods ("" = the namespace default)."""
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
        return settings


def job_name(run_name: str, job_id: str) -> str:
    """A DNS-1123 name that is the same for every retry of one pipeline task."""
    digest = hashlib.sha256(f"{run_name}/{job_id}".encode()).hexdigest()[:12]
    return f"codepmp-pretrain-{digest}"


def manifest(settings: TrainJobSettings, name: str, spec_uri: str, labels: dict[str, str] | None = None) -> dict:
    """The TrainJob object."""
    secret_env = [{"name": key, "valueFrom": {"secretKeyRef": {"name": settings.secret, "key": key}}}
                  for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    secret_env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": settings.secret, "key": key, "optional": True}}}
                   for key in LOGIN_VARS]
    config_env = [{"name": key, "valueFrom": {"configMapKeyRef": {"name": settings.config_map, "key": key}}}
                  for key in ("CODEPMP_S3_ENDPOINT", "CODEPMP_BUCKET", "MLFLOW_TRACKING_URI")]
    pod_spec = {"volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}}],
                "containers": [{"name": "node", "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}],
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000}}
    if settings.node_selector:
        pod_spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in settings.tolerations]
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
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
            # The NetworkPolicies in manifests/ admit MinIO and MLflow traffic only from pods with this label.
            "podTemplateOverrides": [{"targetJobs": [{"name": "node"}],
                                      "metadata": {"labels": {"codepmp.io/pipeline-pod": "true"}},
                                      "spec": pod_spec}],
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


def run_trainjob(settings: TrainJobSettings, name: str, spec_uri: str, log=print) -> dict:
    """Create the TrainJob (or find the one a previous try of this task created) and wait for it to finish;
    returns its final status. A Failed condition or the timeout is a ServiceError naming the job."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    api, namespace = _api(), _namespace(settings)
    where = f"TrainJob {namespace}/{name}"
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest(settings, name, spec_uri))
        log(f"[pretrain] created {where}: {settings.nodes} nodes x {settings.gpus_per_node} GPUs")
    except ApiException as exc:
        if exc.status != 409:
            raise ServiceError(f"could not create {where}: HTTP {exc.status} {exc.reason}: {exc.body}") from None
        log(f"[pretrain] {where} exists (a retried task): waiting for it")
    except (OSError, urllib3.exceptions.HTTPError) as exc:
        raise ServiceError(f"could not reach the Kubernetes API to create {where}: {exc}") from None
    deadline = time.monotonic() + settings.timeout_s
    while True:
        try:
            job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            raise ServiceError(f"could not read {where}: HTTP {exc.status} {exc.reason}") from None
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

