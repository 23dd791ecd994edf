"""The console stays quiet: importing the stack and building a trainer prints none of the
dependencies' known noise (blockexp.console), and nothing else but Lightning's device lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from blockexp.console import NOISE

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import blockexp
import transformers.modeling_utils  # imports torchao when it is installed
import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities._pytree import _tree_flatten
pl.Trainer(logger=CSVLogger({out!r}), enable_progress_bar=False, max_steps=1,
           enable_checkpointing=False)
_tree_flatten({{"a": [1, 2]}})
"""


def test_importing_the_stack_and_building_a_trainer_is_quiet(tmp_path):
    code = SCRIPT.format(out=str(tmp_path))
    # -W default: every Python warning that is not filtered on purpose would be printed
    cmd = [sys.executable, "-W", "default", "-c", code]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    expected = ("GPU available: ", "TPU available: ")  # Lightning's device summary
    assert all(line.startswith(expected) for line in lines), lines


def test_the_filters_drop_only_their_own_messages():
    import logging

    from blockexp.console import _Drop

    for name, pattern in NOISE:
        drop = _Drop(pattern)
        other = logging.LogRecord(
            name, logging.WARNING, "x", 1, "Failed to load the model", (), None
        )
        assert drop.filter(other), (name, "a different message from the same logger is kept")
    torchao = _Drop(NOISE[0][1])
    noise = "Failed to load /x/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: no"
    record = logging.LogRecord("torchao", logging.WARNING, "x", 1, noise, (), None)
    assert not torchao.filter(record)
