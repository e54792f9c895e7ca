"""Reward-model training throughput: codepmp's trainer vs TRL's `RewardTrainer`, same model, pairs and budget.

    .venv/bin/python benchmarks/train_vs_trl.py                  # SmolLM2-135M, 64 GSM8K pairs, CPU, 3 repeats
    .venv/bin/python benchmarks/train_vs_trl.py --pairs 256 --max-length 512 --batch-size 8
    .venv/bin/python benchmarks/train_vs_trl.py --smoke          # tiny random model, a few pairs: the script only

Pairs: GSM8K reference solutions vs corrupted ones (`codepmp.reasoning`, the `finetune` stage's data) from
`--data` (default: the sample shipped in the package), and a disjoint dev set for the final accuracy. Pairs
longer than `--max-length` tokens are left out up front, because TRL drops them while codepmp truncates.
Both trainers: fp32 on CPU, Bradley-Terry loss only, AdamW, lr 1e-5, weight decay 0.1, gradient clipping
1.0, no gradient checkpointing, one epoch, the same micro-batch and seed, and the same texts: TRL appends EOS
to every response and reads the reward there, so codepmp is given the EOS-terminated texts too. TRL samples
batches at random (its length-grouped sampler needs an `input_ids` column, which RewardTrainer's tokenized
dataset does not have); codepmp groups pairs of similar length.

Each trainer runs in its own child process (so peak memory is its own), `--repeats` times, the two taking
turns at going first. This script prints for each run: pairs/s, real (non-pad) tokens/s, mean step time, the
child's peak RSS, and pairwise accuracy of the trained model on the dev pairs; then each ratio against codepmp
as its median, min and max over the repeats. `--smoke` trains a tiny random reward model (built offline) on
a few pairs of the packaged GSM8K sample, once: its figures check the script, they measure nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from codepmp.pairs import Pair
from repeat import add_flags, run_child, settle_repeats, spread

SMOKE = {"pairs": 16, "dev": 16, "max_length": 384, "batch_size": 4}
"""--smoke: the tiny tokenizer spends a token per character or two, so about half the packaged sample's pairs
fit in 384 tokens (the tiny model takes 512)."""


def pairs_for(args, tokenizer) -> tuple[list, list]:
    from codepmp.config import ReasoningConfig
    from codepmp.pairs import read_reasoning_pairs
    from codepmp.reasoning.build import build_reasoning_data

    out = Path(args.work) / "data"
    if not (out / "stats.json").exists():
        build_reasoning_data(ReasoningConfig(data_dir=args.data, train_problems=args.pairs, dev_problems=args.dev,
                                             seed=args.seed), out)

    def fits(pair) -> bool:
        return all(len(tokenizer(pair.prompt + side)["input_ids"]) < args.max_length
                   for side in (pair.chosen, pair.rejected))

    return [p for p in read_reasoning_pairs(out, "train") if fits(p)], [p for p in read_reasoning_pairs(out, "dev") if fits(p)]


def run_codepmp(args, model: str, train, out: Path) -> dict:
    from codepmp.config import TrainConfig
    from codepmp.train.loop import train as train_model

    cfg = TrainConfig(max_length=args.max_length, batch_size=args.batch_size, grad_accum=1, lr=args.lr,
                      weight_decay=0.1, warmup_frac=0.0, decay_frac=1.0, lm_coef=0.0, log_every=1, seed=args.seed)
    summary = train_model(cfg, model, train, out, progress=False)
    # The training loop's own wall time (after loading the model), as trainer.train() is for TRL.
    return {"train_s": summary["train_s"], "steps": summary["steps"]}


def run_trl(args, model: str, train, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from codepmp.models import load_reward_model

    torch.manual_seed(args.seed)
    reward_model, tokenizer = load_reward_model(model)
    dataset = Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in train])
    config = RewardConfig(
        output_dir=str(out / "trl-work"), per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        num_train_epochs=1, learning_rate=args.lr, weight_decay=0.1, max_grad_norm=1.0, lr_scheduler_type="linear",
        warmup_steps=0, max_length=args.max_length, gradient_checkpointing=False, bf16=False, use_cpu=True,
        seed=args.seed, data_seed=args.seed, save_strategy="no", report_to=[],
        logging_steps=10**6, disable_tqdm=True, optim="adamw_torch", dataloader_num_workers=0)
    trainer = RewardTrainer(model=reward_model, args=config, train_dataset=dataset, processing_class=tokenizer)
    tokens = sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in trainer.train_dataset)
    start = time.perf_counter()
    result = trainer.train()
    train_s = time.perf_counter() - start
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    return {"train_s": train_s, "steps": result.global_step, "tokens": tokens}


def child(args) -> None:
    """One trainer, then the pairwise accuracy of what it trained; a JSON line on stdout."""
    from codepmp.evaluate.metrics import pairwise_accuracy
    from codepmp.evaluate.run import Scorer
    from codepmp.models import load_tokenizer, resolve

    model = resolve(args.model)
    tokenizer = load_tokenizer(model)
    train, dev = pairs_for(args, tokenizer)
    # TRL appends EOS to every text and reads the reward there; codepmp gets the very same texts.
    eos = tokenizer.eos_token
    train = [Pair(p.prompt, p.chosen + eos, p.rejected + eos) for p in train]
    out = Path(args.out)
    if args.child == "codepmp":
        result = run_codepmp(args, model, train, out)
    else:  # TRL adds the EOS itself
        bare = [Pair(p.prompt, p.chosen.removesuffix(eos), p.rejected.removesuffix(eos)) for p in train]
        result = run_trl(args, model, bare, out)
    if not result.get("tokens"):
        from codepmp.train.data import encode_pairs

        encoded = encode_pairs(tokenizer, train, args.max_length)
        result["tokens"] = sum(len(c.ids) + len(r.ids) for c, r in encoded)
    scorer = Scorer(str(out), batch_size=8, max_length=args.max_length)
    chosen = scorer([(p.prompt, p.chosen + eos) for p in dev], desc="dev chosen")
    rejected = scorer([(p.prompt, p.rejected + eos) for p in dev], desc="dev rejected")
    result.update(pairs=len(train), dev_pairs=len(dev), accuracy=pairwise_accuracy(chosen, rejected))
    print("RESULT " + json.dumps(result), flush=True)


def compare(args) -> dict[str, list[dict]]:
    """Each trainer `args.repeats` times in its own child process, the two taking turns at going first."""
    if args.smoke:
        from codepmp.testing import write_tiny_model

        args.model = str(write_tiny_model(Path(args.work) / "tiny-reward-model", reward=True))
    runs: dict[str, list[dict]] = {"codepmp": [], "trl": []}
    for repeat in range(args.repeats):
        for name in (("codepmp", "trl") if repeat % 2 == 0 else ("trl", "codepmp")):
            out = Path(args.work) / f"{name}-{repeat}"
            # Later flags win in argparse, so the child sees the model this run settled on.
            cmd = [sys.executable, __file__, *sys.argv[1:], "--child", name, "--work", args.work,
                   "--model", args.model, "--out", str(out)]
            proc = run_child(cmd, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(lines[-1].removeprefix("RESULT "))
            r["peak_rss_mb"] = proc.peak_rss_mb
            runs[name].append(r)
            print(f"run {repeat + 1}/{args.repeats} {name:8s} {r['train_s']:7.1f} s  {r['steps']:3d} steps  "
                  f"{r['train_s'] / r['steps']:6.2f} s/step  {r['pairs'] / r['train_s']:6.2f} pairs/s  "
                  f"{r['tokens'] / r['train_s']:7.1f} tok/s  peak RSS {r['peak_rss_mb']:6.0f} MB  "
                  f"dev accuracy {r['accuracy']:.3f} ({r['dev_pairs']} pairs)", flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default="", help="folder with gsm8k/{train,dev}.jsonl (default: packaged sample)")
    parser.add_argument("--pairs", type=int, default=64, help="GSM8K train problems (one pair each)")
    parser.add_argument("--dev", type=int, default=64, help="GSM8K dev problems for the final accuracy")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="")
    add_flags(parser, f"tiny random reward model, {SMOKE['pairs']} packaged GSM8K problems, 1 repeat: seconds")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:  # smoke sizes, except where a flag says otherwise
        for name, value in SMOKE.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    if args.child:
        return child(args)

    settle_repeats(args, args.smoke)
    work_given = bool(args.work)
    args.work = args.work or tempfile.mkdtemp(prefix="codepmp-bench-train-")
    try:
        runs = compare(args)
    finally:
        if not work_given:  # each run saves a trained model there
            shutil.rmtree(args.work, ignore_errors=True)
    ours, peer = runs["codepmp"], runs["trl"]
    print(f"\nmodel {args.model}, {ours[0]['pairs']} pairs, max length {args.max_length}, batch {args.batch_size}, "
          f"repeats {args.repeats}")
    print(f"codepmp / trl pairs/s: {spread([p['train_s'] / o['train_s'] for o, p in zip(ours, peer)])}")
    print("codepmp / trl step time: "
          + spread([(o["train_s"] / o["steps"]) / (p["train_s"] / p["steps"]) for o, p in zip(ours, peer)]))
    print(f"codepmp / trl peak memory: {spread([o['peak_rss_mb'] / p['peak_rss_mb'] for o, p in zip(ours, peer)])}")
    print(f"peak RSS of each trainer's child process: codepmp {spread([o['peak_rss_mb'] for o in ours], ' MB', 0)}, "
          f"trl {spread([p['peak_rss_mb'] for p in peer], ' MB', 0)}")
    print(f"dev accuracy: codepmp {statistics.median(o['accuracy'] for o in ours):.3f}, "
          f"trl {statistics.median(p['accuracy'] for p in peer):.3f} (median over repeats)")


if __name__ == "__main__":
    main()
