"""Packed rows: per-document position ids, and flattening a batch for varlen flash attention.

Packed training rows: position ids that restart per document, and flattening a packed batch to
one row for variable-length flash attention.
"""

from __future__ import annotations

import torch

from blockexp.data.collate import IGNORE_INDEX

__all__ = ["flatten_packed_batch", "packed_position_ids"]


def packed_position_ids(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Position ids that restart at 0 after every ``eos_token_id`` (and at each row start).

    For packed blocks ``[doc A ... </s> doc B ...]`` this gives ``[0 1 .. n 0 1 ..]``. With
    these ``position_ids``, no attention mask and no KV cache (training), transformers detects
    the packed documents and SDPA/eager attention gets a block-diagonal causal mask; on a batch
    flattened to one row (:func:`flatten_packed_batch`), the flash-attention-2 path switches to
    variable-length attention (``cu_seqlens`` from the restarts). Either way no token attends
    across a document boundary.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}.")
    length = input_ids.shape[1]
    idx = torch.arange(length, device=input_ids.device).expand_as(input_ids)
    # A new document starts right after an eos: the start index of position t is the last such.
    starts = torch.zeros_like(input_ids, dtype=torch.long)
    starts[:, 1:] = torch.where(input_ids[:, :-1] == eos_token_id, idx[:, 1:], 0)
    starts = torch.cummax(starts, dim=1).values
    return idx - starts


def flatten_packed_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turn a ``[B, L]`` packed batch with ``position_ids`` into one ``[1, B*L]`` row.

    transformers' flash-attention-2 path uses variable-length attention only for a single row;
    the first label of every original row is ignored so that no row predicts the next one's
    first token (the unflattened batch does not predict it either).
    """
    labels = batch["labels"].clone()
    labels[:, 0] = IGNORE_INDEX
    out = {
        "input_ids": batch["input_ids"].reshape(1, -1),
        "labels": labels.reshape(1, -1),
        "position_ids": batch["position_ids"].reshape(1, -1),
    }
    return out
