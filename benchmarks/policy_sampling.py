"""Policy sampling throughput on CPU: llama.cpp on the packaged Q4_K_M GGUF vs. codepmp's batched transformers
backend (fp32, the dequantized model), on the GSM8K prompts that `codepmp.reasoning.policy_samples` samples.

    .venv/bin/python benchmarks/policy_sampling.py --data ../shared/data                      # 0.5B, 3 rounds
    .venv/bin/python benchmarks/policy_sampling.py --data ../shared/data --model qwen2.5-coder-1.5b-instruct
    .venv/bin/python benchmarks/policy_sampling.py --data ../shared/data --smoke   # tiny, seconds (make test)

Each round gives both engines the same `--problems` x `--samples` prompts at temperature 0.7 (what the shipped
samples use) and counts generated tokens per second of wall time; the two alternate, so load from elsewhere on a
noisy machine falls on both alike. Prints each side's tok/s, the ratio llama.cpp / transformers (median, min, max
over rounds), each side's pass@1 on those problems, and the process's resident memory after each side's last
round (psutil; not a peak, and both models stay loaded, so the figures overlap).
"""

from __future__ import annotations

import argparse
import statistics
import time

from repeat import add_flags, settle_repeats, spread


def _rss_gb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e9


def _round(backend, tasks, samples: int, max_new_tokens: int, seed: int) -> tuple[float, float]:
    from codepmp.generate.backend import Sampling

    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=0.7, seed=seed)
    start = time.perf_counter()
    completions = backend.complete([t.prompt for t in tasks for _ in range(samples)], sampling, desc="bench")
    seconds = time.perf_counter() - start
    correct = [t.check(c.text) for t, c in zip([t for t in tasks for _ in range(samples)], completions)]
    return sum(c.tokens for c in completions) / seconds, sum(correct) / len(correct)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="folder in the layout of shared/data")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="transformers backend rows per batch")
    add_flags(parser, "1 problem x 2 samples, 8 tokens, 1 round")
    args = parser.parse_args()
    settle_repeats(args, args.smoke)
    if args.smoke:
        args.problems, args.samples, args.max_new_tokens = 1, 2, 8

    from codepmp.reasoning.policy_samples import PLAN, problem_order
    from codepmp.generate.backend import TransformersBackend
    from codepmp.generate.llamacpp_backend import LlamaCppBackend

    tasks = problem_order(args.data, PLAN[0])[:args.problems]
    engines = {"llama.cpp": LlamaCppBackend(args.model), "transformers": TransformersBackend(args.model, args.batch_size)}
    rates: dict[str, list[float]] = {name: [] for name in engines}
    accuracy: dict[str, list[float]] = {name: [] for name in engines}
    memory = {}
    for r in range(args.repeats):
        for name, backend in engines.items():
            rate, acc = _round(backend, tasks, args.samples, args.max_new_tokens, seed=r)
            rates[name].append(rate)
            accuracy[name].append(acc)
            memory[name] = _rss_gb()
    ratios = [a / b for a, b in zip(rates["llama.cpp"], rates["transformers"])]
    print(f"model {args.model}, {args.problems} problems x {args.samples} samples, {args.max_new_tokens} new tokens, "
          f"{args.repeats} rounds")
    for name in engines:
        print(f"  {name:13s} tok/s {spread(rates[name], '', 1)}  pass@1 {statistics.mean(accuracy[name]):.3f}  "
              f"process RSS after {memory[name]:.1f} GB")
    print(f"  ratio llama.cpp / transformers: {spread(ratios)}")


if __name__ == "__main__":
    main()
