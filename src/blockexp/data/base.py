"""What every blockexp DataModule shares: tokenizer, argument checks and loaders.

A new dataset subclasses :class:`BlockexpDataModule`, builds its datasets in ``setup`` and
returns :meth:`~BlockexpDataModule.train_loader` / :meth:`~BlockexpDataModule.eval_loader` from
its ``*_dataloader`` hooks; ``docs/data.md`` walks through one.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from blockexp.data.loader import ResumableDataLoader
from blockexp.data.records import DataError
from blockexp.io.tokenization import load_tokenizer

__all__ = ["BlockexpDataModule", "check_fraction", "check_int"]


def check_int(
    name: str, value: Any, minimum: int = 1, allow_none: bool = False, why: str = ""
) -> None:
    """Raise :class:`DataError` unless ``value`` is an integer ``>= minimum`` (or None if
    allowed), naming the argument (and ``why`` the bound is what it is)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = f"an integer >= {minimum}" + (f" ({why})" if why else "")
        raise DataError(f"{name} must be {'None or ' if allow_none else ''}{kind}, got {value!r}")


def check_fraction(name: str, value: Any, hint: str = "") -> float:
    """``value`` as a float in ``[0, 1)``, or :class:`DataError` naming the argument (and
    ``hint``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise DataError(f"{name} must be in [0, 1), got {value!r}" + (f" ({hint})" if hint else ""))
    return float(value)


class BlockexpDataModule(L.LightningDataModule):
    """Base of the blockexp DataModules.

    Args:
        tokenizer: ``"byte"``, a local tokenizer directory or a hub id (linked from
            ``model.tokenizer`` by the CLI).
        batch_size: training batch size.
        num_workers: DataLoader worker processes.
        seed: seed of the training order (and of whatever else the subclass samples).
        trust_remote_code: forwarded to the tokenizer loader.

    Attributes:
        reload_every_epoch: the subclass makes a new training loader every epoch (the trainer
            reloads it); its order is then pinned to the trainer's current epoch.
    """

    reload_every_epoch: bool = False

    def __init__(
        self,
        tokenizer: str = "byte",
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        check_int("batch_size", batch_size)
        check_int("num_workers", num_workers, minimum=0)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.tokenizer_spec = tokenizer
        self.trust_remote_code = trust_remote_code
        self.tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)

    # -------------------------------------------------------------------------- tokens
    @property
    def pad_token_id(self) -> int:
        """The padding id: pad, else unk, else eos."""
        for token_id in (
            self.tokenizer.pad_token_id,
            self.tokenizer.unk_token_id,
            self.tokenizer.eos_token_id,
        ):
            if token_id is not None:
                return token_id
        raise DataError("the tokenizer has no pad, unk or eos token to pad with")

    # -------------------------------------------------------------------------- loaders
    def _worker_options(self) -> dict[str, Any]:
        if self.num_workers > 0:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}

    def train_loader(self, dataset: Dataset | None, collate_fn=None) -> DataLoader:
        """The shuffled training loader: its order is a function of ``(seed, epoch)`` and it
        resumes mid-epoch from a Lightning checkpoint with the batches an uninterrupted run
        would have seen."""
        if dataset is None:
            raise RuntimeError("datasets are built in setup(); call dm.setup('fit') first")
        trainer = getattr(self, "trainer", None)
        epoch = None
        if self.reload_every_epoch:
            epoch = trainer.current_epoch if trainer is not None else 0
        # data-parallel share: {} on one device; num_replicas and rank under DDP/FSDP
        shard = getattr(getattr(trainer, "strategy", None), "distributed_sampler_kwargs", None)
        return ResumableDataLoader(
            dataset,
            self.batch_size,
            seed=self.seed,
            consumed=self._batches_consumed,
            epoch=epoch,
            num_replicas=int((shard or {}).get("num_replicas", 1)),
            rank=int((shard or {}).get("rank", 0)),
            collate_fn=collate_fn,
            drop_last=False,
            **self._worker_options(),
        )

    def eval_loader(
        self, dataset: Dataset | None, collate_fn=None, batch_size: int | None = None
    ) -> DataLoader:
        """A loader over ``dataset`` in order (validation, test)."""
        if dataset is None:
            raise RuntimeError("datasets are built in setup(); call dm.setup('fit') first")
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            shuffle=False,
            collate_fn=collate_fn,
            drop_last=False,
            **self._worker_options(),
        )

    def _batches_consumed(self) -> int | None:
        """Training batches of the current epoch the trainer has finished (for resuming)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return None
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed
