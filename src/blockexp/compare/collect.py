"""Finding runs (sweep directories, run directories, folders of them) and reading each into one
row: its parameters, status and metrics, plus R for TRACE runs.

A run directory holds at least one of :data:`RUN_FILES`. Its parameters come from ``cell.json``
(a sweep cell), else from the sweep's ``sweep.json`` entry (a cell not started yet), else from
``config.yaml`` (in the run directory, or the one LightningCLI saved in the logger's directory):
``{"strategy": <class name of model.expander>, "seed": seed_everything}``.
Its status is ``cell.json``'s; without one, ``done`` when the files show the fit's end
(:func:`blockexp.compare.metrics.finished`), else ``incomplete``; a sweep cell without a
directory or ``cell.json`` is ``pending``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockexp.compare.metrics import finished, general_metrics, heldout_metrics, trace_metrics
from blockexp.errors import UsageError

__all__ = ["RUN_FILES", "Run", "Source", "collect", "find_runs", "is_run_dir", "read_run"]

RUN_FILES = (
    "cell.json",
    "config.yaml",
    "heldout/heldout.json",
    "general/general.json",
    "trace/R.json",
    "trace/general.json",
)
"""Files that make a directory a run directory (any one of them)."""


@dataclass(frozen=True)
class Source:
    """Where a run is: its directory, and the sweep it belongs to (``sweep.json`` and its entry
    of ``cells``), if any."""

    path: Path
    sweep: dict[str, Any] | None = None
    entry: dict[str, Any] | None = None


@dataclass
class Run:
    """One run, read: ``params`` (the seed under ``"seed"``), ``metrics`` (finite floats) and,
    for a TRACE run, ``tasks`` and ``R`` (rows: rounds; ``None`` where not evaluated)."""

    name: str
    path: Path
    params: dict[str, Any]
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    sweep: str | None = None
    cell: str | None = None
    error: str | None = None
    seconds: float | None = None
    tasks: list[str] = field(default_factory=list)
    R: list[list[float | None]] = field(default_factory=list)


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds one of :data:`RUN_FILES`."""
    return any((path / name).is_file() for name in RUN_FILES)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"compare: cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise UsageError(f"compare: {path} holds {type(data).__name__}, expected a JSON object.")
    return data


def _sweep_cells(directory: Path) -> list[Source]:
    sweep = _read_json(directory / "sweep.json")
    cells = sweep.get("cells")
    if not isinstance(cells, list):
        raise UsageError(f"compare: {directory / 'sweep.json'} has no list of cells.")
    out = []
    for entry in cells:
        where = entry.get("dir") or f"cells/{entry.get('cell')}"
        out.append(Source(directory / where, sweep, entry))
    return out


def find_runs(paths: list[str]) -> tuple[list[Source], list[dict[str, Any]]]:
    """The runs under ``paths`` and the ``sweep.json`` of every sweep among them.

    Each path is a sweep directory (its cells, from ``sweep.json``; the file itself also
    works), a run directory, or a folder whose sub-directories are run or sweep directories.

    Raises:
        FileNotFoundError: a path does not exist.
        UsageError: a path holds no run.
    """
    sources: list[Source] = []
    sweeps: list[dict[str, Any]] = []
    if not paths:
        raise UsageError("compare: no paths; pass run directories or sweep directories.")
    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"compare: {given!r} does not exist (resolved to {path.resolve()}); pass a run "
                "directory, a sweep directory (with sweep.json) or a folder of run directories."
            )
        if path.is_file() and path.name == "sweep.json":
            path = path.parent
        if not path.is_dir():
            raise UsageError(f"compare: {given!r} is a file; pass a run or sweep directory.")
        found: list[Source] = []
        dirs = [path] if (path / "sweep.json").is_file() or is_run_dir(path) else []
        dirs = dirs or sorted(p for p in path.iterdir() if p.is_dir())
        for directory in dirs:
            if (directory / "sweep.json").is_file():
                cells = _sweep_cells(directory)
                sweeps.append(_read_json(directory / "sweep.json"))
                found += cells
            elif is_run_dir(directory):
                found.append(Source(directory))
        if not found:
            raise UsageError(
                f"compare: no runs found in {given!r}: it has no sweep.json, and neither it nor "
                f"its sub-directories hold any of {', '.join(RUN_FILES)}."
            )
        sources += found
    seen: set[Path] = set()
    unique = []
    for source in sources:
        if source.path.resolve() not in seen:
            seen.add(source.path.resolve())
            unique.append(source)
    return unique, sweeps


def _config_params(path: Path) -> dict[str, Any]:
    """``{"strategy", "seed"}`` from a resolved fit ``config.yaml``."""
    import yaml

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"compare: cannot read {path}: {err}") from err
    params: dict[str, Any] = {}
    model = config.get("model") if isinstance(config, dict) else None
    expander = model.get("expander") if isinstance(model, dict) else None
    if isinstance(expander, dict):
        expander = expander.get("class_path")
    if isinstance(expander, str):
        params["strategy"] = expander.rpartition(".")[2]
    seed = config.get("seed_everything") if isinstance(config, dict) else None
    if isinstance(seed, int) and not isinstance(seed, bool):
        params["seed"] = seed
    return params


def run_config(path: Path) -> Path | None:
    """The run's resolved fit config: ``config.yaml`` in the run directory, else the newest one
    LightningCLI saved in a logger's directory below it (``<logger name>/version_<n>/``)."""
    if (path / "config.yaml").is_file():
        return path / "config.yaml"
    found = [p for p in path.glob("*/*/config.yaml") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _first(directory: Path, *names: str) -> dict[str, Any] | None:
    for name in names:
        if (directory / name).is_file():
            return _read_json(directory / name)
    return None


def read_run(source: Source) -> Run:
    """Read one run directory into a :class:`Run` (module docstring)."""
    path = source.path
    cell = _first(path, "cell.json")
    entry = source.entry or {}
    if cell is not None:
        params = dict(cell.get("params") or {})
        status = str(cell.get("status") or "unknown")
    elif source.entry is not None:
        params, status = dict(entry.get("params") or {}), "pending"
    elif (config := run_config(path)) is not None:
        params, status = _config_params(config), "incomplete"
    else:
        params, status = {}, "incomplete"
    heldout = _first(path, "heldout/heldout.json")
    general = _first(path, "general/general.json", "trace/general.json")
    trace = _first(path, "trace/R.json")
    run = Run(name=path.name, path=path, params=params, status=status)
    if cell is None and source.entry is None and finished(heldout, general, trace):
        run.status = "done"
    if heldout is not None:
        run.metrics.update(heldout_metrics(heldout))
    if general is not None:
        run.metrics.update(general_metrics(general))
    if trace is not None:
        scores, run.tasks, run.R = trace_metrics(trace)
        run.metrics.update(scores)
    info = cell or {}
    run.sweep = info.get("sweep") or (source.sweep or {}).get("name")
    run.cell = info.get("cell") or entry.get("cell")
    run.name = run.cell or path.name
    run.error = info.get("error")
    run.seconds = info.get("seconds")
    return run


def collect(paths: list[str]) -> tuple[list[Run], list[dict[str, Any]]]:
    """Every run under ``paths``, read (names made unique by their parent directories), and the
    ``sweep.json`` of the sweeps among them."""
    sources, sweeps = find_runs(paths)
    runs = [read_run(s) for s in sources]
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            parent = run.path.parent
            if parent.name == "cells":
                parent = parent.parent
            run.name = f"{parent.name}/{run.name}"
    return runs, sweeps
