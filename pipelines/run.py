"""Run the pipeline locally through kfp.local, compile it to YAML, or submit it to Kubeflow Pipelines.

    python -m codepmp.cli run --profile local      # what `make run` does
    python -m codepmp.cli submit --profile paper [--params run.yaml] [--wait]   # `make submit [WAIT=1]`

Submitting needs KFP_HOST (and KFP_TOKEN when the endpoint wants a bearer token). Inside a cluster pod, with
KFP_HOST unset, it uses the in-cluster API service and the pod's projected service-account token.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
import urllib.parse
import urllib.request
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import kfp_server_api
import urllib3
import yaml

from codepmp.errors import CodepmpError, ConfigError, InputError, ServiceError


def run_local(profile: str, overrides: dict, run_name: str, pipeline_root: str) -> None:
    """Execute every stage as a local subprocess in this Python environment (no containers)."""
    from kfp import local

    from codepmp_kfp.pipelines.pipeline import build

    Path(pipeline_root).mkdir(parents=True, exist_ok=True)
    # The subprocess runner warns that component images are not Python images; locally they are unused.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True)
    build()(profile=profile, overrides=overrides, run_name=run_name)


def compile_pipeline(out: str, cluster_spec: str | None = None) -> str:
    """Write the pipeline YAML with Kubernetes placement from a ClusterSpec YAML (defaults if none)."""
    from kfp import compiler

    from codepmp_kfp.pipelines.cluster import ClusterSpec
    from codepmp_kfp.pipelines.pipeline import build

    spec = ClusterSpec.from_yaml(cluster_spec) if cluster_spec else ClusterSpec()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(spec), out)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Submitting to Kubeflow Pipelines through the generated v2beta1 client (kfp_server_api), so request and response
# shapes are upstream's. Not kfp.Client: its constructor writes ~/.config/kfp/context.json and retries healthz, and
# its wait does not treat CANCELED as final.

IN_CLUSTER_HOST = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
"""The KFP API service that a pod of a Kubeflow cluster reaches when KFP_HOST is unset (KFP_IN_CLUSTER_HOST overrides)."""
SA_TOKEN_FILE = "/var/run/secrets/kubeflow/pipelines/token"
"""Projected service-account token (audience pipelines.kubeflow.org) used when KFP_TOKEN is unset (KFP_TOKEN_FILE
overrides). Kubelet rotates it, so it is read again for every request."""
API = "/apis/v2beta1"
PARAMETER_KEYS = ("profile", "overrides", "run_name")
FINAL_STATES = {"SUCCEEDED": True, "SKIPPED": True, "FAILED": False, "CANCELED": False}
"""Terminal run states and whether they count as success."""
MIN_BACKEND_VERSION = (2, 15, 0)
"""Oldest KFP backend that runs the compiled pipeline. kfp-kubernetes 2.17 writes `secretNameParameter` /
`configMapNameParameter`: drivers before 2.5.0 reject them as unknown fields. It also writes `optional` on
`secretAsEnv` (the optional MLflow login and GitHub token): drivers before 2.15.0 drop it, so a Secret without
those keys stops every pod from starting."""
MIN_BACKEND = ".".join(map(str, MIN_BACKEND_VERSION))


class KfpUnavailable(ServiceError):
    """The API could not be reached or answered 5xx: worth retrying while following a long run."""


class RunFailed(CodepmpError):
    """The submitted run ended FAILED or CANCELED."""


@dataclass(frozen=True)
class RunParameters:
    """The pipeline's three parameters (see pipelines/pipeline.py)."""

    profile: str
    overrides: dict
    run_name: str

    def as_dict(self) -> dict:
        return {"profile": self.profile, "overrides": self.overrides, "run_name": self.run_name}


def _deep_merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


def run_parameters(params_file: str | None, profile: str, overrides: dict, run_name: str = "") -> RunParameters:
    """Parameters from a YAML file (keys among profile, overrides, run_name) over --profile; --set overrides and
    --run-name, being the most specific, go over the file. Unknown keys fail, so a typo is never silently dropped."""
    data: dict = {}
    if params_file:
        path = Path(params_file)
        if not path.is_file():
            raise InputError(f"--params {path}: no such file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"--params {path} is not valid YAML: {' '.join(str(exc).split())}") from None
        if not isinstance(data, dict):
            raise InputError(f"--params {path} must be a mapping with keys among {', '.join(PARAMETER_KEYS)}")
        unknown = sorted(set(data) - set(PARAMETER_KEYS))
        if unknown:
            raise ConfigError(f"--params {path}: unknown key {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join(PARAMETER_KEYS)})")
        for key, kind in (("profile", str), ("overrides", dict), ("run_name", str)):
            if key in data and not isinstance(data[key], kind):
                raise ConfigError(f"--params {path}: '{key}' must be a {kind.__name__}, got {data[key]!r}")
    profile = data.get("profile", profile)
    run_name = run_name or data.get("run_name") or f"{profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    return RunParameters(profile, _deep_merge(data.get("overrides") or {}, overrides), run_name)


@dataclass(frozen=True)
class KfpEndpoint:
    """Where the KFP API is and how to authenticate, from the environment."""

    host: str
    where: str
    """How error messages name the endpoint, including which setting chose it."""
    token_env: str = field(default="", repr=False)
    """KFP_TOKEN (kept out of repr so it is never printed)."""
    token_file: str = SA_TOKEN_FILE
    namespace: str = ""
    ui_host: str = ""
    in_cluster: bool = False

    @classmethod
    def from_env(cls, namespace: str = "") -> KfpEndpoint:
        env = os.environ
        host = env.get("KFP_HOST", "").strip().rstrip("/")
        in_cluster = not host and bool(env.get("KUBERNETES_SERVICE_HOST"))
        if host:
            where = f"KFP_HOST={host}"
        elif in_cluster:
            host = (env.get("KFP_IN_CLUSTER_HOST") or IN_CLUSTER_HOST).rstrip("/")
            where = f"the in-cluster KFP API {host} (KFP_HOST is unset)"
        else:
            raise ServiceError("KFP_HOST is not set: export KFP_HOST=https://<kubeflow-host>/pipeline "
                               f"(inside a cluster pod it defaults to {IN_CLUSTER_HOST})")
        if not host.startswith(("http://", "https://")):
            raise ServiceError(f"KFP_HOST={host} is not an http(s) URL: export KFP_HOST=https://<kubeflow-host>/pipeline")
        return cls(host, where, token_env=env.get("KFP_TOKEN", "").strip().removeprefix("Bearer ").strip(),
                   token_file=env.get("KFP_TOKEN_FILE") or SA_TOKEN_FILE,
                   namespace=namespace or env.get("KFP_NAMESPACE", ""),
                   ui_host=env.get("KFP_UI_HOST", "").rstrip("/"), in_cluster=in_cluster)

    def token(self) -> tuple[str, str] | None:
        """(where it came from, bearer token), or None to send no Authorization header."""
        if self.token_env:
            return "KFP_TOKEN", self.token_env
        try:
            value = Path(self.token_file).read_text().strip()
        except OSError:
            return None
        return (f"the service-account token file {self.token_file}", value) if value else None

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_host or self.host}/#/runs/details/{run_id}"


class _EndpointAuth(kfp_server_api.Configuration):
    """The generated client's settings, with the bearer token looked up again for every request (the projected
    service-account token rotates) and where it came from kept for error messages."""

    def __init__(self, endpoint: KfpEndpoint):
        super().__init__(host=endpoint.host)
        self.endpoint = endpoint
        self.token_source: str | None = None
        # urllib3 honours neither *_PROXY nor SSL_CERT_FILE on its own; users reaching KFP through a proxy or a
        # private CA set them.
        url = urllib.parse.urlsplit(endpoint.host)
        proxy = urllib.request.getproxies().get(url.scheme)
        if proxy and not urllib.request.proxy_bypass(url.hostname or ""):
            self.proxy = proxy
        self.ssl_ca_cert = os.environ.get("SSL_CERT_FILE") or None
        # One attempt per call: the WAIT loop has its own tolerance, and a retried POST could create twice.
        self.retries = urllib3.Retry(total=None, connect=0, read=0, other=0, redirect=5)

    def auth_settings(self) -> dict:
        token = self.endpoint.token()
        self.token_source = token[0] if token else None
        if token is None:
            return {}
        return {"Bearer": {"type": "api_key", "in": "header", "key": "authorization", "value": f"Bearer {token[1]}"}}


class _NamedApiClient(kfp_server_api.ApiClient):
    """Remembers the method and API path of the last request, which errors name."""

    last_call = ""

    def request(self, method, url, *args, **kwargs):
        self.last_call = f"{method} {url.removeprefix(self.configuration.host).removeprefix(API)}"
        return super().request(method, url, *args, **kwargs)


class KfpClient:
    """The handful of KFP v2beta1 calls `make submit` needs; every failure is a ServiceError naming what to fix."""

    def __init__(self, endpoint: KfpEndpoint, timeout_s: float = 30.0):
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.api = _NamedApiClient(_EndpointAuth(endpoint))
        self.healthz = kfp_server_api.HealthzServiceApi(self.api)
        self.pipelines = kfp_server_api.PipelineServiceApi(self.api)
        self.uploads = kfp_server_api.PipelineUploadServiceApi(self.api)
        self.experiments = kfp_server_api.ExperimentServiceApi(self.api)
        self.runs = kfp_server_api.RunServiceApi(self.api)

    @classmethod
    def connect(cls, namespace: str = "") -> KfpClient:
        """Client for the endpoint in the environment, checked with one health request before anything is sent:
        the backend must be new enough for the compiled pipeline, and a multi-user one needs a namespace."""
        client = cls(KfpEndpoint.from_env(namespace))
        health = client.health()
        client.check_version(health.get("tag_name"))
        if health.get("multi_user") and not client.endpoint.namespace:
            raise ServiceError(f"{client.endpoint.where} is a multi-user deployment: set KFP_NAMESPACE "
                               "(or --namespace) to your Kubeflow profile namespace")
        return client

    def health(self) -> dict:
        """The healthz answer as sent. The backend's handler adds tag_name and commit_sha, which the swagger (and so
        the generated V2beta1GetHealthzResponse) leaves out, so they are read from the raw JSON."""
        self._call(self.healthz.healthz_service_get_healthz)
        return json.loads(self.api.last_response.data)

    def check_version(self, tag_name: str | None) -> None:
        found = re.match(r"v?(\d+)\.(\d+)\.(\d+)", str(tag_name or ""))
        if not found:
            print(f"warning: {self.endpoint.where} does not report its KFP version (tag_name "
                  f"{tag_name!r}); this pipeline needs KFP {MIN_BACKEND} or newer, and on an older backend its "
                  "pods fail at start", file=sys.stderr)
        elif tuple(map(int, found.groups())) < MIN_BACKEND_VERSION:
            raise ServiceError(f"{self.endpoint.where} runs KFP {tag_name}, but the compiled pipeline needs KFP "
                               f"{MIN_BACKEND} or newer (secretNameParameter, optional secretAsEnv): upgrade Kubeflow "
                               f"Pipelines to {MIN_BACKEND}+ or point KFP_HOST at one that runs it")

    def _call(self, operation, *args, **kwargs):
        """One generated API call with this client's timeout; any failure becomes one ServiceError line."""
        try:
            result = operation(*args, _request_timeout=(self.timeout_s, self.timeout_s), **kwargs)
        except kfp_server_api.ApiException as exc:
            raise self._refused(exc) from None
        # Connection refused, DNS, TLS, timeout, a port that does not speak HTTP, a malformed URL.
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            if isinstance(reason, urllib3.exceptions.SSLError):
                hint = "check that KFP_HOST speaks https and, for a private CA, set SSL_CERT_FILE to its bundle"
            elif self.endpoint.in_cluster:
                hint = "set KFP_HOST to a pipelines API this pod can reach"
            else:
                hint = ("check KFP_HOST, or port-forward the API (kubectl -n kubeflow port-forward svc/ml-pipeline-ui "
                        "8080:80) and set KFP_HOST=http://localhost:8080")
            raise KfpUnavailable(f"{self.endpoint.where} is unreachable ({' '.join(str(reason).split())}): "
                                 f"{hint}") from None
        try:
            if not isinstance(json.loads(self.api.last_response.data or "{}"), dict):
                raise ValueError("every v2beta1 answer is a JSON object")
        except ValueError:
            raise ServiceError(f"{self.endpoint.where} answered {self.api.last_call} with something other than JSON "
                               "(a login page?): KFP_HOST must be the pipelines API and KFP_TOKEN a bearer token "
                               "it accepts") from None
        return result

    def _refused(self, exc: kfp_server_api.ApiException) -> ServiceError:
        text = exc.body if isinstance(exc.body, str) else (exc.body or b"").decode(errors="replace")
        try:
            detail = json.loads(text)
            detail = detail.get("message") or detail.get("error") or text
        except (ValueError, AttributeError):
            detail = text or exc.reason
        detail = " ".join(str(detail).split())[:300]
        where, what = self.endpoint.where, f"HTTP {exc.status} on {self.api.last_call}"
        source = self.api.configuration.token_source
        if exc.status in (401, 403) and source is None:
            return ServiceError(f"{where} requires authentication ({what}: {detail}): export KFP_TOKEN=<bearer "
                                "token>, e.g. `kubectl create token <service-account> -n <namespace> "
                                "--audience=pipelines.kubeflow.org`")
        if exc.status in (401, 403):
            scope = f" in namespace {self.endpoint.namespace}" if self.endpoint.namespace else ""
            return ServiceError(f"{where} rejected the bearer token from {source} ({what}: {detail}): it may "
                                f"have expired or lack access{scope}; set KFP_TOKEN to a valid token")
        if exc.status == 404 and self.api.last_call == "GET /healthz":
            return ServiceError(f"{where} has no KFP v2 API ({what}): KFP_HOST must be the pipelines API of "
                                f"Kubeflow Pipelines {MIN_BACKEND}+, e.g. https://<kubeflow-host>/pipeline")
        error = KfpUnavailable if exc.status >= 500 else ServiceError
        return error(f"{where}: {what} failed: {detail}")

    def _namespace(self) -> str | None:
        return self.endpoint.namespace or None

    def _name_filter(self, name: str) -> str:
        """The list filter for display_name == name, as the API takes it: a JSON-encoded v2beta1Filter."""
        predicate = kfp_server_api.V2beta1Predicate(key="display_name", string_value=name,
                                                    operation=kfp_server_api.V2beta1PredicateOperation.EQUALS)
        return json.dumps(self.api.sanitize_for_serialization(kfp_server_api.V2beta1Filter(predicates=[predicate])))

    def _find_pipeline(self, name: str) -> str | None:
        """Id of the pipeline with this display name, if any (the filter is checked again here)."""
        found = self._call(self.pipelines.pipeline_service_list_pipelines, filter=self._name_filter(name),
                           page_size=100, namespace=self._namespace())
        return next((p.pipeline_id for p in found.pipelines or [] if p.display_name == name), None)

    def _find_experiment(self, name: str) -> str | None:
        found = self._call(self.experiments.experiment_service_list_experiments, filter=self._name_filter(name),
                           page_size=100, namespace=self._namespace())
        return next((e.experiment_id for e in found.experiments or [] if e.display_name == name), None)

    def upload_version(self, package: Path, pipeline_name: str, version_name: str, description: str) -> tuple[str, str]:
        """Upload the package as a new version of the named pipeline, creating the pipeline on first use;
        returns (pipeline_id, pipeline_version_id)."""
        pipeline_id = self._find_pipeline(pipeline_name)
        if pipeline_id is None:
            pipeline_id = self._call(self.uploads.upload_pipeline, str(package), name=pipeline_name,
                                     description="CodePMP (uploaded by `codepmp submit`)",
                                     namespace=self._namespace()).pipeline_id
            print(f"created pipeline {pipeline_name} ({pipeline_id})", file=sys.stderr)
        version = self._call(self.uploads.upload_pipeline_version, str(package), name=version_name,
                             pipelineid=pipeline_id, description=description)
        return pipeline_id, version.pipeline_version_id

    def experiment_id(self, name: str) -> str:
        """Id of the named experiment, created if missing."""
        found = self._find_experiment(name)
        if found:
            return found
        experiment = kfp_server_api.V2beta1Experiment(display_name=name, namespace=self._namespace())
        created = self._call(self.experiments.experiment_service_create_experiment, experiment).experiment_id
        print(f"created experiment {name} ({created})", file=sys.stderr)
        return created

    def create_run(self, run: kfp_server_api.V2beta1Run) -> str:
        return self._call(self.runs.run_service_create_run, run).run_id

    def get_run(self, run_id: str) -> kfp_server_api.V2beta1Run:
        return self._call(self.runs.run_service_get_run, run_id)


@dataclass(frozen=True)
class Submission:
    run_id: str
    url: str
    pipeline_id: str
    pipeline_version_id: str
    experiment_id: str


def _read_package(package: str) -> tuple[Path, str, str]:
    """(path, pipeline name, sha256) of a compiled package; fails before anything is uploaded if it is unusable."""
    path = Path(package)
    if not path.is_file():
        raise InputError(f"pipeline package {path} does not exist: run `make compile` or leave out --package")
    content = path.read_bytes()
    try:
        spec = next(yaml.safe_load_all(content), None)
    except yaml.YAMLError:
        spec = None
    name = (spec or {}).get("pipelineInfo", {}).get("name") if isinstance(spec, dict) else None
    if not name:
        raise InputError(f"pipeline package {path} is not a compiled KFP pipeline (no pipelineInfo.name)")
    return path, name, hashlib.sha256(content).hexdigest()


def submit(client: KfpClient, package: str, params: RunParameters, experiment: str = "codepmp",
           service_account: str = "") -> Submission:
    """Upload the package as a new pipeline version and start a run of it in the named experiment.

    The version is named `<pipeline>-<UTC time>-<sha256 prefix>-<random>`: traceable to the exact package (the full
    hash and run name are in its description), and unique even for two submits of one package in the same second
    (KFP refuses a version name twice)."""
    path, pipeline, digest = _read_package(package)
    version = f"{pipeline}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{digest[:8]}-{uuid.uuid4().hex[:4]}"
    pipeline_id, version_id = client.upload_version(
        path, pipeline, version, f"sha256 {digest}; submitted for run {params.run_name} ({params.profile})")
    print(f"uploaded pipeline version {version} ({version_id})", file=sys.stderr)
    experiment_id = client.experiment_id(experiment)
    run_id = client.create_run(kfp_server_api.V2beta1Run(
        display_name=params.run_name, experiment_id=experiment_id,
        pipeline_version_reference=kfp_server_api.V2beta1PipelineVersionReference(
            pipeline_id=pipeline_id, pipeline_version_id=version_id),
        runtime_config=kfp_server_api.V2beta1RuntimeConfig(parameters=params.as_dict()),
        service_account=service_account or None))
    print(f"started run {params.run_name} ({run_id}) in experiment {experiment}", file=sys.stderr)
    return Submission(run_id, client.endpoint.run_url(run_id), pipeline_id, version_id, experiment_id)


def wait_for_run(client: KfpClient, run_id: str, poll_s: float = 15.0, timeout_s: float | None = None,
                 max_unavailable: int = 10) -> str:
    """Follow a run to its end, printing each state change; returns the final state or raises RunFailed.

    Runs last hours, so a few consecutive failed polls (API restart, network blip) are tolerated. With timeout_s
    it gives up following (the run goes on) after that long."""
    url, start, last, misses = client.endpoint.run_url(run_id), time.monotonic(), None, 0
    try:
        while True:
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise CodepmpError(f"run {run_id} still {last} after {timeout_s:.0f}s; it goes on running: {url}")
            try:
                run = client.get_run(run_id)
                misses = 0
            except KfpUnavailable as exc:
                misses += 1
                if misses >= max_unavailable:
                    raise
                print(f"run {run_id}: poll failed ({exc}); retrying", file=sys.stderr)
                time.sleep(poll_s)
                continue
            state = run.state or "RUNTIME_STATE_UNSPECIFIED"
            if state != last:
                print(f"run {run_id}: {state} after {time.monotonic() - start:.0f}s", file=sys.stderr, flush=True)
                last = state
            if state in FINAL_STATES:
                if not FINAL_STATES[state]:
                    error = run.error.message if run.error else ""
                    raise RunFailed(f"run {run.display_name or run_id} ended {state}"
                                    f"{': ' + error if error else ''}; see {url}")
                return state
            time.sleep(poll_s)
    except KeyboardInterrupt:
        raise CodepmpError(f"stopped following run {run_id}; it goes on running: {url}") from None
