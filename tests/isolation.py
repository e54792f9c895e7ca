"""A pytest plugin (loaded by the root conftest) that keeps every test away from the user's own embedded stack.

Before any test runs it points CODEPMP_STACK_DIR and the stack's ports at a session-private folder and free
ports, and drops the client variables a user's shell may have sourced from their `env.sh`, for this process
and every subprocess a test starts. A test that starts the embedded stack without asking for a private one
(e.g. a CLI command run with no services configured) gets one there; it is stopped at the end and the tests
that started it are listed in the summary.

At the end the session fails if the user's state dir (~/.codepmp/stack, or where CODEPMP_STACK_DIR pointed
before the session) was created or had its configuration files changed, or if a server started during the
session is still running (it is then killed). tests/unit/test_isolation.py shows both checks failing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from codepmp.env import CONFIG_MAP_VARS, LOGIN_VARS, SECRET_VARS
from codepmp.stack import DEFAULT_STATE_DIR, Stack, StackPorts

CLIENT_VARIABLES = CONFIG_MAP_VARS + LOGIN_VARS + SECRET_VARS
"""What the user's env.sh exports: with them set, a test would talk to the user's servers."""
SERVER_NAMES = ("weed", "minio", "mlflow")
SERVER_EXIT_WAIT_S = float(os.environ.get("CODEPMP_TEST_SERVER_EXIT_WAIT_S", "20"))
"""Servers stop slowly on SIGTERM (weed in particular): how long the check waits before calling one left.
The guard's own test plants a server that never stops, so it sets a short wait to see the kill sooner."""


def fingerprint(state_dir: Path) -> dict[str, str] | None:
    """sha256 of each top-level file of a stack state dir (env.sh, stack.json, the auth and identity configs),
    or None when it does not exist. Databases and logs are left out: the user's running servers write them."""
    if not state_dir.exists():
        return None
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(state_dir.iterdir())
            if path.is_file() and ".db" not in path.name and not path.name.endswith(".log")}


def _servers(paths: list[str]) -> list[psutil.Process]:
    """Live server processes of this session: a command line naming one of its folders (where every test
    stack keeps its state), or a weed/minio/mlflow process below this one. Other sessions' servers, and the
    user's, match neither."""
    found = {}
    for process in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            command = " ".join(process.info["cmdline"] or [])
            if process.pid == os.getpid() or process.status() == psutil.STATUS_ZOMBIE:
                continue
            named = any(Path(word).name.startswith(SERVER_NAMES) for word in command.split()[:3])
            if named and (any(path in command for path in paths)
                          or os.getpid() in {parent.pid for parent in process.parents()}):
                found[process.pid] = process
        except psutil.Error:
            continue
    return list(found.values())


class Isolation:
    def __init__(self) -> None:
        self.user_dir = Path(os.environ.get("CODEPMP_STACK_DIR") or DEFAULT_STATE_DIR).expanduser()
        self.user_state = fingerprint(self.user_dir)
        self.root = Path(tempfile.mkdtemp(prefix="codepmp-tests-"))
        self.stack_dir = self.root / "stack"
        self.starters: list[str] = []
        self.problems: list[str] = []

    def apply(self) -> None:
        os.environ["CODEPMP_STACK_DIR"] = str(self.stack_dir)
        ports = StackPorts.free()
        for name, value in vars(ports).items():
            os.environ[f"CODEPMP_PORT_{name.upper()}"] = str(value)
        for name in CLIENT_VARIABLES:
            os.environ.pop(name, None)

    def after_test(self, nodeid: str) -> None:
        """A test that started the embedded stack without a private one is named, and the stack stopped, so
        the next such test is seen too."""
        if (self.stack_dir / "stack.json").exists():
            self.starters.append(nodeid)
            Stack(self.stack_dir).down()
            (self.stack_dir / "stack.json").unlink(missing_ok=True)

    def finish(self, basetemp: Path | None) -> None:
        if (self.stack_dir / "stack.json").exists():
            Stack(self.stack_dir).down()
        if fingerprint(self.user_dir) != self.user_state:
            what = "created" if self.user_state is None else "modified"
            self.problems.append(f"the user's stack state dir {self.user_dir} was {what} during the tests")
        paths = [str(self.root)] + ([str(basetemp)] if basetemp else [])
        deadline = time.monotonic() + SERVER_EXIT_WAIT_S
        left = _servers(paths)
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = _servers(paths)
        for process in left:
            try:
                command = " ".join(process.cmdline())[:160]
                process.kill()
            except psutil.Error:
                continue
            self.problems.append(f"server left running after the tests (killed): pid {process.pid}: {command}")
        shutil.rmtree(self.root, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    isolation = Isolation()
    isolation.apply()
    config.stash[KEY] = isolation


KEY = pytest.StashKey[Isolation]()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    item.config.stash[KEY].after_test(item.nodeid)


def pytest_sessionfinish(session: pytest.Session) -> None:
    isolation = session.config.stash[KEY]
    factory = getattr(session.config, "_tmp_path_factory", None)
    isolation.finish(factory.getbasetemp() if factory else None)
    if isolation.problems:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    isolation = config.stash[KEY]
    if isolation.starters:
        terminalreporter.write_line("embedded stack started in the session's private state dir by: "
                                    + ", ".join(isolation.starters))
    for problem in isolation.problems:
        terminalreporter.write_line(f"ISOLATION FAILURE: {problem}", red=True)
