"""Checks of a parsed training config that can fail before anything is built or loaded.

:class:`~blockexp.training.cli.BlockexpCLI` runs them right after parsing, so a setting this
machine cannot honour ends the command in a second with the fix, instead of after the base model
and the data are loaded.
"""

from __future__ import annotations

from typing import Any

from blockexp.errors import UsageError

__all__ = ["check_accelerator"]

_CUDA = ("gpu", "cuda")


def _name(value: Any) -> str | None:
    if isinstance(value, str):
        return value.lower()
    class_path = value.get("class_path") if isinstance(value, dict) else None
    return class_path.rpartition(".")[2].lower() if isinstance(class_path, str) else None


def check_accelerator(trainer: Any) -> None:
    """Refuse ``trainer.accelerator gpu``/``cuda`` (or ``mps``) on a machine without one, and
    more ``trainer.devices`` than the machine's GPUs.

    Args:
        trainer: the parsed ``trainer`` section (a mapping or namespace).

    Raises:
        UsageError: what was asked, what this machine has and the options that fix it.
    """
    get = trainer.get if hasattr(trainer, "get") else lambda k, d=None: getattr(trainer, k, d)
    accelerator = _name(get("accelerator", "auto"))
    if accelerator not in (*_CUDA, "mps"):
        return
    import torch

    cpu_fix = "use --trainer.accelerator cpu (or the trainer=cpu config piece)"
    if accelerator == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(
                f"--trainer.accelerator mps needs Apple's Metal backend, which this machine does "
                f"not have: {cpu_fix}"
            )
        return
    if not torch.cuda.is_available():
        build = torch.__version__
        why = (
            "this torch build has no CUDA support"
            if torch.version.cuda is None
            else "no CUDA device is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
        )
        raise UsageError(
            f"--trainer.accelerator {accelerator} needs a CUDA GPU, and {why} (torch {build}): "
            f"{cpu_fix}, or install a CUDA build of torch on a GPU machine"
        )
    devices = get("devices", "auto")
    wanted = devices if isinstance(devices, int) else None
    if isinstance(devices, str) and devices.isdigit():
        wanted = int(devices)
    have = torch.cuda.device_count()
    if wanted is not None and wanted > have:
        raise UsageError(
            f"--trainer.devices {wanted} asks for more GPUs than this machine has ({have}): "
            f"use --trainer.devices {have}, or run on a machine with more GPUs"
        )
