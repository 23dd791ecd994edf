"""The sweep's progress view: cells done / running / failed, and the time left."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["POLL_SECONDS", "SweepProgress"]

#: seconds between a launcher's looks at its workers
POLL_SECONDS = 0.5


class SweepProgress:
    """A rich progress bar over a sweep's cells, with a line per finished cell.

    The time left is the mean duration of the cells finished in this invocation, times the cells
    left, divided by the cells that run at once.
    """

    def __init__(self, total: int, done: int, parallel: int, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.parallel = max(1, parallel)
        self.total = total
        self.done = done
        self.failed = 0
        self.running: dict[Path, float] = {}
        self.durations: list[float] = []
        self.progress = Progress(
            TextColumn("[bold]sweep"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task("cells", total=total, completed=done, status="")

    def __enter__(self) -> SweepProgress:
        self.progress.start()
        self.tick()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.tick()
        self.progress.stop()

    def eta(self) -> float | None:
        """Seconds left, or None before the first cell of this invocation ends."""
        if not self.durations:
            return None
        left = self.total - self.done - self.failed
        mean = sum(self.durations) / len(self.durations)
        return mean * left / min(self.parallel, max(left, 1))

    def status(self) -> str:
        eta = self.eta()
        text = f"done {self.done}, running {len(self.running)}, failed {self.failed}"
        return text + (f", ~{eta / 60:.1f} min left" if eta is not None else "")

    def tick(self) -> None:
        self.progress.update(self.task, completed=self.done + self.failed, status=self.status())

    def started(self, cell_dir: Path) -> None:
        self.running[cell_dir] = time.perf_counter()
        self.tick()

    def finished(self, cell_dir: Path, state: dict[str, Any]) -> None:
        began = self.running.pop(cell_dir, None)
        seconds = time.perf_counter() - began if began is not None else 0.0
        if state.get("status") == "done":
            self.done += 1
            self.durations.append(seconds)
            self.progress.console.print(f"[green]done[/] {cell_dir.name} ({seconds:.0f} s)")
        else:
            self.failed += 1
            error = state.get("error") or "no error recorded"
            self.progress.console.print(f"[red]failed[/] {cell_dir.name}: {error}")
        self.tick()
