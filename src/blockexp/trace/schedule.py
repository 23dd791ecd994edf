"""Applying a TRACE protocol's learning-rate schedule (and optimizer resets) to the trainer."""

from __future__ import annotations

import functools
import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.types import LRSchedulerConfig

from blockexp.training.schedules import constant_with_warmup, cosine_schedule

__all__ = ["ProtocolScheduler"]


class ProtocolScheduler:
    """Installs the protocol's learning-rate schedule at the start of every training epoch.

    The scheduler it installs replaces ``trainer.strategy.lr_scheduler_configs`` and is recognised
    by identity (a marker attribute would travel into checkpoints with the scheduler's state and
    come back on the module's own scheduler when resuming).
    """

    def __init__(self) -> None:
        self._installed: tuple[Any, Any] | None = None

    def on_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, dm) -> None:
        """Install (or keep) the schedule of the running epoch's task.

        Args:
            trainer: the trainer (its optimizer and scheduler configs are changed).
            pl_module: the module (``warmup_ratio`` and ``min_lr_ratio`` for ``reset``).
            dm: the :class:`~blockexp.trace.data.TRACEDataModule` (protocol, tasks, epochs).
        """
        if not trainer.optimizers:
            return
        if dm.protocol.one_optimizer:
            self._one_schedule(trainer, dm)
        else:
            self._task_schedule(trainer, pl_module, dm)

    @staticmethod
    def _restart_from_peak(optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            group["lr"] = group.get("initial_lr", group["lr"])
            group.pop("initial_lr", None)

    def _current(self, trainer: L.Trainer, tag: Any) -> bool:
        configs = trainer.strategy.lr_scheduler_configs
        return (
            self._installed is not None
            and bool(configs)
            and configs[0].scheduler is self._installed[0]
            and self._installed[1] == tag
        )

    def _install(self, trainer: L.Trainer, scheduler, done: int, tag: Any) -> None:
        if done:  # resuming: continue the schedule where it stopped
            scheduler.last_epoch = done
            for group, base, fn in zip(
                scheduler.optimizer.param_groups,
                scheduler.base_lrs,
                scheduler.lr_lambdas,
                strict=True,
            ):
                group["lr"] = base * fn(done)
        self._installed = (scheduler, tag)
        trainer.strategy.lr_scheduler_configs = [
            LRSchedulerConfig(scheduler, interval="step", frequency=1)
        ]

    def _one_schedule(self, trainer: L.Trainer, dm) -> None:
        """``trace``: one optimizer, the protocol's weight decay, one constant schedule after
        warmup."""
        optimizer = trainer.optimizers[0]
        for group in optimizer.param_groups:
            group["weight_decay"] = dm.protocol.weight_decay
        if self._current(trainer, "trace"):
            return
        self._restart_from_peak(optimizer)
        schedule = functools.partial(constant_with_warmup, warmup_steps=dm.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self._install(trainer, scheduler, trainer.global_step, "trace")

    def _task_schedule(self, trainer: L.Trainer, pl_module: L.LightningModule, dm) -> None:
        """``reset``: fresh AdamW and the module's warmup + cosine schedule for every task."""
        task = dm.current_task
        first, _ = dm.task_bounds(task)
        if self._current(trainer, ("reset", task)):
            return
        epoch = trainer.current_epoch
        if task > 0 and epoch == first:
            trainer.strategy.setup_optimizers(trainer)
        optimizer = trainer.optimizers[0]
        settings = getattr(pl_module, "settings", None)  # a BlockExpansionModule's
        optim = settings.optim if settings is not None else None
        per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        total = max(1, per_epoch * dm.epochs[task])
        self._restart_from_peak(optimizer)
        scheduler = cosine_schedule(
            optimizer,
            total,
            float(optim.warmup_ratio if optim else 0.0),
            float(optim.min_lr_ratio if optim else 0.0),
        )
        done = (epoch - first) * per_epoch  # > 0 only when resuming inside a task
        self._install(trainer, scheduler, done, ("reset", task))
