"""Building a run's AdamW (fused, 8-bit or stepped in the backward) and its learning-rate schedule."""

from __future__ import annotations

from typing import Any

import torch

from blockexp.training.schedules import cosine_schedule
from blockexp.training.settings import Optim

__all__ = ["check_in_backward", "configure_adamw", "fused_adamw_supported"]


def configure_adamw(
    model: torch.nn.Module, optim: Optim, trainer: Any, previous: Any = None
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer for ``model``'s trainable parameters: AdamW
    (weight decay on matrices only) and the warmup + cosine schedule over the trainer's steps.

    ``previous``: the :class:`~blockexp.training.optim.OptimizerInBackward` of an earlier fit on
    the same module, whose hooks are removed (one hook per parameter).
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise RuntimeError("The expander marked no parameter trainable; nothing to optimise.")
    groups = [{"params": decay, "weight_decay": optim.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    options = dict(lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
    if optim.optimizer_state == "int8":
        from torchao.optim import AdamW8bit

        def make(param_groups):
            return AdamW8bit(param_groups, **options)
    else:
        fused = optim.fused_adamw
        if fused is None:
            # not with fp16's GradScaler: Lightning cannot clip for an optimizer that
            # unscales gradients itself
            scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
            fused = fused_adamw_supported(decay + no_decay) and scaler is None

        def make(param_groups):
            return torch.optim.AdamW(param_groups, **options, **({"fused": True} if fused else {}))

    if optim.optimizer_in_backward:
        from blockexp.training.optim import OptimizerInBackward

        if previous is not None:
            previous.remove_hooks()
        optimizer = OptimizerInBackward(groups, make, **options)
    else:
        optimizer = make(groups)
    total = max(1, int(trainer.estimated_stepping_batches))
    scheduler = cosine_schedule(optimizer, total, optim.warmup_ratio, optim.min_lr_ratio)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
    }


def fused_adamw_supported(params: list[torch.Tensor]) -> bool:
    """Whether ``torch.optim.AdamW(fused=True)`` takes these parameters: plain (not DTensor)
    float32/bf16/fp16 tensors, all on CPU or all on CUDA."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        DTensor = ()  # noqa: N806
    devices = {p.device.type for p in params}
    return (
        bool(params)
        and len(devices) == 1
        and devices <= {"cpu", "cuda"}
        and not any(isinstance(p, DTensor) for p in params)
        and all(p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params)
    )


def check_in_backward(trainer: Any) -> None:
    """Refuse trainer settings that need every gradient after the backward
    (``model.optim.optimizer_in_backward``)."""
    problems = []
    if trainer.gradient_clip_val:
        problems.append(
            f"trainer.gradient_clip_val is {trainer.gradient_clip_val}: global-norm clipping "
            "needs all gradients at once (set --trainer.gradient_clip_val null)"
        )
    if trainer.accumulate_grad_batches != 1:
        problems.append(
            f"trainer.accumulate_grad_batches is {trainer.accumulate_grad_batches}: there is no "
            "accumulation, each backward steps (set it to 1 and raise the batch size)"
        )
    if str(trainer.precision) in ("16-mixed", "16"):
        problems.append("trainer.precision 16-mixed scales the loss after the backward")
    if trainer.world_size > 1:
        problems.append(
            f"{trainer.world_size} processes: DDP/FSDP reduce gradients after the step would "
            "have used them (use one process)"
        )
    if problems:
        raise ValueError(
            "model.optim.optimizer_in_backward steps each parameter inside the backward pass, "
            "which rules out: " + "; ".join(problems) + "."
        )
