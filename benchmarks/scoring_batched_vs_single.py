"""Reward scoring throughput: the evaluation's `Scorer` against scoring one candidate at a time.

    .venv/bin/python benchmarks/scoring_batched_vs_single.py                     # what the evaluate stage scores
    .venv/bin/python benchmarks/scoring_batched_vs_single.py --workload unique   # texts with distinct prompts
    .venv/bin/python benchmarks/scoring_batched_vs_single.py --random            # random SmolLM2-shaped model
    .venv/bin/python benchmarks/scoring_batched_vs_single.py --smoke             # tiny model, packaged sample

Both sides are `codepmp.evaluate.run.Scorer` on the same texts and the same loaded model: the baseline with
`share=False` and batch size 1 (one forward pass per text), codepmp's as the evaluate stage runs it: the
texts' token trie in tree-attention passes of up to `--pack-tokens` nodes, so every shared start (a prompt,
the steps candidates agree on, a repeated text) runs once. `eval` builds the evaluate stage's texts
with the reasoning data stage from shared/data (dev pairs, best-of-N candidates, logic options); `unique`
takes GSM8K dev solutions, each under its own question; with `--data ''` both read the GSM8K sample shipped in
the package (`eval` then has the gsm8k domain only). The two sides take turns on runs of texts that never split
a prompt's texts (`--part-texts`), so load from elsewhere on the machine falls on both alike, and the whole
comparison runs `--repeats` times.

The packaged `smollm2-135m-instruct` is used when its converted folder is in the model cache (`make models`);
otherwise, or with `--random`, a randomly initialised model of SmolLM2-135M's shape with the small offline
test tokenizer. Prints texts/s of each, the speedup as median, min and max over the repeats, the largest
difference between the two sides' scores, and the process's resident memory after each side's turns (both
sides share one process and one loaded model, so these overlap; neither is a peak). `--smoke` scores the
packaged sample's gsm8k texts (2 problems, 4 candidates each) with a tiny random reward model, once: it checks
the script and measures nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from repeat import add_flags, resident_mb, settle_repeats, spread

ALIAS = "smollm2-135m-instruct"
SMOLLM2_SHAPE = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                 "num_key_value_heads": 3, "max_position_embeddings": 8192, "tie_word_embeddings": True,
                 "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}


def random_smollm2_shape(folder: Path, tokenizer_dir: str = "") -> str:
    """A random 1-label reward model of SmolLM2-135M's decoder shape, for machines without the model cache,
    with the tokenizer in `tokenizer_dir` (SmolLM2's own gives the stage's token counts) or the small test one."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from codepmp.testing import build_tiny_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else build_tiny_tokenizer()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id, num_labels=1,
                         problem_type="regression", **SMOLLM2_SHAPE)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def model_spec(args, workdir: Path) -> tuple[str, str]:
    """(folder to load, words for the printout); never provisions, so the script stays offline."""
    from codepmp.models import cache_dir

    if args.smoke:
        from codepmp.testing import write_tiny_model

        return str(write_tiny_model(workdir / "tiny-reward-model", reward=True)), "tiny random reward model (--smoke)"
    if args.model != ALIAS:
        return args.model, args.model
    cached = cache_dir() / ALIAS
    if not args.random and (cached / "config.json").exists():
        return str(cached), ALIAS
    reason = "--random" if args.random else f"no {ALIAS} in {cache_dir()}"
    return (random_smollm2_shape(workdir / "random-smollm2", args.tokenizer),
            f"random SmolLM2-135M shape ({reason}; tokenizer {args.tokenizer or 'small test one'})")


def candidate_texts(data_dir: str, tokenizer, count: int, min_tokens: int, max_tokens: int,
                    max_length: int) -> list[tuple[str, str]]:
    """(prompt, response) pairs as the best-of-N pool holds them, within the token range, in a seeded order."""
    from codepmp.reasoning.gsm8k import packaged_path, prompt
    from codepmp.encoding import encode

    path = Path(data_dir) / "gsm8k" / "dev.jsonl" if data_dir else packaged_path("dev")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    random.Random(0).shuffle(rows)
    texts = []
    for row in rows:
        pair = (prompt(row["question"]), " " + row["answer"])
        if min_tokens <= len(encode(tokenizer, *pair, max_length).ids) <= max_tokens:
            texts.append(pair)
            if len(texts) == count:
                return texts
    raise SystemExit(f"only {len(texts)} of {len(rows)} solutions in {path} have {min_tokens}-{max_tokens} tokens")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=ALIAS, help="packaged alias or HF folder of a reward/base model")
    parser.add_argument("--random", action="store_true", help="random SmolLM2-135M-shaped model instead")
    parser.add_argument("--tokenizer", default="", help="--random: tokenizer folder (default: the small test one)")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                        help="folder in the layout of shared/data; '' for the packaged GSM8K sample")
    parser.add_argument("--workload", choices=["eval", "unique"], default="eval",
                        help="eval: what the evaluate stage scores; unique: GSM8K texts with distinct prompts")
    parser.add_argument("--problems", type=int, default=6, help="eval: dev problems per domain")
    parser.add_argument("--candidates-per-problem", type=int, default=8, help="eval: best-of-N pool size")
    parser.add_argument("--candidates", type=int, default=48, help="unique: texts")
    parser.add_argument("--batch-size", type=int, default=1, help="packs per pass (EvaluateConfig)")
    parser.add_argument("--pack-tokens", type=int, default=1024, help="trie nodes per pass (EvaluateConfig)")
    parser.add_argument("--part-texts", type=int, default=90,
                        help="texts per turn; the evaluate stage scores all of a model's texts in one call")
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--min-tokens", type=int, default=150)
    parser.add_argument("--max-tokens", type=int, default=300)
    add_flags(parser, "tiny random reward model, the packaged GSM8K sample's eval texts (2 problems), 1 repeat")
    args = parser.parse_args()
    settle_repeats(args, args.smoke)
    if args.smoke:
        args.data, args.workload, args.problems, args.candidates_per_problem = "", "eval", 2, 4
        args.part_texts = 8

    import codepmp.evaluate.run as run
    from codepmp.models import load_reward_model
    from codepmp.encoding import encode

    with tempfile.TemporaryDirectory(prefix="scoring-bench-") as tmp:
        spec, described = model_spec(args, Path(tmp))
        start = time.perf_counter()
        model, tokenizer = load_reward_model(spec)
        load_s = time.perf_counter() - start
    single_scorer = run.Scorer(spec, 1, args.max_length, loaded=(model, tokenizer), share=False)
    codepmp_scorer = run.Scorer(spec, args.batch_size, args.max_length, loaded=(model, tokenizer),
                                pack_tokens=args.pack_tokens)
    if args.workload == "eval":
        texts, what = evaluation_texts(args.data, args.problems, args.candidates_per_problem)
    else:
        texts = candidate_texts(args.data, tokenizer, args.candidates, args.min_tokens, args.max_tokens,
                                args.max_length)
        what = "GSM8K dev solutions, each under its own question (nothing to share)"
        texts.sort(key=lambda t: len(encode(tokenizer, *t, args.max_length).ids))
    lengths = [len(encode(tokenizer, *t, args.max_length).ids) for t in texts]
    single_scorer(texts[:2], desc="warm-up")

    seconds: dict[str, list[float]] = {"single": [], "batched": []}
    resident: dict[str, float] = {"single": 0.0, "batched": 0.0}
    gap = 0.0
    for repeat in range(args.repeats):
        single_scorer.tokens_run = codepmp_scorer.tokens_run = 0
        scores: dict[str, list[float]] = {"single": [], "batched": []}
        spent = {"single": 0.0, "batched": 0.0}
        for number, part in enumerate(_parts(texts, args.part_texts)):
            # Who goes first alternates by turn and by repeat, so the machine's other load falls on both alike.
            order = ("single", "batched") if (number + repeat) % 2 == 0 else ("batched", "single")
            for side in order:
                start = time.perf_counter()
                scores[side] += (single_scorer if side == "single" else codepmp_scorer)(part, desc=side)
                spent[side] += time.perf_counter() - start
                resident[side] = max(resident[side], resident_mb())
        for side in seconds:
            seconds[side].append(spent[side])
        gap = max(gap, max(abs(a - b) for a, b in zip(scores["single"], scores["batched"])))

    n = len(texts)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"model {described}; {model.dtype}; loaded once in {load_s:.1f} s; {device}")
    print(f"{n} texts: {what}; {min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / n:.0f}), "
          f"max length {args.max_length}; repeats {args.repeats}")
    for side, label in (("single", "one at a time:"), ("batched", f"codepmp (trie, pack {args.pack_tokens}):")):
        rates = [n / s for s in seconds[side]]
        print(f"{label:32s} {statistics.median(seconds[side]):7.1f} s  candidates/s {spread(rates, '', 2)}")
    print(f"tokens run: one at a time {single_scorer.tokens_run}, codepmp {codepmp_scorer.tokens_run} "
          f"({single_scorer.tokens_run / codepmp_scorer.tokens_run:.2f}x fewer)")
    speedups = [a / b for a, b in zip(seconds["single"], seconds["batched"])]
    print(f"speedup {spread(speedups)} (goal 5x); max |score difference| {gap:.2e}")
    print(f"process resident memory after the sides' turns (largest; one process, one model shared): "
          f"one at a time {resident['single']:.0f} MB, codepmp {resident['batched']:.0f} MB")


def evaluation_texts(data_dir: str, problems: int, candidates: int) -> tuple[list[tuple[str, str]], str]:
    """Everything the evaluate stage scores for one model, from the reasoning data stage run on `data_dir`:
    gsm8k and math dev pairs and best-of-N pools, logiqa2 dev pairs and options (gsm8k only from the packaged
    sample, when `data_dir` is empty)."""
    from codepmp.config import ReasoningConfig
    from codepmp.pairs import read_reasoning_table
    from codepmp.reasoning.build import build_reasoning_data

    domains = ["gsm8k", "math", "logiqa2"] if data_dir else ["gsm8k"]
    cfg = ReasoningConfig(data_dir=data_dir, domains=domains, train_problems=1,
                          dev_problems=problems, candidates_per_problem=candidates)
    with tempfile.TemporaryDirectory(prefix="scoring-bench-data-") as tmp:
        build_reasoning_data(cfg, tmp)
        dev, pool, logic = (read_reasoning_table(tmp, name) for name in ("dev", "pool", "logic"))
    texts = ([(r["prompt"], r["chosen"]) for r in dev] + [(r["prompt"], r["rejected"]) for r in dev]
             + [(r["prompt"], r["response"]) for r in pool] + [(r["prompt"], r["response"]) for r in logic])
    return texts, (f"the evaluation of {problems} dev problems per domain ({', '.join(domains)}): dev pairs, "
                   f"{candidates} best-of-N candidates per math problem"
                   + (", 4 options per logic item" if "logiqa2" in domains else ""))


def _parts(texts: list[tuple[str, str]], size: int) -> list[list[tuple[str, str]]]:
    """Consecutive runs of about `size` texts that never split one prompt's texts between two runs."""
    by_prompt: dict[str, list] = {}
    for text in texts:
        by_prompt.setdefault(text[0], []).append(text)
    parts, current = [], []
    for group in by_prompt.values():
        current += group
        if len(current) >= size:
            parts.append(current)
            current = []
    return parts + ([current] if current else [])


if __name__ == "__main__":
    main()
