"""Model FLOPs utilisation (MFU) of codepmp's preference-model training step on one GPU, for a model of
Qwen2-1.5B's shape with random weights, in bf16.

    .venv/bin/python benchmarks/mfu.py --steps 20                        # H100/H200: 4 pairs x 1024 tokens, 3 repeats
    .venv/bin/python benchmarks/mfu.py --steps 20 --grad-checkpointing   # main run with checkpointing on
    .venv/bin/python benchmarks/mfu.py --debug --steps 2 --warmup 1      # tiny fp32 model, CPU smoke run

One step is what `codepmp.train.loop` does per micro-batch with grad_accum 1: `collate` of chosen/rejected
pairs, the `PreferenceModel` forward under bf16 autocast, `pmp_loss` (ranking loss + LM loss, lm_coef 1),
backward, gradient clipping at 1.0 and AdamW over the loop's parameter groups. Every sequence is random tokens
of one length with the response starting halfway, so there is no padding and the LM head runs on the chosen
response positions only, as in training.

Weights, gradients and AdamW states are bf16 (AdamW fused on CUDA): the matmuls run in bf16 either way, and
it leaves the most memory for activations. It is a throughput setting, not a recipe: bf16 weights drop updates
smaller than their rounding step, which is why the loop keeps fp32 weights under autocast; `--fp32-weights`
measures that instead (weight casts every forward, an optimizer step moving twice the bytes).

    MFU = model FLOPs per step / step time / peak bf16 dense FLOP/s
    model FLOPs = 6 N T + 12 n_layer d_model S T + 6 d_model V K   (+ the 1-wide score head)

N: non-embedding parameters, T: tokens per step, S: sequence length, V: vocabulary, K: positions that go
through the LM head. The attention term is PaLM's (and nanoGPT's): QK^T and AV over the full S x S square,
not halved for the causal mask. Gradient checkpointing's recompute is not model FLOPs, so it counts in HFU
(hardware FLOPs utilisation) only.

The timed steps run `--repeats` times in a row (after one warm-up); step time is their median, with min and
max. After the main run the script repeats it with gradient checkpointing toggled, in the same process (peak
GPU memory is reset between the two, so each peak is its own), and prints the ratio of step times as median,
min and max over the repeats. `--debug` runs once unless `--repeats` says otherwise. The last line is
`RESULT {json}`.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch
from transformers import AutoModelForSequenceClassification, Qwen2Config

from codepmp.encoding import Encoded
from codepmp.train.data import collate
from codepmp.train.loop import _param_groups
from codepmp.train.losses import next_token_targets, pmp_loss
from codepmp.train.model import PreferenceModel
from repeat import add_flags, settle_repeats, spread


def peak_tflops_of(name: str) -> float | None:
    """bf16 dense (no sparsity) tensor-core peak from NVIDIA's datasheets, for the GPUs this is meant for."""
    if "H100" not in name and "H200" not in name:
        return None
    if "PCIe" in name:
        return 756.0
    if "NVL" in name:
        return 835.0
    return 989.0  # SXM


def model_config(args) -> Qwen2Config:
    if args.debug:
        shape = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=2048)
        pad = 2047
    else:
        shape = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                     num_key_value_heads=2, vocab_size=151936)
        pad = 151643  # Qwen2's <|endoftext|>, which its tokenizer pads with
    config = Qwen2Config(**shape, tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6,
                         max_position_embeddings=32768)
    # from_config passes extra keyword arguments to the model's constructor, which takes no num_labels.
    config.num_labels = 1
    config.pad_token_id = pad
    return config


def random_batch(config: Qwen2Config, pairs: int, seq_len: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)

    def side() -> Encoded:
        # Ids below the pad id only: a pad token inside a row would move the reward read-out.
        return Encoded(torch.randint(0, config.pad_token_id, (seq_len,), generator=gen).tolist(), seq_len // 2)

    return collate([(side(), side()) for _ in range(pairs)], config.pad_token_id)


def non_embedding_params(backbone) -> int:
    return sum(p.numel() for p in backbone.parameters()) - backbone.get_input_embeddings().weight.numel()


def step_flops(n_params: int, config: Qwen2Config, batch: dict) -> tuple[int, int, int]:
    """(model FLOPs, gradient-checkpointing recompute FLOPs, LM-head positions) of one step on `batch`, for a
    backbone of `n_params` non-embedding parameters."""
    rows, seq_len = batch["input_ids"].shape
    tokens = rows * seq_len
    d_model, layers = config.hidden_size, config.num_hidden_layers
    lm_positions = int(next_token_targets(batch["labels"])[0].sum())
    dense = 2 * n_params * tokens
    attention = 4 * layers * d_model * seq_len * tokens
    heads = 2 * d_model * config.vocab_size * lm_positions + 2 * d_model * rows
    # Backward costs twice the forward; the checkpointed decoder layers run their forward once more.
    return 3 * (dense + attention + heads), dense + attention, lm_positions


def measure(args, config: Qwen2Config, device: torch.device, grad_ckpt: bool, peak: float | None) -> dict:
    torch.manual_seed(0)
    dtype = torch.float32 if args.debug or args.fp32_weights else torch.bfloat16
    with device:  # random init straight on the GPU: 1.5B parameters initialise slowly on the CPU
        reward_model = AutoModelForSequenceClassification.from_config(config, dtype=dtype,
                                                                      attn_implementation=args.attn)
    model = PreferenceModel(reward_model, None, None).to(device)
    if grad_ckpt:
        model.reward_model.gradient_checkpointing_enable()
    if args.compile:
        # Per decoder layer: the LM-head gather in PreferenceModel.forward has a data-dependent shape.
        for layer in model.backbone.layers:
            layer.compile()
    optimizer = torch.optim.AdamW(_param_groups(model, 0.1), lr=1e-5, fused=device.type == "cuda")
    batch = {k: v.to(device) for k, v in random_batch(config, args.batch_pairs, args.seq_len).items()}
    flops, recompute, lm_positions = step_flops(non_embedding_params(model.backbone), config, batch)
    n = args.batch_pairs
    autocast = device.type == "cuda" and not args.debug
    model.train()

    def step() -> dict:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            rewards, lm_logits, lm_targets = model(batch["input_ids"], batch["attention_mask"],
                                                   lm_labels=batch["labels"])
            loss, parts = pmp_loss(rewards[:n], rewards[n:], lm_logits, lm_targets, rm_coef=1.0, lm_coef=1.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return parts

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    repeat_step_s = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            parts = step()
        if cuda:
            torch.cuda.synchronize(device)
        repeat_step_s.append((time.perf_counter() - t0) / args.steps)
    step_s = statistics.median(repeat_step_s)

    tokens = batch["input_ids"].numel()
    total_flops = flops + (recompute if grad_ckpt else 0)
    return {
        "grad_checkpointing": grad_ckpt,
        "params": sum(p.numel() for p in model.parameters()),
        "non_embedding_params": (sum(p.numel() for p in model.backbone.parameters())
                                 - model.backbone.get_input_embeddings().weight.numel()),
        "tokens_per_step": tokens,
        "lm_head_positions": lm_positions,
        "model_flops_per_step": flops,
        "step_ms": round(step_s * 1e3, 2),
        "step_ms_repeats": [round(t * 1e3, 2) for t in repeat_step_s],
        "tokens_per_s": round(tokens / step_s, 1),
        "model_tflops": round(flops / step_s / 1e12, 3),
        "mfu": round(flops / step_s / 1e12 / peak, 4) if peak else None,
        "hfu": round(total_flops / step_s / 1e12 / peak, 4) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None,
        "loss": round(parts["loss"], 4),
        "lm_loss": round(parts["lm_loss"], 4),
    }


def guarded(args, config, device, grad_ckpt: bool, peak: float | None) -> dict:
    try:
        return measure(args, config, device, grad_ckpt, peak)
    except torch.cuda.OutOfMemoryError as exc:
        return {"grad_checkpointing": grad_ckpt, "oom": str(exc).splitlines()[0]}


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def row(result: dict) -> str:
    name = f"grad-ckpt {'on' if result['grad_checkpointing'] else 'off'}"
    if "oom" in result:
        return f"{name:<14} out of memory: {result['oom']}"
    pct = lambda x: f"{100 * x:.1f}" if x is not None else "n/a"  # noqa: E731
    mem = f"{result['peak_memory_gib']:.2f}" if result["peak_memory_gib"] is not None else "n/a"
    return (f"{name:<14} {result['step_ms']:>9.1f} {result['tokens_per_s']:>10.0f} {result['model_tflops']:>8.2f}"
            f" {pct(result['mfu']):>6} {pct(result['hfu']):>6} {mem:>9} {result['loss']:>8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-pairs", type=int, default=None, help="pairs per step (default 4; debug 2)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 1024; debug 128)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--grad-checkpointing", action="store_true", help="main run with it on (peer: off)")
    parser.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa, flash_attention_2, eager, ...")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's bf16 dense peak (default: detected for H100/H200)")
    parser.add_argument("--fp32-weights", action="store_true", help="fp32 weights under bf16 autocast, as the loop")
    parser.add_argument("--compile", action="store_true", help="torch.compile each decoder layer")
    parser.add_argument("--no-peer", action="store_true", help="skip the run with gradient checkpointing toggled")
    parser.add_argument("--debug", action="store_true", help="tiny Qwen2 config in fp32; runs on the CPU")
    add_flags(parser, None)
    args = parser.parse_args()
    settle_repeats(args, args.debug)
    args.batch_pairs = args.batch_pairs or (2 if args.debug else 4)
    args.seq_len = args.seq_len or (128 if args.debug else 1024)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.debug:
        parser.error("no GPU found: the 1.5B configuration is meant for one; use --debug for a CPU smoke run")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or (peak_tflops_of(device_name) if device.type == "cuda" else None)
    if device.type == "cuda" and peak is None:
        parser.error(f"no known bf16 peak for '{device_name}': pass --peak-tflops")

    config = model_config(args)
    weights = "fp32" if args.debug or args.fp32_weights else "bf16"
    print(f"device: {device_name}, peak {f'{peak:g} TFLOP/s bf16 dense' if peak else 'not given (no MFU)'}")
    print(f"model: Qwen2 {'debug' if args.debug else '1.5B'} shape, random init, {weights} weights"
          f"{' under bf16 autocast' if weights == 'fp32' and device.type == 'cuda' and not args.debug else ''},"
          f" attention {args.attn}{', compiled layers' if args.compile else ''}; torch {torch.__version__}")

    results = [guarded(args, config, device, args.grad_checkpointing, peak)]
    free_memory(device)
    if not args.no_peer:
        results.append(guarded(args, config, device, not args.grad_checkpointing, peak))
        free_memory(device)

    first = next((r for r in results if "oom" not in r), None)
    if first:
        print(f"params {first['params'] / 1e6:,.1f}M ({first['non_embedding_params'] / 1e6:,.1f}M non-embedding);"
              f" {args.batch_pairs} pairs x {args.seq_len} tokens = {first['tokens_per_step']:,} tokens/step,"
              f" LM head on {first['lm_head_positions']:,} positions;"
              f" {first['model_flops_per_step'] / 1e12:,.2f} TFLOP/step (model)")
    print(f"{args.steps} timed steps after {args.warmup} warm-up, {args.repeats} times; step time: the median\n")
    print(f"{'run':<14} {'step ms':>9} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU %':>6} {'HFU %':>6} {'peak GiB':>9}"
          f" {'loss':>8}")
    for result in results:
        print(row(result))

    ratio = None
    by_ckpt = {r["grad_checkpointing"]: r for r in results if "oom" not in r}
    if len(by_ckpt) == 2:
        on, off = by_ckpt[True], by_ckpt[False]
        ratios = [a / b for a, b in zip(on["step_ms_repeats"], off["step_ms_repeats"])]
        ratio = round(statistics.median(ratios), 3)
        mem = (f"; peak GPU memory x{on['peak_memory_gib'] / off['peak_memory_gib']:.2f} "
               f"({on['peak_memory_gib']:.2f} / {off['peak_memory_gib']:.2f} GiB)" if on["peak_memory_gib"] else
               "; no GPU memory figures on the CPU")
        print(f"\ngrad-ckpt on / off step time: {spread(ratios)}{mem}")
    if peak is None:
        print("\nno MFU: this ran on the CPU without --peak-tflops; a CPU debug run checks the script, "
              "its numbers are not MFU figures")
    elif args.debug:
        print("\n--debug: a tiny fp32 model; its utilisation is not an MFU figure for the 1.5B model")

    record = {"device": device_name, "peak_tflops": peak, "debug": args.debug, "batch_pairs": args.batch_pairs,
              "seq_len": args.seq_len, "steps": args.steps, "warmup": args.warmup, "attn": args.attn,
              "weights": weights, "compile": args.compile, "torch": torch.__version__, **results[0],
              "repeats": args.repeats, "peer": results[1] if len(results) > 1 else None,
              "ckpt_on_over_off_step_time": ratio}
    print("RESULT " + json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
