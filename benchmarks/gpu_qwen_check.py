"""The `qwen` profile's training stages in bf16 on one GPU: PMP pretraining, reward finetuning and scoring of a
Qwen2.5-Coder-0.5B reward model (`Qwen2ForSequenceClassification`), with wall time per stage.

    .venv/bin/python benchmarks/gpu_qwen_check.py                       # packaged weights (models-qwen); GPU
    .venv/bin/python benchmarks/gpu_qwen_check.py --random-weights DIR  # Qwen2.5-0.5B shape from DIR's config
    .venv/bin/python benchmarks/gpu_qwen_check.py --debug               # tiny Qwen2 on the CPU: the script only

The settings are the `qwen` profile's (`load_config("qwen")`) with bf16 and compiled decoder layers, as a GPU
run of that profile would set them. Pretraining uses code-like pairs of the paper's prompt shape; finetuning and
scoring use the shipped policy samples (GSM8K train pairs, dev pool) when they are in the package, else the
packaged GSM8K sample's corrupted pairs. Prints, per stage, steps, first and last loss, seconds, tokens/s and
peak GPU memory, and fails if a loss is not finite or finetuning did not lower it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from codepmp.config import load_config
from codepmp.testing import TINY_PAIR_MAX_LENGTH
from codepmp.pairs import Pair
from codepmp.train.loop import train
from gpu_train_check import make_pairs  # the sibling benchmark's code-like pairs


def reasoning_data(n_pairs: int, n_problems: int) -> tuple[list[Pair], list[tuple[str, str]]]:
    from codepmp.reasoning import policy_samples as ps

    try:
        tables = ps.shipped_domain("gsm8k", 64, n_problems, 8, 1, 1, seed=0)
        pairs = [Pair(r["prompt"], r["chosen"], r["rejected"]) for r in tables["train"]]
        texts = [(r["prompt"], r["response"]) for r in tables["pool"]]
    except Exception:  # no shipped samples in this checkout: the packaged sample's corrupted pairs
        from codepmp.reasoning.gsm8k import load_problems, training_pairs

        pairs = training_pairs(load_problems("", "train")[:n_pairs], 1, 0)
        texts = [(p.prompt, p.chosen) for p in pairs[:n_problems]] + [(p.prompt, p.rejected) for p in pairs[:n_problems]]
    return pairs[:n_pairs], texts


def model_dir(args, root: Path) -> str:
    if args.debug:
        from codepmp.testing import write_tiny_model

        return str(write_tiny_model(root / "tiny", arch="qwen2"))
    if args.random_weights:
        from codepmp.testing import write_random_model

        return str(write_random_model(args.random_weights, root / "random"))
    from codepmp.models import resolve

    return resolve(load_config("qwen").base_model)


def stage(name: str, fn) -> dict:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    print(f"{name:10s} {seconds:7.1f} s  peak GPU {peak:5.1f} GiB  {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=64, help="pairs per training stage")
    parser.add_argument("--problems", type=int, default=24, help="dev problems scored (x8 candidates)")
    parser.add_argument("--random-weights", default="", help="folder whose config.json and tokenizer to use")
    parser.add_argument("--debug", action="store_true", help="tiny Qwen2 on the CPU, a few pairs")
    args = parser.parse_args()
    if args.debug:
        args.pairs, args.problems = 4, 2
    elif not torch.cuda.is_available():
        raise SystemExit("no GPU: run with --debug to check the script on the CPU")

    cfg = load_config("qwen")
    gpu = {"bf16": not args.debug, "compile": not args.debug, "log_every": 1}
    pretrain_cfg = dataclasses.replace(cfg.pretrain, **gpu, **({"max_length": TINY_PAIR_MAX_LENGTH} if args.debug else {}))
    finetune_cfg = dataclasses.replace(cfg.finetune, **gpu, **({"max_length": TINY_PAIR_MAX_LENGTH} if args.debug else {}))
    finetune_pairs, texts = reasoning_data(args.pairs, args.problems)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = model_dir(args, root)
        losses: dict[str, list[float]] = {"pretrain": [], "finetune": []}

        def run(name, cfg_, init, pairs):
            summary = train(cfg_, init, pairs, root / name, log=lambda m, s: losses[name].append(m["loss"]),
                            progress=False)
            return {"steps": summary["steps"], "first_loss": losses[name][0], "last_loss": losses[name][-1],
                    "tokens_per_s": summary.get("tokens_per_s")}

        stage("pretrain", lambda: run("pretrain", pretrain_cfg, base, make_pairs(args.pairs, seed=0)))
        result = stage("finetune", lambda: run("finetune", finetune_cfg, str(root / "pretrain"), finetune_pairs))
        from codepmp.evaluate.run import Scorer

        scorer = Scorer(str(root / "finetune"), batch_size=cfg.evaluate.batch_size if args.debug else 16,
                        max_length=finetune_cfg.max_length)
        scores = stage("score", lambda: {"texts": len(texts), "finite": all(map(math.isfinite, scorer(texts)))})
    bad = [name for name, values in losses.items() if not all(map(math.isfinite, values))]
    if bad or not scores["finite"]:
        raise SystemExit(f"non-finite losses or scores in {bad or ['score']}")
    if not args.debug and result["last_loss"] >= result["first_loss"]:
        raise SystemExit(f"finetuning did not lower the loss ({result['first_loss']:.4f} -> {result['last_loss']:.4f})")
    print("ok")


if __name__ == "__main__":
    main()
