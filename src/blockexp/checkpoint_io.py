"""Lightning checkpoints written atomically beside their final name, never via a system temp file.

Lightning's default writer buffers the whole checkpoint in memory and writes it through an fsspec
transaction whose temporary file lives in the system temp directory (``/dev/shm`` on some
machines), where a killed run leaves it. :class:`AtomicCheckpointIO` writes straight to
``.<name>.tmp-<pid>-<ns>`` in the checkpoint's own directory, syncs it and renames it over
``<name>``; the next save there removes what dead processes left. The file is complete or absent.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from .checkpoint import clean_stale_outputs

__all__ = ["AtomicCheckpointIO"]


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
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
