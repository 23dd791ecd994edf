"""TRACE's batch in examples: each recipe's effective batch and steps at 1 and 8 devices, the
accumulation derived from it, the errors, and a real fit taking the steps it prints."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import GradientAccumulationScheduler
from make_trace_data import SYNTHETIC_TASK_METRICS, generate_micro_trace

from blockexp.data.records import DataError
from blockexp.trace.batch import (
    BatchPlan,
    check_global_batch,
    plan_batch,
    plan_line,
    set_accumulation,
    steps_per_epoch,
)
from blockexp.trace.callback import TRACECallback
from blockexp.trace.data import TRACEDataModule
from blockexp.training.cli import BlockexpCLI
from blockexp.training.compose import compose_config

REPO = Path(__file__).resolve().parents[1]

#: recipe -> (task, training examples, epochs) -> {devices: the line printed at fit start}.
#: TRACE's tasks hold 5,000 training examples; C-STANCE trains 5 epochs. The micro recipe's
#: Stance task holds 256 and trains 3.
EXPECTED = {
    "full_finetune": {
        1: "TRACE C-STANCE: 5000 examples x 5 epochs, batch 256 (4 per device x 1 device x 64 "
        "accumulation): 20 optimizer steps per epoch, 100 in all",
        8: "TRACE C-STANCE: 5000 examples x 5 epochs, batch 256 (4 per device x 8 devices x 8 "
        "accumulation): 20 optimizer steps per epoch, 100 in all",
    },
    "llama_pro": {
        1: "TRACE C-STANCE: 5000 examples x 5 epochs, batch 256 (4 per device x 1 device x 64 "
        "accumulation): 20 optimizer steps per epoch, 100 in all",
        8: "TRACE C-STANCE: 5000 examples x 5 epochs, batch 256 (4 per device x 8 devices x 8 "
        "accumulation): 20 optimizer steps per epoch, 100 in all",
    },
    "lora": {
        1: "TRACE C-STANCE: 5000 examples x 5 epochs, batch 32 (1 per device x 1 device x 32 "
        "accumulation): 157 optimizer steps per epoch, 785 in all",
        8: "TRACE C-STANCE: 5000 examples x 5 epochs, batch 32 (1 per device x 8 devices x 4 "
        "accumulation): 157 optimizer steps per epoch, 785 in all",
    },
    "micro": {
        1: "TRACE Stance: 256 examples x 3 epochs, batch 16 (16 per device x 1 device x 1 "
        "accumulation): 16 optimizer steps per epoch, 48 in all",
        # 16 per device x 8 devices is more than 16: the header's --data.init_args.batch_size 2
        8: "TRACE Stance: 256 examples x 3 epochs, batch 16 (2 per device x 8 devices x 1 "
        "accumulation): 16 optimizer steps per epoch, 48 in all",
    },
}


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_each_recipe_states_its_batch_and_prints_it_at_1_and_8_devices(recipe):
    path = REPO / "configs" / "trace" / f"{recipe}.yaml"
    data = compose_config(path)["data"]["init_args"]
    task, examples, epochs = ("Stance", 256, 3) if recipe == "micro" else ("C-STANCE", 5000, 5)
    assert data["global_batch_size"] == {"lora": 32, "micro": 16}.get(recipe, 256)
    header = path.read_text().split("defaults:")[0]
    assert f"{data['global_batch_size']} examples per optimizer step" in header
    for devices, line in EXPECTED[recipe].items():
        per_device = data["batch_size"]
        if recipe == "micro" and devices == 8:
            with pytest.raises(DataError, match=r"batch_size 16 x 8 devices = 128"):
                plan_batch(data["global_batch_size"], per_device, devices)
            assert "--data.init_args.batch_size 2" in header
            per_device = 2
        plan = plan_batch(data["global_batch_size"], per_device, devices)
        assert plan.effective == data["global_batch_size"]
        assert plan_line(task, examples, epochs, plan) == line


def test_seqft_prompt_length_is_the_slurm_commands_and_2048_a_flag():
    path = REPO / "configs" / "trace" / "full_finetune.yaml"
    assert compose_config(path)["data"]["init_args"]["max_prompt_len"] == 1024
    assert "--data.init_args.max_prompt_len 2048" in path.read_text()


def test_steps_follow_the_loader_and_lightnings_epoch_end_step():
    # 40 examples, 16 a batch: 3 batches (the last short); accumulation 2: the third batch
    # makes a step of its own at the epoch's end
    assert steps_per_epoch(40, BatchPlan(16, 1, 2)) == 2
    assert steps_per_epoch(40, BatchPlan(16, 1, 2), limit_batches=1) == 1  # int: a cap
    assert steps_per_epoch(40, BatchPlan(16, 1, 2), limit_batches=0.5) == 1  # int(1.5) batches
    assert steps_per_epoch(5, BatchPlan(1, 2, 1)) == 3  # 2 processes read 3 each (one padded)
    assert plan_batch(None, 4, 8, accumulation=3) == BatchPlan(4, 8, 3)  # the trainer's kept
    assert plan_line("T", 4, 1, BatchPlan(4, 1, 64)) == (
        "TRACE T: 4 examples x 1 epoch, batch 256 (4 per device x 1 device x 64 accumulation): "
        "1 optimizer step per epoch, 1 in all"
    )


def test_bad_batches_are_refused_with_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"4 x 3 devices = 12: run on a device count that divides"):
        plan_batch(256, 4, 3)
    with pytest.raises(DataError, match="positive multiple of data.init_args.batch_size 4"):
        check_global_batch(30, 4)
    with pytest.raises(DataError, match="must be an integer"):
        check_global_batch(True, 4)
    generate_micro_trace(tmp_path, tasks=["Stance"], train=4, eval=1, test=1)
    with pytest.raises(DataError, match="global_batch_size 30 must be a positive multiple"):
        TRACEDataModule(
            str(tmp_path),
            tasks=["Stance"],
            task_metrics=SYNTHETIC_TASK_METRICS,
            epochs=1,
            batch_size=4,
            global_batch_size=30,
        )


def test_the_accumulation_is_set_on_the_trainer_for_its_devices():
    # 8 CPU processes: the trainer knows its world size before it launches anything
    eight = L.Trainer(accelerator="cpu", devices=8, strategy="ddp", logger=False)
    assert set_accumulation(eight, 256, 4) == BatchPlan(4, 8, 8)
    assert eight.accumulate_grad_batches == 8
    eight.accumulate_grad_batches = 1
    assert set_accumulation(eight, 32, 1).accumulation == eight.accumulate_grad_batches == 4
    one = L.Trainer(accelerator="cpu", devices=1, logger=False)
    assert set_accumulation(one, None, 4) == BatchPlan(4, 1, 1)  # nothing to derive: kept
    assert set_accumulation(one, 256, 4).accumulation == one.accumulate_grad_batches == 64
    both = L.Trainer(accelerator="cpu", devices=1, logger=False, accumulate_grad_batches=8)
    with pytest.raises(DataError, match=r"both set the batch: drop trainer.accumulate_grad_bat"):
        set_accumulation(both, 256, 4)
    scheduled = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[GradientAccumulationScheduler({0: 2})],
    )
    with pytest.raises(DataError, match="GradientAccumulationScheduler"):
        set_accumulation(scheduled, 32, 4)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_micro_fit_takes_the_optimizer_steps_it_prints(tmp_path, monkeypatch):
    """The micro recipe on one device with 8 examples per step (4 per device: accumulation 2):
    the printed steps are the optimizer steps the trainer takes; 10 examples make 3 batches, the
    last short, and the third batch steps alone at the epoch's end."""
    root = tmp_path / "micro"
    generate_micro_trace(root, tasks=["Stance", "Reverse"], train=10, eval=2, test=2)
    monkeypatch.chdir(tmp_path)
    args = [
        "--config",
        str(REPO / "configs/trace/micro.yaml"),
        "--data.init_args.root",
        str(root),
        "--data.init_args.tasks",
        "[Stance, Reverse]",
        "--data.init_args.epochs",
        "[2, 1]",
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.global_batch_size",
        "8",
        "--data.init_args.max_prompt_len",
        "48",
        "--data.init_args.max_new_tokens",
        "2",
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
        "--trainer.logger",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.callbacks",
        "[]",
        "--trainer.callbacks+=blockexp.trace.callback.TRACECallback",
    ]
    cli = BlockexpCLI(args=args, run=False)
    assert any(isinstance(c, TRACECallback) for c in cli.trainer.callbacks)
    handler = _Lines()
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(handler)
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    finally:
        logger.removeHandler(handler)
    plan = [line for line in handler.lines if " per epoch, " in line]
    assert plan == [
        "TRACE Stance: 10 examples x 2 epochs, batch 8 (4 per device x 1 device x 2 "
        "accumulation): 2 optimizer steps per epoch, 4 in all",
        "TRACE Reverse: 10 examples x 1 epoch, batch 8 (4 per device x 1 device x 2 "
        "accumulation): 2 optimizer steps per epoch, 2 in all",
    ]
    assert cli.trainer.accumulate_grad_batches == 2
    assert cli.trainer.global_step == 4 + 2
