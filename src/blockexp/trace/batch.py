"""TRACE's batch in examples: the gradient accumulation it implies and the optimizer steps per task.

TRACE's scripts fix the examples per optimizer step as per-device batch x GPUs x accumulation
(``training/main.py`` hands DeepSpeed ``train_batch_size = per_device_train_batch_size *
world_size * gradient_accumulation_steps``). blockexp states that product, ``global_batch_size``,
and derives the accumulation for the devices at hand, so a recipe trains with TRACE's batch on any
device count that divides it.

The step counts follow Lightning's training loop with blockexp's loaders: each of ``world_size``
processes reads ``ceil(examples / world_size)`` examples an epoch (the sampler pads the last
share), in ``ceil(that / per_device)`` batches (the last one may be short), cut by
``trainer.limit_train_batches``; an optimizer step closes every ``accumulation`` batches and the
last batch of the epoch closes a shorter one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from blockexp.data.records import DataError

__all__ = [
    "BatchPlan",
    "check_before_build",
    "check_global_batch",
    "plan_batch",
    "plan_line",
    "set_accumulation",
    "steps_per_epoch",
]


@dataclass(frozen=True)
class BatchPlan:
    """Examples per optimizer step, as per-device batch x devices x accumulation.

    Attributes:
        per_device: training batch of one process (``data.init_args.batch_size``).
        world_size: data-parallel processes (devices x nodes).
        accumulation: batches whose gradients make one optimizer step.
    """

    per_device: int
    world_size: int
    accumulation: int

    @property
    def effective(self) -> int:
        """Examples per optimizer step."""
        return self.per_device * self.world_size * self.accumulation


def plan_batch(
    global_batch_size: int | None, per_device: int, world_size: int, accumulation: int = 1
) -> BatchPlan:
    """The accumulation that makes ``global_batch_size`` examples per optimizer step.

    Args:
        global_batch_size: examples per optimizer step, or ``None`` to keep ``accumulation``.
        per_device: training batch of one process.
        world_size: data-parallel processes.
        accumulation: the accumulation used when ``global_batch_size`` is ``None``.

    Raises:
        DataError: ``global_batch_size`` is not a multiple of ``per_device * world_size``.
    """
    if global_batch_size is None:
        return BatchPlan(per_device, world_size, accumulation)
    per_step = per_device * world_size
    if global_batch_size % per_step:
        raise DataError(
            f"data.init_args.global_batch_size {global_batch_size} is not a multiple of "
            f"batch_size {per_device} x {world_size} devices = {per_step}: run on a device count "
            f"that divides {global_batch_size // per_device}, or set data.init_args.batch_size so "
            f"that batch_size x {world_size} divides {global_batch_size}"
        )
    return BatchPlan(per_device, world_size, global_batch_size // per_step)


def check_global_batch(global_batch_size: int | None, per_device: int) -> None:
    """The checks that need no device count: ``global_batch_size`` is ``None`` or a positive
    multiple of the per-device batch."""
    if global_batch_size is None:
        return
    if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, int):
        raise DataError(
            f"data.init_args.global_batch_size must be an integer (examples per optimizer step) "
            f"or null, got {global_batch_size!r}"
        )
    if global_batch_size < 1 or global_batch_size % per_device:
        raise DataError(
            f"data.init_args.global_batch_size {global_batch_size} must be a positive multiple "
            f"of data.init_args.batch_size {per_device} (examples per optimizer step = "
            f"batch_size x devices x accumulation)"
        )


def set_accumulation(trainer, global_batch_size: int | None, per_device: int) -> BatchPlan:
    """Set ``trainer.accumulate_grad_batches`` so that an optimizer step sees
    ``global_batch_size`` examples on this trainer's devices; the plan in use.

    Called from the data module's ``setup("fit")``: after the trainer knows its world size and
    before the strategy reads the accumulation (DeepSpeed's config, the step counts of the
    learning-rate schedules), the attribute Lightning's own ``GradientAccumulationScheduler``
    sets. With ``global_batch_size=None`` the trainer's accumulation is kept.
    """
    current = trainer.accumulate_grad_batches
    plan = plan_batch(global_batch_size, per_device, trainer.world_size, current)
    if global_batch_size is None:
        return plan
    if current not in (1, plan.accumulation):
        raise DataError(
            f"trainer.accumulate_grad_batches {current} and data.init_args.global_batch_size "
            f"{global_batch_size} both set the batch: drop trainer.accumulate_grad_batches (the "
            f"accumulation is derived: {global_batch_size} / ({per_device} x "
            f"{trainer.world_size} devices) = {plan.accumulation})"
        )
    from lightning.pytorch.callbacks import GradientAccumulationScheduler

    if any(isinstance(c, GradientAccumulationScheduler) for c in trainer.callbacks):
        raise DataError(
            "a GradientAccumulationScheduler changes the accumulation that "
            "data.init_args.global_batch_size fixes: remove the callback or set "
            "global_batch_size to null"
        )
    module = trainer.lightning_module
    if plan.accumulation > 1 and module is not None and not module.automatic_optimization:
        raise DataError(
            f"data.init_args.global_batch_size {global_batch_size} needs accumulation "
            f"{plan.accumulation}, which manual optimization does not do: set it to "
            f"{per_device * trainer.world_size} (batch_size x devices)"
        )
    trainer.accumulate_grad_batches = plan.accumulation
    return plan


def steps_per_epoch(examples: int, plan: BatchPlan, limit_batches: int | float = 1.0) -> int:
    """Optimizer steps of one epoch over ``examples`` training examples.

    ``limit_batches`` is ``trainer.limit_train_batches`` (an int caps the batches, a float keeps
    that fraction, rounded down, as Lightning does).
    """
    per_process = math.ceil(examples / plan.world_size)
    batches = math.ceil(per_process / plan.per_device)
    if isinstance(limit_batches, int):
        batches = min(batches, limit_batches)
    else:
        batches = int(batches * limit_batches)
    return math.ceil(batches / plan.accumulation)


def plan_line(
    task: str, examples: int, epochs: int, plan: BatchPlan, limit_batches: int | float = 1.0
) -> str:
    """One task's line of the plan printed when a TRACE fit starts."""
    per_epoch = steps_per_epoch(examples, plan, limit_batches)
    return (
        f"TRACE {task}: {examples} examples x {epochs} epoch{'s' * (epochs != 1)}, "
        f"batch {plan.effective} "
        f"({plan.per_device} per device x {plan.world_size} device{'s' * (plan.world_size != 1)} "
        f"x {plan.accumulation} accumulation): {per_epoch} optimizer step"
        f"{'s' * (per_epoch != 1)} per epoch, "
        f"{per_epoch * epochs} in all"
    )


def check_before_build(init_args: dict, world_size: int) -> None:
    """The data module's options checked against the device count before anything is built
    (called by the command line: :func:`blockexp.training.preflight.check_data`): a
    ``global_batch_size`` that ``batch_size x world_size`` does not divide is refused here, not
    after the model is loaded."""
    global_batch = init_args.get("global_batch_size")
    per_device = init_args.get("batch_size")
    if isinstance(global_batch, int) and isinstance(per_device, int) and per_device > 0:
        plan_batch(global_batch, per_device, world_size)
