"""compare's tables: one row per run (wide and tidy), the summary per group and the paired
comparisons, as CSV, Parquet and Markdown (each written atomically), and a rich table.

* ``cells.csv`` / ``cells.parquet``: run, status, sweep, cell, path, error, seconds, every
  parameter, every metric (one row per run).
* ``long.csv`` / ``long.parquet``: run, status, the parameters, metric, value (one row per run
  and metric).
* ``summary.csv`` / ``summary.md``: per group and metric: n, mean, sd, the 95% t interval.
* ``paired.csv`` / ``paired.md``: per group and metric against its reference group.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blockexp.compare.stats import SEED, label
from blockexp.io.outputs import atomic_write

__all__ = [
    "PAIRED_COLUMNS",
    "SUMMARY_COLUMNS",
    "cells_frame",
    "fmt",
    "long_frame",
    "markdown",
    "print_summary",
    "write_frame",
    "write_tables",
]


def fmt(value: Any, digits: int = 4) -> str:
    """A number for people: ``4`` significant decimals, ``-`` for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return (
            f"{value:.{digits}g}"
            if abs(value) >= 1e4 or 0 < abs(value) < 1e-3
            else f"{value:.{digits}f}"
        )
    return str(value)


def _param_column(values: list[Any]) -> list[Any]:
    """Numbers stay numbers when the whole column is numeric; anything else becomes its label
    (so that a Parquet column has one type)."""
    present = [v for v in values if v is not None]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return values
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return [None if v is None else float(v) for v in values]
    return [None if v is None else label(v) for v in values]


def _params_of(runs: Sequence[Any], axes: Sequence[str]) -> dict[str, list[Any]]:
    names = [*axes, *([SEED] if any(SEED in r.params for r in runs) else [])]
    return {a: _param_column([r.params.get(a) for r in runs]) for a in names}


def cells_frame(runs: Sequence[Any], axes: Sequence[str], metrics: Sequence[str]):
    """One row per run: identity, parameters, every metric (``NaN`` where missing)."""
    import pandas as pd

    columns: dict[str, list[Any]] = {
        "run": [r.name for r in runs],
        "status": [r.status for r in runs],
        "sweep": [r.sweep for r in runs],
        "cell": [r.cell for r in runs],
        "path": [str(r.path) for r in runs],
        "error": [r.error for r in runs],
        "seconds": [r.seconds for r in runs],
    }
    columns.update(_params_of(runs, axes))
    for metric in metrics:
        columns[metric] = [r.metrics.get(metric, math.nan) for r in runs]
    return pd.DataFrame(columns)


def long_frame(runs: Sequence[Any], axes: Sequence[str], metrics: Sequence[str]):
    """One row per run and metric it has: run, status, parameters, metric, value."""
    import pandas as pd

    params = _params_of(runs, axes)
    rows = []
    for i, run in enumerate(runs):
        for metric in metrics:
            if metric in run.metrics:
                row = {"run": run.name, "status": run.status}
                row.update({a: values[i] for a, values in params.items()})
                row.update(metric=metric, value=run.metrics[metric])
                rows.append(row)
    columns = ["run", "status", *params, "metric", "value"]
    return pd.DataFrame(rows, columns=columns)


def write_frame(frame, out: Path, name: str, parquet: bool = True) -> None:
    """``<name>.csv`` and (``parquet``) ``<name>.parquet`` under ``out``, atomically."""
    atomic_write(out / f"{name}.csv", frame.to_csv(index=False))
    if parquet:
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        atomic_write(out / f"{name}.parquet", buf.getvalue())


SUMMARY_COLUMNS = ("group", "metric", "n", "mean", "sd", "ci_low", "ci_high", "ci_half")
SUMMARY_COLUMNS += ("note", "runs")
PAIRED_COLUMNS = ("group", "reference", "metric", "n", "seeds", "differences", "mean_diff", "sd")
PAIRED_COLUMNS += ("ci_low", "ci_high", "ci_half", "p", "test", "significant", "note")


def _flat(rows: list[dict[str, Any]], columns: Sequence[str]):
    """Rows as a frame with ``columns``; lists (runs, seeds, differences) as JSON text."""
    import pandas as pd

    flat = [{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows]
    return pd.DataFrame(flat, columns=list(columns))


def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _interval(row: dict[str, Any], center: str = "mean") -> str:
    if row["ci_half"] is None:
        return f"{fmt(row[center])} (no interval)"
    return f"{fmt(row[center])} ± {fmt(row['ci_half'])}"


def _summary_md(summary: list[dict[str, Any]]) -> str:
    head = (
        "# Summary\n\nMean ± half-width of the 95% confidence interval (Student's t, df = n - 1) "
        "over the runs of each group (every parameter but the seed); sd: sample standard "
        "deviation.\n\n"
    )
    rows = [
        [r["group"], r["metric"], r["n"], _interval(r), fmt(r["sd"]),
         f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"]
        for r in summary
    ]  # fmt: skip
    return head + markdown(["group", "metric", "n", "mean ± CI", "sd", "95% CI"], rows)


def wide_md(summary: list[dict[str, Any]], metrics: Sequence[str]) -> str:
    """One row per group, one column per metric: ``mean ± CI half-width`` (n in the header
    note when every cell has the same n)."""
    groups = list(dict.fromkeys(r["group"] for r in summary))
    cell = {(r["group"], r["metric"]): r for r in summary}
    ns = {r["n"] for r in summary if r["metric"] in metrics}
    note = f" over n = {ns.pop()} seeds" if len(ns) == 1 else " (n per cell in summary.md)"
    head = f"Mean ± half-width of the 95% confidence interval (Student's t){note}.\n\n"
    rows = [
        [g, *(_interval(cell[(g, m)]) if (g, m) in cell else "-" for m in metrics)] for g in groups
    ]
    return head + markdown(["group", *metrics], rows)


def _paired_md(rows: list[dict[str, Any]]) -> str:
    head = (
        "# Paired comparisons\n\nDifference group - reference on the seeds both groups have "
        "(mean ± half-width of its 95% t interval); p: paired t-test, two-sided, df = n - 1 "
        "(scipy.stats.ttest_rel); significant: the interval excludes 0.\n\n"
    )
    table = [
        [r["group"], r["reference"], r["metric"], r["n"], _interval(r, "mean_diff"),
         fmt(r["p"]), "-" if r["significant"] is None else ("yes" if r["significant"] else "no"),
         "; ".join(x for x in (r["test"], r["note"]) if x)]
        for r in rows
    ]  # fmt: skip
    headers = ["group", "reference", "metric", "n", "difference ± CI", "p", "significant"]
    return head + markdown([*headers, "test / note"], table)


def write_tables(
    out: Path,
    runs: Sequence[Any],
    axes: Sequence[str],
    metrics: Sequence[str],
    summary: list[dict[str, Any]],
    pairs: list[dict[str, Any]] | None,
) -> list[Path]:
    """Write every table under ``out`` (module docstring); ``pairs`` ``None``: no reference,
    no paired files (earlier ones are removed). Returns the files written."""
    write_frame(cells_frame(runs, axes, metrics), out, "cells")
    write_frame(long_frame(runs, axes, metrics), out, "long")
    write_frame(_flat(summary, SUMMARY_COLUMNS), out, "summary", parquet=False)
    atomic_write(out / "summary.md", _summary_md(summary))
    names = ["cells.csv", "cells.parquet", "long.csv", "long.parquet", "summary.csv"]
    names.append("summary.md")
    if pairs is None:
        for name in ("paired.csv", "paired.md"):
            (out / name).unlink(missing_ok=True)
    else:
        write_frame(_flat(pairs, PAIRED_COLUMNS), out, "paired", parquet=False)
        atomic_write(out / "paired.md", _paired_md(pairs))
        names += ["paired.csv", "paired.md"]
    return [out / n for n in names]


def print_summary(
    summary: list[dict[str, Any]], pairs: list[dict[str, Any]] | None, shown: Sequence[str]
) -> None:
    """Rich tables of the metrics ``shown``: mean ± CI (n) per group, then the paired
    differences."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    groups = list(dict.fromkeys(r["group"] for r in summary))
    table = Table(title="compare: mean ± 95% CI half-width (n) per group")
    table.add_column("group", style="bold")
    for metric in shown:
        table.add_column(metric, justify="right")
    cells = {(r["group"], r["metric"]): r for r in summary}
    for group in groups:
        values = [cells.get((group, m)) for m in shown]
        table.add_row(group, *[f"{_interval(v)} ({v['n']})" if v else "" for v in values])
    console.print(table)
    if pairs:
        table = Table(title="paired differences (group - reference), paired t-test two-sided")
        for column in ("group", "reference", "metric", "n", "difference ± CI", "p", "sig."):
            table.add_column(column, justify="right" if column in ("n", "p") else "left")
        for r in pairs:
            if r["metric"] in shown:
                sig = "-" if r["significant"] is None else ("yes" if r["significant"] else "no")
                table.add_row(r["group"], r["reference"], r["metric"], str(r["n"]),
                              _interval(r, "mean_diff"), fmt(r["p"]), sig)  # fmt: skip
        console.print(table)
