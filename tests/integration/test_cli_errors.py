"""Bad input and unreachable services: one clear line naming the input, non-zero exit, no traceback."""

import os
import socket
import subprocess
import sys

import pytest


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def codepmp(*args, env=None, timeout=120):
    proc = subprocess.run([sys.executable, "-m", "codepmp.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""


@pytest.mark.integration
def test_crawl_path_that_does_not_exist(stack_env, tmp_path):
    code, line = codepmp("crawl", "--out", str(tmp_path / "o"), "--set", f'crawl.sources=["{tmp_path}/nope"]')
    assert code == 2 and line.startswith("codepmp crawl: error:") and f"{tmp_path}/nope" in line


@pytest.mark.integration
def test_corpus_that_filters_to_nothing(stack_env, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    code, line = codepmp("crawl", "--out", str(tmp_path / "o"), "--set", f'crawl.sources=["{tmp_path}/src"]')
    assert code == 2 and "kept 0 of 1" in line and "too_small=1" in line


@pytest.mark.integration
def test_unreachable_mlflow(stack_env, tmp_path):
    uri = f"http://127.0.0.1:{closed_port()}"
    code, line = codepmp("crawl", "--out", str(tmp_path / "o"), env={"MLFLOW_TRACKING_URI": uri})
    assert code == 2 and uri in line


@pytest.mark.integration
def test_unreachable_object_store(stack_env, tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    code, line = codepmp("run", "--profile", "tiny", "--root", str(tmp_path), env={"CODEPMP_S3_ENDPOINT": endpoint})
    assert code == 2 and endpoint.split("//")[1] in line
    assert not any(tmp_path.iterdir())  # nothing started


def test_unknown_config_key_fails_before_anything_runs(tmp_path):
    code, line = codepmp("run", "--profile", "tiny", "--set", "pretrain.lrr=1", "--root", str(tmp_path))
    assert code == 2 and "pretrain.lrr" in line


def test_submit_without_or_with_unreachable_kfp_host(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KFP_HOST"}
    proc = subprocess.run([sys.executable, "-m", "codepmp.cli", "submit", "--package", str(tmp_path / "p.yaml")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "KFP_HOST is not set" in proc.stderr
    host = f"http://127.0.0.1:{closed_port()}"
    code, line = codepmp("submit", "--package", str(tmp_path / "p.yaml"), env={"KFP_HOST": host})
    assert code == 2 and host in line and "unreachable" in line
