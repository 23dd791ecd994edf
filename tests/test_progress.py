"""The training progress bar's label: steps on a step-limited run, epochs on an epoch-limited one
(never Lightning's ``Epoch 3/-2``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from blockexp.training.progress import StepProgressBar


@pytest.mark.parametrize(
    "max_epochs, max_steps, label",
    [
        (-1, 200, "Epoch 3 · step 57/200"),  # step-limited: Lightning wrote "Epoch 3/-2"
        (None, 200, "Epoch 3 · step 57/200"),
        (5, -1, "Epoch 3/4"),  # epoch-limited
        (5, 200, "Epoch 3 · step 57/200"),  # both: the steps are the finer bound
        (None, -1, "Epoch 3"),
    ],
)
def test_train_label(max_epochs, max_steps, label):
    bar = StepProgressBar()
    trainer = SimpleNamespace(max_epochs=max_epochs, max_steps=max_steps, global_step=57)
    bar._trainer = trainer
    assert bar._get_train_description(3).strip() == label
    assert "/-" not in bar._get_train_description(3)


def test_the_cli_trains_with_it(tmp_path, monkeypatch):
    from blockexp.cli import main
    from tests.test_faults import REPO, _quick_fit

    monkeypatch.chdir(REPO)
    cli = main([*_quick_fit(tmp_path / "run"), "--trainer.max_steps", "2"])
    bars = [c for c in cli.trainer.callbacks if isinstance(c, StepProgressBar)]
    assert len(bars) == 1 and cli.trainer.global_step == 2
