"""The embedded stack: idempotent up, down by PID, clear errors for taken ports."""

from __future__ import annotations

import dataclasses
import os
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from codepmp.errors import ServiceError
from codepmp.processes import group_alive
from codepmp.stack import HOST, Stack, StackPorts

pytestmark = pytest.mark.integration


def test_second_up_returns_the_same_pids(stack: Stack) -> None:
    again = Stack(stack.state_dir)
    started = time.monotonic()
    status = again.up()
    assert time.monotonic() - started < 5
    assert again.pids == stack.pids
    assert status["s3"]["pid"] == stack.pids["s3"] and status["mlflow"]["pid"] == stack.pids["mlflow"]
    assert status["s3"]["healthy"] and status["mlflow"]["healthy"]
    assert again.client_env() == stack.client_env()


def test_env_file_exports_the_client_variables(stack: Stack) -> None:
    lines = stack.env_file.read_text().splitlines()
    assert lines == [f"export {name}={value}" for name, value in stack.client_env().items()]
    assert set(stack.client_env()) == {"CODEPMP_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                       "CODEPMP_BUCKET", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                                       "MLFLOW_TRACKING_PASSWORD"}
    assert stack.client_env()["CODEPMP_S3_ENDPOINT"].startswith(f"http://{HOST}:")


def listening_addresses(pgid: int) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket held by a process of the group `pgid` (Linux /proc)."""
    inodes = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                inodes |= {os.readlink(fd) for fd in (stat.parent / "fd").iterdir()}
        except OSError:
            continue
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] == "0A" and f"socket:[{cols[9]}]" in inodes:
                address, port = cols[1].split(":")
                addresses.add((socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8
                               else address, int(port, 16)))
    return addresses


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from Linux /proc")
def test_servers_listen_only_on_loopback_and_only_on_configured_ports(stack: Stack) -> None:
    for service in ("s3", "mlflow"):
        configured = set(stack.ports.for_service(service, stack.s3_server).values())
        listening = listening_addresses(stack.pids[service])
        assert listening == {(HOST, port) for port in configured}


@pytest.mark.parametrize("taken", ["s3", "filer"])
def test_taken_port_gives_a_clear_error(tmp_path: Path, taken: str) -> None:
    with socket.socket() as blocker:
        blocker.bind((HOST, 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        ports = dataclasses.replace(StackPorts.free(), **{taken: port})
        stack = Stack(tmp_path / "state", ports=ports, s3_server="seaweedfs")
        with pytest.raises(ServiceError, match=rf"port {port} \({taken}\).*already in use"):
            stack.up()
    assert stack.pids == {}


def test_down_stops_the_servers_and_a_taken_mlflow_port_is_reported(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind((HOST, 0))
        blocker.listen()
        ports = dataclasses.replace(StackPorts.free(), mlflow=blocker.getsockname()[1])
        stack = Stack(tmp_path / "state", ports=ports, s3_server="seaweedfs")
        try:
            with pytest.raises(ServiceError, match=r"\(mlflow\).*already in use"):
                stack.up()
            s3_pid = stack.pids["s3"]
            assert group_alive(s3_pid)
            assert Stack(tmp_path / "state").pids == {"s3": s3_pid}
        finally:
            status = stack.down()
    assert not group_alive(s3_pid)
    assert not status["s3"]["running"]
    assert Stack(tmp_path / "state").pids == {}


def copy_migrated_mlflow_db(source: Stack, state_dir: Path) -> None:
    """Seed a new state dir with an already-migrated MLflow database: skips ~10 s of schema creation."""
    state_dir.mkdir(parents=True)
    source_db = sqlite3.connect(source.state_dir / "mlflow.db")
    target_db = sqlite3.connect(state_dir / "mlflow.db")
    try:
        source_db.backup(target_db)
    finally:
        source_db.close()
        target_db.close()


def test_down_stops_a_full_stack(stack: Stack, tmp_path: Path) -> None:
    copy_migrated_mlflow_db(stack, tmp_path / "state")
    stack = Stack(tmp_path / "state", ports=StackPorts.free())
    try:
        pids = stack.up()
        groups = [pids["s3"]["pid"], pids["mlflow"]["pid"]]
        assert all(group_alive(pid) for pid in groups)
    finally:
        status = stack.down()
    assert not any(group_alive(pid) for pid in groups)
    assert not status["s3"]["running"] and not status["mlflow"]["running"]


def test_a_server_that_does_not_come_up_names_its_log_and_is_stopped(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "state", ports=StackPorts.free(), s3_server="seaweedfs", startup_timeout_s=0.2)
    log_file = stack.log_file("s3")
    with pytest.raises(ServiceError, match=rf"s3 server did not become healthy .*see {log_file}"):
        stack.up()
    assert stack.pids == {} and Stack(tmp_path / "state").pids == {}
    assert "weed mini" in log_file.read_text()


def test_a_secret_key_too_short_for_mlflow_is_refused_before_anything_starts(tmp_path: Path) -> None:
    short = Stack(tmp_path / "state", ports=StackPorts.free(), access_key="someone", secret_key="short")
    with pytest.raises(ServiceError, match=r"AWS_SECRET_ACCESS_KEY\) has 5 characters; it needs 12"):
        short.up()
    assert short.pids == {} and not (tmp_path / "state" / "logs").exists()
