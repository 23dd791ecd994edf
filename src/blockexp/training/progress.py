"""The progress bar of the training commands: Lightning's rich bar, labelled by steps when the run
is limited by steps.

Lightning's :class:`~lightning.pytorch.callbacks.RichProgressBar` labels the training bar
``Epoch e/max_epochs-1``, which reads ``Epoch 3/-2`` on a run limited by ``max_steps`` (where
``max_epochs`` is -1). :class:`StepProgressBar` writes ``Epoch e/E`` only when the epochs bound the
run, and ``Epoch e · step s/max_steps`` (refreshed every batch) when the steps do.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichProgressBar

__all__ = ["StepProgressBar"]


class StepProgressBar(RichProgressBar):
    """:class:`~lightning.pytorch.callbacks.RichProgressBar` whose training label counts steps on
    a step-limited run (see the module docstring)."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
        text = f"Epoch {current_epoch}"
        if max_steps is not None and max_steps > 0:
            text += f" · step {trainer.global_step}/{max_steps}"
        elif max_epochs is not None and max_epochs > 0:
            text += f"/{max_epochs - 1}"
        if len(self.validation_description) > len(text):
            text = f"{text:{len(self.validation_description)}}"
        return text

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        bar = self.train_progress_bar_id
        if self.progress is not None and bar is not None and trainer.max_steps > 0:
            description = self._get_train_description(trainer.current_epoch)
            self.progress.update(bar, description=description)
