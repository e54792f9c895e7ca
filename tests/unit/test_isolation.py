"""The session guard of tests/isolation.py fails a test session that writes to the user's stack state dir or
leaves a server running, and keeps the session's own variables off the user's.

    .venv/bin/python -m pytest -q tests/unit/test_isolation.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _inner_session(tmp_path: Path, body: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run one planted test in a pytest session of its own, with the guard loaded and HOME at a fresh folder."""
    home = tmp_path / "home"
    home.mkdir()
    test = tmp_path / "planted" / "test_planted.py"
    test.parent.mkdir()
    test.write_text(textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODEPMP_STACK_DIR", "CODEPMP_PORT_"))}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), CODEPMP_TEST_SERVER_EXIT_WAIT_S="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.isolation", "-p", "no:cacheprovider",
                           str(test)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return proc, home


def test_a_write_to_the_user_state_dir_fails_the_session(tmp_path):
    proc, home = _inner_session(tmp_path, """
        from pathlib import Path

        def test_writes_like_a_careless_cli_call():
            state = Path.home() / ".codepmp" / "stack"
            state.mkdir(parents=True)
            (state / "env.sh").write_text("export CODEPMP_S3_ENDPOINT=http://127.0.0.1:8333\\n")
        """)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout  # the test itself passed: the guard failed the session
    assert f"the user's stack state dir {home / '.codepmp' / 'stack'} was created" in proc.stdout


def test_a_server_left_running_fails_the_session_and_is_killed(tmp_path):
    proc, _ = _inner_session(tmp_path, """
        import os, shutil, subprocess, sys, tempfile
        from pathlib import Path

        def test_starts_a_server_and_forgets_it():
            # A stand-in server under the session's private stack dir, named like the stack's S3 server.
            folder = Path(os.environ["CODEPMP_STACK_DIR"])
            folder.mkdir(parents=True, exist_ok=True)
            weed = folder / "weed"
            shutil.copy(sys.executable, weed)
            subprocess.Popen([str(weed), "-c", "import time; time.sleep(600)", str(folder)],
                             start_new_session=True)
        """)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "server left running after the tests (killed)" in proc.stdout
    pid = int(proc.stdout.split("server left running after the tests (killed): pid ")[1].split(":")[0])
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_clean_session_passes_and_sees_no_user_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("CODEPMP_S3_ENDPOINT", "http://127.0.0.1:8333")  # as if the user sourced env.sh
    proc, home = _inner_session(tmp_path, """
        import os
        from pathlib import Path

        def test_sees_the_private_state_dir_only():
            assert "CODEPMP_S3_ENDPOINT" not in os.environ
            assert not Path(os.environ["CODEPMP_STACK_DIR"]).is_relative_to(Path.home())
            assert os.environ["CODEPMP_PORT_S3"] != "8333"
        """)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (home / ".codepmp").exists()


def test_this_session_runs_off_the_user_stack():
    assert "codepmp-tests-" in os.environ["CODEPMP_STACK_DIR"]
    assert os.environ.get("CODEPMP_PORT_MLFLOW") not in (None, "5000")
