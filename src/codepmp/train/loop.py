"""Preference-model training loop shared by PMP (lm_coef > 0) and reward-model finetuning (lm_coef = 0).

Plain torch by default (length-grouped batches, one tree per pair so shared prompt tokens run once, or padded
or packed rows; no gradient checkpointing: the fastest setup on CPU); `deepspeed_stage >= 0` wraps the model in a DeepSpeed ZeRO engine instead (gloo on CPU, NCCL on GPU).
A checkpointer makes the run resumable: a restarted run continues at the last completed checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from codepmp.atomic import atomic_dir
from codepmp.config import TrainConfig
from codepmp.errors import ConfigError, InputError
from codepmp.progress import progress as progress_bar
from codepmp.encoding import shared_prefix_length
from codepmp.pairs import Pair
from codepmp.train.data import collate, collate_packed, collate_pair_trees, length_grouped_batches, screen_pairs
from codepmp.train.losses import pmp_loss
from codepmp.train.model import PreferenceModel
from codepmp.train.schedule import SCHEDULES, decay_steps, lr_factor, scaling_steps


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    # Norm scales and biases are 1-D; decaying them toward zero only hurts.
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


DEEPSPEED_CONFIGS = Path(__file__).parent / "deepspeed"


def deepspeed_config(cfg: TrainConfig, grad_accum: int) -> dict:
    """The engine config: `cfg.deepspeed_config` or the repo's zero2/zero3.json, with the run's batch,
    accumulation, precision and offload filled in."""
    default = DEEPSPEED_CONFIGS / ("zero3.json" if cfg.deepspeed_stage == 3 else "zero2.json")
    path = Path(cfg.deepspeed_config) if cfg.deepspeed_config else default
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"deepspeed_config '{path}' cannot be read as JSON: {exc}") from None
    zero = config.setdefault("zero_optimization", {})
    zero["stage"] = cfg.deepspeed_stage
    if cfg.cpu_offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if cfg.deepspeed_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config.update(train_micro_batch_size_per_gpu=cfg.batch_size, gradient_accumulation_steps=grad_accum,
                  bf16={"enabled": cfg.bf16})
    return config


def _optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the loop's parameter groups. With the optimizer offloaded to the CPU it is DeepSpeed's CPU
    AdamW (built on first use): ZeRO-Offload refuses a torch optimizer, which would step on the CPU slowly."""
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.cpu_offload and cfg.deepspeed_stage >= 0:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.lr, adamw_mode=True)
    # One fused kernel instead of a chain of foreach ops: 0.08 s against 0.30 s a step for 135M params on 2 CPU cores.
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)


def _deepspeed_engine(model, optimizer, scheduler, cfg: TrainConfig, grad_accum: int):
    import deepspeed

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}.items():
        os.environ.setdefault(key, value)
    if not torch.cuda.is_available():
        # On CPU DeepSpeed's backend JIT-compiles a shared-memory allreduce kernel at its first init (30-90 s
        # on 2 cores, again whenever the venv's path changes). CPU runs here are tests and debugging at small
        # sizes, where gloo's allreduce is enough; GPU runs never use that kernel.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                      config=deepspeed_config(cfg, grad_accum))
    return engine


@dataclass
class StepPlan:
    """What the optimizer steps will run: the usable encoded pairs (and the others counted by reason), the
    micro-batches of every epoch, how many each step takes per process, and the learning-rate schedule."""

    encoded: list
    skipped: dict
    micro: list[list[int]]
    grad_accum: int
    per_step: int
    """Micro-batches one optimizer step takes over all processes."""
    total_steps: int
    schedule: Callable[[int], float]
    save_scaling_at: set[int]


def plan_steps(cfg: TrainConfig, tokenizer, pairs: list[Pair], row_length: Callable[[list, list], int], world: int,
               scaling) -> StepPlan:
    """Screen and encode `pairs`, group them into micro-batches by `row_length` (what a pair takes in the batch
    layout) and cut those into optimizer steps over `world` processes."""
    encoded, skipped = screen_pairs(tokenizer, pairs, cfg.max_length)
    if not encoded:
        raise InputError(f"none of the {len(pairs)} training pairs is usable at max_length {cfg.max_length}: "
                         + ", ".join(f"{k} {v}" for k, v in skipped.items() if v))
    if any(skipped.values()):
        print(f"[train] skipped {sum(skipped.values())} of {len(pairs)} pairs: {skipped}", flush=True)
    lengths = [row_length(c.ids, r.ids) for c, r in encoded]
    micro = [batch for epoch in range(cfg.epochs)
             for batch in length_grouped_batches(lengths, cfg.batch_size, cfg.seed + epoch)]
    if len(micro) < world:
        raise InputError(f"{len(encoded)} pairs make {len(micro)} micro-batches, fewer than the {world} processes")
    # Each optimizer step takes grad_accum micro-batches per process; process r takes the r-th group of them,
    # so the step sees the same pairs, in the same order, whatever the number of processes.
    grad_accum = min(cfg.grad_accum, len(micro) // world)
    per_step = grad_accum * world
    total_steps = len(micro) // per_step
    schedule = functools.partial(lr_factor, cfg.schedule, total_steps=total_steps, warmup_frac=cfg.warmup_frac,
                                 decay_frac=cfg.decay_frac)
    save_scaling_at = set(scaling_steps(total_steps, cfg.warmup_frac, cfg.decay_frac, cfg.scaling_ratio)
                          if cfg.schedule == "wsd" and not cfg.decay_from_step else [])
    if cfg.decay_from_step:
        total_steps, schedule = _decay_plan(cfg, total_steps, scaling)
    return StepPlan(encoded, skipped, micro, grad_accum, per_step, total_steps, schedule, save_scaling_at)


def _load_model(cfg: TrainConfig, init_model: str, device: torch.device) -> PreferenceModel:
    model = PreferenceModel.load(init_model, with_lm_head=cfg.lm_coef > 0,
                                 attn_implementation=cfg.attn_implementation).to(device)
    if cfg.grad_checkpointing:
        model.reward_model.gradient_checkpointing_enable()
    if cfg.compile:
        _compile_layers(model)
    return model


def _accumulate(cfg: TrainConfig, forward, engine, batches: list[list], layout, pad_id: int,
                device: torch.device) -> tuple[list[dict], int, int]:
    """Forward and backward over one process's micro-batches of an optimizer step (the engine also steps on
    each, as DeepSpeed counts accumulation itself); returns each micro-batch's loss parts, tokens and pairs."""
    step_parts, tokens, samples = [], 0, 0
    for pairs_in_batch in batches:
        batch = {k: v.to(device) for k, v in layout(pairs_in_batch, pad_id).items()}
        n = len(pairs_in_batch)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            rewards, lm_logits, lm_targets = forward(batch["input_ids"], batch.get("attention_mask"),
                                                   lm_labels=batch["labels"] if cfg.lm_coef else None,
                                                   position_ids=batch.get("position_ids"),
                                                   last=batch.get("last"), tree_mask=batch.get("tree_mask"))
            loss, parts = pmp_loss(rewards[:n], rewards[n:], lm_logits, lm_targets, cfg.rm_coef, cfg.lm_coef)
        if engine is not None:
            engine.backward(loss)
            engine.step()
        else:
            (loss / len(batches)).backward()
        tokens += sum(len(c.ids) + len(r.ids) for c, r in pairs_in_batch)
        samples += n
        step_parts.append(parts)
    return step_parts, tokens, samples


def train(cfg: TrainConfig, init_model: str, pairs: list[Pair], out_dir: str | Path, *,
          checkpointer=None, scaling=None, log: Callable[[dict, int], None] = lambda m, s: None,
          progress: bool = True) -> dict:
    """Train a preference model from `init_model` on `pairs`; save the reward model folder to `out_dir`.

    `checkpointer` keeps the run resumable; `scaling` receives the scaling-curve checkpoints
    (`cfg.scaling_ratio`) and, with `cfg.decay_from_step`, is where the checkpoint to decay comes from."""
    if not pairs:
        raise InputError("training got 0 preference pairs")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule '{cfg.schedule}' in the training config (known: {', '.join(SCHEDULES)})")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and cfg.deepspeed_stage < 0:
        raise ConfigError(f"{world} processes were launched but deepspeed_stage is {cfg.deepspeed_stage}: "
                          "data-parallel training runs through DeepSpeed (set deepspeed_stage to 0-3)")
    torch.manual_seed(cfg.seed)
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu")
    model = _load_model(cfg, init_model, device)
    pad_id = model.reward_model.config.pad_token_id
    layout, row_length = _batch_layout(cfg, model)
    plan = plan_steps(cfg, model.tokenizer, pairs, row_length, world, scaling)
    encoded, micro, total_steps, schedule = plan.encoded, plan.micro, plan.total_steps, plan.schedule

    optimizer = _optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule(min(s, total_steps - 1)))
    engine = _deepspeed_engine(model, optimizer, scheduler, cfg, plan.grad_accum) if cfg.deepspeed_stage >= 0 else None

    start = 0
    if checkpointer is not None and (last := checkpointer.latest()) is not None:
        start = _restore(checkpointer, last, model, optimizer, scheduler, engine)
    elif cfg.decay_from_step:
        start = _restore(scaling, cfg.decay_from_step, model, optimizer, scheduler, engine)
        # The checkpoint holds the stable-phase rate for its next step; this run decays from that step on.
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * schedule(start)
    model.train()
    # Through the engine when there is one: ZeRO-3 counts micro-batches in its forward, and without that count
    # every backward overwrites the partitioned gradients instead of accumulating them.
    forward = engine if engine is not None else model
    tokens, samples, t0, history = 0, 0, time.perf_counter(), []
    bar = progress_bar(range(start, total_steps), desc=f"train ({total_steps} steps)", disable=not progress,
                       initial=start, total=total_steps, unit="step")
    for step in bar:
        first = step * plan.per_step + rank * plan.grad_accum
        batches = [[encoded[i] for i in batch_idx] for batch_idx in micro[first:first + plan.grad_accum]]
        step_parts, step_tokens, step_samples = _accumulate(cfg, forward, engine, batches, layout, pad_id, device)
        tokens, samples = tokens + step_tokens, samples + step_samples
        if engine is None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        metrics = {k: sum(p[k] for p in step_parts) / len(step_parts) for k in step_parts[0]}
        elapsed = time.perf_counter() - t0
        metrics["tokens_per_s"], metrics["samples_per_s"] = tokens / elapsed, samples / elapsed
        metrics["tokens"] = tokens
        if world > 1:
            metrics = _over_processes(metrics, world, summed=("tokens_per_s", "samples_per_s", "tokens"))
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        if device.type == "cuda":
            metrics["gpu_peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        history.append(metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['accuracy']:.2f}")
        if rank == 0 and ((step + 1) % cfg.log_every == 0 or step + 1 == total_steps):
            log(metrics, step + 1)
        if checkpointer is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 \
                and step + 1 < total_steps:
            _save(checkpointer, step + 1, model, optimizer, scheduler, engine, cfg)
        if scaling is not None and step + 1 in plan.save_scaling_at:
            _save(scaling, step + 1, model, optimizer, scheduler, engine, cfg)

    # No checkpoint at the end: the saved model is the stage's output, and optimizer state for a run
    # that is over would only cost an upload (for a 135M model, 1.6 GB).
    with _full_parameters(model, cfg):
        if rank == 0:
            with atomic_dir(out_dir) as tmp:
                model.save(tmp)
    final = history[-1] if history else {}
    return {"steps": total_steps, "resumed_from": start, "pairs": len(encoded),
            **{f"skipped_{k}": v for k, v in plan.skipped.items()},
            "micro_batches_dropped": len(micro) - total_steps * plan.per_step, "processes": world,
            "final_loss": final.get("loss", math.nan), "final_accuracy": final.get("accuracy", math.nan),
            "tokens_per_s": final.get("tokens_per_s", math.nan), "samples_per_s": final.get("samples_per_s", math.nan),
            "train_s": round(time.perf_counter() - t0, 3)}


def _padded_length(chosen: list[int], rejected: list[int]) -> int:
    return max(len(chosen), len(rejected))


def _tree_length(chosen: list[int], rejected: list[int]) -> int:
    return len(chosen) + len(rejected) - shared_prefix_length(chosen, rejected)


def _batch_layout(cfg: TrainConfig, model: PreferenceModel) -> tuple[Callable, Callable]:
    """The collate function of `cfg`'s batch layout (packed, pair trees where the model can take their mask, or
    padded rows) and the length a pair takes in it, which batches are grouped by (less padding: 12 % fewer
    positions for trees of GSM8K pairs than grouping them by their longer side)."""
    if cfg.packing and cfg.shared_prefix:
        raise ConfigError("packing and shared_prefix are two batch layouts: set at most one of them")
    if cfg.packing:
        return (lambda pairs, pad_id: collate_packed(pairs)), _padded_length
    if not cfg.shared_prefix:
        return collate, _padded_length
    config = model.reward_model.config.get_text_config()
    window = getattr(config, "sliding_window", None)
    why_not = (f"the {config._attn_implementation} kernel takes no custom mask"
               if config._attn_implementation not in ("sdpa", "eager") else
               f"its sliding window ({window}) is shorter than max_length {cfg.max_length}"
               if window and window < cfg.max_length else "")
    if why_not:
        print(f"[train] shared_prefix off, padded rows instead: {why_not}", flush=True)
        return collate, _padded_length
    return collate_pair_trees, _tree_length


def _compile_layers(model: PreferenceModel) -> None:
    """Compile the decoder layers one by one rather than the whole model: every layer shares one compiled
    graph, the reward readout and LM-head gather stay eager, and DeepSpeed's hooks still see plain modules."""
    layers = getattr(model.backbone, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ConfigError(f"compile: {type(model.backbone).__name__} has no `layers` list of decoder layers")
    for layer in layers:
        layer.compile(dynamic=None)


def _full_parameters(model, cfg: TrainConfig):
    """ZeRO-3 partitions parameters over processes: gather them (on every process, a collective) to save."""
    if cfg.deepspeed_stage != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)


def _over_processes(metrics: dict[str, float], world: int, summed: tuple[str, ...]) -> dict[str, float]:
    """Step metrics over all processes: rates in `summed` add up, the rest are averaged (every micro-batch
    has the same number of pairs)."""
    import torch.distributed as dist

    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(values)
    return {k: v if k in summed else v / world for k, v in zip(keys, values.tolist())}


def _decay_plan(cfg: TrainConfig, total_steps: int, scaling) -> tuple[int, Callable[[int], float]]:
    """Steps and lr multiplier of a run that decays the scaling-curve checkpoint at `cfg.decay_from_step`: flat
    before it (already trained), then linearly to 0, on the data that follows it in the same order."""
    start = cfg.decay_from_step
    if scaling is None or start not in scaling.steps():
        saved = scaling.steps() if scaling is not None else []
        raise InputError(f"no scaling-curve checkpoint at step {start} to decay (saved: {saved or 'none'}; train "
                         "with pretrain.scaling_ratio > 1 under the same run name first)")
    decay = decay_steps(start, cfg.decay_frac)
    if start + decay > total_steps:
        raise InputError(f"decaying step {start} needs {decay} more steps but the data has {total_steps} in all")
    return start + decay, lambda s: 1.0 if s < start else (start + decay - s - 1) / decay


def _save(checkpointer, step, model, optimizer, scheduler, engine, cfg: TrainConfig) -> None:
    with tempfile.TemporaryDirectory(prefix="codepmp-ckpt-") as tmp:
        if engine is None:
            model.save(Path(tmp) / "model")
            torch.save({"step": step, "config": asdict(cfg), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state()},
                       Path(tmp) / "state.pt")
            checkpointer.save(step, Path(tmp))
            return
        import torch.distributed as dist

        # Every process writes its optimizer partition; the checkpoint is complete only once all are uploaded.
        engine.save_checkpoint(tmp, tag="engine", client_state={"step": step, "config": asdict(cfg)})
        checkpointer.upload(step, Path(tmp))
        dist.barrier()
        if dist.get_rank() == 0:
            checkpointer.commit(step)
        dist.barrier()


def _restore(checkpointer, step, model, optimizer, scheduler, engine) -> int:
    with tempfile.TemporaryDirectory(prefix="codepmp-ckpt-") as tmp:
        checkpointer.restore(step, Path(tmp))
        if engine is not None:
            _, client = engine.load_checkpoint(tmp, tag="engine")
            return int(client["step"])
        from safetensors.torch import load_file

        weights = {}
        for file in sorted((Path(tmp) / "model").glob("*.safetensors")):
            weights.update(load_file(str(file)))
        lm_head = weights.pop("lm_head.weight", None)
        missing, unexpected = model.reward_model.load_state_dict(weights, strict=False)
        if unexpected or any(not k.endswith("lm_head.weight") for k in missing):
            raise RuntimeError(f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}")
        if lm_head is not None and model.lm_head is not None:
            model.lm_head.data.copy_(lm_head)
        state = torch.load(Path(tmp) / "state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        print(f"[train] resumed from checkpoint at step {state['step']}", flush=True)
        return int(state["step"])
