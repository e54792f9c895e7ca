"""bf16 correctness and speed of codepmp's real training loop on one GPU: the same pairs trained in fp32, in
bf16 autocast, bf16 with compiled decoder layers, bf16 packed, and bf16 under DeepSpeed ZeRO-2.

    .venv/bin/python benchmarks/gpu_train_check.py                 # one GPU; about 3 minutes a repeat on an H100
    .venv/bin/python benchmarks/gpu_train_check.py --debug         # tiny model on the CPU: checks the script only
    .venv/bin/python benchmarks/gpu_train_check.py --debug --variants fp32 bf16 bf16+packing   # seconds

The model has Qwen2-0.5B's decoder shape with random weights and the small offline test tokenizer (so the
vocabulary, and the LM head, are tiny). Every variant calls `codepmp.train.loop.train` on the same pairs with
the same seed; the script prints each one's largest per-step loss difference from fp32 (the reference), its
tokens/s over the second half of its steps (after compilation and warm-up), its peak GPU memory, and the ratio
of its tokens/s to the bf16 eager run's. All variants run `--repeats` times in turn, in one process (peak
memory is reset before each run, so each peak is its own); tokens/s and the ratio are given as median, min
and max over the repeats. `--debug` uses a 2-layer model and 8 short pairs and runs once; on the CPU its
`bf16+compile` (inductor) and `bf16+zero2` (DeepSpeed) runs take minutes, so `--variants` picks a few.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from codepmp.config import TrainConfig
from codepmp.testing import build_tiny_tokenizer
from codepmp.pairs import Pair
from codepmp.train.loop import train
from repeat import add_flags, settle_repeats, spread

VARIANTS = {"fp32": {}, "bf16": {"bf16": True}, "bf16+compile": {"bf16": True, "compile": True},
            "bf16+packing": {"bf16": True, "packing": True}, "bf16+trees": {"bf16": True, "shared_prefix": True},
            "bf16+zero2": {"bf16": True, "deepspeed_stage": 2}}
"""Each over padded rows (`shared_prefix` off, the paper profile's layout) unless it names another layout."""


def write_model(path: Path, debug: bool) -> str:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tiny_tokenizer()
    shape = (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
             if debug else dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14))
    config = Qwen2Config(vocab_size=len(tokenizer), num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.eos_token_id, **shape)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


CODE_WORDS = ["def", "return", "self", "value", "items", "for", "in", "range", "if", "else", "print", "x", "y", "+"]


def make_pairs(n: int, seed: int, response_words: tuple[int, int] = (80, 400)) -> list[Pair]:
    """Code-like pairs of varied length (so batches have padding, and packing has something to save)."""
    rng = random.Random(seed)
    text = lambda k: " ".join(rng.choice(CODE_WORDS) for _ in range(k))  # noqa: E731
    return [Pair(f"### Instruction: {text(rng.randint(10, 60))}\n### Response:\n",
                 text(rng.randint(*response_words)), text(rng.randint(*response_words))) for _ in range(n)]


def run(name: str, cfg: TrainConfig, model: str, pairs: list[Pair], out: Path) -> dict:
    losses, marks = [], []

    def log(metrics: dict, step: int) -> None:
        # Logged after the step's loss.item(), so the GPU is done with it: a synchronised timestamp.
        losses.append(metrics["loss"])
        marks.append((time.perf_counter(), metrics["tokens"]))

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    try:
        summary = train(cfg, model, pairs, out / name, log=log, progress=False)
    except Exception as exc:  # report every variant, even when one cannot run on this machine
        print(f"{name:<22} FAILED: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        return {"name": name, "error": f"{type(exc).__name__}: {exc}"[:500]}
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    # Throughput over the second half of the steps: compilation and warm-up happen in the first.
    (t0, n0), (t1, n1) = marks[len(marks) // 2], marks[-1]
    result = {"name": name, "losses": losses, "tokens_per_s": (n1 - n0) / (t1 - t0), "wall_s": wall,
              "peak_gib": peak, "final_accuracy": summary["final_accuracy"]}
    print(f"{name:<22} done: {result['tokens_per_s']:.0f} tokens/s, {wall:.1f} s, losses {losses}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="which runs (default: all); fp32 is the loss reference and bf16 the speed one")
    parser.add_argument("--debug", action="store_true")
    add_flags(parser, None)
    args = parser.parse_args()
    settle_repeats(args, args.debug)
    if args.debug:
        args.pairs, args.batch_size = min(args.pairs, 8), min(args.batch_size, 2)
    max_length = 256 if args.debug else 1024
    base = TrainConfig(max_length=max_length, batch_size=args.batch_size, grad_accum=1, lr=1e-5, warmup_frac=0.1,
                       decay_frac=0.1, log_every=1, seed=0, shared_prefix=False)
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}",
          flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        model = write_model(Path(tmp) / "model", args.debug)
        pairs = make_pairs(args.pairs, seed=1, response_words=(10, 60) if args.debug else (80, 400))
        for repeat in range(args.repeats):
            for name in args.variants:
                runs[name].append(run(name, dataclasses.replace(base, **VARIANTS[name]), model, pairs,
                                      Path(tmp) / f"repeat-{repeat}"))
    report(runs, args.repeats)


def report(runs: dict[str, list[dict]], repeats: int) -> None:
    ok = {name: results for name, results in runs.items() if all("losses" in r for r in results)}
    reference = ok.get("fp32")
    eager = ok.get("bf16")
    print(f"\nrepeats {repeats}; peak GiB: the largest; max |loss - fp32|: over every step of every repeat")
    summary = []
    for name, results in ok.items():
        rates = [r["tokens_per_s"] for r in results]
        ratios = [r["tokens_per_s"] / e["tokens_per_s"] for r, e in zip(results, eager)] if eager else []
        diff = (max(abs(a - b) for r, ref in zip(results, reference) for a, b in zip(r["losses"], ref["losses"]))
                if reference else float("nan"))
        peak = max(r["peak_gib"] for r in results)
        print(f"{name:<13} tokens/s {spread(rates, '', 0)}  x bf16 {spread(ratios) if ratios else 'n/a'}  "
              f"peak GiB {peak:.2f}  max |loss - fp32| {diff:.4f}  final loss {results[-1]['losses'][-1]:.4f}")
        summary.append({"name": name, "tokens_per_s": rates, "x_bf16": ratios, "peak_gib": peak,
                        "max_loss_diff_vs_fp32": diff, "final_accuracy": results[-1]["final_accuracy"],
                        "wall_s": [r["wall_s"] for r in results]})
    failed = [{"name": name, "error": next(r["error"] for r in results if "error" in r)}
              for name, results in runs.items() if name not in ok]
    print("RESULT " + json.dumps(summary + failed))


if __name__ == "__main__":
    main()
