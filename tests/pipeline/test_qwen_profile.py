"""The `qwen` profile end to end through kfp.local at a few pairs: Qwen2.5-Coder-0.5B reward model, 1.5B chosen
writer against the 0.5B, shipped policy samples. Slow (the 1.5B writes on 2 CPU cores), so out of `make test`:

    make models-qwen && .venv/bin/python -m pytest -m slow tests/pipeline/test_qwen_profile.py -q -s
"""

import time

import pytest

from codepmp.config import QWEN_LARGE, QWEN_SMALL
from codepmp.models import cache_dir
from codepmp.report import stage_runs, summary_text

# A few pairs: enough for every stage to train and score something.
FEW = {"crawl": {"max_files": 4}, "synthesize": {"max_pairs": 4, "description_tokens": 48, "code_tokens": 96},
       "pretrain": {"max_length": 320}, "finetune": {"max_length": 320},
       "reasoning": {"train_problems": 4, "dev_problems": 4, "candidates_per_problem": 4, "pairs": "corrupted"},
       "evaluate": {"best_of_n": [1, 2, 4], "bon_trials": 4, "max_length": 512},
       "sweep": {"sizes": [2]}, "experiment": "codepmp-qwen-test", "promote": {"registered_model": "codepmp-qwen-test"}}


@pytest.mark.slow
@pytest.mark.integration
def test_qwen_profile_runs_end_to_end(stack_env, tmp_path):
    missing = [a for a in (QWEN_SMALL, QWEN_LARGE) if not (cache_dir() / a / "config.json").exists()]
    if missing:
        pytest.skip(f"{missing} not provisioned: make models-qwen")
    from codepmp_kfp.pipelines.run import run_local

    start = time.monotonic()
    run_local("qwen", FEW, "qwen-test", str(tmp_path))
    total = time.monotonic() - start
    runs = stage_runs("codepmp-qwen-test", "qwen-test")
    by_stage = {(r["stage"], r["variant"]): r for r in runs if not r["subset"]}
    assert by_stage[("pretrain", "")]["metrics"]["wall_s"] > 0 and "lm_loss" in by_stage[("pretrain", "")]["metrics"]
    assert by_stage[("synthesize_merge", "")]["metrics"]["pairs"] >= 1
    evaluation = by_stage[("evaluate", "")]["metrics"]
    assert 0 <= evaluation["pmp.pairwise_accuracy"] <= 1 and "diff.pairwise_accuracy" in evaluation
    summary = summary_text("codepmp-qwen-test", "qwen-test", tmp_path, total)
    assert "pool shipped" in summary and "Qwen2.5-Coder" in summary
    print(summary)
