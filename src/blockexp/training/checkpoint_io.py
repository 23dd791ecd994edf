"""Lightning checkpoints written atomically beside their final name, never via a system temp file.

Lightning's default writer buffers the whole checkpoint in memory and writes it through an fsspec
transaction whose temporary file lives in the system temp directory (``/dev/shm`` on some
machines), where a killed run leaves it. :class:`AtomicCheckpointIO` writes straight to
``.<name>.tmp-<pid>-<ns>`` in the checkpoint's own directory, syncs it and renames it over
``<name>``; the next save there removes what dead processes left. The file is complete or absent.
A save that runs out of disk space raises :class:`CheckpointSpaceError` (an ``OSError``, reported
in one line by the command line) naming the file, the bytes it needs and the bytes free; the
previous checkpoint of that name is left as it was.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from blockexp.io.stale import clean_stale_outputs

__all__ = ["AtomicCheckpointIO", "CheckpointSpaceError", "checkpoint_bytes"]


class CheckpointSpaceError(OSError):
    """No space left to write a checkpoint (``errno.ENOSPC``); the message says how much."""

    def __str__(self) -> str:
        return str(self.strerror)


def checkpoint_bytes(obj: Any) -> int:
    """The bytes of the tensors in a checkpoint dict (nested dicts, lists and tuples): about the
    size of the file ``torch.save`` writes."""
    if isinstance(obj, torch.Tensor):
        try:
            return obj.numel() * obj.element_size()
        except (RuntimeError, NotImplementedError):  # a tensor subclass without a plain size
            return 0
    if isinstance(obj, dict):
        return sum(checkpoint_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(checkpoint_bytes(v) for v in obj)
    return 0


def _out_of_space(err: BaseException, folder: Path, needed: int) -> bool:
    """Whether a failed save ran out of space: ENOSPC/EDQUOT (raised, or the cause of what was
    raised), or torch's writer failing (``file write failed``, ``unexpected pos``: no errno)
    with less free than the checkpoint needs."""
    seen, cause = 0, err
    while cause is not None and seen < 8:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen, cause = seen + 1, cause.__cause__ or cause.__context__
    return isinstance(err, RuntimeError) and shutil.disk_usage(folder).free < needed


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`~lightning.fabric.plugins.io.torch_io.TorchCheckpointIO` with in-place atomic
    writes for local paths (remote URLs keep Lightning's writer)."""

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # Lightning passes ``lambda storage, loc: storage`` (restore where saved), which
        # torch.load refuses for tensor subclasses (torchao's 8-bit optimizer state); ``None``
        # means the same thing and works for them.
        if callable(map_location):
            map_location = None
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options for local paths.")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_outputs(path)
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{time.time_ns()}"
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            needed = checkpoint_bytes(checkpoint)
            if not _out_of_space(err, path.parent, needed):
                raise
            free = shutil.disk_usage(path.parent).free
            kept = f" The previous {path.name} there is intact." if path.exists() else ""
            raise CheckpointSpaceError(
                errno.ENOSPC,
                f"no space left to write the checkpoint {path}: it needs about {needed:,} bytes "
                f"and {free:,} are free in {path.parent}. Free some space or choose another "
                f"checkpoint directory.{kept}",
            ) from err
