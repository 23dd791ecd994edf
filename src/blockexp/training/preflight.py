"""Checks of a parsed training config that can fail before anything is built or loaded.

:class:`~blockexp.training.cli.BlockexpCLI` runs them right after parsing, so a setting this
machine cannot honour ends the command in a second with the fix, instead of after the base model
and the data are loaded.
"""

from __future__ import annotations

from typing import Any

from blockexp.errors import UsageError

__all__ = ["check_accelerator", "check_data", "world_size"]

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
    get = trainer.get  # a mapping or jsonargparse's Namespace
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


def world_size(trainer: Any) -> int:
    """The data-parallel processes a trainer section asks for: devices (an int, a list of ids, a
    numeric string; ``auto``/-1 count the visible GPUs on a GPU accelerator, else 1) x nodes."""
    get = trainer.get  # a mapping or jsonargparse's Namespace
    devices, nodes = get("devices", "auto"), get("num_nodes", 1) or 1
    if isinstance(devices, list | tuple):
        count = len(devices)
    elif isinstance(devices, int) and devices > 0:
        count = devices
    elif isinstance(devices, str) and devices.strip().isdigit():
        count = int(devices)
    elif isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    elif _name(get("accelerator", "auto")) in (*_CUDA, "auto"):
        import torch

        count = max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1
    else:
        count = 1
    return count * int(nodes)


def check_data(config: Any) -> None:
    """Let the configured data module check its options against the trainer before anything is
    built: a class with ``check_before_build(init_args: dict, world_size: int)`` (the TRACE
    module's batch in examples) is called with its parsed options."""
    import importlib

    get = config.get  # a mapping or jsonargparse's Namespace
    data = get("data")
    class_path = data.get("class_path") if hasattr(data, "get") else None
    if not isinstance(class_path, str) or "." not in class_path:
        return
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return  # the parser reports a bad class path itself
    check = getattr(cls, "check_before_build", None)
    if callable(check):
        init_args = data.get("init_args") or {}
        args = dict(init_args.items())
        check(args, world_size(get("trainer") or {}))
