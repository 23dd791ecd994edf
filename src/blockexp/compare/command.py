"""``python -m blockexp compare``: runs of a sweep (or any fit runs) across seeds, in tables and
plots (docs/compare.md)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from blockexp.compare.collect import Run, collect
from blockexp.compare.stats import (
    axes_of,
    group_runs,
    paired,
    parse_reference,
    reference_groups,
    summarize,
)
from blockexp.errors import UsageError, suggest
from blockexp.io.outputs import atomic_write

__all__ = ["HEADLINE", "compare", "default_out"]

HEADLINE = (
    "forgetting",
    "gain",
    "trace/OP",
    "trace/BWT",
    "trace/BWT_trace",
    "general/mean/change",
)
"""The metrics printed when ``--metrics`` is not given (those the runs have)."""


def default_out(runs: list[str], sweeps: list[dict[str, Any]]) -> Path:
    """``<sweep>/compare`` when the one path given is a sweep directory, else ``./compare``."""
    if len(runs) == 1 and len(sweeps) == 1:
        path = Path(runs[0]).expanduser()
        path = path.parent if path.name == "sweep.json" else path
        if (path / "sweep.json").is_file():
            return path / "compare"
    return Path("compare")


def _default_reference(sweeps: list[dict[str, Any]]) -> Any:
    refs = [s.get("reference") for s in sweeps]
    if refs and refs[0] and all(r == refs[0] for r in refs):
        return refs[0]
    return None


def _selected(metrics: list[str] | str | None, available: list[str]) -> list[str]:
    if not metrics:
        return available
    items = [metrics] if isinstance(metrics, str) else metrics
    names = [m.strip() for item in items for m in str(item).split(",") if m.strip()]
    for name in names:
        if name not in available:
            raise UsageError(
                f"compare: no run has the metric {name!r}{suggest(name, available)}; "
                f"metrics: {', '.join(available)}."
            )
    return names


def _check_out(out: Path, runs: list[Run]) -> Path:
    target = out.expanduser().resolve()
    for run in runs:
        path = run.path.resolve()
        if target == path or path in target.parents:
            raise UsageError(
                f"compare: --out {out} is inside the run directory {path}; choose a directory "
                "outside the runs (the default for a sweep is <sweep>/compare)."
            )
    return target


def compare(
    runs: list[str],
    reference: str | None = None,
    out: str | None = None,
    metrics: list[str] | str | None = None,
    incomplete: bool = False,
    plots: bool = True,
) -> Path:
    """Compare runs across seeds: means with 95% t intervals per group, paired t-tests
    against a reference group, tables (CSV, Parquet, Markdown) and plots.

    Args:
        runs: sweep directories (with sweep.json), run directories (a fit's
            trainer.default_root_dir) or folders of them.
        reference: the group the others are compared with, ``AXIS=VALUE`` (several joined by
            commas, e.g. ``strategy=LlamaPro``) or ``VALUE`` of the first parameter
            (``LlamaPro``); default: the sweep's reference, if it has one. Without a reference
            there are no paired comparisons.
        out: results directory (default: ``<sweep>/compare`` for one sweep directory, else
            ``./compare``).
        metrics: metrics to summarise, compare and print, e.g. ``forgetting,gain`` (default:
            every metric; the headline ones are printed). cells.csv and long.csv always hold
            every metric.
        incomplete: also use runs that are not done (failed, running, partial) in the
            statistics; by default they are only listed in cells.csv.
        plots: draw gain_forgetting.png and trace_R.png (when the runs have those metrics).

    Returns:
        The results directory.
    """
    from blockexp.compare import plot, table

    found, sweeps = collect(list(runs))
    target = _check_out(Path(out) if out else default_out(list(runs), sweeps), found)
    used = found if incomplete else [r for r in found if r.status == "done"]
    if not used:
        statuses = ", ".join(f"{s} {n}" for s, n in Counter(r.status for r in found).items())
        raise UsageError(
            f"compare: none of the {len(found)} runs is done ({statuses}); wait for them, or "
            "pass --incomplete true to use what they have."
        )
    available = list(dict.fromkeys(m for r in found for m in r.metrics))
    if not available:
        raise UsageError(
            "compare: the runs have no metrics yet (no heldout/heldout.json, general.json or "
            "trace/R.json with values)."
        )
    chosen = _selected(metrics, available)
    order = [a for s in sweeps for a in (s.get("axes") or {})]
    axes = axes_of(found, order)
    groups = group_runs(used, axes)
    summary = summarize(groups, chosen)
    spec = reference if reference is not None else _default_reference(sweeps)
    pairs = None
    if spec:
        wanted = parse_reference(spec, axes)
        pairs = paired(groups, reference_groups(groups, wanted), chosen)
    written = table.write_tables(target, found, axes, available, summary, pairs)
    if plots:
        written += [p for p in (plot.gain_forgetting_png(summary, target),
                                plot.trace_R_png(groups, summary, target)) if p]  # fmt: skip
    for name in ("gain_forgetting.png", "trace_R.png"):  # left from an earlier compare
        if target / name not in written:
            (target / name).unlink(missing_ok=True)
    shown = chosen if metrics else [m for m in HEADLINE if m in chosen] or chosen[:6]
    atomic_write(target / "summary_wide.md", table.wide_md(summary, shown))
    table.print_summary(summary, pairs, shown)
    skipped = len(found) - len(used)
    note = f"; {skipped} run(s) not done are only listed in cells.csv" if skipped else ""
    if not spec:
        note += "; no reference, so no paired comparison (pass --reference AXIS=VALUE)"
    print(f"compare: {len(used)} run(s) in {len(groups)} group(s){note}; wrote {target}")
    return target
