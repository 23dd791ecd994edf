"""Launchers: where a sweep's cells run, chosen with one flag (``--launcher``).

* ``inline`` (default): one after the other in this process.
* ``processes``: ``workers`` local worker processes at a time (``python -m blockexp.sweep.cell``),
  each with ``cores / workers`` threads and its output in ``cells/<id>/log.txt``.
* ``submitit``: jobs through submitit's executor (:mod:`blockexp.sweep.jobs`).

A cell's own errors never stop a sweep (they are recorded in its ``cell.json``); a worker that
dies without recording its end (killed, out of memory) is recorded as failed by the launcher.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from blockexp.sweep.cell import died, run_cell
from blockexp.sweep.progress import POLL_SECONDS, SweepProgress

__all__ = ["run_cells"]


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _inline(cells: list[Path], progress: SweepProgress) -> None:
    for cell_dir in cells:
        progress.started(cell_dir)
        progress.finished(cell_dir, run_cell(cell_dir))


def _processes(cells: list[Path], progress: SweepProgress, workers: int) -> None:
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [env.get("PYTHONPATH", "")])
    queue = list(cells)
    running: dict[Path, tuple[subprocess.Popen, Any]] = {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                cell_dir = queue.pop(0)
                log = open(cell_dir / "log.txt", "ab")  # noqa: SIM115 (closed when it ends)
                cmd = [sys.executable, "-m", "blockexp.sweep.cell", str(cell_dir)]
                running[cell_dir] = (
                    subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env),
                    log,
                )
                progress.started(cell_dir)
            for cell_dir, (proc, log) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                log.close()
                del running[cell_dir]
                progress.finished(cell_dir, died(cell_dir, _exit_text(code)))
            progress.tick()
            time.sleep(POLL_SECONDS)
    except BaseException:
        for cell_dir, (proc, log) in running.items():
            proc.terminate()
            proc.wait()
            log.close()
            died(cell_dir, "was stopped by the sweep (interrupted)")
        raise


def run_cells(cells: list[Path], launcher: dict[str, Any], out: Path, progress: SweepProgress):
    """Run ``cells`` (their directories, each with ``cell.yaml``) with ``launcher``."""
    name = launcher.get("name", "inline")
    if name == "inline":
        _inline(cells, progress)
    elif name == "processes":
        _processes(cells, progress, int(launcher.get("workers", os.cpu_count() or 1)))
    else:
        from blockexp.sweep.jobs import run_submitit

        run_submitit(cells, progress, launcher, out)
