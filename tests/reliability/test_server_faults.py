"""Server faults: the S3 server or the MLflow server goes away before or during a real stage.

The `faults` tests run the pretrain stage at the `tiny` profile (a tiny random base model, a checkpoint every
step, so the stage writes to the object store all along) against a private stack of their own, and stop one
of its servers for 20 s; the shared session stack of the other tests is never touched. The other tests check
the retry and buffering logic in seconds, without servers.

    CODEPMP_FAULTS=1 .venv/bin/python -m pytest -q tests/reliability/test_server_faults.py
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from codepmp import retry, storage, tracking
from codepmp.errors import ConfigError, InputError, ServiceError
from codepmp.storage import ObjectStore

from codepmp.testing import TINY_PAIR_MAX_LENGTH as TINY_PAIR_TOKENS

OUTAGE_S = 20.0
FAST_FAIL_S = 10.0
"""How soon a stage started with MLflow down must have failed (the health probe times out after 3 s)."""
PAIRS = 40
"""20 optimizer steps at the tiny profile's batch of 2: long enough that the outage lands mid-stage."""


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- fast checks of the retry and buffer logic (no servers) ---------------------------------------------


class FakeResponse:
    def __init__(self, data: bytes = b"", status: int = 200):
        self.data, self.status = data, status

    def read(self) -> bytes:
        return self.data

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


def _s3_error(code: str, status: int):
    from minio.error import S3Error

    return S3Error(FakeResponse(status=status), code, f"{code} from the fake", "/k", "req", "host")


def _refused():
    import urllib3

    return urllib3.exceptions.MaxRetryError(None, "/k", reason=ConnectionRefusedError("connection refused"))


class FlakyClient:
    """Fails each named method with the queued errors, then behaves like a tiny in-memory bucket."""

    def __init__(self, failures: dict[str, list[Exception]]):
        self.failures = failures
        self.calls: dict[str, int] = {}
        self.objects: dict[str, bytes] = {}

    def _call(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        queue = self.failures.get(name, [])
        if queue:
            raise queue.pop(0)

    def put_object(self, bucket, key, stream, length, **_):
        data = stream.read(length)
        self._call("put_object")  # fails after reading: a retry must send the data from the start again
        self.objects[key] = data

    def copy_object(self, bucket, key, source):
        self._call("copy_object")
        self.objects[key] = self.objects[source.object_name]

    def remove_object(self, bucket, key):
        self._call("remove_object")
        self.objects.pop(key, None)

    def get_object(self, bucket, key):
        self._call("get_object")
        if key not in self.objects:
            raise _s3_error("NoSuchKey", 404)
        return FakeResponse(self.objects[key])

    def stat_object(self, bucket, key):
        self._call("stat_object")
        return key in self.objects


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "FIRST_DELAY_S", 0.01)


def _fake_store(client: FlakyClient, retry_s: float = 5.0) -> ObjectStore:
    store = ObjectStore(f"http://127.0.0.1:{_closed_port()}", "key", "secret", "bucket", retry_s=retry_s)
    store.client = client
    return store


def test_dead_endpoint_is_retried_for_the_window_then_named(capfd: pytest.CaptureFixture[str]) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    store = ObjectStore(endpoint, "key", "secret", "bucket", retry_s=1.5)
    started = time.monotonic()
    with pytest.raises(ServiceError, match=rf"{endpoint} stayed unavailable for 1.5 s \(CODEPMP_S3_RETRY_S\)"):
        store.get_bytes("runs/r/x.json")
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 8, elapsed  # it waited (backoff 0.5 s, 1 s) but not much past the window
    assert f"waiting for S3 endpoint {endpoint}" in capfd.readouterr().err


def test_store_without_a_window_fails_at_once() -> None:
    store = ObjectStore(f"http://127.0.0.1:{_closed_port()}", "key", "secret", "bucket", retry_s=0)
    started = time.monotonic()
    with pytest.raises(ServiceError, match="unreachable"):
        store.exists("k")
    assert time.monotonic() - started < 5


def test_connection_errors_and_5xx_are_retried_until_they_pass(fast_backoff) -> None:
    client = FlakyClient({"put_object": [_refused(), _s3_error("SlowDown", 503)],
                          "copy_object": [_s3_error("InternalError", 500)],
                          "get_object": [_refused(), _refused()]})
    store = _fake_store(client)
    store.put_bytes("runs/r/data.bin", b"0123456789" * 100)
    assert store.get_bytes("runs/r/data.bin") == b"0123456789" * 100  # the retried upload sent it all
    assert client.calls == {"put_object": 3, "copy_object": 2, "remove_object": 1, "get_object": 3}
    assert list(client.objects) == ["runs/r/data.bin"]  # no temporary key left


def test_request_errors_are_not_retried(fast_backoff) -> None:
    client = FlakyClient({"stat_object": [_s3_error("AccessDenied", 403)]})
    store = _fake_store(client)
    with pytest.raises(ServiceError, match="AccessDenied"):
        store.exists("runs/r/x")
    with pytest.raises(InputError, match="s3://bucket/runs/r/missing does not exist"):
        store.get_bytes("runs/r/missing")
    assert client.calls == {"stat_object": 1, "get_object": 1}


def test_an_unseekable_stream_is_not_resent(fast_backoff) -> None:
    class OneWay(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            return 0

    client = FlakyClient({"put_object": [_refused()]})
    with pytest.raises(ServiceError, match="unreachable"):
        _fake_store(client).put_stream("runs/r/stream", OneWay(), 0)
    assert client.calls["put_object"] == 1 and client.objects == {}


def test_retry_windows_are_read_from_the_environment() -> None:
    assert storage.retry_window({}) == storage.DEFAULT_RETRY_S
    assert storage.retry_window({"CODEPMP_S3_RETRY_S": "7.5"}) == 7.5
    with pytest.raises(ConfigError, match="CODEPMP_S3_RETRY_S must be a number"):
        storage.retry_window({"CODEPMP_S3_RETRY_S": "soon"})
    assert tracking.retry_window({"CODEPMP_MLFLOW_RETRY_S": "0"}) == 0
    with pytest.raises(ConfigError, match="CODEPMP_MLFLOW_RETRY_S must be a number"):
        tracking.retry_window({"CODEPMP_MLFLOW_RETRY_S": "-1"})


def test_tracking_server_down_fails_fast_naming_the_variable() -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(ServiceError, match=rf"{uri} \(MLFLOW_TRACKING_URI\) is unreachable"):
        tracking.check_tracking_server(uri)
    assert time.monotonic() - started < 5


class FakeServer:
    def __init__(self) -> None:
        self.up, self.received, self.fail_next = True, [], 0

    def send(self, run_id: str, metrics: list) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionResetError("connection reset by peer")
        self.received.extend((key, step, value) for key, value, _, step in metrics)


def test_metric_buffer_keeps_metrics_while_the_server_is_down(capfd: pytest.CaptureFixture[str]) -> None:
    server = FakeServer()
    buffer = tracking.MetricBuffer("run-1", "http://mlflow.invalid", send=server.send, healthy=lambda: server.up)
    buffer.log({"loss": 1.0}, step=1)
    server.up = False
    buffer.log({"loss": 0.9, "accuracy": 0.5}, step=2)
    buffer.log({"loss": 0.8}, step=3)
    assert server.received == [("loss", 1, 1.0)] and len(buffer.pending) == 3
    assert "is unreachable; buffering metrics" in capfd.readouterr().err
    server.up, server.fail_next = True, 1  # back, but the first batch is cut off
    buffer.log({"loss": 0.7}, step=4)
    assert len(buffer.pending) == 4
    buffer.flush(wait_s=5)
    assert server.received == [("loss", 1, 1.0), ("loss", 2, 0.9), ("accuracy", 2, 0.5), ("loss", 3, 0.8),
                               ("loss", 4, 0.7)]
    assert buffer.pending == []


def test_metric_buffer_flush_gives_up_after_its_window_with_a_count() -> None:
    buffer = tracking.MetricBuffer("run-2", "http://mlflow.invalid", send=FakeServer().send, healthy=lambda: False)
    buffer.log({"loss": 1.0, "lr": 0.1}, step=1)
    started = time.monotonic()
    with pytest.raises(ServiceError, match=r"MLFLOW_TRACKING_URI.*within 1 s.*2 metrics of run run-2 were not"):
        buffer.flush(wait_s=1)
    assert time.monotonic() - started < 3


# --- faults injected into real stages ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory, private_stack) -> Iterator:
    """A private stack for this module only (its servers get stopped), with its variables in os.environ."""
    # Retry windows longer than the outage plus a restart of the S3 server on a busy 2-core machine.
    with private_stack(tmp_path_factory.mktemp("fault-stack"), "faults",
                       {"CODEPMP_S3_RETRY_S": "180", "CODEPMP_MLFLOW_RETRY_S": "180"}) as stack:
        yield stack


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from codepmp.testing import write_tiny_model

    root = tmp_path_factory.mktemp("fault-inputs")
    base = write_tiny_model(root / "base")
    rows = [{"description": f"Return {i} plus one.", "chosen": f"def f():\n    return {i} + 1\n",
             "rejected": f"def f():\n    return {i}\n"} for i in range(PAIRS)]
    (root / "pairs").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "pairs" / "pairs.parquet")
    return {"base_dir": str(base), "pairs_dir": str(root / "pairs")}


OVERRIDES = {"experiment": "codepmp-faults",
             "pretrain": {"checkpoint_every": 1, "seed": 3, "max_length": TINY_PAIR_TOKENS}}


def _pretrain(run_name: str, inputs: dict[str, str], out_dir: Path) -> dict:
    from codepmp import stages

    return stages.pretrain("tiny", OVERRIDES, run_name, out_dir=str(out_dir), **inputs)


def _probe_store() -> ObjectStore:
    """A store that never waits: the fault thread's view of the bucket."""
    return ObjectStore(os.environ["CODEPMP_S3_ENDPOINT"], os.environ["AWS_ACCESS_KEY_ID"],
                       os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["CODEPMP_BUCKET"], retry_s=0)


def _checkpoint_written(run_name: str) -> Callable[[], bool]:
    probe = _probe_store()

    def written() -> bool:
        try:
            return any(key.endswith(storage.DONE_MARKER) for key in probe.list(f"runs/{run_name}/pretrain/"))
        except ServiceError:
            return False

    return written


class Outage(threading.Thread):
    """Once `when()` holds (the stage is under way), stop `service` for `down_s` seconds, then start it again."""

    def __init__(self, stack, service: str, when: Callable[[], bool], down_s: float = OUTAGE_S):
        super().__init__(daemon=True)
        self.stack, self.service, self.when, self.down_s = stack, service, when, down_s
        self.stopped_at = self.back_at = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 600
            while not self.when():
                if time.monotonic() > deadline:
                    raise TimeoutError("the stage never reached the point where the fault is injected")
                time.sleep(0.1)
            self.stack.stop_service(self.service)
            self.stopped_at = time.monotonic()
            time.sleep(self.down_s)
            self.stack.start_service(self.service)
            self.back_at = time.monotonic()
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc


def _run_with_outage(outage: Outage, run: Callable[[], dict]) -> tuple[dict | None, str, float]:
    """(stage result or None, why it failed, when it ended) with the outage running beside it."""
    outage.start()
    result, failure = None, ""
    try:
        result = run()
    except SystemExit as exc:
        failure = f"stage exited with {exc.code}"
    ended = time.monotonic()
    outage.join(timeout=300)
    if outage.error is not None:
        failure = failure or f"fault injection failed: {outage.error!r}"
    return result, failure, ended


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _objects(store: ObjectStore, prefix: str) -> dict[str, bytes]:
    return {key[len(prefix):]: store.get_bytes(key) for key in store.list(prefix)}


def _differences(expected: dict[str, bytes], actual: dict[str, bytes]) -> list[str]:
    return sorted(name for name in expected.keys() | actual.keys() if expected.get(name) != actual.get(name))


@pytest.mark.faults
def test_s3_down_for_20_s_mid_stage(fault_stack, stage_inputs, tmp_path, record, capfd) -> None:
    from codepmp.stack import S3

    store = _probe_store()
    reference = _pretrain("s3-reference", stage_inputs, tmp_path / "reference")
    outage = Outage(fault_stack, S3, _checkpoint_written("s3-fault"))
    started = time.monotonic()
    result, failure, ended = _run_with_outage(outage, lambda: _pretrain("s3-fault", stage_inputs, tmp_path / "fault"))
    stderr = capfd.readouterr().err

    mid_stage = outage.stopped_at is not None and outage.back_at is not None and outage.stopped_at < ended
    waited = "waiting for S3 endpoint" in stderr
    raw_keys = store._list_all("runs/s3-fault/")  # temporary keys included
    leftovers = [key for key in raw_keys if storage.is_temporary_key(key)]
    model_diff = _differences(_files(tmp_path / "reference"), _files(tmp_path / "fault")) if result else ["model"]
    checkpoint_diff = _differences(_objects(store, "runs/s3-reference/"), _objects(store, "runs/s3-fault/"))
    lost = len(model_diff) + len(checkpoint_diff)
    ok = bool(result) and not failure and mid_stage and waited and not leftovers and lost == 0 \
        and result["steps"] == reference["steps"]
    record("fault", "S3 server down 20 s mid-stage (pretrain, tiny)", ok, rows_lost=lost,
           detail=f"{failure} stage {ended - started:.0f} s; outage at +{(outage.stopped_at or started) - started:.1f} s "
                  f"for {((outage.back_at or 0) - (outage.stopped_at or 0)):.0f} s; retried={waited}; "
                  f"temporary keys left={len(leftovers)}; differing model files={model_diff}; "
                  f"differing checkpoint objects={checkpoint_diff}")

    assert not failure, failure
    assert mid_stage, "the S3 server was not stopped while the stage ran"
    assert waited, "the stage never had to wait for the S3 server"
    assert leftovers == []
    assert model_diff == [] and checkpoint_diff == []
    assert result["steps"] == reference["steps"]


@pytest.mark.faults
def test_mlflow_down_at_stage_start_fails_fast(fault_stack, stage_inputs, tmp_path, record, capfd) -> None:
    from codepmp.stack import MLFLOW

    store = _probe_store()
    fault_stack.stop_service(MLFLOW)
    try:
        started = time.monotonic()
        with pytest.raises(SystemExit) as exited:
            _pretrain("mlflow-down", stage_inputs, tmp_path / "out")
        elapsed = time.monotonic() - started
    finally:
        fault_stack.start_service(MLFLOW)
    stderr = capfd.readouterr().err
    uri = os.environ["MLFLOW_TRACKING_URI"]
    clear = f"{uri} (MLFLOW_TRACKING_URI) is unreachable" in stderr
    written = store.list("runs/mlflow-down/") + ([str(tmp_path / "out")] if (tmp_path / "out").exists() else [])
    ok = exited.value.code == 2 and clear and elapsed < FAST_FAIL_S and not written
    record("fault", "MLflow server down at stage start", ok, rows_lost=0,
           detail=f"exit {exited.value.code} after {elapsed:.1f} s; clear message={clear}; written={written}")

    assert exited.value.code == 2
    assert clear, stderr
    assert elapsed < FAST_FAIL_S
    assert written == []


@pytest.mark.faults
def test_mlflow_down_for_20_s_mid_stage(fault_stack, stage_inputs, tmp_path, record, capfd) -> None:
    from mlflow.tracking import MlflowClient

    from codepmp.stack import MLFLOW

    outage = Outage(fault_stack, MLFLOW, _checkpoint_written("mlflow-fault"))
    started = time.monotonic()
    result, failure, ended = _run_with_outage(outage, lambda: _pretrain("mlflow-fault", stage_inputs,
                                                                       tmp_path / "out"))
    stderr = capfd.readouterr().err
    mid_stage = outage.stopped_at is not None and outage.back_at is not None and outage.stopped_at < ended
    buffered = "buffering metrics" in stderr

    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(OVERRIDES["experiment"])
    runs = client.search_runs([experiment.experiment_id], "tags.`codepmp.run` = 'mlflow-fault'")
    steps = result["steps"] if result else 0
    missing, repeated = [], []
    if len(runs) == 1:
        for key in ("loss", "accuracy", "lr"):
            logged = [m.step for m in client.get_metric_history(runs[0].info.run_id, key)]
            missing += [f"{key}@{s}" for s in range(1, steps + 1) if s not in logged]
            repeated += [f"{key}@{s}" for s in set(logged) if logged.count(s) > 1]
    ok = bool(result) and not failure and mid_stage and buffered and len(runs) == 1 and steps > 0 \
        and not missing and not repeated
    record("fault", "MLflow server down 20 s mid-stage (pretrain, tiny)", ok, rows_lost=len(missing),
           detail=f"{failure} stage {ended - started:.0f} s; outage at +{(outage.stopped_at or started) - started:.1f} s; "
                  f"buffered={buffered}; runs={len(runs)}; steps={steps}; missing={missing}; repeated={repeated}")

    assert not failure, failure
    assert mid_stage, "the MLflow server was not stopped while the stage ran"
    assert buffered, "no metric was logged while the MLflow server was down"
    assert len(runs) == 1 and steps > 0
    assert missing == [] and repeated == []
