"""Experiment tracking: every recipe logs to TensorBoard (one line switches to CSV or W&B), a fit
without a logger does too, and sweep cells are grouped in their tracker with their parameters."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from blockexp.training.compose import compose_args, compose_config
from blockexp.training.tracking import TrackParams, sweep_logger_overrides
from tests.test_configs import SHIPPED_RECIPES

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
RECIPES = [CONFIGS / name for name in SHIPPED_RECIPES]  # by list: a user's own config is not
TB = "lightning.pytorch.loggers.TensorBoardLogger"
CSV = "lightning.pytorch.loggers.CSVLogger"
WANDB = "lightning.pytorch.loggers.WandbLogger"
MLFLOW = "lightning.pytorch.loggers.MLFlowLogger"


# ------------------------------------------------------------------------------ the configs
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_recipe_logs_to_tensorboard_in_its_run_directory(recipe):
    trainer = compose_config(recipe)["trainer"]
    assert trainer["logger"] == {
        "class_path": TB,
        "init_args": {
            "save_dir": trainer["default_root_dir"],
            "name": "tb",
            "default_hp_metric": False,
        },
    }


def test_one_line_switches_the_logger(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    quickstart = CONFIGS / "quickstart.yaml"
    csv = compose_config(quickstart, {"logger": "csv"})["trainer"]["logger"]
    assert csv == {
        "class_path": CSV,
        "init_args": {"save_dir": "outputs/quickstart", "name": "logs"},
    }
    wandb = compose_config(quickstart, {"logger": "wandb"})["trainer"]["logger"]
    assert wandb == {
        "class_path": WANDB,
        "init_args": {
            "project": "blockexp",
            "save_dir": "outputs/quickstart",
            "offline": False,
            "log_model": False,
        },
    }
    # on the command line; the parser takes the W&B logger whether or not wandb is installed
    parsed, _ = compose_args(["fit", "--config", str(quickstart), "logger=wandb"])
    assert yaml.safe_load(parsed[2])["trainer"]["logger"]["class_path"] == WANDB
    from blockexp.training.cli import BlockexpCLI

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        BlockexpCLI(args=["fit", "--config", str(quickstart), "logger=wandb", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)["trainer"]["logger"]
    assert printed["class_path"] == WANDB and printed["init_args"]["project"] == "blockexp"


def test_a_logger_without_its_package_is_a_clear_error(tmp_path, capsys, monkeypatch):
    """W&B chosen without the wandb package: one line naming the extra, before anything runs."""
    from blockexp.cli import main
    from blockexp.training import tracking

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(tracking, "_installed", lambda package: package not in ("wandb", "mlflow"))
    root = tmp_path / "run"
    args = ["fit", "--config", "configs/quickstart.yaml", "logger=wandb"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--trainer.default_root_dir", str(root), "--trainer.max_steps", "1"])
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.splitlines()[0]
    assert line == (
        "error: trainer.logger WandbLogger needs the wandb package, which is not installed: "
        "pip install -e '.[wandb]' (or log to TensorBoard: logger=tensorboard)"
    )
    assert not root.exists()
    # a list of loggers, as parsed (namespaces) or as configured (mappings)
    mlflow = SimpleNamespace(class_path=MLFLOW)
    with pytest.raises(ValueError, match="MLFlowLogger needs the mlflow package"):
        tracking.check_logger_installed([{"class_path": TB}, mlflow])
    tracking.check_logger_installed([{"class_path": TB}, None, True, False])


# ------------------------------------------------------------------- sweep_logger_overrides
def test_sweep_logger_overrides_group_a_cell_in_each_tracker(tmp_path):
    params = {"lr": 0.001, "seed": 0}
    tb = {"class_path": TB, "init_args": {"save_dir": "outputs/x", "name": "tb"}}
    kept = json.dumps(tb)
    assert sweep_logger_overrides(tb, "lr", "lr=0.001,seed=0", params) == {
        "trainer.logger": {
            "class_path": TB,
            "init_args": {"save_dir": "outputs/x", "name": "tb", "version": ""},
        }
    }
    assert json.dumps(tb) == kept  # the given config is not changed
    cell_dir = tmp_path / "cells" / "c"
    csv = sweep_logger_overrides({"class_path": CSV, "init_args": {}}, "s", "c", {}, cell_dir)
    assert csv["trainer.logger"]["init_args"] == {"version": "", "save_dir": str(cell_dir)}
    wandb = sweep_logger_overrides({"class_path": WANDB}, "s", "c", params, cell_dir)
    assert wandb["trainer.logger"]["init_args"] == {
        "group": "s",
        "name": "c",
        "tags": ["s", "lr=0.001", "seed=0"],
        "save_dir": str(cell_dir),
    }
    mlflow = {"class_path": MLFLOW, "init_args": {"save_dir": "./mlruns"}}
    assert sweep_logger_overrides(mlflow, "s", "c", params, cell_dir)["trainer.logger"] == {
        "class_path": MLFLOW,
        "init_args": {
            "save_dir": "./mlruns",  # MLflow's store, not the run directory
            "experiment_name": "s",
            "run_name": "c",
            "tags": {"sweep": "s", "cell": "c"},
        },
    }
    # a list: each logger grouped, others kept; by class name alone
    other = {"class_path": "my.loggers.Other", "init_args": {"a": 1}}
    both = sweep_logger_overrides([other, "TensorBoardLogger"], "s", "c", params)
    assert both == {
        "trainer.logger": [other, {"class_path": "TensorBoardLogger", "init_args": {"version": ""}}]
    }
    # no logger configured: the default TensorBoard logger, under the cell's directory
    assert sweep_logger_overrides(None, "s", "c", params, cell_dir)["trainer.logger"] == {
        "class_path": TB,
        "init_args": {
            "name": "tb",
            "default_hp_metric": False,
            "version": "",
            "save_dir": str(cell_dir),
        },
    }
    # nothing to change
    assert sweep_logger_overrides(False, "s", "c", params) == {}
    assert sweep_logger_overrides(other, "s", "c", params) == {}
    # W&B tags are at most 64 characters
    long = sweep_logger_overrides({"class_path": WANDB}, "s", "c", {"text": "x" * 100})
    assert [len(t) for t in long["trainer.logger"]["init_args"]["tags"]] == [1, 64]


def test_sweep_logger_overrides_errors():
    with pytest.raises(ValueError, match="pass root_dir"):
        sweep_logger_overrides(None, "s", "c", {})
    with pytest.raises(ValueError, match="cell must be a non-empty name"):
        sweep_logger_overrides(False, "s", "", {})
    with pytest.raises(ValueError, match="sweep must be a non-empty name"):
        sweep_logger_overrides(False, None, "c", {})
    with pytest.raises(ValueError, match=r"trainer.logger entry \{'init_args': \{\}\} is not a"):
        sweep_logger_overrides({"init_args": {}}, "s", "c", {})


# ------------------------------------------------------------------------------ TrackParams
def test_track_params_records_the_cell_in_every_logger(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="logs", version="")
    track = TrackParams({"lr": 0.01, "layers": [2, 5], "note": None}, sweep="s", cell="c")
    track.on_fit_start(SimpleNamespace(loggers=[logger], is_global_zero=True), None)
    logger.save()
    saved = yaml.safe_load((tmp_path / "logs" / "hparams.yaml").read_text())
    assert saved == {"sweep": "s", "cell": "c", "lr": 0.01, "layers": "[2, 5]", "note": "None"}
    with pytest.raises(ValueError, match="parameter 'cell' clashes with the cell name"):
        TrackParams({"cell": 1}, cell="c")
    with pytest.raises(ValueError, match="params must be a mapping"):
        TrackParams([1])
    assert TrackParams({"cell": 1}).params == {"cell": 1}  # no clash without a cell id


# ------------------------------------------------------------------------- real tiny fits
def _fit(tmp_path: Path, root: Path, *, logger: bool, args: tuple[str, ...] = ()) -> None:
    """A 4-step fit of the quickstart pieces into ``root`` (with the TensorBoard logger piece, or
    with no logger configured)."""
    from blockexp.cli import main

    recipe = {
        "defaults": [
            {"model": "tiny_llama"},
            {"expander": "llama_pro"},
            {"data": "quickstart"},
            {"trainer": "cpu"},
            *([{"logger": "tensorboard"}] if logger else []),
        ],
        "trainer": {
            "default_root_dir": str(root),
            "max_steps": 4,
            "log_every_n_steps": 1,
            "val_check_interval": 2,
            "check_val_every_n_epoch": None,
            "limit_val_batches": 1,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
        },
        "model": {"validate_before_fit": False},
        "data": {"init_args": {"seq_len": 32, "batch_size": 2}},
    }
    path = tmp_path / f"{root.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    main(["fit", "--config", str(path), *args])


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir)).Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def _check_losses(scalars: dict[str, list[tuple[int, float]]]) -> None:
    assert [step for step, _ in scalars["train_loss"]] == [0, 1, 2, 3]
    assert len(scalars["val_loss"]) == 2
    assert all(math.isfinite(v) and v > 0 for _, v in scalars["train_loss"] + scalars["val_loss"])


def test_fit_without_a_logger_logs_to_tensorboard(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the quickstart corpus paths are relative to the repository
    root = tmp_path / "run"
    _fit(tmp_path, root, logger=False)
    assert [p.name for p in (root / "tb").iterdir()] == ["version_0"]
    _check_losses(_scalars(root / "tb" / "version_0"))


def test_sweep_cells_are_grouped_in_tensorboard(tmp_path, monkeypatch):
    """Two cells of a sweep, as a sweep runs them: the composed logger changed by
    sweep_logger_overrides, TrackParams added. TensorBoard over the sweep's directory lists one
    run per cell, each with its losses and a session of the HPARAMS tab holding its params."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import metadata

    monkeypatch.chdir(REPO)
    sweep = tmp_path / "sweep"
    for lr in (0.01, 0.001):
        cell, params = f"lr={lr}", {"lr": lr}
        root = sweep / "cells" / cell
        logger = {"class_path": TB, "init_args": {"save_dir": str(root), "name": "tb"}}
        changes = sweep_logger_overrides(logger, "lr_sweep", cell, params, root)
        track = {
            "class_path": "blockexp.training.tracking.TrackParams",
            "init_args": {"params": params, "sweep": "lr_sweep", "cell": cell},
        }
        args = ("--trainer.logger", json.dumps(changes["trainer.logger"]))
        args += ("--trainer.callbacks+", json.dumps(track), "--model.optim.lr", str(lr))
        _fit(tmp_path, root, logger=True, args=args)
        assert not list((root / "tb").glob("version_*"))  # one run per cell, in cells/<cell>/tb
        _check_losses(_scalars(root / "tb"))
        saved = yaml.safe_load((root / "tb" / "hparams.yaml").read_text())
        assert saved["lr"] == lr and saved["cell"] == cell and saved["sweep"] == "lr_sweep"

    runs = EventMultiplexer().AddRunsFromDirectory(str(sweep))
    runs.Reload()
    assert sorted(runs.Runs()) == ["cells/lr=0.001/tb", "cells/lr=0.01/tb"]
    sessions = {}
    for run, tags in runs.PluginRunToTagToContent(metadata.PLUGIN_NAME).items():
        start = metadata.parse_session_start_info_plugin_data(tags[metadata.SESSION_START_INFO_TAG])
        values = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
        sessions[run] = (start.group_name, values)
    assert sessions == {
        "cells/lr=0.01/tb": ("lr=0.01", {"sweep": "lr_sweep", "cell": "lr=0.01", "lr": 0.01}),
        "cells/lr=0.001/tb": ("lr=0.001", {"sweep": "lr_sweep", "cell": "lr=0.001", "lr": 0.001}),
    }


def test_wandb_logger_takes_the_cell_grouping(tmp_path, monkeypatch):
    """With wandb installed (the `wandb` extra), offline: the grouped init_args reach the run."""
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    piece = compose_config(CONFIGS / "quickstart.yaml", {"logger": "wandb"})["trainer"]["logger"]
    changes = sweep_logger_overrides(piece, "lr_sweep", "lr=0.01", {"lr": 0.01}, tmp_path)
    logger = WandbLogger(offline=True, **changes["trainer.logger"]["init_args"])
    try:
        TrackParams({"lr": 0.01}, sweep="lr_sweep", cell="lr=0.01").on_fit_start(
            SimpleNamespace(loggers=[logger], is_global_zero=True), None
        )
        run = logger.experiment
        assert (run.group, run.name, run.project) == ("lr_sweep", "lr=0.01", "blockexp")
        assert "lr_sweep" in run.tags and "lr=0.01" in run.tags
        assert run.config["lr"] == 0.01 and run.config["cell"] == "lr=0.01"
    finally:
        logger.experiment.finish()
