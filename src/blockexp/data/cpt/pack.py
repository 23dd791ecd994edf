"""CPT packing: documents -> held-out split -> contiguous ``seq_len`` blocks -> mixture weights.

Per source: ``val_fraction`` of the documents is held out (seeded, before packing, so no document
is in both splits); the documents of each split are packed, in their original order, into blocks
of exactly ``seq_len`` tokens (the trailing remainder is dropped; blocks may span document
boundaries, separated by eos); the mixture weight ``w`` turns the ``n`` training blocks into
``round(w * n)``: ``floor(w)`` full copies plus a seeded random subset (without replacement) for
the fractional part. Validation is unweighted. Packing happens in memory (int32), which is fine
for corpora up to a few hundred million tokens.
"""

from __future__ import annotations

import math
import zlib

import datasets
import numpy as np
import torch
from torch.utils.data import Dataset

from blockexp.data.packing import packed_position_ids

__all__ = [
    "PackedBlocks",
    "flat_tokens",
    "held_out_count",
    "held_out_mask",
    "pack",
    "weighted_index",
]


def _rng(seed: int, name: str, purpose: str) -> np.random.Generator:
    return np.random.default_rng(
        [int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode()), zlib.crc32(purpose.encode())]
    )


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def held_out_count(n_docs: int, val_fraction: float) -> int:
    """Documents held out for validation: ``round(val_fraction * n_docs)``, at least 1 and at
    most ``n_docs - 1`` when ``val_fraction > 0``; 0 for a single document."""
    if val_fraction > 0 and n_docs >= 2:
        return min(max(1, _round_half_up(val_fraction * n_docs)), n_docs - 1)
    return 0


def held_out_mask(n_docs: int, n_val: int, seed: int, name: str) -> np.ndarray:
    """A boolean mask of ``n_docs`` with ``n_val`` documents (seeded by ``seed`` and the source
    ``name``) set: the held-out ones."""
    mask = np.zeros(n_docs, dtype=bool)
    if n_val:
        mask[_rng(seed, name, "val").choice(n_docs, size=n_val, replace=False)] = True
    return mask


def weighted_index(n_blocks: int, weight: float, seed: int, name: str) -> np.ndarray:
    """Row indices of ``n_blocks`` blocks under mixture weight ``weight``: ``round(weight *
    n_blocks)`` rows (at least 1), ``floor`` full copies then a sorted, seeded subset."""
    n_weighted = max(1, _round_half_up(weight * n_blocks))
    full = n_weighted // n_blocks
    rest = n_weighted - full * n_blocks
    index = [np.tile(np.arange(n_blocks, dtype=np.int64), full)]
    if rest:
        subset = _rng(seed, name, "mixture").choice(n_blocks, size=rest, replace=False)
        index.append(np.sort(subset).astype(np.int64))
    return np.concatenate(index)


def flat_tokens(tokenized: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Return (all token ids concatenated, per-document offsets) of a tokenised dataset."""
    lists = tokenized.data.column("input_ids").combine_chunks()
    values = lists.flatten().to_numpy(zero_copy_only=False)
    offsets = lists.offsets.to_numpy()
    return values, (offsets - offsets[0]).astype(np.int64)


def pack(
    values: np.ndarray, offsets: np.ndarray, doc_mask: np.ndarray, seq_len: int
) -> tuple[np.ndarray, int]:
    """Concatenate the selected documents in order and cut into ``seq_len`` blocks.

    Returns:
        ``(blocks [n_blocks, seq_len] int32, number of tokens before dropping the remainder)``.
    """
    lengths = np.diff(offsets)
    token_mask = np.repeat(doc_mask, lengths)
    flat = values[token_mask]
    n_blocks = len(flat) // seq_len
    blocks = np.ascontiguousarray(
        flat[: n_blocks * seq_len].reshape(n_blocks, seq_len), dtype=np.int32
    )
    return blocks, len(flat)


class PackedBlocks(Dataset):
    """A map-style dataset of packed token blocks.

    Args:
        blocks: ``int`` array ``[n_blocks, seq_len]``.
        index: Optional row indices into ``blocks`` (repeats allowed), used for
            mixture weighting; defaults to every row once.
        eos_id: When given, items also carry ``position_ids`` that restart after every EOS
            (document masking: see :func:`blockexp.data.packing.packed_position_ids`).
    """

    def __init__(
        self, blocks: np.ndarray, index: np.ndarray | None = None, eos_id: int | None = None
    ) -> None:
        self.blocks = blocks
        self.eos_id = eos_id
        self.index = (
            np.arange(len(blocks), dtype=np.int64)
            if index is None
            else np.asarray(index, dtype=np.int64)
        )

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(self.blocks[self.index[i]].astype(np.int64))
        item = {"input_ids": ids, "labels": ids.clone()}
        if self.eos_id is not None:
            item["position_ids"] = packed_position_ids(ids[None], self.eos_id)[0]
        return item
