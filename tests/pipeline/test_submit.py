"""`make submit` through the generated KFP client against a fake KFP v2beta1 API server started here.

    .venv/bin/python -m pytest -q tests/pipeline/test_submit.py

The fake (kfp_fake.py) checks every request against the upstream swagger, answers with the generated kfp_server_api
models, records what it was sent, and can require a bearer token, declare a multi-user deployment, report a backend
version, stand behind a login page, or answer 503 while "restarting".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from kfp_fake import API, FakeKfp, serving

from codepmp.errors import CodepmpError, ConfigError, ServiceError
from codepmp_kfp.pipelines.run import (MIN_BACKEND, KfpClient, RunFailed, compile_pipeline, run_parameters, submit,
                                       wait_for_run)

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
SHELL_SETTINGS = ("KUBERNETES_SERVICE_HOST", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
"""Settings of the caller's shell that would send the client elsewhere than the fake."""


@pytest.fixture
def kfp():
    with serving(FakeKfp()) as fake:
        yield fake
    assert not fake.violations, "requests or answers outside the upstream v2beta1 swagger"


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The pipeline compiled once for the module (a few seconds)."""
    return Path(compile_pipeline(str(tmp_path_factory.mktemp("compiled") / "codepmp.yaml")))


@pytest.fixture
def kfp_env(monkeypatch, tmp_path):
    """No KFP or in-cluster settings from the caller's shell; the token file points nowhere."""
    for name in ("KFP_HOST", "KFP_TOKEN", "KFP_NAMESPACE", "KFP_UI_HOST", "KFP_IN_CLUSTER_HOST",
                 "KFP_EXPERIMENT", *SHELL_SETTINGS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KFP_TOKEN_FILE", str(tmp_path / "no-token"))
    return monkeypatch


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KFP_") and k not in SHELL_SETTINGS}
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
    assert "Traceback" not in proc.stderr and "warning" not in proc.stderr

    (run,) = kfp.runs.values()
    assert last_line(proc.stdout) == f"{kfp.url}/#/runs/details/{run.run_id}"
    assert run.runtime_config.parameters == {
        "profile": "tiny", "overrides": {"pretrain": {"lr": 1e-5}, "crawl": {"max_files": 7}}, "run_name": "nightly-7"}
    assert run.display_name == "nightly-7" and run.service_account is None
    # The run uses the version uploaded for it, whose content is the compiled codepmp pipeline.
    version = kfp.versions[run.pipeline_version_reference.pipeline_version_id]
    assert kfp.packages[version.pipeline_version_id] == ("codepmp.yaml", package.read_bytes())
    spec = next(yaml.safe_load_all(package.read_bytes()))
    assert spec["pipelineInfo"]["name"] == "codepmp"
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"profile", "overrides", "run_name"}
    assert re.fullmatch(r"codepmp-\d{8}-\d{6}-[0-9a-f]{8}-[0-9a-f]{4}", version.name)
    assert version.description.startswith(f"sha256 {hashlib.sha256(package.read_bytes()).hexdigest()}")
    assert kfp.pipelines[run.pipeline_version_reference.pipeline_id].display_name == "codepmp"
    (experiment,) = kfp.experiments.values()
    assert experiment.display_name == "codepmp-ci" and run.experiment_id == experiment.experiment_id
    # Every request authenticated; health checked before anything was uploaded.
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in kfp.requests)
    assert kfp.requests[0].path == f"{API}/healthz"
    # --wait followed the run to its end, printing each state once.
    assert [s for s in ("PENDING", "RUNNING", "SUCCEEDED") if f": {s} after" in proc.stderr] == [
        "PENDING", "RUNNING", "SUCCEEDED"]
    assert proc.stderr.count(": RUNNING after") == 1


def test_requests_are_built_by_the_generated_client(kfp, kfp_env, package):
    """What goes over the wire: a pipeline created from the package, then versions uploaded to it, the experiment
    looked up by an upstream v2beta1Filter, and a run that names the version and carries the three parameters."""
    kfp_env.setenv("KFP_HOST", kfp.url)
    client = KfpClient.connect()
    done = submit(client, str(package), run_parameters(None, "tiny", {"evaluate": {"n": [1, 2]}}, "r1"),
                  experiment="exp", service_account="codepmp-pipeline")
    assert [f"{r.method} {r.path.removeprefix(API)}" for r in kfp.requests] == [
        "GET /healthz", "GET /pipelines", "POST /pipelines/upload", "POST /pipelines/upload_version",
        "GET /experiments", "POST /experiments", "POST /runs"]
    for listing in (kfp.called("GET", "/pipelines")[0], kfp.called("GET", "/experiments")[0]):
        assert json.loads(listing.query["filter"]) == {
            "predicates": [{"operation": "EQUALS", "key": "display_name", "string_value": "codepmp" if
                            listing.path.endswith("pipelines") else "exp"}]}
        assert listing.query["page_size"] == "100" and "namespace" not in listing.query
    upload = kfp.called("POST", "/pipelines/upload")[0]
    assert upload.query["name"] == "codepmp" and "namespace" not in upload.query
    assert upload.headers["content-type"].startswith("multipart/form-data; boundary=")
    version = kfp.called("POST", "/pipelines/upload_version")[0]
    assert version.query["pipelineid"] == done.pipeline_id and version.query["name"].startswith("codepmp-")
    assert kfp.called("POST", "/experiments")[0].json == {"display_name": "exp"}
    assert kfp.called("POST", "/runs")[0].json == {
        "display_name": "r1", "experiment_id": done.experiment_id, "service_account": "codepmp-pipeline",
        "pipeline_version_reference": {"pipeline_id": done.pipeline_id, "pipeline_version_id": done.pipeline_version_id},
        "runtime_config": {"parameters": {"profile": "tiny", "overrides": {"evaluate": {"n": [1, 2]}}, "run_name": "r1"}}}
    assert all(r.headers["content-type"] == "application/json" for r in kfp.requests if r.method == "POST"
               and "upload" not in r.path)


def test_the_fake_refuses_requests_outside_the_upstream_swagger(kfp):
    """The contract check that every other test relies on does catch a malformed request."""
    bad_body = urllib.request.Request(f"{kfp.url}{API}/runs", method="POST", headers={"Content-Type": "application/json"},
                                      data=json.dumps({"display_name": "x", "runtime_config": {"params": {}}}).encode())
    for request in (bad_body, f"{kfp.url}{API}/pipelines?pagesize=5"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 400
    assert kfp.violations == ["POST /apis/v2beta1/runs: body.runtime_config: field 'params' is not in the schema",
                              "GET /apis/v2beta1/pipelines: query parameter 'pagesize' is not declared"]
    kfp.violations.clear()


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
    assert "authorization" not in kfp.requests[0].headers  # no token configured, none sent


def test_wait_reports_state_changes_and_a_failed_or_canceled_run(kfp, kfp_env, package, capsys):
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
    # CANCELING is not the end; CANCELED is, and it is no success.
    kfp.states = ["RUNNING", "CANCELING", "CANCELED"]
    canceled = submit(client, str(package), run_parameters(None, "tiny", {}, "stopped"))
    with pytest.raises(RunFailed, match=rf"^run stopped ended CANCELED; see {re.escape(canceled.url)}$"):
        wait_for_run(client, canceled.run_id, poll_s=0.01, timeout_s=30)
    assert kfp.polls[canceled.run_id] == 2


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
    with pytest.raises(ServiceError, match=f"HTTP 503 on GET /runs/{stuck.run_id} failed: upstream connect error"):
        wait_for_run(client, stuck.run_id, poll_s=0.01, timeout_s=30, max_unavailable=3)
    assert kfp.unavailable_polls == 97


def test_interrupted_wait_says_the_run_goes_on(kfp, kfp_env, package, monkeypatch):
    kfp_env.setenv("KFP_HOST", kfp.url)
    client = KfpClient.connect()
    run = submit(client, str(package), run_parameters(None, "tiny", {}))

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr("codepmp_kfp.pipelines.run.time.sleep", interrupt)
    with pytest.raises(CodepmpError, match=f"^stopped following run {run.run_id}; it goes on running: {re.escape(run.url)}$"):
        wait_for_run(client, run.run_id, poll_s=5)


@pytest.mark.parametrize("state, error", [("FAILED", "evaluate: no such model"), ("CANCELED", "")])
def test_failed_or_canceled_run_exits_non_zero_at_the_cli(kfp, package, state, error):
    kfp.states, kfp.run_error = ["PENDING", state], error
    proc = cli("--package", str(package), "--profile", "tiny", "--wait", "--poll", "0.01",
               env=clean_env(KFP_HOST=kfp.url))
    (run,) = kfp.runs.values()
    assert proc.returncode == 2
    assert last_line(proc.stderr) == (f"codepmp submit: error: run {run.display_name} ended {state}"
                                      f"{': ' + error if error else ''}; see {kfp.url}/#/runs/details/{run.run_id}")
    assert last_line(proc.stdout) == f"{kfp.url}/#/runs/details/{run.run_id}"  # printed before waiting


@pytest.mark.parametrize("tag_name", ["2.4.1", "2.0.0", "2.14.0"])
def test_backend_older_than_the_minimum_is_refused_before_anything_is_uploaded(kfp, kfp_env, tag_name):
    kfp.tag_name = tag_name
    kfp_env.setenv("KFP_HOST", kfp.url)
    with pytest.raises(ServiceError) as refused:
        KfpClient.connect()
    message = str(refused.value)
    assert f"runs KFP {tag_name}" in message and f"needs KFP {MIN_BACKEND} or newer" in message
    assert "\n" not in message
    assert [r.path for r in kfp.requests] == [f"{API}/healthz"]


def test_old_backend_refusal_at_the_cli(kfp, package):
    kfp.tag_name = "2.4.1"
    proc = cli("--package", str(package), env=clean_env(KFP_HOST=kfp.url))
    assert proc.returncode == 2
    assert last_line(proc.stderr) == (
        f"codepmp submit: error: KFP_HOST={kfp.url} runs KFP 2.4.1, but the compiled pipeline needs KFP {MIN_BACKEND} "
        f"or newer (secretNameParameter, optional secretAsEnv): upgrade Kubeflow Pipelines to {MIN_BACKEND}+ or point "
        "KFP_HOST at one that runs it")
    assert [r.path for r in kfp.requests] == [f"{API}/healthz"] and not kfp.pipelines


@pytest.mark.parametrize("tag_name", [MIN_BACKEND, "2.17.0", "v2.16.1", "2.16.0-rc.1"])
def test_backend_at_or_past_the_minimum_is_accepted(kfp, kfp_env, tag_name, capsys):
    kfp.tag_name = tag_name
    kfp_env.setenv("KFP_HOST", kfp.url)
    KfpClient.connect()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("tag_name", ["unknown", None])
def test_backend_that_does_not_report_its_version_gets_a_warning(kfp, kfp_env, package, tag_name, capsys):
    """Upstream images built without TAG_NAME (2.5.0 to 2.15.x) say "unknown": warn, then submit."""
    kfp.tag_name = tag_name
    kfp_env.setenv("KFP_HOST", kfp.url)
    submit(KfpClient.connect(), str(package), run_parameters(None, "tiny", {}))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: KFP_HOST={kfp.url} does not report its KFP version (tag_name {tag_name!r}); this "
                        f"pipeline needs KFP {MIN_BACKEND} or newer, and on an older backend its pods fail at start"]
    assert len(kfp.runs) == 1


def test_the_package_uses_what_sets_the_minimum_backend(package):
    """MIN_BACKEND_VERSION rests on the compiled package using secretNameParameter (KFP 2.5+) and optional
    secretAsEnv (KFP 2.15+); if either goes away, the minimum can come down."""
    _, platform = yaml.safe_load_all(package.read_text())
    secrets = [entry for executor in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
               for entry in executor.get("secretAsEnv", [])]
    assert secrets and all("secretNameParameter" in entry for entry in secrets)
    assert any(entry.get("optional") for entry in secrets)
    assert MIN_BACKEND == "2.15.0"


def test_server_that_needs_a_token_and_gets_none_names_kfp_token(kfp, package):
    kfp.token = TOKEN
    proc = cli("--package", str(package), env=clean_env(KFP_HOST=kfp.url))
    line = last_line(proc.stderr)
    assert proc.returncode == 2 and line.startswith("codepmp submit: error:")
    assert "export KFP_TOKEN=" in line and kfp.url in line and "HTTP 401 on GET /healthz" in line
    assert "no valid bearer token" in line
    assert [r.path for r in kfp.requests] == [f"{API}/healthz"]  # nothing uploaded

    proc = cli("--package", str(package), env=clean_env(KFP_HOST=kfp.url, KFP_TOKEN="expired"))
    assert proc.returncode == 2 and "rejected the bearer token from KFP_TOKEN" in last_line(proc.stderr)
    assert kfp.requests[-1].headers["authorization"] == "Bearer expired"
    assert not kfp.runs


def test_expired_service_account_token_is_named(kfp, kfp_env, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("stale")
    kfp.token = TOKEN
    kfp_env.setenv("KFP_HOST", kfp.url)
    kfp_env.setenv("KFP_TOKEN_FILE", str(token_file))
    with pytest.raises(ServiceError, match=f"rejected the bearer token from the service-account token file "
                                           f"{re.escape(str(token_file))} .*set KFP_TOKEN to a valid token"):
        KfpClient.connect()


def test_unreachable_host_is_named(package):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host = f"http://127.0.0.1:{s.getsockname()[1]}"
    proc = cli("--package", str(package), env=clean_env(KFP_HOST=host))
    line = last_line(proc.stderr)
    assert proc.returncode == 2 and f"KFP_HOST={host} is unreachable" in line and "port-forward" in line
    assert len(proc.stderr.strip().splitlines()) == 1


def test_tls_failure_is_named(kfp, kfp_env):
    kfp_env.setenv("KFP_HOST", kfp.url.replace("http://", "https://"))
    with pytest.raises(ServiceError, match=r"is unreachable \(.*SSL.*\): check that KFP_HOST speaks https and, for a "
                                           "private CA, set SSL_CERT_FILE"):
        KfpClient.connect()
    assert not kfp.requests


def test_login_page_instead_of_the_api_is_one_clear_line(kfp, package):
    kfp.login_redirect = True
    proc = cli("--package", str(package), env=clean_env(KFP_HOST=kfp.url))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert last_line(proc.stderr) == (
        f"codepmp submit: error: KFP_HOST={kfp.url} answered GET /healthz with something other than JSON (a login "
        "page?): KFP_HOST must be the pipelines API and KFP_TOKEN a bearer token it accepts")
    assert [r.path for r in kfp.requests] == [f"{API}/healthz", "/dex/auth/local"]  # followed to the page


def test_host_without_the_v2_api_is_named(kfp, kfp_env):
    kfp_env.setenv("KFP_HOST", kfp.url + "/not-pipelines")
    with pytest.raises(ServiceError, match=r"has no KFP v2 API \(HTTP 404 on GET /healthz\): KFP_HOST must be"):
        KfpClient.connect()
    kfp.violations.clear()  # the unknown path, which is the point here


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
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in kfp.requests)
    # Kubelet rotates the projected token: a long --wait must pick up the new one.
    kfp.token = "rotated"
    token_file.write_text("rotated")
    assert wait_for_run(client, run.run_id, poll_s=0.01, timeout_s=30) == "SUCCEEDED"
    assert kfp.requests[-1].headers["authorization"] == "Bearer rotated"


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
    assert experiment.namespace == pipeline.namespace == "kubeflow-user-example-com"
    assert run.service_account == "codepmp-pipeline"
    assert all(r.query["namespace"] == "kubeflow-user-example-com" for r in kfp.requests
               if r.path.endswith(("/pipelines", "/experiments")) and r.method == "GET")
    # A second submit finds both in the namespace instead of creating them again.
    submit(client, str(package), run_parameters(None, "tiny", {}))
    assert len(kfp.pipelines) == len(kfp.experiments) == 1 and len(kfp.runs) == 2


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
