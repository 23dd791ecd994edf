"""The SFT DataModule: instruction files -> conversations -> masked token sequences -> loaders.

See :mod:`blockexp.data.sft.conversations` (record layouts) and :mod:`blockexp.data.sft.encode`
(chat template, assistant-only labels, packing); ``docs/sft.md`` describes the data.
"""

from __future__ import annotations

import os

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from blockexp.data.base import BlockexpDataModule, check_fraction, check_int
from blockexp.data.collate import Collator
from blockexp.data.records import DataError, check_data_file
from blockexp.data.sft.conversations import read_conversations
from blockexp.data.sft.encode import SFTDataset, pack_examples, tokenize_conversations

__all__ = ["SFTDataModule"]


class SFTDataModule(BlockexpDataModule):
    """Supervised fine-tuning data from local JSON / JSONL files.

    Args:
        train_files: files of ShareGPT, messages or instruction records (mixed layouts allowed).
        tokenizer: ``"byte"``, a local tokenizer directory or a Hub id (linked from
            ``model.tokenizer`` by the CLI).
        val_files: held-out files; if empty, ``val_fraction`` of the training records is held out.
        max_length: tokens per example (longer ones are truncated on the right).
        batch_size: examples (or packed rows) per batch.
        packing: pack whole examples into rows of ``max_length`` tokens.
        val_fraction: fraction of training records held out when ``val_files`` is empty.
        chat_template: a Jinja chat template overriding the tokenizer's (and the built-in one).
        num_workers: DataLoader worker processes.
        seed: seed of the validation split and the training shuffle.
        trust_remote_code: forwarded to the tokenizer loader.

    Batches are right-padded ``{"input_ids", "attention_mask", "labels"}`` with -100 labels on
    padding and on every non-assistant token.
    """

    def __init__(
        self,
        train_files: list[str],
        tokenizer: str = "byte",
        val_files: list[str] | None = None,
        max_length: int = 1024,
        batch_size: int = 8,
        packing: bool = False,
        val_fraction: float = 0.05,
        chat_template: str | None = None,
        num_workers: int = 0,
        seed: int = 0,
        trust_remote_code: bool = False,
    ) -> None:
        if isinstance(train_files, str | os.PathLike):
            train_files = [str(train_files)]
        if not train_files:
            raise DataError("train_files must list at least one .json / .jsonl file")
        check_int("max_length", max_length, minimum=2)
        check_fraction("val_fraction", val_fraction)
        for path in [*train_files, *(val_files or [])]:
            check_data_file(path, "SFT data file", (".jsonl", ".json"))
        super().__init__(tokenizer, batch_size, num_workers, seed, trust_remote_code)
        self.save_hyperparameters()
        self.train_files = [str(p) for p in train_files]
        self.val_files = [str(p) for p in (val_files or [])]
        self.max_length = max_length
        self.packing = packing
        self.val_fraction = float(val_fraction)
        self.chat_template = chat_template
        self.train_dataset: SFTDataset | None = None
        self.val_dataset: SFTDataset | None = None
        self.dropped = 0

    def _encode(self, conversations: list[list[dict[str, str]]]) -> SFTDataset:
        examples, dropped = tokenize_conversations(
            self.tokenizer, conversations, self.max_length, self.chat_template
        )
        self.dropped += dropped
        if self.packing:
            examples = pack_examples(examples, self.max_length)
        return SFTDataset(examples)

    def setup(self, stage: str | None = None) -> None:
        """Read, validate, tokenise (and pack) the data; idempotent."""
        if self.train_dataset is not None:
            return
        train = [c for path in self.train_files for c in read_conversations(path)]
        if self.val_files:
            val = [c for path in self.val_files for c in read_conversations(path)]
        else:
            n_val = int(round(self.val_fraction * len(train)))
            if self.val_fraction > 0 and len(train) >= 2:
                n_val = min(max(1, n_val), len(train) - 1)
            order = np.random.default_rng(self.seed).permutation(len(train))
            held = set(order[:n_val].tolist())
            val = [c for i, c in enumerate(train) if i in held]
            train = [c for i, c in enumerate(train) if i not in held]
        self.dropped = 0
        self.train_dataset = self._encode(train)
        self.val_dataset = self._encode(val)
        if self.dropped:
            rank_zero_warn(
                f"{self.dropped} conversations lost every assistant token to truncation at "
                f"max_length={self.max_length} and were dropped"
            )
        if len(self.train_dataset) == 0:
            raise DataError(
                f"no training examples left after truncation to max_length={self.max_length}"
            )

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded, resumable), right-padded training batches."""
        return self.train_loader(self.train_dataset, Collator(self.pad_token_id))

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches (an empty list when there is no validation data)."""
        if self.val_dataset is not None and len(self.val_dataset) == 0:
            return []
        return self.eval_loader(self.val_dataset, Collator(self.pad_token_id))
