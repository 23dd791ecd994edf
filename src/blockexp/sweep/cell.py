"""Run one sweep cell: an ordinary ``fit`` of its ``cell.yaml``, its state kept in ``cell.json``.

``cell.json`` says ``pending``, ``running`` (with the pid and host), ``done`` or ``failed`` (with
the one-line error; the traceback goes to ``error.txt``). A cell is run fresh, resumed from its
last checkpoint (an earlier attempt was killed or failed after saving one), or skipped (done).
Worker processes run ``python -m blockexp.sweep.cell CELL_DIR``; a multi-process cell (DDP under
``torchrun`` or SLURM) runs it on every rank, and global rank 0 keeps the state.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from blockexp.errors import flatten
from blockexp.io.outputs import atomic_write
from blockexp.sweep.cellconfig import checkpoint_dirpaths

__all__ = ["checkpoint_to_resume", "died", "read_state", "run_cell", "write_state"]

STATE = "cell.json"
CONFIG = "cell.yaml"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _rank() -> int:
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def read_state(cell_dir: Path) -> dict[str, Any]:
    """The cell's ``cell.json`` ({} when it has none or it is unreadable)."""
    try:
        return json.loads((Path(cell_dir) / STATE).read_text())
    except (OSError, ValueError):
        return {}


def write_state(cell_dir: Path, **changes: Any) -> dict[str, Any]:
    """Update ``cell.json`` atomically (global rank 0 only); returns the new state."""
    state = {**read_state(cell_dir), **changes}
    if _rank() == 0:
        atomic_write(Path(cell_dir) / STATE, json.dumps(state, indent=2, default=str) + "\n")
    return state


def died(cell_dir: Path, how: str) -> dict[str, Any]:
    """The state of a cell whose worker ended: a worker killed mid-run left ``running``."""
    state = read_state(cell_dir)
    if state.get("status") in ("done", "failed"):
        return state
    return write_state(cell_dir, status="failed", error=f"the worker {how} before the cell ended")


def config_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def checkpoint_to_resume(cell_dir: Path) -> Path | None:
    """The checkpoint an interrupted cell resumes from: ``last.ckpt`` of its checkpoint
    directory (the newest ``*.ckpt`` when there is no ``last.ckpt``), or None."""
    config = yaml.safe_load((Path(cell_dir) / CONFIG).read_text()) or {}
    default = Path(cell_dir) / "checkpoints"
    folders = [Path(dirpath or default) for dirpath in checkpoint_dirpaths(config)]
    for folder in folders:
        if (folder / "last.ckpt").is_file():
            return folder / "last.ckpt"
    found = sorted((p for f in folders for p in f.glob("*.ckpt")), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _metrics(cli: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    trainer = getattr(cli, "trainer", None)
    for key, value in (getattr(trainer, "callback_metrics", None) or {}).items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    if trainer is not None:
        out["global_step"] = float(trainer.global_step)
    return out


def run_cell(cell_dir: str | Path) -> dict[str, Any]:
    """Run (or resume, or skip) the cell in ``cell_dir``; returns its final state. An error in
    the cell is recorded as ``failed`` with its one-line message, not raised; an interrupt
    (Ctrl-C) is recorded and raised."""
    cell_dir = Path(cell_dir)
    state = read_state(cell_dir)
    if state.get("status") == "done":
        return state
    resume = checkpoint_to_resume(cell_dir)
    argv = ["fit", "--config", str(cell_dir / CONFIG)]
    if resume is not None:
        argv += ["--ckpt_path", str(resume)]
    start = time.perf_counter()
    state = write_state(
        cell_dir,
        status="running",
        pid=os.getpid(),
        host=socket.gethostname(),
        started=_now(),
        resumed_from=str(resume) if resume else None,
        attempts=int(state.get("attempts", 0)) + 1,
        error=None,
    )
    previous = float(state.get("seconds") or 0.0)
    try:
        cli = _fit(argv)
    except (KeyboardInterrupt, SystemExit) as err:  # Ctrl-C, or SIGTERM (Lightning's exit)
        write_state(
            cell_dir,
            status="failed",
            error=f"interrupted ({type(err).__name__}); run the sweep again to resume",
            seconds=previous + time.perf_counter() - start,
        )
        raise
    except Exception as err:
        atomic_write(cell_dir / "error.txt", traceback.format_exc())
        return write_state(
            cell_dir,
            status="failed",
            error=f"{type(err).__name__}: {flatten(str(err))}",
            seconds=previous + time.perf_counter() - start,
            finished=_now(),
        )
    trainer = getattr(cli, "trainer", None)
    if trainer is None or trainer.interrupted or not trainer.state.finished:
        return write_state(
            cell_dir,
            status="failed",
            error="interrupted: the fit stopped before its end; run the sweep again to resume",
            seconds=previous + time.perf_counter() - start,
        )
    return write_state(
        cell_dir,
        status="done",
        finished=_now(),
        seconds=previous + time.perf_counter() - start,
        metrics=_metrics(cli),
    )


def _fit(argv: list[str]) -> Any:
    """``python -m blockexp fit`` in this process, as :func:`blockexp.cli.main` runs it."""
    from blockexp.expanders.registry import import_registered
    from blockexp.io.inputs import config_files, declare_inputs
    from blockexp.io.locks import held, release
    from blockexp.training.cli import BlockexpCLI

    declare_inputs(config_files(argv))
    before = set(held())  # the sweep's own lock stays
    try:
        import_registered()
        return BlockexpCLI(args=argv)
    finally:
        for lock in set(held()) - before:
            release(lock)


def main(argv: list[str] | None = None) -> int:
    """``python -m blockexp.sweep.cell CELL_DIR``: run one cell (a worker process)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m blockexp.sweep.cell CELL_DIR", file=sys.stderr)
        return 2
    state = run_cell(args[0])
    return 0 if state.get("status") == "done" else 1


if __name__ == "__main__":
    raise SystemExit(main())
