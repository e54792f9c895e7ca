"""`make submit` against a fake KFP v2beta1 API server started here, which records every request.

    .venv/bin/python -m pytest -q tests/pipeline/test_submit.py

The fake implements only the calls `codepmp submit` makes (healthz, pipelines, upload, upload_version, experiments,
runs), keeps state in memory, and can require a bearer token or declare a multi-user deployment.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from codepmp.errors import CodepmpError, ConfigError, ServiceError
from pipelines.run import KfpClient, RunFailed, compile_pipeline, run_parameters, submit, wait_for_run

REPO = Path(__file__).resolve().parents[2]
API = "/apis/v2beta1"
TOKEN = "s3cret-token"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeKfp:
    """In-memory KFP API state; `url` is set once the server listens."""

    url: str = ""
    token: str | None = None
    """When set, every request must carry `Authorization: Bearer <token>` (401 otherwise)."""
    multi_user: bool = False
    states: list[str] = field(default_factory=lambda: ["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"])
    """States a run goes through, one per GET of it; the last one stays."""
    run_error: str = ""
    unavailable_polls: int = 0
    """GETs of a run answered 503 before the states start (an API server restarting)."""
    requests: list[Recorded] = field(default_factory=list)
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, dict] = field(default_factory=dict)
    experiments: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def called(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == API + path]

    def handle(self, method: str, path: str, query: dict, headers: dict, body: bytes) -> tuple[int, dict]:
        with self.lock:
            self.requests.append(Recorded(method, path, query, headers, body))
            if self.token and headers.get("Authorization") != f"Bearer {self.token}":
                return 401, {"error": "Unauthenticated", "code": 16, "message": "Unauthenticated: no valid token"}
            route = path.removeprefix(API)
            if (method, route) == ("GET", "/healthz"):
                return 200, {"multi_user": self.multi_user, "pipeline_store": "database"}
            if (method, route) == ("GET", "/pipelines"):
                return 200, self._list("pipelines", self.pipelines, query)
            if (method, route) == ("POST", "/pipelines/upload"):
                name, _ = uploaded(headers, body)
                pipeline = {"pipeline_id": str(uuid.uuid4()), "name": query["name"], "display_name": query["name"],
                            "namespace": query.get("namespace", "")}
                self.pipelines[pipeline["pipeline_id"]] = pipeline
                self._version(pipeline["pipeline_id"], query["name"], body, headers)  # KFP's default first version
                return 200, pipeline
            if (method, route) == ("POST", "/pipelines/upload_version"):
                if query.get("pipelineid") not in self.pipelines:
                    return 404, {"code": 5, "message": f"pipeline {query.get('pipelineid')} not found"}
                if any(v["pipeline_id"] == query["pipelineid"] and v["name"] == query["name"]
                       for v in self.versions.values()):
                    return 409, {"code": 6, "message": f"version name {query['name']} already exists"}
                return 200, self._version(query["pipelineid"], query["name"], body, headers)
            if (method, route) == ("GET", "/experiments"):
                return 200, self._list("experiments", self.experiments, query)
            if (method, route) == ("POST", "/experiments"):
                experiment = {**json.loads(body), "experiment_id": str(uuid.uuid4())}
                self.experiments[experiment["experiment_id"]] = experiment
                return 200, experiment
            if (method, route) == ("POST", "/runs"):
                run = {**json.loads(body), "run_id": str(uuid.uuid4()), "state": self.states[0]}
                if run["experiment_id"] not in self.experiments:
                    return 400, {"code": 3, "message": "unknown experiment"}
                if run["pipeline_version_reference"]["pipeline_version_id"] not in self.versions:
                    return 400, {"code": 3, "message": "unknown pipeline version"}
                self.runs[run["run_id"]] = run
                return 200, run
            if method == "GET" and route.startswith("/runs/") and route.split("/")[2] in self.runs:
                run_id = route.split("/")[2]
                if self.unavailable_polls > 0:
                    self.unavailable_polls -= 1
                    return 503, {"code": 14, "message": "upstream connect error"}
                self.polls[run_id] = self.polls.get(run_id, -1) + 1
                state = self.states[min(self.polls[run_id], len(self.states) - 1)]
                run = {**self.runs[run_id], "state": state}
                if state == "FAILED" and self.run_error:
                    run["error"] = {"code": 2, "message": self.run_error}
                return 200, run
            return 404, {"code": 5, "message": f"no route {method} {path}"}

    def _list(self, key: str, items: dict, query: dict) -> dict:
        """Honour the display_name EQUALS filter and the namespace; KFP leaves an empty list out."""
        found = list(items.values())
        for predicate in json.loads(query.get("filter", '{"predicates": []}'))["predicates"]:
            assert (predicate["key"], predicate["operation"]) in {("display_name", 1), ("display_name", "EQUALS")}
            found = [item for item in found if item["display_name"] == predicate["stringValue"]]
        if "namespace" in query:
            found = [item for item in found if item.get("namespace", "") == query["namespace"]]
        return {key: found, "total_size": len(found)} if found else {}

    def _version(self, pipeline_id: str, name: str, body: bytes, headers: dict) -> dict:
        filename, package = uploaded(headers, body)
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": str(uuid.uuid4()), "name": name,
                   "display_name": name, "filename": filename, "package": package}
        self.versions[version["pipeline_version_id"]] = version
        return {k: v for k, v in version.items() if k not in ("filename", "package")}


def uploaded(headers: dict, body: bytes) -> tuple[str, bytes]:
    """(filename, content) of the multipart `uploadfile` field, as the KFP upload handlers read it."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body)
    (part,) = [p for p in message.iter_parts() if p.get_param("name", header="content-disposition") == "uploadfile"]
    return part.get_filename(), part.get_payload(decode=True)


@pytest.fixture
def kfp():
    fake = FakeKfp()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            url = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            status, payload = fake.handle(self.command, url.path, query, dict(self.headers), body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The pipeline compiled once for the module (a few seconds)."""
    return Path(compile_pipeline(str(tmp_path_factory.mktemp("compiled") / "codepmp.yaml")))


@pytest.fixture
def kfp_env(monkeypatch, tmp_path):
    """No KFP or in-cluster settings from the caller's shell; the token file points nowhere."""
    for name in ("KFP_HOST", "KFP_TOKEN", "KFP_NAMESPACE", "KFP_UI_HOST", "KFP_IN_CLUSTER_HOST",
                 "KFP_EXPERIMENT", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KFP_TOKEN_FILE", str(tmp_path / "no-token"))
    return monkeypatch


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KFP_") and k != "KUBERNETES_SERVICE_HOST"}
    return {**env, "KFP_TOKEN_FILE": "/nonexistent/kfp-token", **extra}


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "codepmp.cli", "submit", *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=REPO)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1] if text.strip() else ""


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_submit_sends_the_compiled_package_and_parameters_and_waits(kfp, package, tmp_path):
    kfp.token = TOKEN
    params = tmp_path / "run.yaml"
    params.write_text(yaml.safe_dump({"profile": "tiny", "overrides": {"pretrain": {"lr": 1e-5}},
                                      "run_name": "nightly-7"}))
    venv = Path(sys.prefix)
    proc = subprocess.run(
        ["make", "--no-print-directory", "-o", f"{venv}/.installed", "submit", f"VENV={venv}", "WAIT=1",
         "EXPERIMENT=codepmp-ci", f"PARAMS={params}", f"ARGS=--package {package} --set crawl.max_files=7 --poll 0.01"],
        capture_output=True, text=True, env=clean_env(KFP_HOST=kfp.url, KFP_TOKEN=TOKEN), timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr

    (run,) = kfp.runs.values()
    assert last_line(proc.stdout) == f"{kfp.url}/#/runs/details/{run['run_id']}"
    assert run["runtime_config"]["parameters"] == {
        "profile": "tiny", "overrides": {"pretrain": {"lr": 1e-5}, "crawl": {"max_files": 7}}, "run_name": "nightly-7"}
    assert run["display_name"] == "nightly-7"
    # The run uses the version uploaded for it, whose content is the compiled codepmp pipeline.
    version = kfp.versions[run["pipeline_version_reference"]["pipeline_version_id"]]
    assert version["package"] == package.read_bytes() and version["filename"] == "codepmp.yaml"
    spec = next(yaml.safe_load_all(version["package"]))
    assert spec["pipelineInfo"]["name"] == "codepmp"
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"profile", "overrides", "run_name"}
    assert re.fullmatch(r"codepmp-\d{8}-\d{6}-[0-9a-f]{8}-[0-9a-f]{4}", version["name"])
    assert kfp.pipelines[run["pipeline_version_reference"]["pipeline_id"]]["display_name"] == "codepmp"
    (experiment,) = kfp.experiments.values()
    assert experiment["display_name"] == "codepmp-ci" and run["experiment_id"] == experiment["experiment_id"]
    # Every request authenticated; health checked before anything was uploaded.
    assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in kfp.requests)
    assert kfp.requests[0].path == f"{API}/healthz"
    # --wait followed the run to its end, printing each state once.
    assert [s for s in ("PENDING", "RUNNING", "SUCCEEDED") if f": {s} after" in proc.stderr] == [
        "PENDING", "RUNNING", "SUCCEEDED"]
    assert proc.stderr.count(": RUNNING after") == 1


def test_second_submit_reuses_the_pipeline_and_adds_a_version(kfp, kfp_env, package):
    kfp_env.setenv("KFP_HOST", kfp.url)
    client = KfpClient.connect()
    first = submit(client, str(package), run_parameters(None, "tiny", {}, "a"))
    second = submit(client, str(package), run_parameters(None, "tiny", {}, "a"))
    assert len(kfp.pipelines) == 1 and len(kfp.experiments) == 1
    assert first.pipeline_id == second.pipeline_id and first.experiment_id == second.experiment_id
    assert first.pipeline_version_id != second.pipeline_version_id
    assert len(kfp.called("POST", "/pipelines/upload")) == 1
    uploads = kfp.called("POST", "/pipelines/upload_version")
    assert len(uploads) == 2 and all(u.query["pipelineid"] == first.pipeline_id for u in uploads)
    assert first.run_id != second.run_id and second.url == f"{kfp.url}/#/runs/details/{second.run_id}"
    assert "Authorization" not in kfp.requests[0].headers  # no token configured, none sent


def test_wait_reports_state_changes_and_a_failed_run(kfp, kfp_env, package, capsys):
    kfp_env.setenv("KFP_HOST", kfp.url)
    client = KfpClient.connect()
    done = submit(client, str(package), run_parameters(None, "tiny", {}))
    assert wait_for_run(client, done.run_id, poll_s=0.01, timeout_s=30) == "SUCCEEDED"
    assert [line.split(": ")[1].split()[0] for line in capsys.readouterr().err.splitlines()
            if line.startswith(f"run {done.run_id}:")] == ["PENDING", "RUNNING", "SUCCEEDED"]

    kfp.states, kfp.run_error = ["RUNNING", "FAILED"], "pretrain: CUDA out of memory"
    failed = submit(client, str(package), run_parameters(None, "tiny", {}, "oom"))
    with pytest.raises(RunFailed, match="run oom ended FAILED: pretrain: CUDA out of memory") as exc:
        wait_for_run(client, failed.run_id, poll_s=0.01, timeout_s=30)
    assert failed.url in str(exc.value)
    kfp.states = ["CANCELED"]
    canceled = submit(client, str(package), run_parameters(None, "tiny", {}))
    with pytest.raises(RunFailed, match="ended CANCELED"):
        wait_for_run(client, canceled.run_id, poll_s=0.01, timeout_s=30)


def test_wait_rides_out_a_restarting_api_and_gives_up_after_its_timeout(kfp, kfp_env, package, capsys):
    kfp_env.setenv("KFP_HOST", kfp.url)
    client = KfpClient.connect()
    kfp.unavailable_polls = 2
    run = submit(client, str(package), run_parameters(None, "tiny", {}))
    assert wait_for_run(client, run.run_id, poll_s=0.01, timeout_s=30) == "SUCCEEDED"
    assert capsys.readouterr().err.count("poll failed (") == 2
    kfp.states = ["RUNNING"]
    stuck = submit(client, str(package), run_parameters(None, "tiny", {}))
    with pytest.raises(CodepmpError, match=f"run {stuck.run_id} still RUNNING after 0s; it goes on running"):
        wait_for_run(client, stuck.run_id, poll_s=0.01, timeout_s=0.2)
    kfp.unavailable_polls = 100
    with pytest.raises(ServiceError, match="HTTP 503 on GET /runs/"):
        wait_for_run(client, stuck.run_id, poll_s=0.01, timeout_s=30, max_unavailable=3)


def test_failed_run_exits_non_zero_at_the_cli(kfp, package):
    kfp.states, kfp.run_error = ["PENDING", "FAILED"], "evaluate: no such model"
    proc = cli("--package", str(package), "--profile", "tiny", "--wait", "--poll", "0.01",
               env=clean_env(KFP_HOST=kfp.url))
    (run,) = kfp.runs.values()
    assert proc.returncode == 2
    assert last_line(proc.stderr) == (f"codepmp submit: error: run {run['display_name']} ended FAILED: evaluate: "
                                      f"no such model; see {kfp.url}/#/runs/details/{run['run_id']}")
    assert last_line(proc.stdout) == f"{kfp.url}/#/runs/details/{run['run_id']}"  # printed before waiting


def test_server_that_needs_a_token_and_gets_none_names_kfp_token(kfp, package):
    kfp.token = TOKEN
    proc = cli("--package", str(package), env=clean_env(KFP_HOST=kfp.url))
    line = last_line(proc.stderr)
    assert proc.returncode == 2 and line.startswith("codepmp submit: error:")
    assert "export KFP_TOKEN=" in line and kfp.url in line and "HTTP 401" in line
    assert [r.path for r in kfp.requests] == [f"{API}/healthz"]  # nothing uploaded

    proc = cli("--package", str(package), env=clean_env(KFP_HOST=kfp.url, KFP_TOKEN="expired"))
    assert proc.returncode == 2 and "rejected the bearer token from KFP_TOKEN" in last_line(proc.stderr)
    assert not kfp.runs


def test_unreachable_host_is_named(package):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host = f"http://127.0.0.1:{s.getsockname()[1]}"
    proc = cli("--package", str(package), env=clean_env(KFP_HOST=host))
    line = last_line(proc.stderr)
    assert proc.returncode == 2 and f"KFP_HOST={host} is unreachable" in line and "port-forward" in line


def test_in_cluster_defaults_use_the_service_host_and_the_rotating_token_file(kfp, kfp_env, package, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    kfp.token = TOKEN
    kfp_env.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    kfp_env.setenv("KFP_IN_CLUSTER_HOST", kfp.url)
    kfp_env.setenv("KFP_TOKEN_FILE", str(token_file))
    client = KfpClient.connect()
    assert client.endpoint.in_cluster and "KFP_HOST is unset" in client.endpoint.where
    run = submit(client, str(package), run_parameters(None, "tiny", {}))
    assert run.url == f"{kfp.url}/#/runs/details/{run.run_id}"
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in kfp.requests)
    # Kubelet rotates the projected token: a long --wait must pick up the new one.
    kfp.token = "rotated"
    token_file.write_text("rotated")
    assert wait_for_run(client, run.run_id, poll_s=0.01, timeout_s=30) == "SUCCEEDED"
    assert kfp.requests[-1].headers["Authorization"] == "Bearer rotated"


def test_no_host_outside_a_cluster_and_unreachable_in_cluster_default(kfp_env):
    with pytest.raises(ServiceError, match="KFP_HOST is not set"):
        KfpClient.connect()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host = f"http://127.0.0.1:{s.getsockname()[1]}"
    kfp_env.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    kfp_env.setenv("KFP_IN_CLUSTER_HOST", host)
    with pytest.raises(ServiceError, match=f"in-cluster KFP API {host} .*unreachable.*set KFP_HOST"):
        KfpClient.connect()


def test_multi_user_deployment_needs_a_namespace_and_uses_it(kfp, kfp_env, package):
    kfp.multi_user = True
    kfp_env.setenv("KFP_HOST", kfp.url)
    with pytest.raises(ServiceError, match="multi-user.*KFP_NAMESPACE"):
        KfpClient.connect()
    kfp_env.setenv("KFP_NAMESPACE", "kubeflow-user-example-com")
    client = KfpClient.connect()
    submit(client, str(package), run_parameters(None, "tiny", {}), service_account="codepmp-pipeline")
    (experiment,) = kfp.experiments.values()
    (pipeline,) = kfp.pipelines.values()
    (run,) = kfp.runs.values()
    assert experiment["namespace"] == pipeline["namespace"] == "kubeflow-user-example-com"
    assert run["service_account"] == "codepmp-pipeline"


def test_params_file_layers_and_unknown_keys(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"profile": "paper", "overrides": {"pretrain": {"lr": 1e-6, "epochs": 2}},
                                      "run_name": "from-file"}))
    merged = run_parameters(str(params), "local", {"pretrain": {"lr": 3e-6}})
    assert merged.as_dict() == {"profile": "paper", "overrides": {"pretrain": {"lr": 3e-6, "epochs": 2}},
                                "run_name": "from-file"}
    assert run_parameters(str(params), "local", {}, "cli-name").run_name == "cli-name"
    assert run_parameters(None, "tiny", {}).run_name.startswith("tiny-")
    params.write_text(yaml.safe_dump({"profile": "tiny", "overide": {}}))
    with pytest.raises(ConfigError, match=rf"--params {re.escape(str(params))}: unknown key 'overide'"):
        run_parameters(str(params), "local", {})


def test_bad_params_key_and_bad_package_fail_before_any_upload(kfp, tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("runname: x\n")
    proc = cli("--params", str(params), env=clean_env(KFP_HOST=kfp.url))
    assert proc.returncode == 2 and "unknown key 'runname'" in last_line(proc.stderr) and not kfp.requests
    not_a_pipeline = tmp_path / "p2.yaml"
    not_a_pipeline.write_text("a: 1\n")
    proc = cli("--package", str(not_a_pipeline), env=clean_env(KFP_HOST=kfp.url))
    assert proc.returncode == 2 and "is not a compiled KFP pipeline" in last_line(proc.stderr)
    assert [r.path for r in kfp.requests] == [f"{API}/healthz"]
