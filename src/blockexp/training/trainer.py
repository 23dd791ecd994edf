"""A quiet one-process CPU ``lightning.Trainer`` for scripts, experiments and tests."""

from __future__ import annotations

from typing import Any

import lightning as L

__all__ = ["QUIET_DEFAULTS", "make_trainer"]

QUIET_DEFAULTS: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "precision": "32-true",
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "gradient_clip_val": 1.0,  # the CLI's default
}
"""What :func:`make_trainer` sets unless told otherwise."""


def make_trainer(**overrides: Any) -> L.Trainer:
    """``lightning.Trainer`` with :data:`QUIET_DEFAULTS` (one CPU process in float32, no logger,
    checkpoints, progress bar, model summary or sanity validation; gradient clipping at 1.0 as
    the CLI does), any of them replaced and any other trainer argument added by ``overrides``.
    Checkpointing is on when ``callbacks`` holds a ``ModelCheckpoint``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks = overrides.get("callbacks") or []
    checkpoints = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    return L.Trainer(**{**QUIET_DEFAULTS, "enable_checkpointing": checkpoints, **overrides})
