"""Process and port utilities for servers that run in their own process groups (the embedded stack's).

A server is started in a new session, so its PID is also the ID of the process group that holds it and
every worker it forks: checks and signals go to the whole group. A recorded PID is trusted only while a
live process with that PID names the expected folder on its command line, as a PID can be reused by an
unrelated program once the server is gone. Zombies (exited, not yet collected by their parent) count as
gone everywhere.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import socket
import time
from collections.abc import Callable

import psutil

LOOPBACK = "127.0.0.1"
STARTUP_POLL_S = 0.25
STOP_POLL_S = 0.1
KILL_WAIT_S = 5.0
"""How long `stop_process_groups` waits for SIGKILLed groups to be gone."""


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when nothing listens on `host`:`port` (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_accepts_connections(port: int, host: str = LOOPBACK) -> bool:
    """True when something accepts TCP connections on `host`:`port` within a second."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def reap(pid: int) -> None:
    """Collect `pid`'s exit status if it is an exited child of this process, so it stops being a zombie."""
    if pid <= 0:
        return  # waitpid reads 0 and negative numbers as "any child" (of a process group)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def command_line(pid: int) -> str | None:
    """The command line of a live, non-zombie process, its arguments joined by spaces, or None.

    Our own exited child is reaped first, so a server this process started and that died is not seen as a
    zombie that lingers until the next `wait`."""
    if pid <= 0:
        return None
    reap(pid)
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return " ".join(process.cmdline()).strip() or None
    except psutil.Error:
        return None


def command_mentions(pid: int, text: str) -> bool:
    """True when `pid` is a live, non-zombie process whose command line contains `text`.

    This is how a recorded server PID is checked: after the server exits the PID may be reused by another
    program, whose command line does not name the server's folder."""
    command = command_line(pid)
    return command is not None and text in command


def group_members(pgid: int) -> list[psutil.Process]:
    """The live, non-zombie processes of the process group `pgid`."""
    members = []
    for pid in psutil.pids():
        if pid == 0:
            continue  # getpgid(0) is this process's own group
        try:
            if os.getpgid(pid) != pgid:
                continue
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (OSError, psutil.Error):
            continue  # gone since the listing (or not ours to ask about)
    return members


def group_alive(pgid: int) -> bool:
    """True while a process of the group `pgid` exists that is not a zombie."""
    reap(pgid)
    return bool(group_members(pgid))


def signal_group(pid: int, signum: int) -> None:
    """Send `signum` to the process group led by `pid` (or to `pid` alone if it leads none); a PID that is
    gone is ignored."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _wait_until_gone(pgids: list[int], timeout_s: float, poll_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while any(group_alive(pgid) for pgid in pgids) and time.monotonic() < deadline:
        time.sleep(poll_s)


def stop_process_groups(pgids: list[int], timeout_s: float) -> None:
    """SIGTERM each group, wait up to `timeout_s` for all to exit, then SIGKILL what is left (and wait up to
    KILL_WAIT_S for that to take effect)."""
    for pgid in pgids:
        signal_group(pgid, signal.SIGTERM)
    _wait_until_gone(pgids, timeout_s, STOP_POLL_S)
    for pgid in pgids:
        if group_alive(pgid):
            signal_group(pgid, signal.SIGKILL)
    _wait_until_gone(pgids, KILL_WAIT_S, STOP_POLL_S / 2)


class Startup(enum.Enum):
    """How waiting for a starting server ended."""

    HEALTHY = "healthy"
    EXITED = "exited"
    TIMED_OUT = "timed out"


def wait_for_startup(healthy: Callable[[], bool], alive: Callable[[], bool], timeout_s: float,
                     poll_s: float = STARTUP_POLL_S) -> Startup:
    """Poll until `healthy()`; stop early with EXITED once `alive()` is false, or with TIMED_OUT after
    `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if healthy():
            return Startup.HEALTHY
        if not alive():
            return Startup.EXITED
        time.sleep(poll_s)
    return Startup.TIMED_OUT
