"""Reward scoring throughput: `codepmp.evaluate.run.score` in length-sorted batches vs one candidate at a time.

    .venv/bin/python benchmarks/scoring_batched_vs_single.py                        # SmolLM2-135M, CPU
    .venv/bin/python benchmarks/scoring_batched_vs_single.py --candidates 32 --batch-size 8
    .venv/bin/python benchmarks/scoring_batched_vs_single.py --random               # random SmolLM2-shaped model

Both sides are the same function, `score`, on the same texts: the baseline with batch size 1 (one forward pass
per candidate, no padding), codepmp's default path with `--batch-size` rows per pass, right-padded to the
longest row of a batch after sorting by length. The model is loaded once and handed to both through `score`'s
loader, so the timings cover tokenizing, batching and the forward passes, not reading weights from disk. The
texts are GSM8K dev solutions under the reasoning stage's prompt (what the best-of-N pool holds), kept when
they are `--min-tokens` to `--max-tokens` long; sorted by length and cut into groups of `2 x --batch-size`, the
two sides take turns group by group (alternating which goes first), so load from elsewhere on the machine
falls on both alike and the batched side forms the batches it would form over all texts.

The packaged `smollm2-135m-instruct` is used when its converted folder is in the model cache (`make models`);
otherwise, or with `--random`, a randomly initialised model of SmolLM2-135M's shape with the small offline
test tokenizer. Prints candidates/s of each, the ratio, the padding the batches carried and the largest
difference between the two sides' scores.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

ALIAS = "smollm2-135m-instruct"
SMOLLM2_SHAPE = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                 "num_key_value_heads": 3, "max_position_embeddings": 8192, "tie_word_embeddings": True,
                 "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}


def random_smollm2_shape(folder: Path) -> str:
    """A random 1-label reward model of SmolLM2-135M's decoder shape, for machines without the model cache."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from codepmp.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
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

    if args.model != ALIAS:
        return args.model, args.model
    cached = cache_dir() / ALIAS
    if not args.random and (cached / "config.json").exists():
        return str(cached), ALIAS
    reason = "--random" if args.random else f"no {ALIAS} in {cache_dir()}"
    return random_smollm2_shape(workdir / "random-smollm2"), f"random SmolLM2-135M shape ({reason})"


def candidate_texts(data_dir: Path, tokenizer, count: int, min_tokens: int, max_tokens: int,
                    max_length: int) -> list[tuple[str, str]]:
    """(prompt, response) pairs as the best-of-N pool holds them, within the token range, in a seeded order."""
    from codepmp.reasoning.gsm8k import prompt
    from codepmp.train.data import encode

    path = data_dir / "gsm8k" / "dev.jsonl"
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


def padding_factor(lengths: list[int], batch_size: int) -> float:
    """Token positions the batched forward passes compute per real token (1.0: no padding)."""
    ordered = sorted(lengths)
    padded = sum(max(ordered[i:i + batch_size]) * len(ordered[i:i + batch_size])
                 for i in range(0, len(ordered), batch_size))
    return padded / sum(lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=ALIAS, help="packaged alias or HF folder of a reward/base model")
    parser.add_argument("--random", action="store_true", help="random SmolLM2-135M-shaped model instead")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--candidates", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--min-tokens", type=int, default=150)
    parser.add_argument("--max-tokens", type=int, default=300)
    args = parser.parse_args()

    import codepmp.evaluate.run as run
    from codepmp.models import load_reward_model
    from codepmp.train.data import encode

    with tempfile.TemporaryDirectory(prefix="scoring-bench-") as tmp:
        spec, described = model_spec(args, Path(tmp))
        start = time.perf_counter()
        model, tokenizer = load_reward_model(spec)
        load_s = time.perf_counter() - start
    run.load_reward_model = lambda _spec: (model, tokenizer)

    texts = candidate_texts(Path(args.data), tokenizer, args.candidates, args.min_tokens, args.max_tokens,
                            args.max_length)
    lengths = {t: len(encode(tokenizer, *t, args.max_length).ids) for t in texts}
    texts.sort(key=lengths.__getitem__)
    run.score(spec, texts[:2], 2, args.max_length, desc="warm-up")

    group_size = 2 * args.batch_size
    single, batched, single_s, batched_s = [], [], 0.0, 0.0
    for number, group in enumerate(range(0, len(texts), group_size)):
        part = texts[group:group + group_size]
        order = ("single", "batched") if number % 2 == 0 else ("batched", "single")
        for side in order:
            start = time.perf_counter()
            scores = run.score(spec, part, 1 if side == "single" else args.batch_size, args.max_length, desc=side)
            seconds = time.perf_counter() - start
            if side == "single":
                single += scores
                single_s += seconds
            else:
                batched += scores
                batched_s += seconds

    n = len(texts)
    tokens = list(lengths.values())
    gap = max(abs(a - b) for a, b in zip(single, batched))
    print(f"model {described}; loaded once in {load_s:.1f} s; {torch.get_num_threads()} torch threads, CPU")
    print(f"{n} GSM8K candidates of {min(tokens)}-{max(tokens)} tokens (mean {sum(tokens) / n:.0f}), "
          f"max length {args.max_length}; batches of {args.batch_size} carry "
          f"{padding_factor(tokens, args.batch_size):.3f}x the real tokens")
    print(f"one at a time: {single_s:7.1f} s  {n / single_s:7.2f} candidates/s")
    print(f"batched ({args.batch_size:>3}):  {batched_s:7.1f} s  {n / batched_s:7.2f} candidates/s")
    print(f"speedup {single_s / batched_s:.2f}x (goal 5x); max |score difference| {gap:.2e}")


if __name__ == "__main__":
    main()
