"""Generation throughput: one-prompt-at-a-time `generate` vs. codepmp's batched transformers backend.

    .venv/bin/python benchmarks/synthesis_batched_vs_sequential.py                      # SmolLM2, CPU, 3 repeats
    .venv/bin/python benchmarks/synthesis_batched_vs_sequential.py --smoke              # tiny model: the script only
    .venv/bin/python benchmarks/synthesis_batched_vs_sequential.py --model gemma3-270m --prompts 32
    python benchmarks/synthesis_batched_vs_sequential.py --vllm --model deepseek-ai/deepseek-coder-1.3b-instruct \
        --prompts 512 --max-new-tokens 512 --batch-size 64                            # GPU image, one GPU

Same prompts (the paper's description prompt over stdlib files), same model, in one process; greedy decoding, or
with `--temperature T` sampling (the paper synthesizes at 0.7; each side then counts its own new tokens).
The baseline is what a user writes first: the chat template, then `model.generate` per prompt. codepmp's
backend gets all prompts in one call, as synthesis gives it a chunk of rows, and decodes `--batch-size` rows at
a time with continuous batching (a finished row is replaced by the next prompt). The two take turns, each on
all prompts, the first side alternating, and the whole comparison runs `--repeats` times.
Prints new tokens per second of each, their ratio as median, min and max over the repeats, the process's
resident memory after each side's turns (one process and one model for both, so the figures overlap; neither
is a peak), and checks that the texts are equal (greedy decoding of a left-padded batch equals decoding each
prompt alone, up to floating-point ties). `--smoke` runs a tiny random model on 4 short prompts, once: it
checks the script and measures nothing (its random weights may well break greedy ties differently).

With `--vllm` (a GPU with vllm installed) it compares instead codepmp's vLLM backend with its batched
transformers backend (bf16): tokens/s of each from its own token counts, and how many texts agree (bf16
kernels differ, so greedy texts may diverge late; the count is reported, not required). Each backend stays
loaded for all its repeats; the GPU holds one at a time.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import tempfile
import time
from pathlib import Path

import torch

from repeat import add_flags, resident_mb, settle_repeats, spread


def prompts(n: int, max_chars: int) -> list[str]:
    import codecs
    import colorsys
    import fnmatch
    import glob
    import shlex
    import string
    import textwrap

    from codepmp.synthesize.prompts import description_prompt

    sources = [inspect.getsource(m) for m in (textwrap, shlex, fnmatch, glob, colorsys, string, codecs)]
    chunks = [src[i:i + max_chars] for src in sources for i in range(0, len(src), max_chars)]
    return [description_prompt(chunk, max_chars) for chunk in chunks[:n]]


@torch.inference_mode()
def sequential(backend, texts: list[str], max_new_tokens: int, temperature: float = 0.0) -> tuple[list[str], int]:
    tokenizer, model = backend.tokenizer, backend.model
    outputs, new_tokens = [], 0
    stops = model.generation_config.eos_token_id
    eos = torch.tensor(sorted({tokenizer.eos_token_id, *(stops if isinstance(stops, list) else [stops])} - {None}))
    for text in texts:
        batch = tokenizer(backend.format(text), return_tensors="pt", add_special_tokens=not tokenizer.chat_template)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                             temperature=temperature or None, top_p=None, top_k=None,
                             pad_token_id=tokenizer.pad_token_id)
        generated = out[0, batch["input_ids"].shape[1]:]
        # Count as the backend does: new tokens up to the end-of-turn, not the padding after it.
        ends = torch.isin(generated, eos).nonzero()
        new_tokens += int(ends[0]) if len(ends) else len(generated)
        outputs.append(tokenizer.decode(generated, skip_special_tokens=True))
    return outputs, new_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-chars", type=int, default=600)
    parser.add_argument("--vllm", action="store_true", help="vLLM backend vs batched transformers (GPU)")
    parser.add_argument("--random-weights", default="",
                        help="a folder with a config.json and tokenizer: that shape with random weights, bf16")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 decodes greedily and checks the texts agree; above 0 samples (paper: 0.7)")
    add_flags(parser, "tiny random model, 4 prompts of 200 characters, batch 2, 8 new tokens, 1 repeat")
    args = parser.parse_args()
    settle_repeats(args, args.smoke)
    if args.vllm and args.smoke:
        parser.error("--smoke runs the transformers comparison on the CPU; vLLM needs a GPU and a real model")

    if args.vllm:
        return vllm_vs_batched(args)
    if args.smoke:
        args.prompts, args.batch_size, args.max_new_tokens, args.max_chars = 4, 2, 8, 200
        with tempfile.TemporaryDirectory(prefix="synthesis-bench-") as tmp:
            from codepmp.testing import write_tiny_model

            args.model = str(write_tiny_model(Path(tmp) / "tiny-model"))
            return compare(args, "tiny random model (--smoke)")
    if args.random_weights:
        with tempfile.TemporaryDirectory(prefix="synthesis-bench-") as tmp:
            from codepmp.testing import write_random_model

            args.model = str(write_random_model(args.random_weights, Path(tmp) / "random", dtype=torch.bfloat16))
            return compare(args, f"random weights of {args.random_weights}'s shape")
    compare(args, args.model)


def compare(args, described: str) -> None:
    from codepmp.generate.backend import Sampling, TransformersBackend

    backend = TransformersBackend(args.model, args.batch_size)
    texts = prompts(args.prompts, args.max_chars)
    sequential(backend, texts[:1], 4)  # warm-up, both sides
    backend.generate(texts[:1], Sampling(4, temperature=0.0), desc="warm-up")

    # Each side gets all prompts, as synthesis hands a chunk of rows to the backend at once (continuous batching
    # refills finished rows from the queue, so cutting the prompts into batch-sized calls would hide it). The side
    # that goes first alternates between repeats, so a drift in machine load falls on both.
    seconds: dict[str, list[float]] = {"sequential": [], "batched": []}
    resident = {"sequential": 0.0, "batched": 0.0}
    same, rates = [], {"sequential": [], "batched": []}
    for repeat in range(args.repeats):
        outputs: dict[str, list[str]] = {}
        spent, tokens = {}, {}
        for side in ("sequential", "batched") if repeat % 2 == 0 else ("batched", "sequential"):
            start = time.perf_counter()
            if side == "sequential":
                outputs[side], tokens[side] = sequential(backend, texts, args.max_new_tokens, args.temperature)
            else:
                completions = backend.complete(texts, Sampling(args.max_new_tokens, temperature=args.temperature,
                                                               seed=repeat), desc="batched")
                outputs[side], tokens[side] = [c.text for c in completions], sum(c.tokens for c in completions)
            spent[side] = time.perf_counter() - start
            resident[side] = max(resident[side], resident_mb())
        for side in seconds:
            seconds[side].append(spent[side])
            # Greedy: both make the same tokens, so the baseline's count makes the ratio one of times. Sampling:
            # each side's own count (a row's time counts until it ends).
            made = tokens["sequential"] if args.temperature == 0 else tokens[side]
            rates[side].append(made / spent[side])
        same.append(sum(a.strip() == b.strip() for a, b in zip(outputs["sequential"], outputs["batched"])))

    print(f"model {described}, {len(texts)} prompts, {args.max_new_tokens} new tokens max, "
          f"{'greedy' if args.temperature == 0 else f'temperature {args.temperature}'}, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, device {backend.device}, "
          f"repeats {args.repeats}")
    for side, label in (("sequential", "sequential generate:"), ("batched", "codepmp batched:")):
        print(f"{label:21s} {statistics.median(seconds[side]):7.1f} s  new tok/s {spread(rates[side], '', 1)}")
    speedups = [b / a for a, b in zip(rates["sequential"], rates["batched"])]
    agree = (f"identical texts {min(same)}/{len(texts)} (fewest over repeats)" if args.temperature == 0 else
             "texts not compared (sampling)")
    print(f"speedup {spread(speedups)}; {agree}")
    print(f"process resident memory after the sides' turns (largest; one process, one model shared): "
          f"sequential {resident['sequential']:.0f} MB, batched {resident['batched']:.0f} MB")


def vllm_vs_batched(args) -> None:
    import gc

    from codepmp.generate.backend import Sampling, TransformersBackend
    from codepmp.generate.vllm_backend import VLLMBackend

    texts = prompts(args.prompts, args.max_chars)
    greedy = Sampling(args.max_new_tokens, temperature=0.0)
    results = {}
    for name, make in (("hf batched", lambda: TransformersBackend(args.model, args.batch_size)),
                       ("codepmp vllm", lambda: VLLMBackend(args.model))):
        backend = make()
        backend.complete(texts[:2], Sampling(4, temperature=0.0))  # warm-up (CUDA graphs, kernels)
        rates = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            done = backend.complete(texts, greedy, desc=name)
            rates.append(sum(c.tokens for c in done) / (time.perf_counter() - start))
        results[name] = (done, rates)
        print(f"{name:13s} new tok/s {spread(rates, '', 1)}  process RSS after {resident_mb():.0f} MB", flush=True)
        del backend
        gc.collect()
        torch.cuda.empty_cache()
    (hf, hf_rates), (vl, vl_rates) = results.values()
    same = sum(a.text == b.text for a, b in zip(hf, vl))
    print(f"model {args.model}, {len(texts)} prompts, {args.max_new_tokens} new tokens max, batch {args.batch_size}, "
          f"repeats {args.repeats}")
    print(f"vllm / hf tokens/s: {spread([v / h for v, h in zip(vl_rates, hf_rates)])}; identical texts "
          f"{same}/{len(texts)}")
    print("GPU memory is not compared: vLLM reserves a fixed share of the GPU up front, whatever the run needs")


if __name__ == "__main__":
    main()
