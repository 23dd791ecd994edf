"""A training DataLoader that resumes mid-epoch exactly where a checkpoint left off.

Lightning saves the ``state_dict()`` of every stateful training loader in its checkpoints and
calls ``load_state_dict()`` on resume. The order of an epoch is a pure function of
``(seed, epoch)``, so the state is just the epoch and the number of batches the trainer has
consumed in it; on resume the loader replays the same permutation and skips those batches.
Consumed batches are read from the trainer's progress counters, not counted at ``__next__``,
because Lightning prefetches one batch ahead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

__all__ = ["EpochSampler", "ResumableDataLoader"]


class EpochSampler(DistributedSampler):
    """Indices in a permutation that depends only on ``(seed, epoch)``; can skip a prefix.

    With ``num_replicas`` > 1 (data-parallel training) each ``rank`` takes every
    ``num_replicas``-th index of the same permutation, padded by its first indices to a multiple
    of ``num_replicas`` (``DistributedSampler``'s split). It is a ``DistributedSampler`` so that
    Lightning keeps it rather than rebuilding the loader around a sampler of its own (which
    ``ResumableDataLoader`` cannot take, and which would not resume mid-epoch).
    """

    def __init__(
        self, size: int, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0
    ) -> None:
        # DistributedSampler.__init__ wants a dataset and an initialised process group; only
        # the attributes below are read.
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas}).")
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = False
        self.num_samples = math.ceil(size / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.epoch = 0
        self.skip = 0

    def order(self, epoch: int) -> list[int]:
        """This rank's indices of epoch ``epoch``."""
        if not self.shuffle:
            full = list(range(self.size))
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            full = torch.randperm(self.size, generator=generator).tolist()
        if self.num_replicas == 1:
            return full
        full += (full * math.ceil(self.total_size / max(1, len(full))))[
            : self.total_size - self.size
        ]
        return full[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return iter(self.order(self.epoch)[skip:])

    def __len__(self) -> int:
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """DataLoader over an :class:`EpochSampler` with ``state_dict``/``load_state_dict``.

    Args:
        dataset: map-style dataset.
        batch_size: batch size.
        seed: shuffling seed.
        consumed: returns how many batches of the current epoch the trainer has consumed
            (used by :meth:`state_dict`); without it, batches handed out are counted.
        epoch: for a loader made anew every epoch, the trainer's current epoch: every pass
            then uses that epoch's order (Lightning may call ``iter`` more than once per epoch).
            By default passes count epochs from 0.
        num_replicas: data-parallel processes (each reads its own share of every epoch).
        rank: this process's data-parallel rank.
        **kwargs: passed to ``DataLoader`` (``num_workers``, ``collate_fn``, ...).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int = 0,
        consumed: Callable[[], int | None] | None = None,
        epoch: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        **kwargs: Any,
    ) -> None:
        sampler = EpochSampler(
            len(dataset), seed=seed, shuffle=True, num_replicas=num_replicas, rank=rank
        )
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self._consumed = consumed
        self._pinned = epoch
        self._epoch = -1 if epoch is None else epoch - 1  # incremented when an epoch starts
        self._handed_out = 0
        self._resume: dict[str, int] | None = None

    def __iter__(self):
        sampler: EpochSampler = self.sampler  # type: ignore[assignment]
        if self._pinned is not None:
            self._epoch = self._pinned - 1
            if self._resume is not None and self._resume["epoch"] != self._pinned:
                self._resume = None  # the state of another epoch's loader
        if self._resume is not None:
            self._epoch = self._resume["epoch"]
            self._handed_out = self._resume["batches"]
            sampler.skip = self._handed_out * self.batch_size
            self._resume = None
        else:
            self._epoch += 1
            self._handed_out = 0
        sampler.epoch = self._epoch
        return self._count(super().__iter__())

    def _count(self, iterator):
        for batch in iterator:
            self._handed_out += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        batches = self._consumed() if self._consumed is not None else None
        if batches is None:
            batches = self._handed_out
        return {"epoch": max(self._epoch, 0), "batches": int(batches)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
