"""The submitit launcher: each cell a job of submitit's executor (SLURM, or local processes).

``cluster: slurm`` submits to SLURM (``sbatch``); ``local`` runs jobs as local processes
(``workers`` at a time) and ``debug`` in this process; without ``cluster`` submitit picks SLURM
when ``sbatch`` is found. Every other key of the launcher mapping goes to
``executor.update_parameters`` (``timeout_min``, ``slurm_partition``, ``gpus_per_node``,
``nodes``, ``tasks_per_node``, ``cpus_per_task``, ``mem_gb``, ...); a multi-node cell is
Lightning's DDP/FSDP under SLURM (set ``trainer.num_nodes`` in the recipe to match ``nodes``).
A job that times out or is preempted is requeued by SLURM and resumes from its cell's last
checkpoint (:class:`CellJob` is checkpointable). Local jobs get a one-day time limit unless the
launcher sets ``timeout_min`` (submitit's default of 5 minutes would stop them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import submitit

from blockexp.sweep.cell import died, run_cell
from blockexp.sweep.progress import POLL_SECONDS, SweepProgress

__all__ = ["CellJob", "run_submitit"]

LOCAL_TIMEOUT_MIN = 24 * 60


class CellJob(submitit.helpers.Checkpointable):
    """A cell as a submitit job; on timeout or preemption it is requeued as it is (the cell
    resumes from its last checkpoint)."""

    def __call__(self, cell_dir: str) -> dict[str, Any]:
        return run_cell(cell_dir)


def run_submitit(cells: list[Path], progress: SweepProgress, spec: dict[str, Any], out: Path):
    """Submit ``cells`` as jobs and follow them until each has ended."""
    import time

    options = {k: v for k, v in spec.items() if k not in ("name", "cluster", "workers")}
    executor = submitit.AutoExecutor(
        folder=str(out / "submitit" / "%j"), cluster=spec.get("cluster")
    )
    local = executor.cluster in ("local", "debug")
    if local:
        options.setdefault("timeout_min", LOCAL_TIMEOUT_MIN)
    if options:
        executor.update_parameters(**options)
    limit = int(spec.get("workers", 1)) if local else len(cells)
    queue = list(cells)
    running: dict[Path, Any] = {}
    try:
        while queue or running:
            while queue and len(running) < limit:
                cell_dir = queue.pop(0)
                running[cell_dir] = executor.submit(CellJob(), str(cell_dir))
                progress.started(cell_dir)
            for cell_dir, job in list(running.items()):
                if not job.done():
                    continue
                del running[cell_dir]
                try:
                    job.result()
                    how = "ended"
                except Exception as err:  # the job itself failed (killed, out of time)
                    how = f"failed ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
                progress.finished(cell_dir, died(cell_dir, how))
            progress.tick()
            time.sleep(POLL_SECONDS)
    except BaseException:
        for cell_dir, job in running.items():
            job.cancel(check=False)
            died(cell_dir, "was cancelled by the sweep (interrupted)")
        raise
