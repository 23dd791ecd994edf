"""A cell's fit config: the recipe composed with the cell's overrides, in the cell's directory.

The result is one self-contained YAML file (``cells/<id>/cell.yaml``: no ``defaults``, every
interpolation resolved) that ``python -m blockexp fit --config`` runs as it is, so any cell can be
re-run or resumed by hand. On top of the recipe, the cell gets:

* ``seed`` as ``seed_everything``, the data module's ``seed`` (its shuffling order) and the
  module's (an inline random base's weights);
* ``trainer.default_root_dir`` = the cell's directory, set *before* interpolations resolve, so
  ``${trainer.default_root_dir}/checkpoints`` and the like follow it;
* a ``ModelCheckpoint`` saving ``last.ckpt`` every ``checkpoint_every`` steps when the recipe
  has none (an interrupted cell resumes from it);
* the sweep's evaluations as callbacks: ``HeldoutLoss`` (``evaluate.heldout``) and
  ``GeneralEval`` (``evaluate.lmeval``, in place of a ``GeneralEval`` the recipe has);
* ``TrackParams`` (the cell's values as hyper-parameters of every logger) and the logger's
  grouping under the sweep name (:func:`blockexp.training.tracking.sweep_logger_overrides`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from blockexp.errors import UsageError
from blockexp.sweep.grid import Cell, split_overrides
from blockexp.sweep.spec import SweepSpec

__all__ = ["build_cell_config", "cell_yaml", "checkpoint_dirpaths", "dotted_set"]

_CLASS_KEYS = ("class_path", "init_args", "dict_kwargs")
CHECKPOINT = "lightning.pytorch.callbacks.ModelCheckpoint"
HELDOUT = "blockexp.evaluation.heldout.HeldoutLoss"
GENERAL = "blockexp.evaluation.general.GeneralEval"
TRACK = "blockexp.training.tracking.TrackParams"


def _is_class(node: Any) -> bool:
    from omegaconf import DictConfig

    return isinstance(node, DictConfig) and "class_path" in node


def dotted_set(config: Any, key: str, value: Any) -> None:
    """Set ``key`` (dotted) in an OmegaConf config; a key below a ``class_path`` node reaches its
    ``init_args`` (``model.expander.r`` is ``model.expander.init_args.r``); a mapping with its own
    ``class_path`` replaces the node, another mapping merges into it."""
    from omegaconf import DictConfig, OmegaConf

    parts = key.split(".")
    node = config
    for i, part in enumerate(parts):
        if isinstance(node, str) and i:  # a bare class path given a sub-key
            parent = _walk(config, parts[: i - 1])
            parent[parts[i - 1]] = {"class_path": node, "init_args": {}}
            node = parent[parts[i - 1]]
        if _is_class(node) and part not in _CLASS_KEYS:
            if node.get("init_args") is None:
                node.init_args = {}
            node = node.init_args
        if i == len(parts) - 1:
            old = node.get(part) if isinstance(node, DictConfig) else None
            if (
                isinstance(value, dict)
                and isinstance(old, DictConfig)
                and "class_path" not in value
            ):
                node[part] = OmegaConf.merge(old, value)
            else:
                node[part] = value
            return
        if not isinstance(node, DictConfig):
            raise UsageError(f"override {key}: {'.'.join(parts[:i])} is not a mapping")
        if node.get(part) is None:
            node[part] = {}
        node = node[part]


def _walk(config: Any, parts: list[str]) -> Any:
    node = config
    for part in parts:
        node = node.init_args[part] if _is_class(node) and part not in _CLASS_KEYS else node[part]
    return node


def _callbacks(config: Any) -> Any:
    if config.get("trainer") is None:
        config.trainer = {}
    if config.trainer.get("callbacks") is None:
        config.trainer.callbacks = []
    return config.trainer.callbacks


def _named(callbacks: Any, suffix: str) -> list[int]:
    return [
        i
        for i, cb in enumerate(callbacks)
        if str(cb.get("class_path", "") if hasattr(cb, "get") else cb).endswith(suffix)
    ]


def _seed_all(config: Any, seed: Any) -> None:
    """A cell's ``seed`` also seeds its data module (shuffling order; with a validation fraction,
    the held-out split), as ``transformers.Trainer``'s ``seed`` does, and the module's ``seed``
    (the weights of an inline random base), when they take one (blockexp's do)."""
    data = config.get("data")
    if _is_class(data):
        init_args = data.get("init_args") or {}
        if "seed" in init_args or str(data.class_path).startswith("blockexp."):
            dotted_set(config, "data.init_args.seed", seed)
    model = config.get("model")
    if model is not None and not _is_class(model):  # blockexp's module (LightningCLI's model)
        dotted_set(config, "model.seed", seed)


def _editor(spec: SweepSpec, cell: Cell, cell_dir: Path, dotted: dict[str, Any]):
    def edit(config: Any) -> None:
        from blockexp.training.tracking import sweep_logger_overrides

        dotted_set(config, "trainer.default_root_dir", str(cell_dir))
        if "trainer.enable_progress_bar" not in dotted:
            dotted_set(config, "trainer.enable_progress_bar", spec.cell_progress_bar)
        for key, value in dotted.items():
            dotted_set(config, key, value)
        if "seed" in cell.overrides:
            _seed_all(config, cell.overrides["seed"])
        callbacks = _callbacks(config)
        if not _named(callbacks, ".ModelCheckpoint"):
            callbacks.append(
                {
                    "class_path": CHECKPOINT,
                    "init_args": {
                        "dirpath": "${trainer.default_root_dir}/checkpoints",
                        "save_last": True,
                        "save_top_k": 0,
                        "every_n_train_steps": spec.checkpoint_every,
                    },
                }
            )
        if "heldout" in spec.evaluate:
            callbacks.append({"class_path": HELDOUT, "init_args": dict(spec.evaluate["heldout"])})
        if "lmeval" in spec.evaluate:
            for i in reversed(_named(callbacks, ".GeneralEval")):
                del callbacks[i]
            callbacks.append({"class_path": GENERAL, "init_args": dict(spec.evaluate["lmeval"])})
        params = {
            k: v if isinstance(v, int | float | bool) else str(v) for k, v in cell.params.items()
        }
        callbacks.append(
            {
                "class_path": TRACK,
                "init_args": {"params": params, "sweep": spec.name, "cell": cell.id},
            }
        )
        from omegaconf import DictConfig, ListConfig, OmegaConf

        logger = config.trainer.get("logger")
        if isinstance(logger, DictConfig | ListConfig):
            logger = OmegaConf.to_container(logger, resolve=False)
        changes = sweep_logger_overrides(logger, spec.name, cell.id, params, root_dir=cell_dir)
        if "trainer.logger" in changes:
            config.trainer.logger = changes["trainer.logger"]

    return edit


def checkpoint_dirpaths(config: dict) -> list[str | None]:
    """The ``dirpath`` of every ``ModelCheckpoint`` of a composed config (None: not set)."""
    return [
        (cb.get("init_args") or {}).get("dirpath")
        for cb in (config.get("trainer") or {}).get("callbacks") or []
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("ModelCheckpoint")
    ]


def _paths(config: dict) -> dict[str, str]:
    """The output paths of a composed config that must lie in the cell's directory."""
    trainer = config.get("trainer") or {}
    out: dict[str, str] = {}
    for dirpath in checkpoint_dirpaths(config):
        if dirpath:
            out["ModelCheckpoint dirpath"] = dirpath
    loggers = trainer.get("logger")
    for lg in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(lg, dict):
            save_dir = (lg.get("init_args") or {}).get("save_dir")
            if save_dir:
                out["logger save_dir"] = save_dir
    export = ((config.get("model") or {}).get("output") or {}).get("export_dir")
    if export:
        out["model.output.export_dir"] = export
    return out


def build_cell_config(spec: SweepSpec, cell: Cell, cell_dir: Path, shared_ok: bool) -> dict:
    """The cell's composed fit config (a plain dict, interpolations resolved).

    Raises:
        UsageError: a bad override, or (unless ``shared_ok``: a one-cell sweep) an output path of
            the recipe outside the cell's directory, where cells would overwrite each other.
    """
    from blockexp.training.compose import GROUPS, compose_config

    groups, dotted = split_overrides(cell.overrides, GROUPS)
    config = compose_config(spec.recipe, groups, _editor(spec, cell, cell_dir, dotted))
    if not shared_ok:
        root = cell_dir.resolve()
        for what, path in _paths(config).items():
            resolved = Path(path).resolve()
            if resolved != root and root not in resolved.parents:
                raise UsageError(
                    f"{spec.recipe}: {what} {path!r} is outside the cell directory, so every cell "
                    "would write there; build it on the run directory, e.g. "
                    "${trainer.default_root_dir}/model"
                )
    return config


def cell_yaml(spec: SweepSpec, cell: Cell, config: dict) -> str:
    """The text of ``cell.yaml``: a header saying how to run it, then the config."""
    cell_dir = config["trainer"]["default_root_dir"]
    head = [
        f"# blockexp sweep {spec.name!r}, cell {cell.id!r}: {cell.params}",
        f"#   run:    python -m blockexp fit --config {cell_dir}/cell.yaml",
        f"#   resume: ... --ckpt_path {cell_dir}/checkpoints/last.ckpt",
        f"# written from {spec.file} (recipe {spec.recipe}); edit the sweep file, not this one.",
    ]
    return "\n".join(head) + "\n" + yaml.safe_dump(config, sort_keys=False)
