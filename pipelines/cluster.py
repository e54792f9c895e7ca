"""Kubernetes placement for pipeline tasks on a cluster: GPU node pools, credentials, shared memory.

Credentials never enter the pipeline spec: tasks read them from the `codepmp-s3` Secret and the
`codepmp-env` ConfigMap that manifests/pipeline-namespace creates in the run's namespace.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from kfp import kubernetes

from codepmp.errors import ConfigError
from codepmp.env import CONFIG_MAP_VARS, LOGIN_VARS, SECRET_VARS
from codepmp.train.trainjob import POD_SERVICE_ACCOUNT_VAR, check_trainer_api
from codepmp_kfp.components.images import GPU_IMAGE

RESOURCE_KEYS = ("cpu", "memory", "cpu_limit", "memory_limit")


@dataclass
class ClusterSpec:
    accelerator_type: str = "nvidia.com/gpu"
    """Extended resource name requested by GPU stages."""
    gpus: int = 1
    """GPUs per GPU-stage pod."""
    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    """Node labels that pick the GPU pool, e.g. {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}."""
    gpu_tolerations: list[dict] = field(default_factory=lambda: [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    """Tolerations for the GPU pool's taints."""
    cpu_request: str = "2"
    """CPU request for every CPU pod (GPU pods get `cpu_per_gpu` per GPU)."""
    memory_request: str = "8G"
    """Memory request for every CPU pod (GPU pods get `memory_per_gpu` per GPU)."""
    cpu_per_gpu: str = "10"
    """CPU request of a GPU pod (and of a TrainJob node) per GPU it takes. The default fits 8-GPU nodes down to
    96 vCPUs (Azure ND96isr H100 v5) with room for the node's daemons: 80 CPUs for 8 GPUs."""
    memory_per_gpu: str = "96G"
    """Memory request and limit of a GPU pod (and of a TrainJob node) per GPU it takes; /dev/shm is charged to
    it. The default, 768G for 8 GPUs, fits the common 8x H100 nodes (1.5 TiB and more)."""
    shm_size: str = "16Gi"
    """Size of the memory-backed /dev/shm (DataLoader workers and NCCL need more than the 64 MB default)."""
    secret: str = "codepmp-s3"
    """Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for the object store, and optionally
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD when the MLflow server requires a login."""
    config_map: str = "codepmp-env"
    """ConfigMap with the object-store endpoint, bucket and MLflow tracking URI."""
    github_secret: str = "codepmp-github"
    """Secret whose `GITHUB_TOKEN` key the crawl pods get as env (optional: without it the `github` source
    searches unauthenticated, at GitHub's much lower rate limit)."""
    crawl_parallelism: int = 0
    """Crawl rank pods running at once (KFP ParallelFor parallelism); 0 runs all `crawl.world_size` at once."""
    synthesize_parallelism: int = 0
    """Synthesis shard pods running at once (each takes `gpus` GPUs); 0 runs all `synthesize.world_size` at once."""
    sweep_parallelism: int = 0
    """Sample-efficiency sweep points, (size, seed), finetuning at once (each runs a PMP and a control task, each
    taking `gpus` GPUs); 0 runs every point of `sweep.sizes` x `sweep.seeds` at once."""
    pretrain_nodes: int = 1
    """Nodes for pretraining. Above 1 the pretrain task (then a small CPU pod) creates a Kubeflow Trainer
    TrainJob of this many nodes x `gpus` GPUs, waits for it and outputs its model (needs Kubeflow Trainer v2
    and the TrainJob rights of manifests/pipeline-namespace)."""
    trainer_runtime: str = "torch-distributed"
    """ClusterTrainingRuntime of that TrainJob."""
    trainer_api: str = "auto"
    """Kubeflow Trainer TrainJob shape: "v2.1" (Trainer v2.1.x), "v2.2" (v2.2.0 and later, v2.3.x included), or
    "auto" to let the cluster's API server pick with server-side dry runs (`codepmp.train.trainjob`)."""
    trainjob_service_account: str = ""
    """ServiceAccount of the TrainJob's node pods; "" is the one the pipeline run's pods use (the run's service
    account, e.g. `default-editor` in a Kubeflow profile namespace), with its image pull secrets."""
    image_pull_secrets: list[str] = field(default_factory=list)
    """Secrets every pipeline pod and TrainJob node pulls its image with, e.g. ["registry-credentials"]; not
    needed when the run's ServiceAccount carries them."""
    cpu_image: str = ""
    """Image of the CPU tasks; "" keeps the component default (`components/images.py`, which `make images`
    and `make compile` set from REGISTRY and TAG)."""
    gpu_image: str = ""
    """Image of the GPU tasks and of a multi-node pretraining TrainJob; "" keeps the component default."""
    resources: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per-task requests over the defaults above, by task name: {"evaluate": {"cpu": "8", "memory": "32G"}}.
    Keys: "cpu", "memory" (request), "cpu_limit", "memory_limit"."""
    retries: int = 2
    """Retries of a failed task, for every task where a retry is safe (all but `register`, where one would
    register a second model version). Stages resume from their object-store markers and checkpoints."""
    retry_backoff: str = "60s"
    """Wait before the first retry; it doubles for each further one."""

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ClusterSpec":
        """The spec in a YAML file of field: value; an unknown field or a wrong type is a ConfigError."""
        import yaml

        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a cluster spec is a mapping of field: value, not {type(values).__name__}")
        defaults = cls()
        fields = [f.name for f in dataclasses.fields(cls)]
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(f"{path}: unknown cluster spec field '{key}'; known: {', '.join(fields)}")
            expected = type(getattr(defaults, key))
            if expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
                values[key] = value = str(value)  # `cpu_request: 2` reads as a number in YAML
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(f"{path}: '{key}' must be of type {expected.__name__}, got {value!r}")
        spec = cls(**values)
        try:
            check_trainer_api(spec.trainer_api)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        for key in ("cpu_per_gpu", "memory_per_gpu"):
            try:
                scale_quantity(getattr(spec, key), 1)
            except ValueError as exc:
                raise ConfigError(f"{path}: '{key}': {exc}") from None
        for task, settings in spec.resources.items():
            unknown = set(settings) - set(RESOURCE_KEYS)
            if unknown:
                raise ConfigError(f"{path}: resources.{task} has unknown keys {sorted(unknown)}; "
                                  f"known: {', '.join(RESOURCE_KEYS)}")
        return spec

    def gpu_pod_resources(self) -> tuple[str, str]:
        """(CPU, memory) of a pod or TrainJob node that takes `gpus` GPUs."""
        return scale_quantity(self.cpu_per_gpu, self.gpus), scale_quantity(self.memory_per_gpu, self.gpus)

    def trainjob_settings(self, image: str) -> dict:
        """`codepmp.train.trainjob.TrainJobSettings` fields for a pretraining TrainJob of this cluster."""
        cpu, memory = self.gpu_pod_resources()
        return {"image": self.gpu_image or image, "nodes": self.pretrain_nodes, "gpus_per_node": self.gpus,
                "accelerator": self.accelerator_type, "cpu": cpu, "memory": memory,
                "node_selector": dict(self.gpu_node_selector), "tolerations": [dict(t) for t in self.gpu_tolerations],
                "runtime": self.trainer_runtime, "trainer_api": self.trainer_api,
                "service_account": self.trainjob_service_account, "image_pull_secrets": list(self.image_pull_secrets),
                "secret": self.secret, "config_map": self.config_map, "shm_size": self.shm_size}


QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)([a-zA-Z]*)$")
SUFFIXES = ("", "m", "k", "K", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")


def scale_quantity(quantity: str, factor: int) -> str:
    """A Kubernetes quantity times a whole number, in the same unit: ("60Gi", 8) -> "480Gi", ("0.5", 8) -> "4"."""
    match = QUANTITY.match(str(quantity).strip())
    if not match or match.group(2) not in SUFFIXES:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity like 10, 500m, 96G or 60Gi")
    total = Decimal(match.group(1)) * factor
    return f"{total.normalize():f}{match.group(2)}"


def apply(task, name: str, spec: ClusterSpec, gpu: bool, github: bool = False, trainjob: bool = False):
    """Give the task called `name` its image, credentials, labels, /dev/shm, resources and placement; a task
    that creates a TrainJob also learns its own ServiceAccount, which the job's pods then run under."""
    kubernetes.use_secret_as_env(task, spec.secret, {k: k for k in SECRET_VARS})
    kubernetes.use_secret_as_env(task, spec.secret, {k: k for k in LOGIN_VARS}, optional=True)
    if github and spec.github_secret:
        kubernetes.use_secret_as_env(task, spec.github_secret, {"GITHUB_TOKEN": "GITHUB_TOKEN"}, optional=True)
    kubernetes.use_config_map_as_env(task, spec.config_map, {k: k for k in CONFIG_MAP_VARS})
    if trainjob:
        kubernetes.use_field_path_as_env(task, POD_SERVICE_ACCOUNT_VAR, "spec.serviceAccountName")
    kubernetes.add_pod_label(task, "app.kubernetes.io/part-of", "codepmp")
    # The NetworkPolicies in manifests/ admit MinIO and MLflow traffic only from pods with this label.
    kubernetes.add_pod_label(task, "codepmp.io/pipeline-pod", "true")
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=spec.shm_size)
    image = spec.gpu_image if task.container_spec.image == GPU_IMAGE else spec.cpu_image
    if image:
        task.set_container_image(image)
    if spec.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(spec.image_pull_secrets))
    if gpu:
        cpu, memory = spec.gpu_pod_resources()
        task.set_accelerator_type(spec.accelerator_type).set_accelerator_limit(spec.gpus)
        task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
        for key, value in spec.gpu_node_selector.items():
            kubernetes.add_node_selector(task, key, value)
        for toleration in spec.gpu_tolerations:
            kubernetes.add_toleration(task, **toleration)
    else:
        task.set_cpu_request(spec.cpu_request).set_memory_request(spec.memory_request)
    settings = spec.resources.get(name, {})
    for key, setter in (("cpu", task.set_cpu_request), ("memory", task.set_memory_request),
                        ("cpu_limit", task.set_cpu_limit), ("memory_limit", task.set_memory_limit)):
        if key in settings:
            setter(settings[key])
    if spec.retries and name != "register":
        task.set_retry(spec.retries, backoff_duration=spec.retry_backoff, backoff_factor=2.0)
    return task


def check_task_names(spec: ClusterSpec, names: set[str]) -> None:
    """Per-task settings must name tasks of the pipeline (a typo would silently apply nothing)."""
    unknown = set(spec.resources) - names
    if unknown:
        raise ConfigError(f"cluster spec resources name unknown tasks {sorted(unknown)}; "
                          f"tasks: {', '.join(sorted(names))}")
