"""``python -m blockexp sweep --config SWEEP.yaml``: run every cell of a sweep, then compare.

Writes ``<out>/sweep.json`` (the sweep, its axes and cells) and one run directory per cell
(``<out>/cells/<id>/``: ``cell.yaml``, ``cell.json``, checkpoints, logs, evaluations). A finished
cell is skipped when the sweep runs again, an interrupted one resumes from its last checkpoint, a
failed one is run again; a cell whose config changed since it started is refused (remove its
directory, or write the sweep to another ``--out``). At the end, ``compare`` writes its tables
and plots to ``<out>/compare/``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import socket
from pathlib import Path
from typing import Any

from blockexp.errors import UsageError
from blockexp.io.outputs import atomic_write
from blockexp.sweep.cell import CONFIG, config_digest, read_state, write_state
from blockexp.sweep.grid import Cell, expand_grid
from blockexp.sweep.spec import SweepSpec, load_sweep, parse_set

__all__ = ["prepare_cells", "sweep"]


def _alive(state: dict[str, Any]) -> bool:
    """Whether a cell recorded as running is running now (in another process on this host)."""
    if state.get("status") != "running" or state.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(state.get("pid", -1)), 0)
    except (OSError, ValueError):
        return False
    return int(state["pid"]) != os.getpid()


def prepare_cells(spec: SweepSpec, cells: list[Cell]) -> list[Path]:
    """Write each cell's ``cell.yaml`` and initial ``cell.json``; returns the cell directories.

    Raises:
        UsageError: a cell that started with another config than the sweep now gives it.
    """
    from blockexp.sweep.cellconfig import build_cell_config, cell_yaml

    out = spec.out
    texts: dict[Path, str] = {}
    states: dict[Path, dict[str, Any]] = {}
    changed: list[str] = []
    for cell in cells:
        cell_dir = out / "cells" / cell.id
        config = build_cell_config(spec, cell, cell_dir, shared_ok=len(cells) == 1)
        text = cell_yaml(spec, cell, config)
        state = states[cell_dir] = read_state(cell_dir)
        started = state.get("status") not in (None, "pending")
        if started and state.get("config_digest") != config_digest(text):
            changed.append(cell.id)
        texts[cell_dir] = text
    if changed:
        raise UsageError(
            f"{len(changed)} cell(s) of {out} started with another config than {spec.file} gives "
            f"them now ({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}); remove "
            "those cell directories to run them again, or pass another --out"
        )
    for cell, (cell_dir, text) in zip(cells, texts.items(), strict=True):
        if not (cell_dir / CONFIG).is_file() or (cell_dir / CONFIG).read_text() != text:
            atomic_write(cell_dir / CONFIG, text)
        digest = config_digest(text)
        if not states[cell_dir]:
            write_state(
                cell_dir,
                sweep=spec.name,
                cell=cell.id,
                params=cell.params,
                status="pending",
                error=None,
                config=CONFIG,
                config_digest=digest,
            )
        elif states[cell_dir].get("config_digest") != digest:  # a pending cell's new config
            write_state(cell_dir, params=cell.params, config_digest=digest)
    return list(texts)


def _sweep_json(spec: SweepSpec, cells: list[Cell]) -> str:
    axes: dict[str, list] = {}
    for cell in cells:
        for axis, value in cell.params.items():
            if value not in axes.setdefault(axis, []):
                axes[axis].append(value)
    data = {
        "name": spec.name,
        "file": str(spec.file),
        "recipe": str(spec.recipe),
        "cwd": os.getcwd(),
        "axes": axes,
        "cells": [
            {"cell": c.id, "params": c.params, "dir": f"cells/{c.id}", "overrides": c.overrides}
            for c in cells
        ],
        "reference": spec.reference,
        "evaluate": spec.evaluate,
        "launcher": spec.launcher,
    }
    return json.dumps(data, indent=2, default=str) + "\n"


def _select(cells: list[Cell], only: list[str] | None) -> list[Cell]:
    if not only:
        return cells
    chosen = [c for c in cells if any(fnmatch.fnmatch(c.id, pattern) for pattern in only)]
    if not chosen:
        raise UsageError(
            f"--only {' '.join(only)} matches no cell; cells: {', '.join(c.id for c in cells)}"
        )
    return chosen


def sweep(
    sweep_file: str,
    launcher: str | None = None,
    workers: int | None = None,
    out: str | None = None,
    only: list[str] | None = None,
    set: list[str] | None = None,  # noqa: A002 (the flag is --set)
    dry_run: bool = False,
    compare: bool = True,
) -> dict[str, Any]:
    """Run every cell of a sweep file (a grid of fit runs over one recipe), then compare them.

    Args:
        sweep_file: the sweep file, given as --config (recipe, grid, evaluations, launcher; see
            blockexp.sweep.spec).
        launcher: inline (one after the other here), processes (local workers) or submitit
            (SLURM via submitit; its local executor too); default: the sweep file's.
        workers: cells at once (processes; submitit's local executor).
        out: the sweep's directory (default: the file's `out`, else outputs/sweeps/<name>).
        only: run only the cells whose id matches one of these patterns (fnmatch).
        set: KEY=VALUE overrides for every cell, over the file's `set`.
        dry_run: write the cells' configs and list them; train nothing.
        compare: run compare over the cells at the end.
    """
    from blockexp.io.locks import DirectoryLockedError, acquire, release
    from blockexp.sweep.launch import run_cells
    from blockexp.sweep.progress import SweepProgress

    spec = load_sweep(
        sweep_file, out=out, launcher=launcher, workers=workers, extra_set=parse_set(set)
    )
    cells = expand_grid(spec.grid, spec.set, str(spec.file))
    try:
        lock = acquire(spec.out)
    except DirectoryLockedError as err:
        raise UsageError(f"another sweep is writing {spec.out}: {err}") from err
    try:
        dirs = prepare_cells(spec, cells)
        atomic_write(spec.out / "sweep.json", _sweep_json(spec, cells))
        chosen = {spec.out / "cells" / c.id for c in _select(cells, only)}
        before = {d: read_state(d) for d in dirs}
        todo = [d for d in dirs if d in chosen and before[d].get("status") != "done"]
        busy = [d for d in todo if _alive(before[d])]
        todo = [d for d in todo if d not in busy]
        done = sum(before[d].get("status") == "done" for d in dirs if d in chosen)
        print(
            f"sweep {spec.name}: {len(cells)} cells in {spec.out} ({done} done, {len(todo)} to "
            f"run, {len(busy)} running elsewhere); launcher {spec.launcher['name']}"
        )
        if dry_run:
            for d in dirs:
                print(f"  {before[d].get('status', 'pending'):8} {d / CONFIG}")
            return {"out": str(spec.out), "cells": [str(d) for d in dirs]}
        parallel = int(spec.launcher.get("workers", 1)) if spec.launcher["name"] != "inline" else 1
        with SweepProgress(len(chosen), done, parallel) as progress:
            run_cells(todo, spec.launcher, spec.out, progress)
    finally:
        release(lock)
    states = {d.name: read_state(d) for d in dirs}
    failed = {k: s.get("error") for k, s in states.items() if s.get("status") == "failed"}
    result: dict[str, Any] = {"out": str(spec.out), "failed": failed}
    if compare and any(s.get("status") == "done" for s in states.values()):
        from blockexp.compare.command import compare as run_compare

        result["compare"] = run_compare([str(spec.out)])
    if failed:
        for name, error in failed.items():
            print(f"failed: {name}: {error}")
        raise SystemExit(1)
    return result
