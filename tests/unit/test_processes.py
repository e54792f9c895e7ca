"""codepmp.processes on real processes: `sleep`s in sessions of their own stand in for the stack's servers.

    .venv/bin/python -m pytest -q tests/unit/test_processes.py
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from codepmp.processes import (LOOPBACK, Startup, command_line, command_mentions, group_alive, group_members,
                               port_accepts_connections, port_is_free, signal_group, stop_process_groups,
                               wait_for_startup)

SLEEP = shutil.which("sleep")
pytestmark = pytest.mark.skipif(SLEEP is None or shutil.which("sh") is None, reason="needs sleep and sh")

Spawn = Callable[[list[str]], subprocess.Popen]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """spawn(argv): start a process in a session of its own, as the stack starts its servers; every group
    whose leader was not collected yet is killed afterwards."""
    started: list[subprocess.Popen] = []

    def _spawn(argv: list[str]) -> subprocess.Popen:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        started.append(process)
        return process

    yield _spawn
    for process in started:
        # An uncollected leader keeps its PID, so the group number cannot belong to anyone else yet.
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def sleep_in(folder: Path) -> str:
    """A `sleep` whose command line names `folder`, as a server's names its state dir."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "sleep"
    link.symlink_to(SLEEP)
    return str(link)


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def is_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_started_process_is_found_alive_and_is_gone_once_stopped(spawn: Spawn, tmp_path: Path) -> None:
    server = sleep_in(tmp_path / "state")
    process = spawn([server, "30"])
    # Popen returns once exec has begun; the kernel fills in the new command line a moment later.
    wait_until(lambda: command_line(process.pid) is not None)
    assert command_line(process.pid) == f"{server} 30"
    assert command_mentions(process.pid, f"{tmp_path / 'state'}{os.sep}")
    assert group_alive(process.pid)
    assert [member.pid for member in group_members(process.pid)] == [process.pid]

    started = time.monotonic()
    stop_process_groups([process.pid], timeout_s=10.0)
    assert time.monotonic() - started < 5.0, "sleep exits on SIGTERM: no wait for the SIGKILL"
    assert process.poll() is not None, "the stopped child was left a zombie"
    assert not group_alive(process.pid)
    assert command_line(process.pid) is None
    assert not command_mentions(process.pid, f"{tmp_path / 'state'}{os.sep}")


def test_a_dead_pid_is_not_taken_for_a_live_server(spawn: Spawn, tmp_path: Path) -> None:
    process = spawn([sleep_in(tmp_path / "state"), "30"])
    process.kill()
    process.wait(timeout=10)
    assert command_line(process.pid) is None
    assert not command_mentions(process.pid, f"{tmp_path / 'state'}{os.sep}")
    assert not group_alive(process.pid)


def test_a_pid_reused_by_another_program_is_not_taken_for_the_server(spawn: Spawn, tmp_path: Path) -> None:
    other = spawn([sleep_in(tmp_path / "state-other"), "30"])
    wait_until(lambda: command_line(other.pid) is not None)
    assert command_mentions(other.pid, f"{tmp_path / 'state-other'}{os.sep}")
    # The separator after the folder keeps a sibling whose name starts the same from matching.
    assert not command_mentions(other.pid, f"{tmp_path / 'state'}{os.sep}")
    assert not command_mentions(os.getpid(), f"{tmp_path / 'state'}{os.sep}")


def test_pids_that_name_no_single_process_have_no_command_line() -> None:
    assert command_line(0) is None and command_line(-1) is None
    assert not command_mentions(0, "") and not command_mentions(-1, "")


def test_an_exited_child_of_this_process_is_collected_not_seen_as_a_zombie(spawn: Spawn, tmp_path: Path) -> None:
    process = spawn([sleep_in(tmp_path / "state"), "30"])
    os.kill(process.pid, signal.SIGKILL)
    wait_until(lambda: is_zombie(process.pid))
    assert command_line(process.pid) is None
    assert not psutil.pid_exists(process.pid), "command_line left its own child a zombie"


def test_a_zombie_of_another_parent_counts_as_gone(spawn: Spawn) -> None:
    # The background sleep exits at once; its parent, exec'd into `sleep 30`, never collects it.
    leader = spawn(["sh", "-c", "sleep 0 & exec sleep 30"])
    wait_until(lambda: command_line(leader.pid) == "sleep 30")
    wait_until(lambda: any(is_zombie(child.pid) for child in psutil.Process(leader.pid).children()))
    zombie = psutil.Process(leader.pid).children()[0].pid
    assert os.getpgid(zombie) == leader.pid
    assert command_line(zombie) is None
    assert not command_mentions(zombie, "sleep")
    assert [member.pid for member in group_members(leader.pid)] == [leader.pid]


def test_stop_kills_the_whole_group_and_what_ignores_sigterm(spawn: Spawn) -> None:
    # Both sleeps inherit the ignored SIGTERM, so only the SIGKILL after the timeout stops them.
    leader = spawn(["sh", "-c", "trap '' TERM; sleep 30 & exec sleep 31"])
    wait_until(lambda: len(group_members(leader.pid)) == 2 and command_line(leader.pid) == "sleep 31")
    started = time.monotonic()
    stop_process_groups([leader.pid], timeout_s=0.5)
    assert time.monotonic() - started >= 0.5
    assert not group_alive(leader.pid)
    assert leader.poll() is not None


def test_signal_group_signals_one_process_when_it_leads_no_group(spawn: Spawn) -> None:
    leader = spawn(["sh", "-c", "sleep 30 & exec sleep 31"])
    wait_until(lambda: len(group_members(leader.pid)) == 2 and command_line(leader.pid) == "sleep 31")
    member = next(process.pid for process in group_members(leader.pid) if process.pid != leader.pid)
    signal_group(member, signal.SIGTERM)
    wait_until(lambda: [process.pid for process in group_members(leader.pid)] == [leader.pid])
    assert command_line(leader.pid) == "sleep 31"


def test_signal_group_ignores_a_process_that_is_gone(spawn: Spawn) -> None:
    process = spawn([SLEEP, "30"])
    process.kill()
    process.wait(timeout=10)
    signal_group(process.pid, 0)  # signal 0 only checks, in case the PID is somebody else's by now


def test_wait_for_startup_reports_how_waiting_ended(spawn: Spawn) -> None:
    exited = spawn([SLEEP, "0"])
    assert wait_for_startup(lambda: False, lambda: exited.poll() is None, timeout_s=10.0, poll_s=0.02) \
        is Startup.EXITED
    assert wait_for_startup(lambda: True, lambda: False, timeout_s=10.0) is Startup.HEALTHY
    started = time.monotonic()
    assert wait_for_startup(lambda: False, lambda: True, timeout_s=0.3, poll_s=0.02) is Startup.TIMED_OUT
    assert time.monotonic() - started >= 0.3


def test_port_checks_see_a_listener_and_its_absence() -> None:
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        port = listener.getsockname()[1]
        assert not port_is_free(port) and not port_accepts_connections(port)
        listener.listen()
        assert not port_is_free(port) and port_accepts_connections(port)
    assert port_is_free(port) and not port_accepts_connections(port)
