"""Padding variable-length examples into batches, and the one ignored label value.

Batching variable-length examples: padding ``input_ids``, ``attention_mask`` and ``labels``, and
the one label value that carries no loss (:data:`IGNORE_INDEX`).
"""

from __future__ import annotations

import torch

__all__ = ["IGNORE_INDEX", "Collator", "pad_collate"]

#: Label of positions without a loss (prompt tokens, padding): PyTorch's cross-entropy default.
IGNORE_INDEX = -100


def pad_collate(
    batch: list[dict[str, torch.Tensor]], pad_token_id: int, side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad ``input_ids`` (with ``pad_token_id``) and ``labels`` (with :data:`IGNORE_INDEX`); add
    the attention mask.

    Args:
        batch: items with ``input_ids`` and optionally ``labels``.
        pad_token_id: the padding id.
        side: ``"right"`` for training, ``"left"`` for batched generation.
    """
    width = max(len(item["input_ids"]) for item in batch)
    out: dict[str, list[torch.Tensor]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for item in batch:
        ids = item["input_ids"]
        pad = width - len(ids)

        def _pad(t: torch.Tensor, value: int, pad: int = pad) -> torch.Tensor:
            fill = torch.full((pad,), value, dtype=t.dtype)
            return torch.cat([t, fill]) if side == "right" else torch.cat([fill, t])

        out["input_ids"].append(_pad(ids, pad_token_id))
        out["attention_mask"].append(_pad(torch.ones_like(ids), 0))
        if "labels" in item:
            out["labels"].append(_pad(item["labels"], IGNORE_INDEX))
    return {k: torch.stack(v) for k, v in out.items() if v}


class Collator:
    """:func:`pad_collate` as a picklable object (for DataLoader worker processes).

    Args:
        pad_token_id: the padding id.
        side: ``"right"`` (training) or ``"left"`` (generation).
    """

    def __init__(self, pad_token_id: int, side: str = "right") -> None:
        self.pad_token_id = int(pad_token_id)
        self.side = side

    def __call__(self, batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return pad_collate(batch, self.pad_token_id, self.side)
