"""Generation throughput: one-prompt-at-a-time `generate` vs. codepmp's batched transformers backend.

    .venv/bin/python benchmarks/synthesis_batched_vs_sequential.py                      # SmolLM2, CPU
    .venv/bin/python benchmarks/synthesis_batched_vs_sequential.py --model gemma3-270m --prompts 32
    python benchmarks/synthesis_batched_vs_sequential.py --vllm --model deepseek-ai/deepseek-coder-1.3b-instruct \
        --prompts 512 --max-new-tokens 512 --batch-size 64                            # GPU image, one GPU

Same prompts (the paper's description prompt over stdlib files), same model, greedy decoding, in one process.
The baseline is what a user writes first: the chat template, then `model.generate` per prompt. codepmp's
backend sorts prompts by length, left-pads batches of `--batch-size` and generates them together. The two
take turns, one group of `--batch-size` prompts at a time. Prints
new tokens per second of each and their ratio, and checks that the texts are equal (greedy decoding of a
left-padded batch equals decoding each prompt alone, up to floating-point ties).

With `--vllm` (a GPU with vllm installed) it compares instead codepmp's vLLM backend with its batched
transformers backend (bf16): tokens/s of each from its own token counts, and how many texts agree (bf16
kernels differ, so greedy texts may diverge late; the count is reported, not required).
"""

from __future__ import annotations

import argparse
import inspect
import time

import torch


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
def sequential(backend, texts: list[str], max_new_tokens: int) -> tuple[list[str], int]:
    tokenizer, model = backend.tokenizer, backend.model
    outputs, new_tokens = [], 0
    for text in texts:
        batch = tokenizer(backend.format(text), return_tensors="pt", add_special_tokens=not tokenizer.chat_template)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                             top_k=None, pad_token_id=tokenizer.pad_token_id)
        generated = out[0, batch["input_ids"].shape[1]:]
        new_tokens += len(generated)
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
    args = parser.parse_args()

    from codepmp.synthesize.backend import Sampling, TransformersBackend

    if args.vllm:
        return vllm_vs_batched(args)

    backend = TransformersBackend(args.model, args.batch_size)
    texts = prompts(args.prompts, args.max_chars)
    sequential(backend, texts[:1], 4)  # warm-up

    # The two alternate batch by batch, so load from elsewhere on a noisy machine falls on both alike. Sorting
    # first gives the backend the batches it would form over all prompts; the baseline does not care.
    texts.sort(key=lambda t: len(backend.tokenizer(backend.format(t))["input_ids"]))
    baseline, batched, new_tokens, base_s, ours_s = [], [], 0, 0.0, 0.0
    for group in range(0, len(texts), args.batch_size):
        part = texts[group:group + args.batch_size]
        start = time.perf_counter()
        outputs, tokens = sequential(backend, part, args.max_new_tokens)
        base_s += time.perf_counter() - start
        start = time.perf_counter()
        batched += backend.generate(part, Sampling(args.max_new_tokens, temperature=0.0), desc="batched")
        ours_s += time.perf_counter() - start
        baseline += outputs
        new_tokens += tokens

    same = sum(a.strip() == b.strip() for a, b in zip(baseline, batched))
    print(f"model {args.model}, {len(texts)} prompts, {args.max_new_tokens} new tokens max, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, device {backend.device}")
    print(f"sequential generate: {base_s:7.1f} s  {new_tokens / base_s:7.1f} new tok/s")
    print(f"codepmp batched:     {ours_s:7.1f} s  {new_tokens / ours_s:7.1f} new tok/s (same tokens)")
    print(f"speedup {base_s / ours_s:.2f}x; identical texts {same}/{len(texts)}")


def vllm_vs_batched(args) -> None:
    import gc

    from codepmp.synthesize.backend import Sampling, TransformersBackend
    from codepmp.synthesize.vllm_backend import VLLMBackend

    texts = prompts(args.prompts, args.max_chars)
    greedy = Sampling(args.max_new_tokens, temperature=0.0)
    results = {}
    for name, make in (("hf batched", lambda: TransformersBackend(args.model, args.batch_size)),
                       ("codepmp vllm", lambda: VLLMBackend(args.model))):
        backend = make()
        backend.complete(texts[:2], Sampling(4, temperature=0.0))  # warm-up (CUDA graphs, kernels)
        start = time.perf_counter()
        done = backend.complete(texts, greedy, desc=name)
        seconds = time.perf_counter() - start
        results[name] = (done, seconds, sum(c.tokens for c in done))
        print(f"{name:13s} {seconds:7.1f} s  {results[name][2] / seconds:9.1f} new tok/s", flush=True)
        del backend
        gc.collect()
        torch.cuda.empty_cache()
    (hf, hf_s, hf_tok), (vl, vl_s, vl_tok) = results.values()
    same = sum(a.text == b.text for a, b in zip(hf, vl))
    print(f"model {args.model}, {len(texts)} prompts, {args.max_new_tokens} new tokens max, batch {args.batch_size}")
    print(f"vllm / hf tokens/s: {(vl_tok / vl_s) / (hf_tok / hf_s):.2f}x; identical texts {same}/{len(texts)}")


if __name__ == "__main__":
    main()
