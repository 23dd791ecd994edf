"""Learning-rate multipliers: warmup then cosine decay, and constant after warmup."""

from __future__ import annotations

import functools
import math

import torch

__all__ = ["constant_with_warmup", "cosine_schedule", "cosine_with_warmup"]


def cosine_with_warmup(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total`` (the
    module's default schedule, LLaMA Pro's)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_schedule(
    optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`cosine_with_warmup` over ``total`` steps as a scheduler, with
    ``round(warmup_ratio * total)`` warmup steps."""
    warmup = int(round(warmup_ratio * total))
    schedule = functools.partial(
        cosine_with_warmup, total=total, warmup=warmup, min_ratio=min_ratio
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def constant_with_warmup(step: int, warmup_steps: int) -> float:
    """The multiplier of ``transformers.get_constant_schedule_with_warmup`` (TRACE's schedule):
    ``step / warmup`` during warmup (so 0 at the very first step), then 1."""
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    return 1.0
