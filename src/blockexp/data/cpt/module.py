"""The CPT DataModule: named sources -> validate -> tokenise -> pack and weight -> loaders.

See :mod:`blockexp.data.cpt.sources` (validation), :mod:`blockexp.data.cpt.tokenize` (the
``datasets`` map, cached) and :mod:`blockexp.data.cpt.pack` (held-out split, blocks, weights).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from blockexp.data.base import BlockexpDataModule, check_fraction, check_int
from blockexp.data.cpt.pack import (
    PackedBlocks,
    flat_tokens,
    held_out_count,
    held_out_mask,
    pack,
    weighted_index,
)
from blockexp.data.cpt.sources import (
    DataSource,
    check_source_path,
    describe_source,
    validate_source,
)
from blockexp.data.cpt.tokenize import tokenize_source
from blockexp.data.records import DataError

__all__ = ["CPTDataModule"]


class CPTDataModule(BlockexpDataModule):
    """Packed, mixture-weighted continual pre-training data from local files.

    Args:
        sources: The named corpora of the mixture (unique names).
        tokenizer: ``"byte"``, a local tokenizer directory or a Hub id (see
            :func:`blockexp.io.tokenization.load_tokenizer`).
        seq_len: Tokens per training block (>= 2).
        batch_size: Blocks per batch.
        val_fraction: Fraction of each source's documents held out for
            validation, in ``[0, 1)``. When > 0, every source with >= 2
            documents holds out at least 1 (and keeps at least 1 for training).
        num_workers: DataLoader worker processes.
        seed: Seed for the validation split, the fractional mixture subset and
            the training shuffle.
        cache_dir: ``datasets`` cache directory (default: the ``datasets``
            default cache, usually ``~/.cache/huggingface/datasets``).
        trust_remote_code: Forwarded to the tokenizer loader.
        document_masking: Also emit ``position_ids`` that restart after every EOS, so that no
            token attends across a document boundary inside a packed block (transformers builds
            the block-diagonal mask for SDPA/eager; with flash-attn the module flattens the batch
            to variable-length attention). Off by default, as in LLaMA Pro's packing.

    Batches are ``{"input_ids": LongTensor[B, seq_len], "labels": LongTensor[B, seq_len]}``
    with ``labels == input_ids`` (the model shifts internally), plus ``position_ids`` with
    ``document_masking``.

    Attributes:
        tokenizer: The loaded tokenizer (available right after ``__init__``).
        train_dataset: :class:`PackedBlocks` of weighted training blocks (after ``setup``).
        val_dataset: :class:`PackedBlocks` of unweighted validation blocks (after ``setup``;
            may be empty when ``val_fraction == 0``).
        tokenized: Per-source tokenised ``datasets.Dataset`` (one row per non-blank document).
        val_doc_indices: Per-source row indices (into ``tokenized[name]``) of held-out documents.

    Raises:
        DataError: For invalid settings or sources (checked in ``__init__``)
            and for malformed/insufficient data (checked when data is built).
        FileNotFoundError: If a source file does not exist.
    """

    def __init__(
        self,
        sources: list[DataSource],
        tokenizer: str = "byte",
        seq_len: int = 256,
        batch_size: int = 8,
        val_fraction: float = 0.05,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        trust_remote_code: bool = False,
        document_masking: bool = False,
    ) -> None:
        if isinstance(sources, (DataSource, Mapping)) or not sources:
            raise DataError(
                "`sources` must be a non-empty list of DataSource(name=..., path=..., weight=...)"
            )
        sources = [DataSource(**s) if isinstance(s, Mapping) else s for s in sources]
        names = [s.name for s in sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise DataError(
                f"duplicate data source names {duplicates}; every source needs a unique name"
            )
        check_int("seq_len", seq_len, minimum=2, why="inputs and shifted labels")
        check_fraction("val_fraction", val_fraction, hint="use 0 to disable validation")
        for source in sources:
            check_source_path(source)
            source.resolved_format  # noqa: B018  (raises DataError for unknown extensions)

        super().__init__(tokenizer, batch_size, num_workers, seed, trust_remote_code)
        self.sources = sources
        self.seq_len = seq_len
        self.val_fraction = float(val_fraction)
        self.cache_dir = cache_dir
        self.document_masking = document_masking
        self._validated: set[tuple] = set()
        self.save_hyperparameters(
            {
                "sources": [asdict(s) for s in sources],
                "tokenizer": tokenizer,
                "seq_len": seq_len,
                "batch_size": batch_size,
                "val_fraction": self.val_fraction,
                "num_workers": num_workers,
                "seed": seed,
                "cache_dir": cache_dir,
                "trust_remote_code": trust_remote_code,
                "document_masking": document_masking,
            }
        )

        self.train_dataset: PackedBlocks | None = None
        self.val_dataset: PackedBlocks | None = None
        self.tokenized: dict[str, datasets.Dataset] = {}
        self.val_doc_indices: dict[str, list[int]] = {}
        self._stats: dict[str, Any] | None = None

    # ------------------------------------------------------------------ building

    def tokenize_source(self, source: DataSource) -> datasets.Dataset:
        """Validate (once per file version), load and tokenise one source (cached by
        ``datasets``; see :func:`blockexp.data.cpt.tokenize.tokenize_source`).

        Args:
            source: The source.

        Returns:
            A dataset with one ``input_ids`` row (ending in eos) per non-blank document.
        """
        self._validate_once(source)
        return tokenize_source(source, self.tokenizer, self.cache_dir)

    def _validate_once(self, source: DataSource) -> None:
        """:func:`validate_source`, skipped when this file (same size and mtime) passed before."""
        stat = Path(source.path).expanduser().stat()
        key = (
            source.name,
            source.path,
            source.text_field,
            source.format,
            stat.st_size,
            stat.st_mtime_ns,
        )
        if key not in self._validated:
            validate_source(source)
            self._validated.add(key)

    def prepare_data(self) -> None:
        """Validate and tokenise every source once (fills the ``datasets`` cache)."""
        for source in self.sources:
            self.tokenize_source(source)

    def setup(self, stage: str | None = None) -> None:
        """Build the packed train/val datasets (idempotent; same for every stage).

        Args:
            stage: Lightning stage (``"fit"``, ``"validate"``, ...); ignored.
        """
        if self.train_dataset is not None:
            return
        seq_len = self.seq_len
        train_parts: list[np.ndarray] = []
        train_index: list[np.ndarray] = []
        val_parts: list[np.ndarray] = []
        per_source: dict[str, dict[str, Any]] = {}
        offset = 0
        for source in self.sources:
            tokenized = self.tokenize_source(source)
            self.tokenized[source.name] = tokenized
            values, offsets = flat_tokens(tokenized)
            n_docs = len(offsets) - 1

            n_val = held_out_count(n_docs, self.val_fraction)
            if self.val_fraction > 0 and n_docs < 2:
                rank_zero_warn(
                    f"{describe_source(source)} has a single document; none is held out for validation"
                )
            val_mask = held_out_mask(n_docs, n_val, self.seed, source.name)

            self.val_doc_indices[source.name] = np.flatnonzero(val_mask).tolist()
            train_blocks, train_tokens = pack(values, offsets, ~val_mask, seq_len)
            val_blocks, val_tokens = pack(values, offsets, val_mask, seq_len)
            n_blocks = len(train_blocks)
            if n_blocks == 0:
                raise DataError(
                    f"{describe_source(source)}: too little data for one training block: found {train_tokens} tokens "
                    f"in {n_docs - n_val} training documents (eos included) but seq_len={seq_len} needs at least "
                    f"{seq_len}; add data, lower seq_len or lower val_fraction"
                )
            if n_val and len(val_blocks) == 0:
                rank_zero_warn(
                    f"{describe_source(source)}: the {n_val} held-out documents ({val_tokens} tokens) are shorter than "
                    f"seq_len={seq_len}, so this source has no validation blocks"
                )

            index_arr = weighted_index(n_blocks, source.weight, self.seed, source.name) + offset
            offset += n_blocks
            train_parts.append(train_blocks)
            train_index.append(index_arr)
            val_parts.append(val_blocks)

            per_source[source.name] = {
                "weight": source.weight,
                "docs": n_docs,
                "train_docs": n_docs - n_val,
                "val_docs": n_val,
                "tokens": int(len(values)),
                "train_tokens": int(train_tokens),
                "val_tokens": int(val_tokens),
                "blocks": n_blocks,
                "train_blocks": int(len(index_arr)),
                "val_blocks": int(len(val_blocks)),
            }

        eos_id = self.tokenizer.eos_token_id if self.document_masking else None
        self.train_dataset = PackedBlocks(
            np.concatenate(train_parts), np.concatenate(train_index), eos_id=eos_id
        )
        self.val_dataset = PackedBlocks(np.concatenate(val_parts), eos_id=eos_id)
        self._stats = {
            "seq_len": seq_len,
            "train_blocks": len(self.train_dataset),
            "val_blocks": len(self.val_dataset),
            "sources": per_source,
        }

    def stats(self) -> dict[str, Any]:
        """Per-source and total counts (available after :meth:`setup`).

        Returns:
            ``{"seq_len", "train_blocks", "val_blocks", "sources": {name: {...}}}``
            where each source entry has ``weight``, ``docs``/``train_docs``/
            ``val_docs``, ``tokens``/``train_tokens``/``val_tokens`` (eos
            included, before dropping remainders), ``blocks`` (unweighted
            training blocks), ``train_blocks`` (after weighting) and
            ``val_blocks``.

        Raises:
            RuntimeError: If called before :meth:`setup`.
        """
        if self._stats is None:
            raise RuntimeError(
                "CPTDataModule.stats() is available after setup(); call dm.setup('fit') first"
            )
        return json.loads(json.dumps(self._stats))  # deep copy of plain types

    # ------------------------------------------------------------------ loaders

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded, resumable) loader over the weighted training blocks."""
        return self.train_loader(self.train_dataset)

    def val_dataloader(self) -> DataLoader:
        """Loader over the unweighted validation blocks, in order."""
        return self.eval_loader(self.val_dataset)
