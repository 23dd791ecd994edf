"""Experiment tracking: the default logger, sweep cells grouped in their tracker, their parameters
recorded as hyper-parameters.

A fit logs to TensorBoard unless its config names another logger (``configs/logger/``,
``logger=csv`` or ``logger=wandb``): event files under ``<default_root_dir>/tb/``, no server, and
each run's files stay in its own directory. A sweep groups its cells with
:func:`sweep_logger_overrides` (TensorBoard and CSV: one run per cell, named by its directory,
e.g. ``cells/<cell>/tb`` under the sweep's; W&B: ``group`` = sweep, ``name`` = cell; MLflow:
``experiment_name`` = sweep, ``run_name`` = cell) and adds :class:`TrackParams`, which records the
cell's parameters where the tracker compares runs (TensorBoard's HPARAMS tab, W&B's config,
MLflow's params). docs/tracking.md shows how to view and switch.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from lightning.pytorch.callbacks import Callback

__all__ = ["TrackParams", "check_logger_installed", "default_logger", "sweep_logger_overrides"]

TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"
#: the directory, under ``default_root_dir``, of the TensorBoard logs (``configs/logger/``)
TENSORBOARD_NAME = "tb"
#: the optional package a logger class needs, and how to install it
OPTIONAL = {
    "WandbLogger": ("wandb", "pip install -e '.[wandb]'"),
    "MLFlowLogger": ("mlflow", "pip install mlflow"),
}


def _installed(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


def check_logger_installed(logger: Any) -> None:
    """Refuse, before anything is built, a configured logger whose package is missing.

    Args:
        logger: the parsed ``trainer.logger``: a spec with a ``class_path`` (mapping or
            namespace), a list of them, or a bool/None.

    Raises:
        UsageError: the logger, the package it needs and the command that installs it.
    """
    from blockexp.errors import UsageError

    for spec in logger if isinstance(logger, list) else [logger]:
        if isinstance(spec, dict):
            class_path = spec.get("class_path")
        else:
            class_path = getattr(spec, "class_path", None)  # a parsed Namespace, or a bool/None
        name = class_path.rpartition(".")[2] if isinstance(class_path, str) else None
        if name in OPTIONAL and not _installed(OPTIONAL[name][0]):
            package, install = OPTIONAL[name]
            raise UsageError(
                f"trainer.logger {name} needs the {package} package, which is not installed: "
                f"{install} (or log to TensorBoard: logger=tensorboard)"
            )


def default_logger(root_dir: str | os.PathLike | None) -> Any:
    """The logger of a fit whose config names none: TensorBoard under ``<root_dir>/tb``
    (``root_dir`` None: the working directory, as Lightning's ``default_root_dir``)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    save_dir = os.getcwd() if root_dir is None else root_dir
    return TensorBoardLogger(save_dir=save_dir, name=TENSORBOARD_NAME, default_hp_metric=False)


def _grouping(kind: str, sweep: str, cell: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The ``init_args`` that file a cell under its sweep in a logger of class ``kind``."""
    if kind in ("TensorBoardLogger", "CSVLogger"):
        # A fixed version: the run's directory is <save_dir>/<name> (cells/<cell>/tb in a sweep),
        # one run per cell however often it resumes.
        return {"version": ""}
    if kind == "WandbLogger":
        tags = [sweep, *(f"{k}={v}" for k, v in params.items())]
        return {"group": sweep, "name": cell, "tags": [t[:64] for t in tags]}  # W&B: <= 64 chars
    if kind == "MLFlowLogger":
        return {"experiment_name": sweep, "run_name": cell, "tags": {"sweep": sweep, "cell": cell}}
    return None


def _grouped(
    spec: Any, sweep: str, cell: str, params: dict[str, Any], root_dir: str | None
) -> tuple[Any, bool]:
    """One logger spec with the cell's grouping merged into its ``init_args``; whether it changed."""
    if isinstance(spec, str):
        spec = {"class_path": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("class_path"), str):
        raise ValueError(
            f"trainer.logger entry {spec!r} is not a logger spec; give a mapping with class_path "
            "and init_args (configs/logger/ has examples)"
        )
    kind = spec["class_path"].rpartition(".")[2]
    changes = _grouping(kind, sweep, cell, params)
    if changes is None:  # a tracker without a grouping here: left as configured
        return spec, False
    if root_dir is not None and kind != "MLFlowLogger":  # MLflow's save_dir is its store
        changes["save_dir"] = root_dir
    out = copy.deepcopy(spec)
    out["init_args"] = {**(out.get("init_args") or {}), **changes}
    return out, True


def sweep_logger_overrides(
    logger: Any,
    sweep: str,
    cell: str,
    params: dict[str, Any],
    root_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The config changes that file one sweep cell under its sweep in the tracker it logs to.

    Args:
        logger: the composed config's ``trainer.logger``: a ``{class_path, init_args}`` mapping
            (or its class path alone), a list of them, or None/True (the default, TensorBoard).
        sweep: the sweep's name (W&B ``group``, MLflow ``experiment_name``).
        cell: the cell's id (W&B ``name``, MLflow ``run_name``).
        params: the cell's parameters (W&B tags ``axis=value``).
        root_dir: the cell's run directory (its ``trainer.default_root_dir``); given, the loggers
            save there (``save_dir``; MLflow keeps its store). Needed when ``logger`` is None.

    Returns:
        ``{"trainer.logger": <the new value>}``, or ``{}`` when nothing changes (``logger`` False,
        or only trackers without a grouping here). TensorBoard and CSV get a fixed ``version``
        (""), so each cell is one run in ``<root_dir>/<name>`` whatever it resumes from, and
        ``tensorboard --logdir <sweep dir>`` lists the runs as ``cells/<cell>/tb``.

    Raises:
        ValueError: an empty sweep or cell, a malformed logger spec, or no ``root_dir`` for the
            default logger.
    """
    for what, value in (("sweep", sweep), ("cell", cell)):
        if not isinstance(value, str) or not value:
            raise ValueError(
                f"sweep_logger_overrides: {what} must be a non-empty name, not {value!r}"
            )
    root = None if root_dir is None else os.fspath(root_dir)
    if logger is False:
        return {}
    if logger is None or logger is True:
        if root is None:
            raise ValueError(
                "sweep_logger_overrides: the config names no logger (the default TensorBoard "
                "logger writes under the cell's run directory): pass root_dir"
            )
        init_args = {"name": TENSORBOARD_NAME, "default_hp_metric": False}
        logger = {"class_path": TENSORBOARD, "init_args": init_args}
    specs = logger if isinstance(logger, list) else [logger]
    grouped = [_grouped(spec, sweep, cell, dict(params), root) for spec in specs]
    if not any(changed for _, changed in grouped):
        return {}
    new = [spec for spec, _ in grouped]
    return {"trainer.logger": new if isinstance(logger, list) else new[0]}


def _plain(value: Any) -> bool | int | float | str:
    """A hyper-parameter value every tracker stores: a scalar as it is, anything else as text."""
    return value if isinstance(value, bool | int | float | str) else str(value)


class TrackParams(Callback):
    """Records a sweep cell's parameters as hyper-parameters in every logger, at fit start.

    TensorBoard gets a session of its HPARAMS tab (the cell id as its group name), so
    ``tensorboard --logdir <sweep dir>`` tabulates every cell's parameters against the last value
    of each of its scalars (``train_loss``, ``val_loss``, ...); W&B gets them in the run's config,
    MLflow as params, CSV in ``hparams.yaml``. Each value is kept if a bool, number or string,
    else written as text.

    Args:
        params: the cell's parameters (``{axis: value or label}``).
        sweep: the sweep's name, recorded as the ``sweep`` parameter when given.
        cell: the cell's id, recorded as ``cell`` when given.
    """

    def __init__(
        self, params: dict[str, Any], sweep: str | None = None, cell: str | None = None
    ) -> None:
        if not isinstance(params, dict):
            raise ValueError(f"TrackParams: params must be a mapping, not {params!r}")
        named = {"sweep": sweep, "cell": cell}
        clash = sorted(k for k, v in named.items() if v is not None and k in params)
        if clash:
            raise ValueError(
                f"TrackParams: parameter {clash[0]!r} clashes with the {clash[0]} name; rename "
                "that axis"
            )
        self.cell = cell
        given = {k: v for k, v in named.items() if v is not None}
        self.params = {str(k): _plain(v) for k, v in {**given, **params}.items()}

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # Lightning's log_hyperparams writes a TensorBoard session only with metric
                # values (it logs a placeholder hp_metric); a session alone needs none: the tab
                # reads each run's own scalars.
                logger.hparams.update(self.params)  # hparams.yaml
                if trainer.is_global_zero:
                    from tensorboard.plugins.hparams.summary_v2 import hparams_pb

                    session = hparams_pb(self.params, trial_id=self.cell)
                    logger.experiment._get_file_writer().add_summary(session)
            else:
                logger.log_hyperparams(self.params)
