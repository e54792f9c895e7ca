"""Preference-model training loop shared by PMP (lm_coef > 0) and reward-model finetuning (lm_coef = 0).

Plain torch by default (length-grouped batches, no gradient checkpointing: the fastest setup on CPU);
`deepspeed_stage >= 0` wraps the model in a DeepSpeed ZeRO engine instead (gloo on CPU, NCCL on GPU).
A checkpointer makes the run resumable: a restarted run continues at the last completed checkpoint.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from codepmp.atomic import atomic_dir
from codepmp.config import TrainConfig
from codepmp.errors import InputError
from codepmp.progress import progress as progress_bar
from codepmp.train.data import Pair, collate, encode_pairs, length_grouped_batches
from codepmp.train.losses import pmp_loss
from codepmp.train.model import PreferenceModel
from codepmp.train.schedule import wsd_factor


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    # Norm scales and biases are 1-D; decaying them toward zero only hurts.
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def _deepspeed_engine(model, optimizer, scheduler, cfg: TrainConfig, grad_accum: int):
    import deepspeed

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}.items():
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    config = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": cfg.deepspeed_stage},
        "bf16": {"enabled": cfg.bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine


def train(cfg: TrainConfig, init_model: str, pairs: list[Pair], out_dir: str | Path, *,
          checkpointer=None, log: Callable[[dict, int], None] = lambda m, s: None,
          progress: bool = True) -> dict:
    """Train a preference model from `init_model` on `pairs`; save the reward model folder to `out_dir`."""
    if not pairs:
        raise InputError("training got 0 preference pairs")
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = PreferenceModel.load(init_model, with_lm_head=cfg.lm_coef > 0).to(device)
    if cfg.grad_checkpointing:
        model.reward_model.gradient_checkpointing_enable()
    pad_id = model.reward_model.config.pad_token_id
    encoded = encode_pairs(model.tokenizer, pairs, cfg.max_length)
    lengths = [max(len(c.ids), len(r.ids)) for c, r in encoded]
    micro = [batch for epoch in range(cfg.epochs)
             for batch in length_grouped_batches(lengths, cfg.batch_size, cfg.seed + epoch)]
    grad_accum = min(cfg.grad_accum, len(micro))
    total_steps = len(micro) // grad_accum

    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: wsd_factor(min(s, total_steps - 1), total_steps, cfg.warmup_frac, cfg.decay_frac))
    engine = _deepspeed_engine(model, optimizer, scheduler, cfg, grad_accum) if cfg.deepspeed_stage >= 0 else None

    start = 0
    if checkpointer is not None and (last := checkpointer.latest()) is not None:
        start = _restore(checkpointer, last, model, optimizer, scheduler, engine)
    model.train()
    tokens, t0, history = 0, time.perf_counter(), []
    bar = progress_bar(range(start, total_steps), desc=f"train ({total_steps} steps)", disable=not progress,
                       initial=start, total=total_steps, unit="step")
    for step in bar:
        step_parts: list[dict] = []
        for batch_idx in micro[step * grad_accum:(step + 1) * grad_accum]:
            batch = {k: v.to(device) for k, v in collate([encoded[i] for i in batch_idx], pad_id).items()}
            n = len(batch_idx)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                rewards, lm_logits, lm_targets = model(batch["input_ids"], batch["attention_mask"],
                                                       lm_labels=batch["labels"] if cfg.lm_coef else None)
                loss, parts = pmp_loss(rewards[:n], rewards[n:], lm_logits, lm_targets, cfg.rm_coef, cfg.lm_coef)
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                (loss / grad_accum).backward()
            tokens += int(batch["attention_mask"].sum())
            step_parts.append(parts)
        if engine is None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        metrics = {k: sum(p[k] for p in step_parts) / len(step_parts) for k in step_parts[0]}
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        metrics["tokens_per_s"] = tokens / (time.perf_counter() - t0)
        history.append(metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['accuracy']:.2f}")
        if (step + 1) % cfg.log_every == 0 or step + 1 == total_steps:
            log(metrics, step + 1)
        if checkpointer is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 \
                and step + 1 < total_steps:
            _save(checkpointer, step + 1, model, optimizer, scheduler, engine, cfg)

    # No checkpoint at the end: the saved model is the stage's output, and optimizer state for a run
    # that is over would only cost an upload (for a 135M model, 1.6 GB).
    with atomic_dir(out_dir) as tmp:
        model.save(tmp)
    final = history[-1] if history else {}
    return {"steps": total_steps, "resumed_from": start, "pairs": len(pairs),
            "micro_batches_dropped": len(micro) - total_steps * grad_accum,
            "final_loss": final.get("loss", math.nan), "final_accuracy": final.get("accuracy", math.nan),
            "tokens_per_s": final.get("tokens_per_s", math.nan)}


def _save(checkpointer, step, model, optimizer, scheduler, engine, cfg: TrainConfig) -> None:
    with tempfile.TemporaryDirectory(prefix="codepmp-ckpt-") as tmp:
        if engine is not None:
            engine.save_checkpoint(tmp, tag="engine", client_state={"step": step, "config": asdict(cfg)})
        else:
            model.save(Path(tmp) / "model")
            torch.save({"step": step, "config": asdict(cfg), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state()},
                       Path(tmp) / "state.pt")
        checkpointer.save(step, Path(tmp))


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
