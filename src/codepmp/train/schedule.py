"""Learning-rate schedules as multipliers on the peak rate, for optimizer step `step` (0-based) of `total_steps`.

- "wsd", warmup-stable-decay (CodePMP: 3 % linear warmup, flat, the last 10 % decays linearly to 0). The
  stable phase is what scaling-curve checkpoints are taken from: any of them can be decayed separately.
- "cosine": the same linear warmup, then a half cosine from 1 to 0 over the remaining steps.

Against transformers' `get_wsd_schedule(decay_type="linear")` and `get_cosine_schedule_with_warmup`: the same
curves one optimizer step earlier (step s here is their step s + 1; tests/unit/train/test_schedule.py checks
it). Theirs runs its first step at lr 0 and ours its last; ours stays because the scaling-curve checkpoints and
the decay of a stable-phase checkpoint (`scaling_steps`, `decay_steps`, the loop's decay plan) are defined on
these factors, and the golden-loss test pins them.
"""

from __future__ import annotations

import math

SCHEDULES = ("wsd", "cosine")


def _warmup_steps(total_steps: int, warmup_frac: float) -> int:
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    return max(int(round(warmup_frac * total_steps)), 0)


def wsd_factor(step: int, total_steps: int, warmup_frac: float, decay_frac: float) -> float:
    """Warmup ramps from 1/warmup to 1 so the first step already moves; decay reaches 0 after the last step."""
    warmup = _warmup_steps(total_steps, warmup_frac)
    decay = max(int(round(decay_frac * total_steps)), 0)
    decay_start = total_steps - decay
    if step < warmup:
        return (step + 1) / warmup
    if step >= decay_start:
        return max(total_steps - step - 1, 0) / max(decay, 1) if decay else 1.0
    return 1.0


def cosine_factor(step: int, total_steps: int, warmup_frac: float) -> float:
    warmup = _warmup_steps(total_steps, warmup_frac)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step + 1 - warmup) / max(total_steps - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def lr_factor(schedule: str, step: int, total_steps: int, warmup_frac: float, decay_frac: float) -> float:
    if schedule == "wsd":
        return wsd_factor(step, total_steps, warmup_frac, decay_frac)
    if schedule == "cosine":
        return cosine_factor(step, total_steps, warmup_frac)
    raise ValueError(f"unknown schedule '{schedule}' (known: {', '.join(SCHEDULES)})")


def scaling_steps(total_steps: int, warmup_frac: float, decay_frac: float, ratio: float) -> list[int]:
    """Optimizer steps of the stable phase at which scaling-curve checkpoints are saved: the first step after
    warmup, then each about `ratio` times the previous (at least one step apart), before the decay starts."""
    if ratio <= 1.0:
        return []
    step = max(_warmup_steps(total_steps, warmup_frac), 1)
    decay_start = total_steps - max(int(round(decay_frac * total_steps)), 0)
    steps = []
    while step <= decay_start and step < total_steps:
        steps.append(step)
        step = max(step + 1, int(round(step * ratio)))
    return steps


def decay_steps(from_step: int, decay_frac: float) -> int:
    """Steps that decay a stable-phase checkpoint taken at `from_step`, so that the decay is `decay_frac` of the
    decayed run's length, as in a full WSD run."""
    return max(1, int(round(from_step * decay_frac / max(1.0 - decay_frac, 1e-9))))
