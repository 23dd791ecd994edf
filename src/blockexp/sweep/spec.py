"""The sweep file: a base recipe, a grid of overrides, evaluations, a launcher.

Example (``experiments/strategies/sweep.yaml``)::

    name: strategies
    recipe: recipe.yaml             # a fit config, relative to this file
    out: outputs/sweeps/strategies  # default: outputs/sweeps/<name>
    grid:
      strategy:                     # a labelled axis: label -> overrides
        LlamaPro: {expander: llama_pro}
        LoRA: {expander: lora, model.expander.r: 8}
      seed: [0, 1, 2]               # seed_everything
      model.optim.lr: [1.0e-3]      # any dotted fit option
    set: {trainer.max_steps: 200}   # the same overrides for every cell
    evaluate:
      heldout: {corpora: {general: g.jsonl, domain: d.jsonl}, forgetting: general, gain: domain}
      lmeval: {tasks: [blockexp_general], limit: 50}
    reference: {strategy: LlamaPro} # compare's paired differences against this group
    launcher: inline                # or {name: processes, workers: 2} or {name: submitit, ...}

An override key is a config group (``expander: lora`` selects ``configs/expander/lora.yaml``),
``seed`` (``seed_everything``), or a dotted fit option; ``model.expander.r`` reaches the
expander's ``init_args``. Data paths are read from the working directory, as ``fit`` reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from blockexp.errors import UsageError, suggest
from blockexp.training.compose import yaml_problem

__all__ = ["LAUNCHERS", "SweepSpec", "load_sweep", "parse_set"]

LAUNCHERS = ("inline", "processes", "submitit")
KEYS = (
    "name",
    "recipe",
    "out",
    "grid",
    "set",
    "evaluate",
    "reference",
    "launcher",
    "checkpoint_every",
    "cell_progress_bar",
)
EVALUATIONS = ("heldout", "lmeval")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass
class SweepSpec:
    """A parsed sweep file (see the module docstring)."""

    name: str
    file: Path
    recipe: Path
    out: Path
    grid: dict[str, Any] = field(default_factory=dict)
    set: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference: dict[str, Any] | None = None
    launcher: dict[str, Any] = field(default_factory=lambda: {"name": "inline"})
    checkpoint_every: int = 50
    cell_progress_bar: bool = False


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` strings (values read as YAML) as an overrides mapping."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. trainer.max_steps=20")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _launcher(value: Any, where: str) -> dict[str, Any]:
    spec = {"name": value} if isinstance(value, str) else value
    if not isinstance(spec, dict) or spec.get("name") not in LAUNCHERS:
        name = spec.get("name") if isinstance(spec, dict) else spec
        raise UsageError(
            f"{where}: unknown launcher {name!r}{suggest(str(name), LAUNCHERS)}; launchers: "
            f"{', '.join(LAUNCHERS)} (a name, or a mapping with `name:` and its options)"
        )
    return dict(spec)


def load_sweep(
    path: str | Path,
    *,
    out: str | None = None,
    launcher: str | None = None,
    workers: int | None = None,
    extra_set: dict[str, Any] | None = None,
) -> SweepSpec:
    """Read and check a sweep file; the command line's ``out``/``launcher``/``workers``/``--set``
    take precedence over the file's."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"sweep file {file} does not exist (--config)")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise UsageError(yaml_problem(file, err)) from err
    if not isinstance(data, dict):
        raise UsageError(f"{file}: a sweep file holds keys ({', '.join(KEYS)})")
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise UsageError(
            f"{file}: unknown key {unknown[0]!r}{suggest(str(unknown[0]), KEYS)}; a sweep file "
            f"has {', '.join(KEYS)}"
        )
    if "recipe" not in data:
        raise UsageError(f"{file}: no `recipe:` (the fit config every cell starts from)")
    recipe = (file.parent / str(data["recipe"])).resolve()
    if not recipe.is_file():
        raise UsageError(f"{file}: recipe {data['recipe']!r} does not exist (resolved to {recipe})")
    name = str(data.get("name") or file.stem)
    if not _NAME.fullmatch(name):
        raise UsageError(f"{file}: name {name!r} must be letters, digits, '.', '_', '+' or '-'")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise UsageError(f"{file}: `grid` maps an axis to a list of values or of labelled sets")
    fixed = data.get("set") or {}
    if not isinstance(fixed, dict):
        raise UsageError(f"{file}: `set` maps option names to values, e.g. trainer.max_steps: 200")
    evaluate = data.get("evaluate") or {}
    if not isinstance(evaluate, dict) or any(k not in EVALUATIONS for k in evaluate):
        bad = next((k for k in evaluate if k not in EVALUATIONS), evaluate)
        raise UsageError(
            f"{file}: unknown evaluation {bad!r}{suggest(str(bad), EVALUATIONS)}; `evaluate` "
            f"takes {', '.join(EVALUATIONS)} (each a mapping of the callback's arguments)"
        )
    for key, value in evaluate.items():
        if not isinstance(value, dict):
            raise UsageError(f"{file}: evaluate.{key} is a mapping of arguments, not {value!r}")
    reference = data.get("reference")
    if reference is not None and not isinstance(reference, dict | str):
        raise UsageError(f"{file}: `reference` is `axis: label` (e.g. strategy: LlamaPro)")
    if isinstance(reference, str):
        reference = {next(iter(grid), "strategy"): reference}
    spec_launcher = _launcher(data.get("launcher", "inline"), f"{file}: launcher")
    if launcher is not None:
        keep = spec_launcher if spec_launcher["name"] == launcher else {}
        spec_launcher = {**keep, **_launcher(launcher, "--launcher")}
    if workers is not None:
        if workers < 1:
            raise UsageError(f"--workers {workers}: must be at least 1")
        spec_launcher["workers"] = workers
    every = data.get("checkpoint_every", 50)
    if not isinstance(every, int) or every < 1:
        raise UsageError(f"{file}: checkpoint_every is a number of steps >= 1, not {every!r}")
    return SweepSpec(
        name=name,
        file=file.resolve(),
        recipe=recipe,
        out=Path(out or data.get("out") or f"outputs/sweeps/{name}"),
        grid=grid,
        set={**fixed, **(extra_set or {})},
        evaluate=evaluate,
        reference=reference,
        launcher=spec_launcher,
        checkpoint_every=every,
        cell_progress_bar=bool(data.get("cell_progress_bar", False)),
    )
