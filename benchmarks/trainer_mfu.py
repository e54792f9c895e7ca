"""MFU of codepmp's real trainer on one GPU in the `paper` profile's training setup: `codepmp.train.loop.train`
with the profile's pretrain settings (DeepSpeed ZeRO-2 in its bf16 mode: bf16 weights, fp32 master weights in
the optimizer; compiled decoder layers, gradient checkpointing, max length 1024, 8 pairs per micro-batch, 16
micro-batches per step, padded rows) on a model of Qwen2-1.5B's shape with random weights.

    .venv/bin/python benchmarks/trainer_mfu.py --tokenizer DIR        # one H100/H200; DIR holds a Qwen2 tokenizer
    .venv/bin/python benchmarks/trainer_mfu.py --debug                # tiny model on the CPU: checks the script only
    .venv/bin/python benchmarks/trainer_mfu.py --set pretrain.grad_checkpointing=false   # a setting changed

Every pair has the same prompt (its response starts at the same token) and responses long enough to be cut at
max length, so every row is exactly `max_length` tokens with no padding, and the model FLOPs of a micro-batch
are `benchmarks/mfu.py`'s count for it (6 N T + attention over the full square + LM head over the chosen
response positions). The script checks that, then times each optimizer step from the trainer's own log
callback (called after the step's losses are read back, so the GPU has finished the step's backward). The
first `--warmup` steps (compilation, allocator warm-up) are not timed; MFU and HFU are given as median, min
and max over the timed steps. MFU divides by the GPU's bf16 dense peak; HFU adds the checkpointed layers'
recomputed forward. The last line is `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from codepmp.config import load_config, parse_set
from codepmp.errors import ConfigError
from codepmp.pairs import Pair
from codepmp.train.data import collate, encode_pairs
from codepmp.train.loop import train
from gpu_train_check import CODE_WORDS
from mfu import model_config, non_embedding_params, peak_tflops_of, step_flops
from repeat import spread


def make_pairs(n: int, prompt_words: int, response_words: int, seed: int = 0) -> list[Pair]:
    rng = random.Random(seed)
    text = lambda k: " ".join(rng.choice(CODE_WORDS) for _ in range(k))  # noqa: E731
    prompt = f"### Instruction:\n{text(prompt_words)}\n### Response:\n"
    # Every response starts with the same word, so the prompt/response boundary is the same token everywhere.
    return [Pair(prompt, "def " + text(response_words), "def " + text(response_words)) for _ in range(n)]


def micro_batch_flops(tokenizer, config, cfg, pairs: list[Pair]) -> tuple[int, int]:
    """(model FLOPs, recompute FLOPs) of one micro-batch, after checking every row is `max_length` tokens
    and every response starts at the same position (else the count would not hold for every micro-batch)."""
    encoded = encode_pairs(tokenizer, pairs, cfg.max_length)
    shapes = {(len(c.ids), len(r.ids), c.response_start) for c, r in encoded}
    if len(shapes) != 1 or next(iter(shapes))[:2] != (cfg.max_length, cfg.max_length):
        raise SystemExit(f"pairs are not uniform full-length rows: (chosen, rejected, response start) {shapes}")
    with torch.device("meta"):
        from transformers import Qwen2Model

        n_params = non_embedding_params(Qwen2Model(config))
    flops, recompute, _ = step_flops(n_params, config, collate(encoded[:cfg.batch_size], config.pad_token_id))
    return flops, recompute


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", default="", help="folder with a Qwen2 tokenizer (default: the cached "
                        "qwen2.5-coder-0.5b-instruct)")
    parser.add_argument("--steps", type=int, default=7, help="optimizer steps in all")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a paper-profile setting, as on the CLI (pretrain.grad_checkpointing=false)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak (default: from the GPU)")
    parser.add_argument("--debug", action="store_true", help="tiny Qwen2, short rows, no compile/DeepSpeed, CPU")
    args = parser.parse_args()
    settings = ["pretrain.log_every=1", "pretrain.checkpoint_every=0"]
    if args.debug:
        args.steps, args.warmup = 3, 1
        settings += ["pretrain.max_length=128", "pretrain.batch_size=2", "pretrain.grad_accum=2",
                     "pretrain.compile=false", "pretrain.bf16=false", "pretrain.deepspeed_stage=-1"]
    try:
        cfg = load_config("paper", parse_set(settings + args.set)).pretrain  # the user's --set last: it wins
    except ConfigError as exc:
        parser.error(str(exc))
    if args.warmup < 1 or args.steps <= args.warmup:
        parser.error("need --warmup >= 1 and --steps > --warmup")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or (peak_tflops_of(name) if device.type == "cuda" else None)
    if device.type == "cuda" and peak is None:
        parser.error(f"no known bf16 peak for '{name}': pass --peak-tflops")
    if device.type == "cpu" and not args.debug:
        parser.error("no GPU: run with --debug to check the script on the CPU")

    from transformers import AutoTokenizer, Qwen2ForCausalLM

    config = model_config(args)
    if args.debug:
        from codepmp.testing import build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
        pairs = make_pairs(args.steps * cfg.batch_size * cfg.grad_accum, 20, 200)
    else:
        from codepmp.config import QWEN_SMALL
        from codepmp.models import resolve

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or resolve(QWEN_SMALL))
        pairs = make_pairs(args.steps * cfg.batch_size * cfg.grad_accum, 300, 1500)
    flops, recompute = (cfg.grad_accum * f for f in micro_batch_flops(tokenizer, config, cfg, pairs))
    print(f"{name}, torch {torch.__version__}; {cfg.batch_size} pairs x {cfg.grad_accum} micro-batches of "
          f"{cfg.max_length}-token rows per step, {flops / 1e12:.1f} TFLOP per step (model)", flush=True)

    marks: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        with device:  # random init straight on the GPU: 1.5B parameters initialise slowly on the CPU
            Qwen2ForCausalLM(config).save_pretrained(Path(tmp, "model"))
        tokenizer.save_pretrained(Path(tmp, "model"))
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        summary = train(cfg, str(Path(tmp, "model")), pairs, Path(tmp, "out"), progress=False,
                        log=lambda m, s: marks.append((time.perf_counter(), m["loss"])))
    step_s = [b[0] - a[0] for a, b in zip(marks[args.warmup - 1:], marks[args.warmup:])]
    losses = [loss for _, loss in marks]
    if not all(map(math.isfinite, losses)):
        raise SystemExit(f"non-finite loss: {losses}")
    mfu = [flops / s / 1e12 / peak for s in step_s] if peak else []
    hfu = [(flops + (recompute if cfg.grad_checkpointing else 0)) / s / 1e12 / peak for s in step_s] if peak else []
    tokens_per_s = [cfg.batch_size * cfg.grad_accum * 2 * cfg.max_length / s for s in step_s]
    print(f"step s {spread(step_s, '', 2)}; tokens/s {spread(tokens_per_s, '', 0)}")
    if mfu:
        percent = lambda xs: spread([100 * x for x in xs], " %", 1)  # noqa: E731
        print(f"MFU {percent(mfu)}; HFU {percent(hfu)} over {len(step_s)} timed steps")
    else:
        print("no MFU: a CPU debug run checks the script; its numbers are not MFU figures")
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    import transformers

    print("RESULT " + json.dumps({
        "device": name, "torch": torch.__version__, "transformers": transformers.__version__,
        "settings": {k: getattr(cfg, k) for k in ("max_length", "batch_size", "grad_accum", "bf16", "compile",
                                                   "grad_checkpointing", "deepspeed_stage", "shared_prefix",
                                                   "packing", "attn_implementation", "lm_coef")},
        "model_flops_per_step": flops, "peak_tflops": peak, "step_s": step_s, "losses": losses,
        "mfu_median": statistics.median(mfu) if mfu else None, "hfu_median": statistics.median(hfu) if hfu else None,
        "tokens_per_s_median": statistics.median(tokens_per_s), "peak_gib": peak_gib,
        "final_accuracy": summary["final_accuracy"]}))


if __name__ == "__main__":
    main()
