"""MLflow helpers shared by every stage: one run per stage, buffered step metrics, the server check
(registration, the gate and promotion are `codepmp.registry`).

    from codepmp.tracking import stage_run
    with stage_run("codepmp", "pretrain", "r1", cfg.to_dict()):
        mlflow.log_metric("loss", 0.7, step=1)

Clients read only MLFLOW_TRACKING_URI (the embedded stack's server or a cluster's); artifacts go
through the server's proxied artifact store, so no S3 settings are needed here. An unreachable
server fails in a few seconds with a ServiceError that names the URI. Importing this module turns
MLflow's client telemetry off unless MLFLOW_DISABLE_TELEMETRY is already set.

Step metrics go through `log_metrics`, which buffers them while the server is unreachable and sends
them (with the timestamps they were logged at, so a resend is a no-op for the server) on a later call;
the end of `stage_run` waits up to CODEPMP_MLFLOW_RETRY_S (default 120) for the rest. Training never
stalls on a tracking outage and no metric is lost to one.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from codepmp.env import PASSWORD_VAR, TRACKING_URI_VAR, USERNAME_VAR
from codepmp.errors import InputError, ServiceError
from codepmp.retry import restart_policy, window_from_env

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# A search any signed-in user may run: 200 with valid credentials, 401 without on a server with basic-auth.
AUTH_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"
HEALTH_TIMEOUT_S = 3.0
MAX_PARAM_CHARS = 6000
RUN_TAG = "codepmp.run"
STAGE_TAG = "codepmp.stage"
RETRY_VAR = "CODEPMP_MLFLOW_RETRY_S"
DEFAULT_RETRY_S = 120.0
BATCH_LIMIT = 1000
"""MLflow's log_batch takes at most 1000 metrics per call."""


def redact_uri(uri: str) -> str:
    """`uri` without a user:password part (an MLflow URI may carry basic-auth credentials), for printing."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc = f"***@{netloc}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"pretrain": {"lr": 1e-5}, "tags": [1, 2]} -> {"pretrain.lr": "1e-05", "tags": "[1, 2]"}."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            flat[name] = text[:MAX_PARAM_CHARS]
    return flat


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or a ServiceError saying how to set it."""
    uri = os.environ.get(TRACKING_URI_VAR, "").strip()
    if not uri:
        raise ServiceError(f"{TRACKING_URI_VAR} is not set (run `codepmp up` and "
                           f"`source ~/.codepmp/stack/env.sh`, or point it at an MLflow server)")
    return uri


def http_status(url: str, login: tuple[str, str] | None = None, timeout_s: float = HEALTH_TIMEOUT_S,
                direct: bool = False) -> int | str:
    """HTTP status of GET `url` (basic auth when `login` is given), or why it could not be reached.
    `direct` skips any proxy (for the embedded stack on 127.0.0.1)."""
    headers = {}
    if login is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()
    opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if direct else []))
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))


def tracking_login(environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD) when both are set: what the MLflow client sends."""
    environ = os.environ if environ is None else environ
    user, password = environ.get(USERNAME_VAR), environ.get(PASSWORD_VAR)
    return (user, password) if user and password else None


def check_tracking_server(uri: str | None = None) -> str:
    """Probe `<uri>/health`, then one signed-in search; returns the URI or raises ServiceError naming it
    (unreachable, or refusing the credentials: a server with auth answers /health to anyone)."""
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return uri
    status = http_status(f"{uri.rstrip('/')}/health")
    if status != 200:
        reason = f"HTTP {status}" if isinstance(status, int) else status
        raise ServiceError(f"MLflow tracking server {redact_uri(uri)} ({TRACKING_URI_VAR}) is unreachable: {reason}")
    login = tracking_login()
    status = http_status(f"{uri.rstrip('/')}{AUTH_PROBE}", login)
    if status in (401, 403):
        given = (f"refuses the credentials in {USERNAME_VAR}/{PASSWORD_VAR}" if login else
                 f"requires credentials: set {USERNAME_VAR} and {PASSWORD_VAR}")
        raise ServiceError(f"MLflow tracking server {redact_uri(uri)} {given} (HTTP {status}; the embedded "
                           "stack's are in ~/.codepmp/stack/env.sh)")
    return uri


def retry_window(environ: Mapping[str, str] | None = None) -> float:
    """Seconds from CODEPMP_MLFLOW_RETRY_S (default 120)."""
    return window_from_env(RETRY_VAR, DEFAULT_RETRY_S, environ)


def _server_up(uri: str) -> bool:
    # Only /health: the login was checked when the stage started, and this runs before every send.
    return not uri.startswith(("http://", "https://")) or http_status(f"{uri.rstrip('/')}/health") == 200


class MetricBuffer:
    """Step metrics of one run, kept until the server has taken them.

    `log` records each metric with the time it was logged and sends everything pending when the server
    answers its health probe; while it does not, metrics stay here (one warning line on stderr) and
    training goes on. `flush(wait_s)` retries with backoff until all are sent or `wait_s` runs out.
    A metric keeps its original timestamp, so a batch that reached the server before the connection
    dropped and is sent again adds no second copy (MLflow keys metrics by name, step, time and value).
    """

    def __init__(self, run_id: str, uri: str, send: Callable[[str, list[tuple[str, float, int, int]]], None] | None = None,
                 healthy: Callable[[], bool] | None = None):
        self.run_id, self.uri = run_id, uri
        self.pending: list[tuple[str, float, int, int]] = []
        self._send = send or self._log_batch
        self._healthy = healthy or (lambda: _server_up(uri))
        self._warned = False

    def _log_batch(self, run_id: str, metrics: list[tuple[str, float, int, int]]) -> None:
        from mlflow.entities import Metric
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            MlflowClient(tracking_uri=self.uri).log_batch(run_id, metrics=[Metric(*m) for m in metrics])
        except MlflowException as exc:
            raise ServiceError(exc.message) from exc

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue (key, value, timestamp in ms, step) for each metric, then send if the server is up."""
        now = int(time.time() * 1000)
        self.pending.extend((key, float(value), now, step) for key, value in metrics.items())
        self.try_send()

    def try_send(self) -> bool:
        """Send what is pending if the server is up; True when nothing is left."""
        if not self.pending:
            return True
        # The probe fails in milliseconds when the server is gone, where a log_batch call would sit in
        # MLflow's own retries for minutes and stall training.
        if not self._healthy():
            self._warn("unreachable")
            return False
        try:
            while self.pending:
                batch = self.pending[:BATCH_LIMIT]
                self._send(self.run_id, batch)
                del self.pending[:len(batch)]
        except (ServiceError, OSError) as exc:
            self._warn(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return False
        if self._warned:
            print(f"codepmp: MLflow tracking server {redact_uri(self.uri)} is back; buffered metrics sent",
                  file=sys.stderr, flush=True)
            self._warned = False
        return True

    def _warn(self, reason: str) -> None:
        if not self._warned:
            print(f"codepmp: MLflow tracking server {redact_uri(self.uri)} ({TRACKING_URI_VAR}) is {reason}; buffering "
                  f"metrics and retrying (the stage waits up to {RETRY_VAR} at its end)", file=sys.stderr, flush=True)
            self._warned = True

    def flush(self, wait_s: float) -> None:
        """Send everything pending, retrying with backoff (0.5 s doubling to 8 s) for up to `wait_s` seconds;
        ServiceError naming the server and how many metrics were not logged when it does not come back."""
        schedule = restart_policy(wait_s).delays()
        while not self.try_send():
            delay = next(schedule, None)
            if delay is None:
                raise ServiceError(
                    f"MLflow tracking server {redact_uri(self.uri)} ({TRACKING_URI_VAR}) did not come back within {wait_s:g} s "
                    f"({RETRY_VAR}): {len(self.pending)} metrics of run {self.run_id} were not logged")
            time.sleep(delay)


_buffers: dict[str, MetricBuffer] = {}


def log_metrics(metrics: Mapping[str, float], step: int) -> None:
    """Log step metrics to the active run through its `MetricBuffer` (see the module docstring)."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise ServiceError("log_metrics needs an active MLflow run (call it inside `stage_run`)")
    buffer = _buffers.get(run.info.run_id)
    if buffer is None:
        buffer = _buffers[run.info.run_id] = MetricBuffer(run.info.run_id, mlflow.get_tracking_uri())
    buffer.log(metrics, step)


def flush_metrics(run_id: str, wait_s: float | None = None) -> None:
    """Send the run's buffered metrics, waiting up to `wait_s` (default CODEPMP_MLFLOW_RETRY_S)."""
    buffer = _buffers.get(run_id)
    if buffer is None:
        return
    buffer.flush(retry_window() if wait_s is None else wait_s)
    _buffers.pop(run_id, None)


@contextlib.contextmanager
def mlflow_errors(what: str) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise InputError(f"{what}: {exc.message}") from None
        raise ServiceError(f"{what} failed at {redact_uri(os.environ.get(TRACKING_URI_VAR, '?'))}: {exc.message}") from exc


def _experiment_id(name: str) -> str:
    """The id of experiment `name`, created if missing. Two stages starting at once may both try to create
    it; `mlflow.set_experiment(name)` then filed one run under the Default experiment, so the loser of the
    race looks the winner's experiment up instead."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


@contextlib.contextmanager
def stage_run(experiment: str, stage: str, run_name: str,
              params: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """Run the block inside the MLflow run "<run_name>/<stage>" of `experiment`, with flattened params.

    The run is tagged codepmp.run=<run_name> and codepmp.stage=<stage>; it nests under an active run.
    """
    uri = check_tracking_server()
    import mlflow

    mlflow.set_tracking_uri(uri)
    with mlflow_errors(f"MLflow experiment '{experiment}'"):
        experiment_id = _experiment_id(experiment)
        mlflow.set_experiment(experiment_id=experiment_id)
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_name=f"{run_name}/{stage}", nested=nested, experiment_id=experiment_id,
                          tags={RUN_TAG: run_name, STAGE_TAG: stage}) as run:
        if params:
            mlflow.log_params(flatten_params(params))
        try:
            yield run
        except BaseException:
            # The stage failed anyway: send what can be sent now rather than wait for the server.
            with contextlib.suppress(Exception):
                flush_metrics(run.info.run_id, wait_s=0)
            _buffers.pop(run.info.run_id, None)
            raise
        flush_metrics(run.info.run_id)
