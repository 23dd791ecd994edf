"""Wall time of each training step, for experiments that compare strategies."""

from __future__ import annotations

import statistics
import time

import lightning as L


class StepTimer(L.Callback):
    """Record the wall time of every training step (forward, backward, optimizer step).

    ``mean_ms`` is the mean over the steps after the first ``skip`` warm-up steps (or over all
    steps when there are no more than ``skip``).
    """

    def __init__(self, skip: int = 5) -> None:
        self.skip = skip
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._start)

    @property
    def mean_ms(self) -> float:
        times = self.times[self.skip :] or self.times
        return 1000.0 * statistics.fmean(times) if times else float("nan")
