"""Offline checks of the Kubernetes manifests and the container images' Dockerfiles.

Every kustomization is rendered with `kubectl kustomize` and each rendered document is validated
against the Kubernetes OpenAPI schemas that ship inside `kubernetes-validate`, so no cluster and no
network are needed. The rendered objects are then checked against the rules manifests/README.md
states: pod security, RBAC, NetworkPolicies, and placement on a cluster with a GPU pool. The
Dockerfiles are parsed, not built (there is no container engine in CI).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
IMAGES = REPO / "images"

# Pinned rather than "latest known to kubernetes-validate" so a package upgrade cannot silently
# change what the manifests are checked against: 1.37 is the current release, 1.32 the oldest one
# the manifests are kept valid for (the kubectl on the dev machines).
KUBERNETES_VERSIONS = ["1.32.0", "1.37.0"]

NAMESPACE = "codepmp"
PIPELINE_NAMESPACE = "kubeflow-user-example-com"
# Kustomizations that deploy MinIO, MLflow and Postgres into NAMESPACE.
SERVICE_OVERLAYS = ["base", "overlays/dev", "overlays/gpu-cluster"]
# Kustomizations that only give the namespace pipeline pods run in their Secret, ConfigMap and
# identity: copies pointing at the in-cluster services, or at existing ones elsewhere.
CLIENT_KUSTOMIZATIONS = ["pipeline-namespace", "overlays/external-services"]
ALL_KUSTOMIZATIONS = [*SERVICE_OVERLAYS, *CLIENT_KUSTOMIZATIONS]

GPU_CLUSTER = "overlays/gpu-cluster"
EXTERNAL = "overlays/external-services"
# The taint manifests/README.md has the GPU pool's nodes carry (GKE puts the same one on GPU nodes).
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}

PLACEHOLDER_PREFIX = "replace-me"
PIPELINE_POD_LABEL = ("codepmp.io/pipeline-pod", "true")
TORCH_PIN = "torch==2.13.0"

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}
SERVER_KINDS = {*WORKLOAD_KINDS, "CronJob", "Pod", "Service", "PersistentVolumeClaim"}

# Volume types the restricted Pod Security Standard allows (no hostPath and the like).
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}

# Containers allowed a writable root filesystem, "Kind/name container" -> why its image needs one.
# None today: MinIO, MLflow, Postgres and mc write only to their PVCs and emptyDir mounts (/tmp,
# /var/run/postgresql), with HOME and the MinIO certs dir moved there. A container added without a
# read-only root fails the check below until it is fixed or explained here.
WRITABLE_ROOT_EXCEPTIONS: dict[str, str] = {}


# --------------------------------------------------------------------------- rendering helpers


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: it is needed to render the kustomizations")
    return kubectl


def _validator_command() -> list[str]:
    script = Path(sys.executable).with_name("kubernetes-validate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "kubernetes_validate"]


_RENDERED: dict[str, str] = {}


def render(kustomization: str) -> str:
    if kustomization not in _RENDERED:
        proc = subprocess.run(
            [_kubectl(), "kustomize", str(MANIFESTS / kustomization)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, f"kubectl kustomize {kustomization} failed:\n{proc.stderr}"
        _RENDERED[kustomization] = proc.stdout
    return _RENDERED[kustomization]


def docs(kustomization: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(render(kustomization)) if d]


def find(objs: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected exactly one {kind}/{name}, found {len(matches)}"
    return matches[0]


def find_generated(objs: list[dict], kind: str, name: str) -> dict:
    """A generated object whose name carries kustomize's content hash (`name-<hash>`)."""
    matches = [
        o
        for o in objs
        if o["kind"] == kind and re.fullmatch(rf"{re.escape(name)}-[a-z0-9]{{10}}", o["metadata"]["name"])
    ]
    assert len(matches) == 1, f"expected exactly one {kind}/{name}-<hash>, found {len(matches)}"
    return matches[0]


def pod_specs(objs: list[dict]) -> list[tuple[str, dict]]:
    specs = []
    for o in objs:
        if o["kind"] in WORKLOAD_KINDS:
            specs.append((f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]))
        elif o["kind"] == "CronJob":
            template = o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            specs.append((f"CronJob/{o['metadata']['name']}", template))
        elif o["kind"] == "Pod":
            specs.append((f"Pod/{o['metadata']['name']}", o["spec"]))
    return specs


def containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def pipeline_env_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ConfigMap and Secret keys the compiled pipeline hands its pods (pipelines/cluster.py)."""
    from codepmp.env import CONFIG_MAP_VARS, SECRET_VARS

    return CONFIG_MAP_VARS, SECRET_VARS


def cluster_spec(path: Path):
    """Load a ClusterSpec YAML exactly as `compile_pipeline` does; an unknown key raises."""
    from codepmp_kfp.pipelines.cluster import ClusterSpec

    return ClusterSpec(**(yaml.safe_load(path.read_text()) or {}))


# --------------------------------------------------------------------------- schema validation


@pytest.mark.parametrize("kustomization", ALL_KUSTOMIZATIONS)
def test_renders_offline(kustomization):
    assert docs(kustomization), f"{kustomization} rendered no objects"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendering_validates_strictly(version, tmp_path):
    # One validator run per version over every kustomization's output (a file named after it, so a
    # failure names the kustomization): the validator's start-up dominates its run time.
    files = []
    for kustomization in ALL_KUSTOMIZATIONS:
        rendered = tmp_path / (kustomization.replace("/", "-") + ".yaml")
        rendered.write_text(render(kustomization))
        files.append(str(rendered))
    proc = subprocess.run(
        [*_validator_command(), "--strict", "--quiet", "-k", version, *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # An unknown kind is only a WARN with exit code 0; it would mean that object went unchecked.
    assert "WARN" not in output and "ERROR" not in output, output


def test_every_kustomization_is_checked_and_documented():
    found = {
        path.parent.relative_to(MANIFESTS).as_posix()
        for path in MANIFESTS.rglob("kustomization.yaml")
        if yaml.safe_load(path.read_text())["kind"] == "Kustomization"
    }
    # A kustomization missing from the lists above would escape every check in this file.
    assert found == set(ALL_KUSTOMIZATIONS)
    readme = (MANIFESTS / "README.md").read_text()
    for kustomization in ALL_KUSTOMIZATIONS:
        assert f"{kustomization}/" in readme, f"manifests/README.md does not describe {kustomization}"


# --------------------------------------------------------------------------- expected objects


@pytest.mark.parametrize("kustomization", SERVICE_OVERLAYS)
def test_expected_objects_exist(kustomization):
    objs = docs(kustomization)

    namespace = find(objs, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for o in objs:
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == NAMESPACE, (
                f"{o['kind']}/{o['metadata']['name']}"
            )

    for name, port in [("minio", 9000), ("mlflow", 5000), ("mlflow-postgres", 5432)]:
        ports = [p["port"] for p in find(objs, "Service", name)["spec"]["ports"]]
        assert port in ports, f"Service {name} does not expose {port}"

    find(objs, "Deployment", "minio")
    find(objs, "Deployment", "mlflow")
    postgres = find(objs, "StatefulSet", "mlflow-postgres")
    assert postgres["spec"]["volumeClaimTemplates"], "Postgres has no persistent volume"
    find(objs, "PersistentVolumeClaim", "minio-data")
    find(objs, "Job", "codepmp-buckets")
    find(objs, "Job", "codepmp-mlflow-users")
    for config in ("codepmp-scripts", "codepmp-minio-policies", "mlflow-auth"):
        find_generated(objs, "ConfigMap", config)

    env = find(objs, "ConfigMap", "codepmp-env")["data"]
    assert env == {
        "CODEPMP_S3_ENDPOINT": "http://minio.codepmp.svc.cluster.local:9000",
        "CODEPMP_BUCKET": "codepmp",
        "MLFLOW_TRACKING_URI": "http://mlflow.codepmp.svc.cluster.local:5000",
    }

    find(objs, "ServiceAccount", "codepmp-pipeline")
    find(objs, "Role", "codepmp-pipeline")
    binding = find(objs, "RoleBinding", "codepmp-pipeline")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "codepmp-pipeline", "namespace": NAMESPACE}
    ]

    deny = find(objs, "NetworkPolicy", "default-deny")
    assert deny["spec"]["podSelector"] == {}
    assert deny["spec"]["policyTypes"] == ["Ingress"]
    assert not deny["spec"].get("ingress"), "default-deny must not admit anything"


@pytest.mark.parametrize("kustomization", ALL_KUSTOMIZATIONS)
def test_configmap_carries_exactly_what_the_pipeline_reads(kustomization):
    # The codepmp-s3 keys are checked against bootstrap-secrets.sh in test_secrets.py.
    client_env, _ = pipeline_env_names()
    objs = docs(kustomization)
    assert set(find(objs, "ConfigMap", "codepmp-env")["data"]) == set(client_env)


@pytest.mark.parametrize("kustomization", SERVICE_OVERLAYS)
def test_configmap_endpoints_name_the_rendered_services(kustomization):
    objs = docs(kustomization)
    env = find(objs, "ConfigMap", "codepmp-env")["data"]
    for key, service in [("CODEPMP_S3_ENDPOINT", "minio"), ("MLFLOW_TRACKING_URI", "mlflow")]:
        url = urlparse(env[key])
        name, namespace, *_ = url.hostname.split(".")
        svc = find(objs, "Service", name)
        assert name == service and namespace == svc["metadata"]["namespace"], env[key]
        assert url.port in [p["port"] for p in svc["spec"]["ports"]], env[key]


@pytest.mark.parametrize("kustomization", CLIENT_KUSTOMIZATIONS)
def test_client_kustomizations_carry_copies_and_identity_only(kustomization):
    objs = docs(kustomization)
    for o in objs:
        assert o["metadata"].get("namespace") == PIPELINE_NAMESPACE, o["metadata"]["name"]
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objs)
    # No Namespace (the profile controller owns it), no server, no NetworkPolicy, and no Secret
    # (bootstrap-secrets.sh copies codepmp-s3 in once; an apply must never reset it).
    assert kinds == [
        ("ConfigMap", "codepmp-env"),
        ("Role", "codepmp-pipeline"),
        ("RoleBinding", "codepmp-pipeline"),
        ("ServiceAccount", "codepmp-pipeline"),
    ]
    assert not pod_specs(objs)
    binding = find(objs, "RoleBinding", "codepmp-pipeline")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "codepmp-pipeline", "namespace": PIPELINE_NAMESPACE}
    ]
    # The multi-node pretrain task creates and reads its TrainJob, and can do nothing else with TrainJobs.
    role = find(objs, "Role", "codepmp-pipeline")
    (trainjobs,) = [r for r in role["rules"] if "trainer.kubeflow.org" in r["apiGroups"]]
    assert (trainjobs["resources"], sorted(trainjobs["verbs"])) == (["trainjobs"], ["create", "get"])


def test_pipeline_namespace_copies_the_in_cluster_endpoints():
    objs, base = docs("pipeline-namespace"), docs("base")
    assert (
        find(objs, "ConfigMap", "codepmp-env")["data"]
        == find(base, "ConfigMap", "codepmp-env")["data"]
    )


def test_external_services_point_at_the_existing_services_only():
    objs = docs(EXTERNAL)
    assert not [o for o in objs if o["kind"] in SERVER_KINDS], "it must deploy no server"
    for o in objs:
        name = o["metadata"]["name"]
        assert not re.search(r"minio|mlflow|postgres", name), f"{o['kind']}/{name}"

    env = find(objs, "ConfigMap", "codepmp-env")["data"]
    assert env == env_file(MANIFESTS / EXTERNAL / "codepmp-env.env")
    for key in ("CODEPMP_S3_ENDPOINT", "MLFLOW_TRACKING_URI"):
        url = urlparse(env[key])
        assert url.scheme in {"http", "https"} and url.hostname, f"{key}={env[key]}"
        # Committed values stay placeholders (RFC 2606 names), never the in-cluster services or a
        # real internal host.
        assert url.hostname.endswith(".example.com"), f"{key}={env[key]} is not a placeholder"
    assert env["CODEPMP_BUCKET"]

    # Same identity and rights as for the in-cluster services.
    assert (
        find(objs, "Role", "codepmp-pipeline")["rules"]
        == find(docs("pipeline-namespace"), "Role", "codepmp-pipeline")["rules"]
    )
    readme = (MANIFESTS / "README.md").read_text()
    assert f"kubectl apply -k manifests/{EXTERNAL}" in readme
    # The store's key goes into a Secret made by hand, once, with every key the pipeline reads.
    client_env, secret_env = pipeline_env_names()
    create = re.search(r"kubectl -n \S+ create secret generic codepmp-s3(.*?)\n\s*```", readme, re.S)
    assert create, "README does not show how to create codepmp-s3 for existing services"
    for key in secret_env:
        assert f"--from-literal={key}=" in create.group(1), key


# --------------------------------------------------------------------------- workload hygiene


def _image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.rsplit(":", 1)[1]
    return bool(tag) and tag != "latest"


@pytest.mark.parametrize(
    "image,pinned",
    [
        ("quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z", True),
        ("registry:5000/team/app:1.2", True),
        ("postgres@sha256:" + "0" * 64, True),
        ("postgres", False),
        ("registry:5000/team/app", False),
        ("ghcr.io/x/y:latest", False),
    ],
)
def test_image_pin_check_itself(image, pinned):
    assert _image_is_pinned(image) is pinned


@pytest.mark.parametrize("kustomization", ALL_KUSTOMIZATIONS)
def test_every_container_is_pinned_bounded_and_unprivileged(kustomization):
    specs = pod_specs(docs(kustomization))
    if kustomization in SERVICE_OVERLAYS:
        assert specs, f"{kustomization} renders no pods"
    else:
        assert not specs, f"{kustomization} should only carry credentials and identity"
    for owner, spec in specs:
        pod_sc = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, f"{owner} mounts an API token"
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(flag), f"{owner} sets {flag}"
        for volume in spec.get("volumes", []):
            kinds = set(volume) - {"name"}
            assert kinds <= RESTRICTED_VOLUME_TYPES, f"{owner} volume {volume['name']}: {kinds}"
        for c in containers(spec):
            where = f"{owner} container {c['name']}"
            assert _image_is_pinned(c["image"]), f"{where}: image {c['image']} is not pinned"
            limits = c.get("resources", {}).get("limits", {})
            requests = c.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(limits), f"{where}: missing cpu/memory limits"
            assert {"cpu", "memory"} <= set(requests), f"{where}: missing cpu/memory requests"
            sc = c.get("securityContext", {})
            run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            run_as_user = sc.get("runAsUser", pod_sc.get("runAsUser"))
            assert run_as_non_root is True, f"{where}: runAsNonRoot not set"
            assert run_as_user not in (None, 0), f"{where}: needs an explicit non-root runAsUser"
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert not sc.get("privileged"), where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}, where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
            assert seccomp in {"RuntimeDefault", "Localhost"}, f"{where}: seccomp {seccomp}"
            if where in WRITABLE_ROOT_EXCEPTIONS:
                assert sc.get("readOnlyRootFilesystem") is not True, f"stale exception: {where}"
            else:
                assert sc.get("readOnlyRootFilesystem") is True, f"{where}: writable root"


@pytest.mark.parametrize("kustomization", SERVICE_OVERLAYS)
def test_servers_have_probes(kustomization):
    objs = docs(kustomization)
    for kind, name in [
        ("Deployment", "minio"),
        ("Deployment", "mlflow"),
        ("StatefulSet", "mlflow-postgres"),
    ]:
        for c in find(objs, kind, name)["spec"]["template"]["spec"]["containers"]:
            assert "readinessProbe" in c and "livenessProbe" in c, f"{kind}/{name} {c['name']}"


# --------------------------------------------------------------------------- secrets


_CREDENTIAL_PATTERNS = [
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
]


@pytest.mark.parametrize("kustomization", ALL_KUSTOMIZATIONS)
def test_no_kustomization_renders_a_secret(kustomization):
    # `kubectl apply -k` would reset a rendered Secret to the committed value on every deploy,
    # overwriting what bootstrap-secrets.sh or a secret manager made.
    secrets = [o["metadata"]["name"] for o in docs(kustomization) if o["kind"] == "Secret"]
    assert not secrets, f"{kustomization} renders Secrets {secrets}"


def test_no_secret_generator_or_placeholder_in_manifest_sources():
    for path in MANIFESTS.rglob("kustomization.yaml"):
        assert "secretGenerator" not in yaml.safe_load(path.read_text()), path
    env_files = {p.name for p in MANIFESTS.rglob("*.env")}
    assert env_files == {"codepmp-env.env"}, "credentials have no file under manifests/ any more"
    # Only the check that refuses placeholders, and the README that explains it, may name them.
    allowed = {MANIFESTS / "base" / "scripts" / "check-secrets.sh", MANIFESTS / "README.md"}
    for path in MANIFESTS.rglob("*"):
        if path.is_file() and path not in allowed:
            assert PLACEHOLDER_PREFIX not in path.read_text(), path.relative_to(REPO)


def test_no_credential_lookalikes_in_manifest_sources():
    files = [p for p in MANIFESTS.rglob("*") if p.is_file()]
    assert files
    for path in files:
        text = path.read_text()
        for pattern in _CREDENTIAL_PATTERNS:
            assert not pattern.search(text), f"{path.relative_to(REPO)} matches {pattern.pattern}"


# --------------------------------------------------------------------------- servers, policies


@pytest.mark.parametrize("kustomization", SERVICE_OVERLAYS)
def test_mlflow_server_uses_postgres_and_proxies_artifacts_to_minio(kustomization):
    spec = find(docs(kustomization), "Deployment", "mlflow")["spec"]["template"]["spec"]
    (server,) = [c for c in spec["containers"] if c["name"] == "mlflow"]
    argv = [*server.get("command", []), *server.get("args", [])]
    assert argv[:2] == ["mlflow", "server"]
    pairs = dict(zip(argv, argv[1:], strict=False))
    assert pairs["--app-name"] == "basic-auth"
    assert pairs["--artifacts-destination"] == "s3://mlflow-artifacts"
    assert pairs["--host"] == "0.0.0.0" and pairs["--port"] == "5000"
    assert "--serve-artifacts" in argv

    env = env_of(server)
    backend = urlparse(env["MLFLOW_BACKEND_STORE_URI"]["value"])
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the image has psycopg2.
    assert backend.scheme == "postgresql+psycopg2" and backend.hostname == "mlflow-postgres"
    # libpq takes the password from PGPASSWORD, so neither the URI nor the auth config holds it.
    assert backend.password is None
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlflow-postgres",
        "key": "POSTGRES_PASSWORD",
    }
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio:9000"
    # The artifact proxy's own MinIO user, not the pipeline's and not root.
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "codepmp-mlflow-s3", "key": key}

    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    for host in ("mlflow:5000", f"mlflow.{NAMESPACE}.svc.cluster.local:5000"):
        assert any(fnmatch(host, pattern) for pattern in allowed), host


def _secret_refs(container: dict) -> dict[str, tuple[str, str]]:
    """env name -> (Secret, key) for the container's secretKeyRef variables."""
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


@pytest.mark.parametrize("kustomization", SERVICE_OVERLAYS)
def test_minio_root_stays_with_the_server_and_the_bucket_job(kustomization):
    objs = docs(kustomization)
    minio = find(objs, "Deployment", "minio")["spec"]["template"]["spec"]
    (server,) = minio["containers"]
    assert _secret_refs(server) == {
        "MINIO_ROOT_USER": ("codepmp-minio-root", "MINIO_ROOT_USER"),
        "MINIO_ROOT_PASSWORD": ("codepmp-minio-root", "MINIO_ROOT_PASSWORD"),
    }
    job = find(objs, "Job", "codepmp-buckets")["spec"]["template"]["spec"]
    (mc,) = job["containers"]
    assert _secret_refs(mc) == {
        "MINIO_ROOT_USER": ("codepmp-minio-root", "MINIO_ROOT_USER"),
        "MINIO_ROOT_PASSWORD": ("codepmp-minio-root", "MINIO_ROOT_PASSWORD"),
        # The users the Job makes: the pipeline's, and the artifact proxy's.
        "PIPELINE_ACCESS_KEY_ID": ("codepmp-s3", "AWS_ACCESS_KEY_ID"),
        "PIPELINE_SECRET_ACCESS_KEY": ("codepmp-s3", "AWS_SECRET_ACCESS_KEY"),
        "MLFLOW_ACCESS_KEY_ID": ("codepmp-mlflow-s3", "AWS_ACCESS_KEY_ID"),
        "MLFLOW_SECRET_ACCESS_KEY": ("codepmp-mlflow-s3", "AWS_SECRET_ACCESS_KEY"),
    }
    # No other container may hold the root key.
    for owner, spec in pod_specs(objs):
        for c in spec["containers"]:
            if (owner, c["name"]) in {("Deployment/minio", "minio"), ("Job/codepmp-buckets", "mc")}:
                continue
            assert "codepmp-minio-root" not in {s for s, _ in _secret_refs(c).values()}, (
                f"{owner} {c['name']} reads MinIO's root key"
            )


def _peers(policy: dict) -> list[dict]:
    return [peer for rule in policy["spec"].get("ingress", []) for peer in rule.get("from", [])]


def _admits_label(peers: list[dict], key: str, value: str) -> bool:
    return any(p.get("podSelector", {}).get("matchLabels", {}).get(key) == value for p in peers)


@pytest.mark.parametrize("kustomization", SERVICE_OVERLAYS)
def test_network_policies(kustomization):
    objs = docs(kustomization)
    policies = {o["metadata"]["name"]: o for o in objs if o["kind"] == "NetworkPolicy"}
    kubeflow_ns = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}}
    }

    for name, app, port in [("minio-ingress", "minio", 9000), ("mlflow-ingress", "mlflow", 5000)]:
        policy = policies[name]
        assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": app}
        peers = _peers(policy)
        assert kubeflow_ns in peers, f"{name} must admit the kubeflow namespace"
        assert _admits_label(peers, *PIPELINE_POD_LABEL), f"{name} must admit pipeline pods"
        ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
        assert ports == [port]
    assert _admits_label(_peers(policies["minio-ingress"]), "app.kubernetes.io/name", "mlflow")

    postgres = policies["mlflow-postgres-ingress"]
    assert postgres["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "mlflow-postgres"
    }
    assert _peers(postgres) == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}
    ]

    # The selectors above must actually select the pods they are meant for.
    labels = {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in objs
        if o["kind"] in WORKLOAD_KINDS
    }
    assert labels["mlflow"]["app.kubernetes.io/name"] == "mlflow"
    assert labels["codepmp-buckets"]["app.kubernetes.io/name"] == "codepmp-buckets"
    assert _admits_label(
        _peers(policies["minio-ingress"]), "app.kubernetes.io/name", "codepmp-buckets"
    )
    users_job = labels["codepmp-mlflow-users"]["app.kubernetes.io/name"]
    assert _admits_label(_peers(policies["mlflow-ingress"]), "app.kubernetes.io/name", users_job)


@pytest.mark.parametrize("kustomization", ALL_KUSTOMIZATIONS)
def test_rbac_is_namespaced_and_names_what_it_reads(kustomization):
    for role in (o for o in docs(kustomization) if o["kind"] in {"Role", "ClusterRole"}):
        assert role["kind"] == "Role", "no cluster-wide permissions"
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
            assert "*" not in rule["apiGroups"], rule
            if set(rule["resources"]) & {"secrets", "configmaps"}:
                assert rule["verbs"] == ["get"], rule
                assert rule.get("resourceNames"), f"unrestricted read of {rule['resources']}"
        secrets = {
            n for r in role["rules"] if "secrets" in r["resources"] for n in r["resourceNames"]
        }
        assert "codepmp-s3" in secrets


# --------------------------------------------------------------------------- overlays


def _storage(objs: list[dict]) -> dict[str, str]:
    sizes = {
        "minio": find(objs, "PersistentVolumeClaim", "minio-data")["spec"]["resources"]["requests"][
            "storage"
        ]
    }
    vct = find(objs, "StatefulSet", "mlflow-postgres")["spec"]["volumeClaimTemplates"][0]
    sizes["postgres"] = vct["spec"]["resources"]["requests"]["storage"]
    return sizes


_QUANTITY_UNITS = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def _bytes(quantity: str) -> int:
    for suffix, factor in _QUANTITY_UNITS.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def _memory_limit(objs: list[dict], kind: str, name: str, container: str) -> int:
    spec = find(objs, kind, name)["spec"]["template"]["spec"]
    (c,) = [c for c in spec["containers"] if c["name"] == container]
    return _bytes(c["resources"]["limits"]["memory"])


def test_dev_is_single_replica_and_smaller_than_gpu_cluster():
    dev, big = docs("overlays/dev"), docs(GPU_CLUSTER)
    for o in dev:
        if o["kind"] in {"Deployment", "StatefulSet"}:
            assert o["spec"].get("replicas", 1) == 1, o["metadata"]["name"]
    dev_sizes, big_sizes = _storage(dev), _storage(big)
    base_sizes = _storage(docs("base"))
    for key in dev_sizes:
        assert _bytes(dev_sizes[key]) < _bytes(base_sizes[key]) < _bytes(big_sizes[key]), key
    for kind, name, container in [
        ("Deployment", "minio", "minio"),
        ("Deployment", "mlflow", "mlflow"),
        ("StatefulSet", "mlflow-postgres", "postgres"),
    ]:
        dev_memory = _memory_limit(dev, kind, name, container)
        assert dev_memory < _memory_limit(big, kind, name, container), f"{kind}/{name}"


def test_gpu_cluster_spreads_mlflow_and_guards_it_with_a_pdb():
    objs = docs(GPU_CLUSTER)
    mlflow = find(objs, "Deployment", "mlflow")
    assert mlflow["spec"]["replicas"] >= 2
    anti = mlflow["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution", []) + [
        t["podAffinityTerm"]
        for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])
    ]
    assert any(
        t["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"} for t in terms
    )
    pdb = find(objs, "PodDisruptionBudget", "mlflow")
    assert pdb["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"}
    assert pdb["spec"]["minAvailable"] < mlflow["spec"]["replicas"], (
        "a PDB as large as the Deployment blocks drains"
    )


# --------------------------------------------------------------------------- GPU pool placement


def _expression_holds(expression: dict, labels: dict[str, str]) -> bool:
    key, operator = expression["key"], expression["operator"]
    values = expression.get("values", [])
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    if operator in {"Gt", "Lt"}:
        if key not in labels:
            return False
        number, bound = int(labels[key]), int(values[0])
        return number > bound if operator == "Gt" else number < bound
    raise AssertionError(f"unknown node selector operator {operator}")


def _tolerates(tolerations: list[dict], taint: dict) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") and toleration["effect"] != taint["effect"]:
            continue
        if toleration.get("operator", "Equal") == "Exists":
            if not toleration.get("key") or toleration["key"] == taint["key"]:
                return True
        elif toleration.get("key") == taint["key"] and toleration.get("value", "") == taint.get(
            "value", ""
        ):
            return True
    return False


def _fits_node(pod: dict, labels: dict[str, str], taints: list[dict]) -> bool:
    """Whether the scheduler may put `pod` on a node with these labels and taints."""
    if any(labels.get(key) != value for key, value in pod.get("nodeSelector", {}).items()):
        return False
    affinity = pod.get("affinity", {}).get("nodeAffinity", {})
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    if required:
        terms = required["nodeSelectorTerms"]
        assert not any(t.get("matchFields") for t in terms), "matchFields is not modelled here"
        # Terms are ORed, a term's expressions ANDed, and an empty term matches no node.
        if not any(
            t.get("matchExpressions")
            and all(_expression_holds(e, labels) for e in t["matchExpressions"])
            for t in terms
        ):
            return False
    return all(
        _tolerates(pod.get("tolerations", []), taint)
        for taint in taints
        if taint["effect"] in {"NoSchedule", "NoExecute"}
    )


_AVOID_POOL = {
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "NotIn", "values": ["gpu"]}]}
                ]
            }
        }
    }
}
_AVOID_ACCELERATOR = {
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "accelerator", "operator": "DoesNotExist"}]}
                ]
            }
        }
    }
}
_TOLERATE_GPU = {"tolerations": [{"key": GPU_TAINT["key"], "operator": "Exists"}]}


@pytest.mark.parametrize(
    "pod,labels,taints,fits",
    [
        ({}, {}, [], True),
        ({}, {}, [GPU_TAINT], False),
        (_TOLERATE_GPU, {}, [GPU_TAINT], True),
        ({"tolerations": [{"key": "other", "operator": "Exists"}]}, {}, [GPU_TAINT], False),
        ({"tolerations": [{"operator": "Exists"}]}, {}, [GPU_TAINT], True),
        ({"nodeSelector": {"pool": "gpu"}}, {}, [], False),
        ({"nodeSelector": {"pool": "gpu"}}, {"pool": "gpu"}, [], True),
        (_AVOID_POOL, {"pool": "gpu"}, [], False),
        (_AVOID_POOL, {"pool": "cpu"}, [], True),
        (_AVOID_POOL, {}, [], True),
        (_AVOID_ACCELERATOR, {"accelerator": "h100"}, [], False),
        (_AVOID_ACCELERATOR, {}, [], True),
    ],
)
def test_node_fit_check_itself(pod, labels, taints, fits):
    assert _fits_node(pod, labels, taints) is fits


def _gpu_cluster_spec():
    return cluster_spec(MANIFESTS / GPU_CLUSTER / "cluster.yaml")


def test_gpu_cluster_keeps_every_server_pod_off_the_gpu_pool():
    gpu_node = _gpu_cluster_spec().gpu_node_selector
    assert gpu_node, "cluster.yaml names no GPU pool"
    pods = pod_specs(docs(GPU_CLUSTER))
    assert {owner for owner, _ in pods} == {
        "Deployment/minio",
        "Deployment/mlflow",
        "StatefulSet/mlflow-postgres",
        "Job/codepmp-buckets",
        "Job/codepmp-mlflow-users",
    }
    for owner, pod in pods:
        # By node affinity alone, so an untainted pool is avoided too.
        assert not _fits_node(pod, gpu_node, []), f"{owner} may be scheduled on the GPU pool"
        assert not _tolerates(pod.get("tolerations", []), GPU_TAINT), f"{owner} tolerates it"
        assert _fits_node(pod, {}, []), f"{owner} fits no plain CPU node"


def test_gpu_cluster_spec_sends_gpu_stages_to_that_pool():
    spec = _gpu_cluster_spec()
    # The overlay's affinity keys on the very label cluster.yaml selects the pool by.
    keys = {
        expression["key"]
        for _, pod in pod_specs(docs(GPU_CLUSTER))
        for term in pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"
        ]
        for expression in term["matchExpressions"]
    }
    assert keys == set(spec.gpu_node_selector)
    gpu_pod = {"nodeSelector": spec.gpu_node_selector, "tolerations": spec.gpu_tolerations}
    assert _fits_node(gpu_pod, spec.gpu_node_selector, [GPU_TAINT]), "GPU stages cannot land there"
    assert not _fits_node(gpu_pod, {}, []), "GPU stages may land off the pool"
    assert spec.gpus >= 1 and spec.accelerator_type == "nvidia.com/gpu"
    # The memory-backed /dev/shm is charged to the pod's memory limit.
    assert _bytes(spec.shm_size) < _bytes(spec.gpu_pod_resources()[1])

    readme = (MANIFESTS / "README.md").read_text()
    ((label, value),) = spec.gpu_node_selector.items()
    taint = f"{GPU_TAINT['key']}={GPU_TAINT['value']}:{GPU_TAINT['effect']}"
    assert "kubectl label nodes" in readme and f"{label}={value}" in readme
    assert f"kubectl taint nodes -l {label}={value} {taint}" in readme
    assert f"--cluster-spec manifests/{GPU_CLUSTER}/cluster.yaml" in readme


# --------------------------------------------------------------------------- Dockerfiles


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    instructions, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    assert not current, f"{path}: dangling line continuation"
    return instructions


DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
CODEPMP_DOCKERFILES = [IMAGES / "cpu" / "Dockerfile", IMAGES / "gpu" / "Dockerfile"]


def _ids(paths):
    return [p.parent.name for p in paths]


def test_expected_dockerfiles_exist():
    assert {p.parent.name for p in DOCKERFILES} >= {"cpu", "gpu", "mlflow"}
    assert (REPO / ".dockerignore").exists()


@pytest.mark.parametrize("path", DOCKERFILES, ids=_ids(DOCKERFILES))
def test_dockerfile_bases_are_pinned(path):
    stages: set[str] = set()
    for keyword, args in dockerfile_instructions(path):
        if keyword != "FROM":
            continue
        words = [w for w in args.split() if not w.startswith("--")]
        image = words[0]
        assert "$" not in image, f"{path}: FROM {image} depends on a build arg"
        if image.lower() not in stages:
            assert _image_is_pinned(image), f"{path}: FROM {image} is not pinned to a tag"
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2].lower())


@pytest.mark.parametrize("path", DOCKERFILES, ids=_ids(DOCKERFILES))
def test_dockerfile_runs_as_non_root(path):
    users = [args for keyword, args in dockerfile_instructions(path) if keyword == "USER"]
    assert users, f"{path}: no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"{path}: final USER is {users[-1]}"
    last_from = max(i for i, (k, _) in enumerate(dockerfile_instructions(path)) if k == "FROM")
    last_user = max(i for i, (k, _) in enumerate(dockerfile_instructions(path)) if k == "USER")
    assert last_user > last_from, f"{path}: USER is not set in the final stage"


def _pip_installs(path: Path) -> list[str]:
    return [
        args
        for keyword, args in dockerfile_instructions(path)
        if keyword == "RUN" and "pip install" in args
    ]


@pytest.mark.parametrize("path", CODEPMP_DOCKERFILES, ids=_ids(CODEPMP_DOCKERFILES))
def test_codepmp_image_installs_pinned_torch_then_the_lock_then_the_project(path):
    installs = _pip_installs(path)
    torch_steps = [i for i, cmd in enumerate(installs) if re.search(r"(?<![\w-])torch\b", cmd)]
    assert torch_steps, f"{path}: torch is never installed"
    first = installs[torch_steps[0]]
    assert TORCH_PIN in first.split(), f"{path}: torch must be pinned exactly ({TORCH_PIN})"
    assert "--index-url https://download.pytorch.org/whl/" in first, (
        f"{path}: torch must come from the PyTorch index"
    )
    for cmd in installs:
        for spec in re.findall(r"(?<![\w-])torch\s*(?:[=<>!~]=?|===)\s*[^\s]+", cmd):
            assert spec.replace(" ", "") == TORCH_PIN, f"{path}: conflicting torch spec {spec}"

    lock_steps = [
        i for i, cmd in enumerate(installs) if re.search(r"-r\s+\S*requirements\.lock\b", cmd)
    ]
    assert lock_steps, f"{path}: requirements.lock is never installed"
    project_steps = [i for i, cmd in enumerate(installs) if "--no-deps" in cmd]
    assert project_steps, f"{path}: the project is not installed with --no-deps"
    assert torch_steps[0] < lock_steps[0] < project_steps[-1], f"{path}: wrong install order"

    text = path.read_text()
    assert "requirements.lock" in " ".join(
        a for k, a in dockerfile_instructions(path) if k == "COPY"
    )
    assert re.search(r"\bDS_BUILD_OPS=0\b", text), f"{path}: DS_BUILD_OPS=0 is not set"
    assert "HF_HOME=/home/app/.cache" in text
    entrypoints = [a for k, a in dockerfile_instructions(path) if k == "ENTRYPOINT"]
    assert entrypoints and "codepmp" in entrypoints[-1]


def test_cpu_image_uses_the_cpu_wheel_and_gpu_image_the_cuda_wheel():
    cpu = " ".join(_pip_installs(IMAGES / "cpu" / "Dockerfile"))
    assert "download.pytorch.org/whl/cpu" in cpu
    gpu_path = IMAGES / "gpu" / "Dockerfile"
    gpu = " ".join(_pip_installs(gpu_path))
    assert re.search(r"download\.pytorch\.org/whl/(cu\d+|\$\{TORCH_CUDA\})", gpu)
    froms = [a for k, a in dockerfile_instructions(gpu_path) if k == "FROM"]
    assert re.match(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-", froms[-1]), froms[-1]
    for package in ("vllm", "deepspeed"):
        assert re.search(rf"(?<![\w-]){package}==\d", gpu), (
            f"{package} is not pinned in the GPU image"
        )


def _lock_pins() -> dict[str, str]:
    lock = REPO / "requirements.lock"
    assert lock.exists(), "requirements.lock is missing; the images install from it"
    pins = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_lock_pins_the_same_torch_the_images_install():
    assert _lock_pins().get("torch") == TORCH_PIN.split("==")[1]


def test_mlflow_server_image_matches_the_client_and_the_manifests():
    version = _lock_pins()["mlflow"]
    installs = " ".join(_pip_installs(IMAGES / "mlflow" / "Dockerfile"))
    # The auth extra (Flask-WTF) is what `mlflow server --app-name basic-auth` needs.
    assert f'"mlflow[auth]=={version}"' in installs.split()
    assert "psycopg2-binary==" in installs and "boto3==" in installs
    objs = docs("base")
    for kind, name in [("Deployment", "mlflow"), ("Job", "codepmp-mlflow-users")]:
        for c in containers(find(objs, kind, name)["spec"]["template"]["spec"]):
            assert c["image"] == f"ghcr.io/codepmp/mlflow-server:{version}", c["image"]


def test_images_readme_documents_the_build_commands():
    readme = (IMAGES / "README.md").read_text()
    assert "docker build -f images/cpu/Dockerfile -t ghcr.io/codepmp/codepmp-cpu:0.1.0 ." in readme
    assert "docker build -f images/gpu/Dockerfile -t ghcr.io/codepmp/codepmp-gpu:0.1.0 ." in readme
    assert "-f images/mlflow/Dockerfile" in readme
