"""Benchmarks run at smoke size, so that a refactor that breaks one fails the suite (the full runs stay out of it)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_gpu_qwen_check_debug_trains_and_scores_a_tiny_qwen2():
    out = _run("benchmarks/gpu_qwen_check.py", "--debug")
    stages = [line.split()[0] for line in out.splitlines() if line.split()[:1] in (["pretrain"], ["finetune"],
                                                                                  ["score"], ["ok"])]
    assert stages == ["pretrain", "finetune", "score", "ok"]


def test_policy_sampling_smoke_compares_both_engines():
    pytest.importorskip("llama_cpp", reason="optional extra: make llamacpp")
    from codepmp.models import cache_dir

    if not (cache_dir() / "qwen2.5-coder-0.5b-instruct" / "config.json").exists():
        pytest.skip("qwen2.5-coder-0.5b-instruct not provisioned: make models-qwen")
    data = ROOT.parent / "shared" / "data"
    if not (data / "gsm8k" / "dev.jsonl").exists():
        pytest.skip(f"no GSM8K dev split at {data}")
    out = _run("benchmarks/policy_sampling.py", "--data", str(data), "--smoke")
    assert "ratio llama.cpp / transformers: median" in out
