"""The expansion manifest (``blockexp_manifest.json``) written beside every output's weights."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from blockexp.io.load import ModelSpec, manifest_base

__all__ = ["MANIFEST_NAME", "build_manifest", "manifest_dict", "write_manifest"]

MANIFEST_NAME = "blockexp_manifest.json"


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` as the directory's :data:`MANIFEST_NAME` (inside an atomic output
    directory, so no temporary file of its own)."""
    path = Path(directory) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def build_manifest(
    expansion, expander, base: ModelSpec, base_num_layers: int, base_params: int
) -> dict[str, Any]:
    """The JSON manifest written next to every expanded checkpoint."""
    total, trainable = expansion.parameter_counts()
    return manifest_dict(
        expander,
        base,
        base_num_layers,
        base_params,
        num_layers=expansion.model.config.num_hidden_layers,
        total_params=total,
        trainable_params=trainable,
        plan=expansion.plan,
        trainable_names=expansion.trainable,
        extra=expansion.extra,
    )


def manifest_dict(
    expander,
    base: ModelSpec,
    base_num_layers: int,
    base_params: int,
    num_layers: int,
    total_params: int,
    trainable_params: int,
    plan,
    trainable_names,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest from its parts (used where no model object exists, e.g. streaming)."""
    from importlib.metadata import version  # the installed distribution's (pyproject.toml)

    return {
        "blockexp_version": version("blockexp"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base": manifest_base(base),
        "base_num_layers": base_num_layers,
        "base_params": base_params,
        "num_layers": num_layers,
        "total_params": total_params,
        "trainable_params": trainable_params,
        "expander": expander.config(),
        "new_layers": plan.new_layers if plan else [],
        "trainable_layers": plan.trainable_layers if plan else [],
        "trainable_parameters": sorted(trainable_names),
        "plan": plan.to_dict() if plan else None,
        **({"extra": extra} if extra else {}),
    }
