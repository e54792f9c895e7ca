"""Benchmarks run at smoke size, so that a refactor that breaks one fails the suite (the full runs stay out of it).

Each runs as a subprocess, as a user runs it (`python benchmarks/x.py`), on a tiny model or a tiny input; the
assertions read what it prints, because the printout is what the benchmark is for. The figures of a smoke run
measure nothing, so only their shape and their sanity are checked.
"""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SPREAD = re.compile(r"median (\d+(?:\.\d+)?)x \(min (\d+(?:\.\d+)?), max (\d+(?:\.\d+)?)\)")


def _run(*args: str) -> str:
    # One torch thread: the tiny models gain nothing from more, and on a busy machine a thread that waits for a
    # core another process holds made these runs 3-10x slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _ratio(out: str, label: str) -> float:
    """The median of the ratio printed after `label`, after checking min <= median <= max and that it is a
    positive number."""
    line = next((line for line in out.splitlines() if label in line), None)
    assert line is not None, f"no line with {label!r} in:\n{out}"
    found = SPREAD.search(line.split(label, 1)[1])
    assert found, f"no 'median Nx (min a, max b)' after {label!r}: {line}"
    median, low, high = map(float, found.groups())
    assert 0 < low <= median <= high, line
    return median


def _result(out: str):
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no RESULT line in:\n{out}"
    return json.loads(lines[-1].removeprefix("RESULT "))


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
    _ratio(out, "ratio llama.cpp / transformers:")


def test_crawl_vs_datatrove_smoke_runs_both_tools_and_the_decontaminating_side():
    out = _run("benchmarks/crawl_vs_datatrove.py", "--smoke")
    _ratio(out, "throughput ratio codepmp/datatrove:")
    _ratio(out, "peak memory ratio codepmp/datatrove:")
    _ratio(out, "wall time with decontamination / without:")
    # tool, wall s, files/s, MB/s, peak MB, kept, recall
    rows = re.findall(r"^(datatrove|codepmp) +[\d.]+ +\d+ +[\d.]+ +\d+ +(\d+) +([\d.]+)$", out, re.M)
    assert sorted(tool for tool, _, _ in rows) == ["codepmp", "datatrove"], out
    for tool, kept, recall in rows:
        assert int(kept) > 0 and 0 <= float(recall) <= 1, (tool, kept, recall)
    assert re.search(r"kept-set agreement: Jaccard (0|1)\.\d{4}", out)


def test_scoring_smoke_gives_the_trie_the_one_at_a_time_scores():
    out = _run("benchmarks/scoring_batched_vs_single.py", "--smoke")
    _ratio(out, "speedup")
    gap = float(re.search(r"max \|score difference\| (\S+)", out).group(1))
    assert gap < 1e-4, out
    assert re.search(r"resident memory .*one at a time \d+ MB, codepmp \d+ MB", out)


def test_synthesis_smoke_times_both_sides_on_a_tiny_model():
    out = _run("benchmarks/synthesis_batched_vs_sequential.py", "--smoke")
    _ratio(out, "speedup")
    same = re.search(r"identical texts (\d+)/(\d+)", out)
    assert same and int(same.group(2)) == 4 and int(same.group(1)) <= 4
    assert re.search(r"resident memory .*sequential \d+ MB, batched \d+ MB", out)
    sampled = _run("benchmarks/synthesis_batched_vs_sequential.py", "--smoke", "--temperature", "0.7")
    assert "temperature 0.7" in sampled and "texts not compared (sampling)" in sampled
    _ratio(sampled, "speedup")


def test_train_vs_trl_smoke_trains_both_and_scores_their_dev_pairs():
    out = _run("benchmarks/train_vs_trl.py", "--smoke")
    for name in ("codepmp", "trl"):
        run = re.search(rf"run 1/1 {name} .* dev accuracy (\d\.\d+) \((\d+) pairs\)", out)
        assert run and 0 <= float(run.group(1)) <= 1 and int(run.group(2)) > 0, out
    for label in ("codepmp / trl pairs/s:", "codepmp / trl step time:", "codepmp / trl peak memory:"):
        _ratio(out, label)


def test_mfu_debug_times_both_checkpointing_settings():
    out = _run("benchmarks/mfu.py", "--debug", "--steps", "2", "--warmup", "1")
    _ratio(out, "grad-ckpt on / off step time:")
    record = _result(out)
    assert record["repeats"] == 1 and len(record["step_ms_repeats"]) == 1 and record["step_ms"] > 0
    assert record["peer"]["grad_checkpointing"] is True and record["ckpt_on_over_off_step_time"] > 0


def test_trainer_mfu_debug_times_the_real_trainer_with_the_paper_settings():
    out = _run("benchmarks/trainer_mfu.py", "--debug")
    record = _result(out)
    assert len(record["step_s"]) == 2 and min(record["step_s"]) > 0  # 3 steps, the first untimed
    assert len(record["losses"]) == 3 and all(math.isfinite(x) for x in record["losses"])
    assert record["settings"]["grad_checkpointing"] is True and record["settings"]["shared_prefix"] is False
    assert record["model_flops_per_step"] > 0 and record["mfu_median"] is None
    assert "no MFU" in out


def test_gpu_train_check_debug_follows_fp32_in_bf16():
    # bf16+compile (inductor) and bf16+zero2 (DeepSpeed) take minutes on a CPU; the script's code is the same.
    out = _run("benchmarks/gpu_train_check.py", "--debug", "--variants", "fp32", "bf16", "bf16+packing")
    for name in ("fp32", "bf16", "bf16+packing"):
        summary = next((line for line in out.splitlines() if line.split()[:2] == [name, "tokens/s"]), "")
        _ratio(summary, "x bf16")
    record = {r["name"]: r for r in _result(out)}
    assert set(record) == {"fp32", "bf16", "bf16+packing"}
    assert record["fp32"]["max_loss_diff_vs_fp32"] == 0
    assert record["bf16"]["max_loss_diff_vs_fp32"] < 0.05
    assert record["bf16"]["x_bf16"] == [1.0]


def test_fuzz_inputs_short_run_tries_every_target(tmp_path):
    out = _run("benchmarks/fuzz_inputs.py", "--minutes", "0.05", "--out", str(tmp_path), "--derandomize")
    tried = {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line.split()[2:3] == ["cases"]}
    assert {"load_gsm8k", "load_math", "gsm8k_equal", "math_equal", "option_index", "total"} <= set(tried)
    assert all(count > 0 for count in tried.values())
    assert re.search(r"^total +\d+ cases +0 failures", out, re.M)
