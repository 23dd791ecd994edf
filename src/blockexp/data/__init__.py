"""Training data: the CPT, SFT and TRACE DataModules on one base, imported on first use.

Light modules (``blockexp.data.collate``, ``blockexp.data.packing``) load without Lightning or
datasets.
"""

from __future__ import annotations

import importlib
from typing import Any

from .records import DataError

__all__ = [
    "BlockexpDataModule",
    "CPTDataModule",
    "DataError",
    "DataSource",
    "SFTDataModule",
    "TRACEDataModule",
]

_LAZY = {
    "BlockexpDataModule": "blockexp.data.base",
    "CPTDataModule": "blockexp.data.cpt",
    "DataSource": "blockexp.data.cpt",
    "SFTDataModule": "blockexp.data.sft",
    "TRACEDataModule": "blockexp.data.trace",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
