"""The Secrets of the cluster deployment: made once, checked before use, one identity per client.

- manifests/bootstrap-secrets.sh runs against a fake `kubectl` on PATH (a script written here that keeps
  its cluster in a JSON file and records every call): it creates missing Secrets with random values,
  never touches existing ones, copies codepmp-s3 into a profile namespace, and never shows a value.
- check-secrets.sh, taken from the rendered ConfigMap, runs under every POSIX shell found here against
  good and bad Secret files; each pod that reads a Secret runs it first, for every Secret it reads.
- setup-minio.sh, taken from the rendered ConfigMap, runs against a fake `mc`; the policies it attaches
  are parsed and must name only their own bucket.
- The MLflow basic-auth config is read with MLflow's own reader, and a real `mlflow server --app-name
  basic-auth` is started with it (sqlite in place of Postgres, which needs a driver not installed here)
  to run the user-creation Job's script against.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
from test_manifests import (
    MANIFESTS,
    NAMESPACE,
    PIPELINE_NAMESPACE,
    PLACEHOLDER_PREFIX,
    SERVICE_OVERLAYS,
    docs,
    find,
    find_generated,
    pipeline_env_names,
    pod_specs,
)

BOOTSTRAP = MANIFESTS / "bootstrap-secrets.sh"
SECRETS_MOUNT = "/run/codepmp-secrets"
SCRIPTS_MOUNT = "/etc/codepmp-scripts"
FIX_COMMAND = f"sh manifests/bootstrap-secrets.sh --namespace {NAMESPACE}"

# What bootstrap-secrets.sh makes in the services' namespace: Secret -> keys.
SERVICE_SECRETS = {
    "codepmp-minio-root": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
    "codepmp-s3": {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    },
    "codepmp-mlflow-s3": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    "codepmp-mlflow-admin": {
        "MLFLOW_AUTH_ADMIN_USERNAME",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
    },
    "mlflow-postgres": {"POSTGRES_PASSWORD"},
}
# Names, not secrets: MLflow shows them as the user of a run and in its user list.
FIXED_VALUES = {
    ("codepmp-s3", "MLFLOW_TRACKING_USERNAME"): "codepmp-pipeline",
    ("codepmp-mlflow-admin", "MLFLOW_AUTH_ADMIN_USERNAME"): "codepmp-admin",
}
# MinIO: access keys 3-20 characters, secret keys 8-40; MLflow: passwords 12+.
MIN_RANDOM_CHARS = 20
MAX_LENGTH = {"AWS_ACCESS_KEY_ID": 20, "MINIO_ROOT_USER": 20, "AWS_SECRET_ACCESS_KEY": 40, "MINIO_ROOT_PASSWORD": 40}


def rendered_file(configmap: str, key: str, kustomization: str = "base") -> str:
    return find_generated(docs(kustomization), "ConfigMap", configmap)["data"][key]


def write_executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


# --------------------------------------------------------------------------- a fake kubectl

FAKE_KUBECTL = f"""#!{sys.executable}
# A stand-in for kubectl: the cluster is a JSON file ($FAKE_KUBECTL_STATE); each call is appended to
# $FAKE_KUBECTL_LOG. It knows exactly the calls bootstrap-secrets.sh makes.
import base64, json, os, sys
from pathlib import Path
import yaml

state_path = Path(os.environ["FAKE_KUBECTL_STATE"])
state = json.loads(state_path.read_text())
args = sys.argv[1:]
with open(os.environ["FAKE_KUBECTL_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
namespace = "default"
if "-n" in args:
    i = args.index("-n")
    namespace = args[i + 1]
    del args[i : i + 2]
options = {{}}
positional = []
i = 0
while i < len(args):
    if args[i] in ("-o", "-f"):
        options[args[i]] = args[i + 1]
        i += 2
    elif args[i].startswith("--"):
        key, _, value = args[i].partition("=")
        options[key] = value
        i += 1
    else:
        positional.append(args[i])
        i += 1

def fail(message):
    sys.stderr.write("Error from server: " + message + "\\n")
    sys.exit(1)

def save():
    state_path.write_text(json.dumps(state))

secrets = state["secrets"]
match positional:
    case ["get", "namespace", name]:
        if name in state["namespaces"]:
            print("namespace/" + name)
        elif "--ignore-not-found" not in options:
            fail(f'namespaces "{{name}}" not found')
    case ["create", "namespace", name]:
        if name in state["namespaces"]:
            fail(f'namespaces "{{name}}" already exists')
        state["namespaces"].append(name)
        save()
    case ["get", "secret", name]:
        secret = secrets.get(namespace + "/" + name)
        if secret is None:
            if "--ignore-not-found" in options:
                sys.exit(0)
            fail(f'secrets "{{name}}" not found')
        template = options.get("-o", "")
        data = dict(sorted(secret["data"].items()))
        if template == "name":
            print("secret/" + name)
        elif template.startswith("go-template=") and "{{{{$key}}}}: {{{{$value}}}}" in template:
            sys.stdout.write("".join(f"  {{k}}: {{v}}\\n" for k, v in data.items()))
        elif template.startswith("go-template=") and "{{{{$key}}}} " in template:
            sys.stdout.write("".join(f"{{k}} " for k in data))
        else:
            fail("fake kubectl does not know -o " + template)
    case ["create", "secret", "generic", name]:
        if namespace not in state["namespaces"]:
            fail(f'namespaces "{{namespace}}" not found')
        if namespace + "/" + name in secrets:
            fail(f'secrets "{{name}}" already exists')
        folder = Path(options["--from-file"])
        data = {{p.name: base64.b64encode(p.read_bytes()).decode() for p in folder.iterdir()}}
        secrets[namespace + "/" + name] = {{"data": data, "labels": {{}}}}
        save()
        print(f"secret/{{name}} created")
    case ["label", "secret", name, pair]:
        key, _, value = pair.partition("=")
        secrets[namespace + "/" + name]["labels"][key] = value
        save()
    case ["create"]:
        manifest = yaml.safe_load(Path(options["-f"]).read_text())
        name = manifest["metadata"]["name"]
        if namespace not in state["namespaces"]:
            fail(f'namespaces "{{namespace}}" not found')
        if manifest["kind"] != "Secret" or namespace + "/" + name in secrets:
            fail("cannot create " + name)
        for value in manifest["data"].values():
            base64.b64decode(value, validate=True)
        labels = manifest["metadata"].get("labels", {{}})
        secrets[namespace + "/" + name] = {{"data": manifest["data"], "labels": labels}}
        save()
    case _:
        fail("fake kubectl does not know: " + " ".join(sys.argv[1:]))
"""


class FakeCluster:
    def __init__(self, tmp_path: Path, namespaces: list[str]):
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        write_executable(self.bin / "kubectl", FAKE_KUBECTL)
        self.state = tmp_path / "cluster.json"
        self.log = tmp_path / "kubectl.log"
        self.state.write_text(json.dumps({"namespaces": namespaces, "secrets": {}}))
        self.log.write_text("")

    def add_secret(self, namespace: str, name: str, values: dict[str, str]) -> None:
        state = json.loads(self.state.read_text())
        data = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
        state["secrets"][f"{namespace}/{name}"] = {"data": data, "labels": {}}
        self.state.write_text(json.dumps(state))

    def secrets(self) -> dict[str, dict[str, str]]:
        """'namespace/name' -> decoded data."""
        state = json.loads(self.state.read_text())
        return {
            key: {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
            for key, secret in state["secrets"].items()
        }

    def labels(self, key: str) -> dict[str, str]:
        return json.loads(self.state.read_text())["secrets"][key]["labels"]

    def namespaces(self) -> list[str]:
        return json.loads(self.state.read_text())["namespaces"]

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def bootstrap(self, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "PATH": path or f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "FAKE_KUBECTL_STATE": str(self.state),
            "FAKE_KUBECTL_LOG": str(self.log),
        }
        return subprocess.run(
            [shutil.which("sh"), str(BOOTSTRAP), *args], capture_output=True, text=True, env=env, timeout=60
        )


def assert_values_hidden(cluster: FakeCluster, proc: subprocess.CompletedProcess) -> None:
    secret_values = [
        value
        for key, data in cluster.secrets().items()
        for k, value in data.items()
        if (key.split("/")[1], k) not in FIXED_VALUES
    ]
    assert secret_values
    argv = " ".join(" ".join(call) for call in cluster.calls())
    for value in secret_values:
        assert value not in proc.stdout and value not in proc.stderr, "a Secret value was printed"
        assert value not in argv, "a Secret value was passed to kubectl as an argument"


def test_bootstrap_creates_every_missing_secret_with_strong_random_values(tmp_path):
    cluster = FakeCluster(tmp_path, namespaces=[])
    proc = cluster.bootstrap()
    assert proc.returncode == 0, proc.stderr
    assert "created Namespace codepmp" in proc.stdout

    secrets = cluster.secrets()
    assert set(secrets) == {f"{NAMESPACE}/{name}" for name in SERVICE_SECRETS}
    for name, keys in SERVICE_SECRETS.items():
        data = secrets[f"{NAMESPACE}/{name}"]
        assert set(data) == keys, name
        assert f"created Secret {NAMESPACE}/{name}" in proc.stdout
        assert cluster.labels(f"{NAMESPACE}/{name}") == {"app.kubernetes.io/part-of": "codepmp"}
        for key, value in data.items():
            if (name, key) in FIXED_VALUES:
                assert value == FIXED_VALUES[(name, key)]
                continue
            assert not value.startswith(PLACEHOLDER_PREFIX)
            # Hex: URL-safe for the Postgres URI, and nothing kubectl or configparser would mangle.
            assert re.fullmatch(r"[0-9a-f]+", value), f"{name} {key}"
            assert MIN_RANDOM_CHARS <= len(value) <= MAX_LENGTH.get(key, 1000), f"{name} {key}"
    values = [v for data in secrets.values() for v in data.values()]
    assert len(set(values)) == len(values), "two keys got the same value"
    assert_values_hidden(cluster, proc)

    # The pipeline reads exactly these keys from codepmp-s3 (pipelines/cluster.py, codepmp.tracking).
    from codepmp.env import LOGIN_VARS

    _, secret_env = pipeline_env_names()
    assert SERVICE_SECRETS["codepmp-s3"] == {*secret_env, *LOGIN_VARS}


def test_bootstrap_values_differ_from_run_to_run(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = FakeCluster(tmp_path / "a", []), FakeCluster(tmp_path / "b", [])
    assert first.bootstrap().returncode == 0 and second.bootstrap().returncode == 0
    a, b = first.secrets(), second.secrets()
    for key, data in a.items():
        for k, value in data.items():
            if (key.split("/")[1], k) not in FIXED_VALUES:
                assert value != b[key][k], f"{key} {k} is not random"


def test_bootstrap_never_touches_an_existing_secret(tmp_path):
    cluster = FakeCluster(tmp_path, namespaces=[NAMESPACE])
    # Kept from an earlier version: the old shared key, without the MLflow login.
    earlier = {"AWS_ACCESS_KEY_ID": "operator-key", "AWS_SECRET_ACCESS_KEY": "operator-secret-value"}
    cluster.add_secret(NAMESPACE, "codepmp-s3", earlier)
    proc = cluster.bootstrap()
    assert proc.returncode == 0, proc.stderr
    assert cluster.secrets()[f"{NAMESPACE}/codepmp-s3"] == earlier
    assert f"kept    Secret {NAMESPACE}/codepmp-s3 (exists; not changed)" in proc.stdout
    # It says which keys the kept Secret lacks, and nothing about the values it has.
    (warning,) = [line for line in proc.stdout.splitlines() if "lacks" in line]
    assert "MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD" in warning
    assert "operator-secret-value" not in proc.stdout + proc.stderr
    assert "created Namespace" not in proc.stdout
    for name in set(SERVICE_SECRETS) - {"codepmp-s3"}:
        assert f"created Secret {NAMESPACE}/{name}" in proc.stdout

    # A second run keeps everything, byte for byte, and creates nothing.
    before = cluster.secrets()
    calls_before = len(cluster.calls())
    proc = cluster.bootstrap()
    assert proc.returncode == 0, proc.stderr
    assert cluster.secrets() == before
    new_calls = cluster.calls()[calls_before:]
    assert not [c for c in new_calls if "create" in c or "label" in c], new_calls
    for name in SERVICE_SECRETS:
        assert f"kept    Secret {NAMESPACE}/{name} (exists; not changed)" in proc.stdout


def test_bootstrap_copies_codepmp_s3_into_profile_namespaces(tmp_path):
    other = "kubeflow-user-other"
    cluster = FakeCluster(tmp_path, namespaces=[NAMESPACE, PIPELINE_NAMESPACE, other])
    cluster.add_secret(other, "codepmp-s3", {"AWS_ACCESS_KEY_ID": "own-key"})
    proc = cluster.bootstrap("--pipeline-namespace", PIPELINE_NAMESPACE, f"--pipeline-namespace={other}")
    assert proc.returncode == 0, proc.stderr
    secrets = cluster.secrets()
    assert secrets[f"{PIPELINE_NAMESPACE}/codepmp-s3"] == secrets[f"{NAMESPACE}/codepmp-s3"]
    assert cluster.labels(f"{PIPELINE_NAMESPACE}/codepmp-s3") == {"app.kubernetes.io/part-of": "codepmp"}
    assert f"created Secret {PIPELINE_NAMESPACE}/codepmp-s3 (a copy of {NAMESPACE}/codepmp-s3)" in proc.stdout
    assert secrets[f"{other}/codepmp-s3"] == {"AWS_ACCESS_KEY_ID": "own-key"}, "an existing copy changed"
    assert f"kept    Secret {other}/codepmp-s3" in proc.stdout
    # Only codepmp-s3 goes to a profile namespace.
    assert sorted(k for k in secrets if not k.startswith(f"{NAMESPACE}/")) == [
        f"{PIPELINE_NAMESPACE}/codepmp-s3",
        f"{other}/codepmp-s3",
    ]
    assert_values_hidden(cluster, proc)


def test_bootstrap_refuses_a_missing_profile_namespace_before_creating_anything(tmp_path):
    cluster = FakeCluster(tmp_path, namespaces=[NAMESPACE])
    proc = cluster.bootstrap("--pipeline-namespace", "no-such-profile")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "bootstrap-secrets.sh: namespace no-such-profile does not exist; its Kubeflow profile creates it"
    )
    assert cluster.secrets() == {} and cluster.namespaces() == [NAMESPACE]


def test_bootstrap_takes_another_services_namespace_and_rejects_unknown_arguments(tmp_path):
    cluster = FakeCluster(tmp_path, namespaces=[])
    proc = cluster.bootstrap("--namespace", "ml-services")
    assert proc.returncode == 0, proc.stderr
    assert {k.split("/")[0] for k in cluster.secrets()} == {"ml-services"}
    proc = cluster.bootstrap("--namespac", "x")
    assert proc.returncode == 2 and "unknown argument '--namespac'" in proc.stderr
    help_text = cluster.bootstrap("--help")
    assert help_text.returncode == 0 and "--pipeline-namespace" in help_text.stdout


def test_bootstrap_falls_back_to_dev_urandom_without_openssl(tmp_path):
    cluster = FakeCluster(tmp_path, namespaces=[])
    # A PATH with the fake kubectl and the few tools the script needs, but no openssl.
    for tool in ("mktemp", "rm", "mkdir", "od", "tr"):
        found = shutil.which(tool)
        assert found, tool
        (cluster.bin / tool).symlink_to(found)
    proc = cluster.bootstrap(path=str(cluster.bin))
    assert proc.returncode == 0, proc.stderr
    value = cluster.secrets()[f"{NAMESPACE}/mlflow-postgres"]["POSTGRES_PASSWORD"]
    assert re.fullmatch(r"[0-9a-f]{32}", value)


def test_github_token_is_optional_and_documented():
    readme = (MANIFESTS / "README.md").read_text()
    assert "codepmp-github" not in BOOTSTRAP.read_text().split("set -eu", 1)[1], "it must not be created"
    assert "kubectl -n <namespace> create secret generic codepmp-github --from-literal=GITHUB_TOKEN=" in readme


# --------------------------------------------------------------------------- check-secrets.sh

POSIX_SHELLS = [s for s in ("sh", "dash", "bash", "busybox") if shutil.which(s)]


def _shell_argv(shell: str) -> list[str]:
    return {"bash": ["bash", "--posix"], "busybox": ["busybox", "sh"]}.get(shell, [shell])


def _check_containers(kustomization: str) -> list[tuple[str, dict, dict]]:
    """(owner, pod spec, check-secrets container) for every pod that reads a Secret."""
    found = []
    for owner, spec in pod_specs(docs(kustomization)):
        init = spec.get("initContainers", [])
        if init and init[0]["name"] == "check-secrets":
            found.append((owner, spec, init[0]))
    return found


def _spec(arg: str) -> tuple[str, str, int]:
    match = re.fullmatch(r"([a-z0-9-]+)/([A-Z0-9_]+):(\d+)", arg)
    assert match, f"check-secrets argument {arg!r} is not SECRET/KEY:MIN_LENGTH"
    return match[1], match[2], int(match[3])


@pytest.mark.parametrize("kustomization", SERVICE_OVERLAYS)
def test_every_pod_checks_every_secret_it_reads_first(kustomization):
    checked = {owner: (spec, check) for owner, spec, check in _check_containers(kustomization)}
    for owner, spec in pod_specs(docs(kustomization)):
        refs = {
            (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for c in [*spec.get("initContainers", []), *spec["containers"]]
            for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        if not refs:
            continue
        assert owner in checked, f"{owner} reads Secrets but does not run check-secrets first"
        _, check = checked[owner]
        specs = [_spec(a) for a in check["args"]]
        assert refs <= {(s, k) for s, k, _ in specs}, f"{owner}: unchecked {refs - {(s, k) for s, k, _ in specs}}"
        assert check["command"] == ["/bin/sh", f"{SCRIPTS_MOUNT}/check-secrets.sh"]
        assert check.get("env") == [
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
        ]
        # Each checked Secret is an optional volume at SECRETS_MOUNT/<name>, so a missing one reaches
        # the check instead of stopping the kubelet.
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in check["volumeMounts"]}
        assert volumes[mounts[SCRIPTS_MOUNT]]["configMap"]["name"].startswith("codepmp-scripts-")
        for secret in {s for s, _, _ in specs}:
            volume = volumes[mounts[f"{SECRETS_MOUNT}/{secret}"]]
            assert volume["secret"] == {"secretName": secret, "optional": True}, owner
        # The main containers read their Secrets without `optional`: past the check, they are there.
        for c in spec["containers"]:
            for e in c.get("env", []):
                assert not e.get("valueFrom", {}).get("secretKeyRef", {}).get("optional"), e


def test_the_pods_check_exactly_the_secrets_bootstrap_makes():
    read = {
        _spec(arg)[:2]
        for kustomization in SERVICE_OVERLAYS
        for _, _, check in _check_containers(kustomization)
        for arg in check["args"]
    }
    made = {(name, key) for name, keys in SERVICE_SECRETS.items() for key in keys}
    # Nothing read that bootstrap does not make, and nothing made that no pod checks.
    assert read == made, (read - made, made - read)


def _write_secret_files(root: Path, secrets: dict[str, dict[str, str]]) -> None:
    for secret, values in secrets.items():
        folder = root / secret
        folder.mkdir(parents=True, exist_ok=True)
        for key, value in values.items():
            (folder / key).write_text(value)


def run_check(shell: str, tmp_path: Path, args: list[str], secrets: dict[str, dict[str, str]]):
    tmp_path.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "check-secrets.sh"
    script.write_text(rendered_file("codepmp-scripts", "check-secrets.sh"))
    root = tmp_path / "secrets"
    root.mkdir(exist_ok=True)
    _write_secret_files(root, secrets)
    env = {"PATH": os.environ["PATH"], "SECRETS_DIR": str(root), "POD_NAMESPACE": NAMESPACE}
    return subprocess.run(
        [*_shell_argv(shell), str(script), *args], capture_output=True, text=True, env=env, timeout=30
    )


def _good_values(args: list[str]) -> dict[str, dict[str, str]]:
    secrets: dict[str, dict[str, str]] = {}
    for arg in args:
        secret, key, min_length = _spec(arg)
        secrets.setdefault(secret, {})[key] = "k" * max(min_length, 1)
    return secrets


@pytest.mark.parametrize("shell", POSIX_SHELLS)
def test_check_passes_good_values_in_every_pod(shell, tmp_path):
    for owner, _, check in _check_containers("base"):
        proc = run_check(shell, tmp_path / owner.replace("/", "-"), check["args"], _good_values(check["args"]))
        assert proc.returncode == 0, f"{owner}: {proc.stderr}"
        assert proc.stderr == ""


@pytest.mark.parametrize("shell", POSIX_SHELLS)
@pytest.mark.parametrize(
    "case,expected",
    [
        ("placeholder", "key MINIO_ROOT_PASSWORD is still a placeholder (replace-me...)"),
        ("empty", "key MINIO_ROOT_PASSWORD is empty"),
        ("short", "key MINIO_ROOT_PASSWORD is shorter than 8 characters"),
        ("missing key", "has no key MINIO_ROOT_PASSWORD"),
        ("missing secret", "is missing or empty"),
    ],
)
def test_check_refuses_bad_values_with_one_line_naming_secret_key_and_fix(shell, case, expected, tmp_path):
    (check,) = [c for owner, _, c in _check_containers("base") if owner == "Deployment/minio"]
    secrets = _good_values(check["args"])
    root = secrets["codepmp-minio-root"]
    if case == "placeholder":
        root["MINIO_ROOT_PASSWORD"] = "replace-me-secret-key"
    elif case == "empty":
        root["MINIO_ROOT_PASSWORD"] = ""
    elif case == "short":
        root["MINIO_ROOT_PASSWORD"] = "seven77"
    elif case == "missing key":
        del root["MINIO_ROOT_PASSWORD"]
    else:
        del secrets["codepmp-minio-root"]
    proc = run_check(shell, tmp_path, check["args"], secrets)
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"Secret {NAMESPACE}/codepmp-minio-root {expected}"), line
    assert FIX_COMMAND in line
    if case != "missing secret":
        assert f"kubectl -n {NAMESPACE} delete secret codepmp-minio-root" in line
        assert "manifests/README.md" in line


@pytest.mark.parametrize("shell", POSIX_SHELLS)
def test_check_reports_every_bad_key_and_counts_placeholders_of_any_suffix(shell, tmp_path):
    args = [
        "codepmp-s3/AWS_ACCESS_KEY_ID:3",
        "codepmp-s3/AWS_SECRET_ACCESS_KEY:8",
        "mlflow-postgres/POSTGRES_PASSWORD:8",
    ]
    secrets = {
        "codepmp-s3": {"AWS_ACCESS_KEY_ID": "replace-me", "AWS_SECRET_ACCESS_KEY": "replace-me-secret-key"},
        "mlflow-postgres": {"POSTGRES_PASSWORD": "a-good-password"},
    }
    proc = run_check(shell, tmp_path, args, secrets)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        f"Secret {NAMESPACE}/codepmp-s3 key AWS_ACCESS_KEY_ID is still a placeholder (replace-me...)",
        f"Secret {NAMESPACE}/codepmp-s3 key AWS_SECRET_ACCESS_KEY is still a placeholder (replace-me...)",
    ]


def test_what_bootstrap_makes_passes_every_pods_check(tmp_path):
    cluster = FakeCluster(tmp_path, namespaces=[])
    assert cluster.bootstrap().returncode == 0
    made = {key.split("/")[1]: data for key, data in cluster.secrets().items()}
    for owner, _, check in _check_containers("base"):
        proc = run_check("sh", tmp_path / owner.replace("/", "-"), check["args"], made)
        assert proc.returncode == 0, f"{owner}: {proc.stderr}"


# --------------------------------------------------------------------------- MinIO users and policies


def _policy(name: str) -> dict:
    return json.loads(rendered_file("codepmp-minio-policies", f"{name}.json"))


def _only_bucket(policy: dict) -> str:
    (statement,) = policy["Statement"]
    assert statement["Effect"] == "Allow" and statement["Action"] == ["s3:*"]
    bucket_arn, objects_arn = statement["Resource"]
    bucket = bucket_arn.removeprefix("arn:aws:s3:::")
    assert bucket_arn == f"arn:aws:s3:::{bucket}" and "*" not in bucket and "/" not in bucket
    assert objects_arn == f"{bucket_arn}/*"
    assert set(statement) == {"Effect", "Action", "Resource"}, "no Condition, Principal or NotResource"
    return bucket


def test_pipeline_policy_names_only_the_pipeline_bucket():
    policy = _policy("codepmp-pipeline")
    assert policy["Version"] == "2012-10-17"
    bucket = _only_bucket(policy)
    assert bucket == "codepmp"
    assert bucket == find(docs("base"), "ConfigMap", "codepmp-env")["data"]["CODEPMP_BUCKET"]


def test_mlflow_policy_names_only_the_artifact_bucket():
    bucket = _only_bucket(_policy("codepmp-mlflow-artifacts"))
    server = find(docs("base"), "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    artifacts = server["args"][server["args"].index("--artifacts-destination") + 1]
    assert artifacts == f"s3://{bucket}" == "s3://mlflow-artifacts"


FAKE_MC = """#!/bin/sh
# A stand-in for mc: records its arguments; `admin policy attach` answers as $FAKE_MC_ATTACH says.
printf '%s\\n' "$*" >>"$FAKE_MC_LOG"
case "$1 $2 $3" in
    "admin policy attach")
        case $FAKE_MC_ATTACH in
            ok) exit 0 ;;
            already)
                echo "mc: <ERROR> Unable to attach policy. The specified policy change is already in effect." >&2
                exit 1 ;;
            *) echo "mc: <ERROR> Unable to attach policy. Access Denied." >&2; exit 1 ;;
        esac ;;
    "admin policy create")
        [ -f "$6" ] || { echo "mc: no policy file $6" >&2; exit 1; } ;;
esac
exit 0
"""

JOB_VALUES = {
    "MINIO_ROOT_USER": "rootuser0123",
    "MINIO_ROOT_PASSWORD": "rootpassword0123",
    "PIPELINE_ACCESS_KEY_ID": "pipelinekey",
    "PIPELINE_SECRET_ACCESS_KEY": "pipelinesecret0123",
    "MLFLOW_ACCESS_KEY_ID": "mlflowkey",
    "MLFLOW_SECRET_ACCESS_KEY": "mlflowsecret0123",
}


def run_setup_minio(tmp_path: Path, attach: str, **overrides: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    job = find(docs("base"), "Job", "codepmp-buckets")["spec"]["template"]["spec"]
    (mc,) = job["containers"]
    assert mc["command"] == ["/bin/sh", f"{SCRIPTS_MOUNT}/setup-minio.sh"]
    env = {e["name"]: e.get("value") for e in mc["env"]}
    policies_dir = env["POLICIES_DIR"]
    mounts = {m["mountPath"]: m["name"] for m in mc["volumeMounts"]}
    volumes = {v["name"]: v for v in job["volumes"]}
    assert volumes[mounts[policies_dir]]["configMap"]["name"].startswith("codepmp-minio-policies-")

    bin_dir, policies = tmp_path / "bin", tmp_path / "policies"
    bin_dir.mkdir()
    policies.mkdir()
    write_executable(bin_dir / "mc", FAKE_MC)
    for name in ("codepmp-pipeline", "codepmp-mlflow-artifacts"):
        (policies / f"{name}.json").write_text(rendered_file("codepmp-minio-policies", f"{name}.json"))
    script = tmp_path / "setup-minio.sh"
    script.write_text(rendered_file("codepmp-scripts", "setup-minio.sh"))
    log = tmp_path / "mc.log"
    log.write_text("")
    run_env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "S3_ENDPOINT": env["S3_ENDPOINT"],
        "POLICIES_DIR": str(policies),
        "FAKE_MC_LOG": str(log),
        "FAKE_MC_ATTACH": attach,
        **JOB_VALUES,
        **overrides,
    }
    assert set(JOB_VALUES) <= set(env), "the Job sets other variables than the script reads"
    proc = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=run_env, timeout=30)
    return proc, log.read_text().splitlines()


@pytest.mark.parametrize("attach", ["ok", "already"])
def test_bucket_job_makes_each_client_a_user_with_its_own_policy(attach, tmp_path):
    proc, calls = run_setup_minio(tmp_path, attach)
    assert proc.returncode == 0, proc.stderr
    v = JOB_VALUES
    policies = tmp_path / "policies"
    assert calls[0] == f"alias set --api s3v4 minio http://minio:9000 {v['MINIO_ROOT_USER']} {v['MINIO_ROOT_PASSWORD']}"
    for bucket in ("codepmp", "mlflow-artifacts"):
        assert f"mb --ignore-existing minio/{bucket}" in calls
        assert f"anonymous set none minio/{bucket}" in calls
    for policy, key, secret in [
        ("codepmp-pipeline", v["PIPELINE_ACCESS_KEY_ID"], v["PIPELINE_SECRET_ACCESS_KEY"]),
        ("codepmp-mlflow-artifacts", v["MLFLOW_ACCESS_KEY_ID"], v["MLFLOW_SECRET_ACCESS_KEY"]),
    ]:
        create = calls.index(f"admin policy create minio {policy} {policies}/{policy}.json")
        add = calls.index(f"admin user add minio {key} {secret}")
        attach_call = calls.index(f"admin policy attach minio {policy} --user {key}")
        assert create < add < attach_call
    # Secret keys go to mc only, never to the Job's log.
    for value in (v["MINIO_ROOT_PASSWORD"], v["PIPELINE_SECRET_ACCESS_KEY"], v["MLFLOW_SECRET_ACCESS_KEY"]):
        assert value not in proc.stdout + proc.stderr


def test_bucket_job_fails_on_other_attach_errors_and_on_a_client_key_equal_to_root(tmp_path):
    (tmp_path / "a").mkdir()
    proc, _ = run_setup_minio(tmp_path / "a", "denied")
    assert proc.returncode == 1 and "Access Denied" in proc.stderr

    (tmp_path / "b").mkdir()
    proc, calls = run_setup_minio(tmp_path / "b", "ok", PIPELINE_ACCESS_KEY_ID=JOB_VALUES["MINIO_ROOT_USER"])
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith("Secret codepmp-s3 key AWS_ACCESS_KEY_ID is MinIO's root user"), line
    assert not [c for c in calls if c.startswith("admin user add")]


# --------------------------------------------------------------------------- MLflow login


def _mlflow_pod(kustomization: str = "base") -> dict:
    return find(docs(kustomization), "Deployment", "mlflow")["spec"]["template"]["spec"]


@pytest.mark.parametrize("kustomization", SERVICE_OVERLAYS)
def test_mlflow_requires_a_login_configured_by_the_admin_secret(kustomization, monkeypatch, tmp_path):
    pod = _mlflow_pod(kustomization)
    (server,) = pod["containers"]
    env = {e["name"]: e for e in server["env"]}
    for key in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "codepmp-mlflow-admin", "key": key}

    # The config file is the rendered ConfigMap, where MLFLOW_AUTH_CONFIG_PATH says.
    config_path = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    volume = {v["name"]: v for v in pod["volumes"]}[mounts[str(config_path.parent)]]
    configmap = find(docs(kustomization), "ConfigMap", volume["configMap"]["name"])
    ini = configmap["data"][config_path.name]

    # Read with MLflow's own reader, so a key it does not know or a bad value shows up here.
    from mlflow.server.auth.config import read_auth_config

    local = tmp_path / config_path.name
    local.write_text(ini)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(local))
    for key in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    config = read_auth_config()
    assert config.default_permission == "NO_PERMISSIONS"
    assert config.authorization_function == "mlflow.server.auth:authenticate_request_basic_auth"
    # No secret in the file: the admin comes from the Secret as env, the database password as PGPASSWORD.
    assert config.admin_username is None and config.admin_password is None
    database = urlparse(config.database_uri)
    assert database.scheme == "postgresql+psycopg2" and database.hostname == "mlflow-postgres"
    assert database.password is None
    assert config.database_uri == env["MLFLOW_BACKEND_STORE_URI"]["value"], "one database for runs and users"
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-postgres"

    # Probes use /health, which basic-auth leaves open.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert server[probe]["httpGet"]["path"] == "/health"


def test_mlflow_users_job_signs_in_as_admin_and_creates_the_pipeline_login():
    job = find(docs("base"), "Job", "codepmp-mlflow-users")["spec"]["template"]["spec"]
    (container,) = job["containers"]
    assert container["command"] == ["python", f"{SCRIPTS_MOUNT}/create-mlflow-user.py"]
    refs = {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container["env"]
        if "valueFrom" in e
    }
    assert refs == {
        "MLFLOW_AUTH_ADMIN_USERNAME": ("codepmp-mlflow-admin", "MLFLOW_AUTH_ADMIN_USERNAME"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ("codepmp-mlflow-admin", "MLFLOW_AUTH_ADMIN_PASSWORD"),
        "MLFLOW_TRACKING_USERNAME": ("codepmp-s3", "MLFLOW_TRACKING_USERNAME"),
        "MLFLOW_TRACKING_PASSWORD": ("codepmp-s3", "MLFLOW_TRACKING_PASSWORD"),
    }
    url = urlparse({e["name"]: e.get("value") for e in container["env"]}["MLFLOW_URL"])
    service = find(docs("base"), "Service", "mlflow")
    assert url.hostname == "mlflow" and url.port in [p["port"] for p in service["spec"]["ports"]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


ADMIN = ("codepmp-admin", "admin-password-0123")
PIPELINE = ("codepmp-pipeline", "pipeline-password-0123")


@pytest.fixture(scope="module")
def mlflow_with_login(tmp_path_factory):
    """`mlflow server --app-name basic-auth` with the rendered auth config, users and runs in one sqlite
    database as they share one Postgres database on the cluster."""
    pytest.importorskip("flask_wtf", reason="mlflow[auth] is not installed")
    work = tmp_path_factory.mktemp("mlflow-login")
    database = f"sqlite:///{work / 'mlflow.db'}"
    ini = rendered_file("mlflow-auth", "mlflow-auth.ini").replace(
        "postgresql+psycopg2://mlflow@mlflow-postgres:5432/mlflow", database
    )
    assert database in ini
    (work / "auth.ini").write_text(ini)
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "MLFLOW_AUTH_CONFIG_PATH": str(work / "auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "0123456789abcdef0123456789abcdef",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    log = open(work / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--backend-store-uri", database,
         "--artifacts-destination", str(work / "artifacts"), "--serve-artifacts"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work, process_group=0,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _status(f"{base}/health") == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("MLflow did not start:\n" + (work / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield base, work
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def run_user_job(base: str, work: Path, admin=ADMIN, pipeline=PIPELINE) -> subprocess.CompletedProcess:
    script = work / "create-mlflow-user.py"
    script.write_text(rendered_file("codepmp-scripts", "create-mlflow-user.py"))
    env = {
        "PATH": os.environ["PATH"],
        "NO_PROXY": "127.0.0.1",
        "MLFLOW_URL": base,
        "MLFLOW_WAIT_S": "30",
        "MLFLOW_AUTH_ADMIN_USERNAME": admin[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
        "MLFLOW_TRACKING_USERNAME": pipeline[0],
        "MLFLOW_TRACKING_PASSWORD": pipeline[1],
    }
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)


def test_real_mlflow_demands_a_login_and_the_job_makes_the_pipeline_one(mlflow_with_login):
    base, work = mlflow_with_login
    search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(f"{base}/health") == 200, "the probes' path must stay open"
    assert _status(search) == 401
    assert _status(search, PIPELINE) == 401

    proc = run_user_job(base, work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "created MLflow user codepmp-pipeline"
    assert _status(search, PIPELINE) == 200

    # Rerun: the user exists, and its password becomes the Secret's (a rotation).
    rotated = (PIPELINE[0], "rotated-password-0123")
    proc = run_user_job(base, work, pipeline=rotated)
    assert proc.returncode == 0, proc.stderr
    assert "exists; its password is the one in Secret codepmp-s3" in proc.stdout
    assert _status(search, rotated) == 200
    proc = run_user_job(base, work)
    assert proc.returncode == 0, proc.stderr

    # A wrong admin password stops the Job with one line naming the Secret.
    proc = run_user_job(base, work, admin=(ADMIN[0], "wrong-password-0123"))
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert "codepmp-mlflow-admin (HTTP 401)" in line
    # The pipeline's name may not be the admin's.
    proc = run_user_job(base, work, pipeline=(ADMIN[0], "whatever-password-0123"))
    assert proc.returncode == 1 and "names MLflow's admin" in proc.stderr


def test_pipeline_login_may_do_what_the_pipeline_does_and_no_more(mlflow_with_login):
    base, work = mlflow_with_login
    assert run_user_job(base, work).returncode == 0
    script = textwrap.dedent(
        """
        import mlflow, sys, tempfile
        from mlflow.exceptions import MlflowException
        client = mlflow.MlflowClient()
        experiment = client.create_experiment("codepmp-login-check")
        mlflow.set_experiment(experiment_id=experiment)
        with mlflow.start_run() as run:
            mlflow.log_metric("loss", 1.0, step=1)
            mlflow.log_param("stage", "pretrain")
            folder = tempfile.mkdtemp()
            open(folder + "/note.txt", "w").write("x")
            mlflow.log_artifact(folder + "/note.txt")
        assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [1.0]
        client.create_registered_model("codepmp-login-check")
        version = client.create_model_version("codepmp-login-check", run.info.artifact_uri, run_id=run.info.run_id)
        client.set_registered_model_alias("codepmp-login-check", "champion", version.version)
        client.set_model_version_tag("codepmp-login-check", version.version, "gate", "passed")
        assert client.get_registered_model("codepmp-login-check").aliases == {"champion": version.version}
        try:
            client.get_experiment("0")
        except MlflowException as error:
            assert "PERMISSION_DENIED" in str(error) or "403" in str(error), error
        else:
            sys.exit("the pipeline login reads the Default experiment it did not create")
        """
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "MLFLOW_TRACKING_URI": base,
        "MLFLOW_TRACKING_USERNAME": PIPELINE[0],
        "MLFLOW_TRACKING_PASSWORD": PIPELINE[1],
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]


# --------------------------------------------------------------------------- README


def test_readme_documents_bootstrap_identities_and_rotation():
    readme = (MANIFESTS / "README.md").read_text()
    assert "sh manifests/bootstrap-secrets.sh" in readme
    assert f"sh manifests/bootstrap-secrets.sh --pipeline-namespace {PIPELINE_NAMESPACE}" in readme
    for name in SERVICE_SECRETS:
        assert f"`{name}`" in readme, name
    for heading in ("## Secrets", "### Rotation", "### Upgrading from one shared key"):
        assert heading in readme, heading
