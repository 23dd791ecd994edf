"""Guards of a fit's directories: outputs never over inputs, no fresh run over an earlier one.

The module checks them at ``setup``/``on_fit_start``; :class:`blockexp.training.cli.BlockexpCLI`
checks them again before anything (validation, the data module) writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blockexp.training.settings import Settings

__all__ = ["check_export_target", "check_run_dirs", "hold_run_dirs", "run_dirs", "run_inputs"]


def run_dirs(trainer: Any) -> list[Path]:
    """This run's directories: what an export must never replace."""
    dirs = [Path(trainer.default_root_dir)]
    dirs += [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if cb.dirpath]
    dirs += [Path(lg.log_dir) for lg in trainer.loggers if getattr(lg, "log_dir", None)]
    return dirs


def run_inputs(settings: Settings, trainer: Any, datamodule: Any = None) -> list[Any]:
    """What this run reads: the base, the tokenizer, the checkpoint it resumes from, and every
    path the data module's hyper-parameters name (no output may replace them)."""
    from blockexp.io.inputs import paths_in

    datamodule = datamodule or getattr(trainer, "datamodule", None)
    data = paths_in(dict(getattr(datamodule, "hparams", {}) or {}))
    return [settings.base, settings.tokenizer, trainer.ckpt_path, *data]


def check_export_target(settings: Settings, trainer: Any, datamodule: Any = None) -> None:
    """Refuse, before anything runs, an export target that the end of the run may not write,
    and a run directory inside (or equal to) an input."""
    from blockexp.io.inputs import check_outside_inputs
    from blockexp.io.outputs import check_output_dir

    inputs = [p for p in run_inputs(settings, trainer, datamodule) if isinstance(p, str | Path)]
    for folder in run_dirs(trainer):
        check_outside_inputs(folder, inputs, flag="--trainer.default_root_dir (and dirpath)")
    output = settings.output
    if output.export_dir:
        check_output_dir(
            output.export_dir,
            protect=inputs,
            keep_away=run_dirs(trainer),
            overwrite=output.export_overwrite,
            overwrite_hint="set --model.output.export_overwrite true",
        )


def check_run_dirs(trainer: Any, resuming: bool | None = None) -> None:
    """Refuse a fresh run into checkpoint directories of an earlier one (resuming needs
    ``--ckpt_path``; a fresh run there would write ``last-v1.ckpt`` beside the old
    ``last.ckpt``, which resume commands would then pick)."""
    resuming = trainer.ckpt_path is not None if resuming is None else resuming
    if resuming or trainer.fast_dev_run:
        return
    for callback in trainer.checkpoint_callbacks:
        folder = Path(callback.dirpath) if callback.dirpath else None
        found = sorted(p.name for p in folder.glob("*.ckpt")) if folder and folder.is_dir() else []
        if found:
            from blockexp.io.inputs import OutputExistsError

            raise OutputExistsError(
                f"{folder} already holds checkpoints of an earlier run ({', '.join(found[:3])}). "
                f"Resume it with --ckpt_path {folder / 'last.ckpt'}, or start a new run in "
                "another directory (--trainer.default_root_dir and the checkpoint dirpath), "
                "or remove the old checkpoints."
            )


def hold_run_dirs(settings: Settings, trainer: Any) -> list[Path]:
    """Lock this fit's directories against other processes until they are released (global rank
    0; taking a lock this process holds is a no-op) and drop temporaries dead runs left in its
    checkpoint directories (:func:`blockexp.io.locks.hold_run_dirs`); returns the locks."""
    from blockexp.io.locks import hold_run_dirs as hold

    return hold(trainer, settings.output.export_dir)
