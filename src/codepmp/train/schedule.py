"""Warmup-stable-decay learning-rate schedule (CodePMP: 3 % linear warmup, flat, last 10 % decays to 0)."""

from __future__ import annotations


def wsd_factor(step: int, total_steps: int, warmup_frac: float, decay_frac: float) -> float:
    """Multiplier on the peak learning rate for optimizer step `step` (0-based) of `total_steps`.

    Warmup ramps from 1/warmup to 1 so the first step already moves; decay reaches 0 after the last step.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    warmup = max(int(round(warmup_frac * total_steps)), 0)
    decay = max(int(round(decay_frac * total_steps)), 0)
    decay_start = total_steps - decay
    if step < warmup:
        return (step + 1) / warmup
    if step >= decay_start:
        return max(total_steps - step - 1, 0) / max(decay, 1) if decay else 1.0
    return 1.0
