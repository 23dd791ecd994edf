"""compare's plots (matplotlib, Agg; each PNG written atomically).

* ``gain_forgetting.png``: per group, mean forgetting (x) against mean gain (y) with the 95% t
  intervals as error bars both ways (none for n = 1), each point labelled with its group; the
  Pareto front (lower forgetting, higher gain; :func:`blockexp.compare.stats.pareto_front`) is
  ringed and connected.
* ``trace_R.png``: per group, the element-wise mean R over its runs (blank where no run scored),
  one subplot each, titled with the group and OP / BWT mean ± CI half-width (n).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blockexp.compare.stats import group_label, pareto_front
from blockexp.io.outputs import atomic_write

__all__ = ["gain_forgetting_png", "mean_R", "trace_R_png"]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def gain_forgetting_png(summary: list[dict[str, Any]], out: Path) -> Path | None:
    """Draw ``gain_forgetting.png`` from the summary rows of ``forgetting`` and ``gain``;
    ``None`` (nothing written) when no group has both."""
    from matplotlib.figure import Figure

    rows = {(r["group"], r["metric"]): r for r in summary}
    groups = [g for g in dict.fromkeys(r["group"] for r in summary)
              if (g, "forgetting") in rows and (g, "gain") in rows]  # fmt: skip
    if not groups:
        return None
    xs = [rows[(g, "forgetting")] for g in groups]
    ys = [rows[(g, "gain")] for g in groups]
    fig = Figure(figsize=(7.5, 5.5))
    ax = fig.subplots()
    for g, x, y in zip(groups, xs, ys, strict=True):
        ax.errorbar(x["mean"], y["mean"], xerr=x["ci_half"] or 0.0, yerr=y["ci_half"] or 0.0,
                    fmt="o", capsize=4, label=f"{g} (n={min(x['n'], y['n'])})")  # fmt: skip
    front = pareto_front([(x["mean"], y["mean"]) for x, y in zip(xs, ys, strict=True)])
    fx, fy = [xs[i]["mean"] for i in front], [ys[i]["mean"] for i in front]
    ax.plot(fx, fy, "--", color="grey", linewidth=1.0, zorder=0)
    ax.scatter(fx, fy, s=180, facecolors="none", edgecolors="red", linewidths=1.5,
               label="Pareto front (lower forgetting, higher gain)", zorder=3)  # fmt: skip
    ax.axvline(0.0, color="lightgrey", linewidth=0.8, zorder=0)
    ax.axhline(0.0, color="lightgrey", linewidth=0.8, zorder=0)
    ax.set_xlabel("forgetting: loss increase on the forgetting corpus (nats)")
    ax.set_ylabel("gain: loss decrease on the gain corpus (nats)")
    ax.set_title("gain vs forgetting per group (mean, 95% t interval)")
    ax.legend(fontsize=7)
    points = [(x["mean"], y["mean"]) for x, y in zip(xs, ys, strict=True)]
    _place_labels(fig, ax, points, _short_labels(groups))
    return atomic_write(out / "gain_forgetting.png", _png(fig))


def _short_labels(groups: list[str]) -> list[str]:
    """The point labels: ``LoRA`` for ``strategy=LoRA`` when every group is one value of the same
    single parameter (the legend keeps the full label)."""
    keys = {g.split("=", 1)[0] for g in groups}
    if len(keys) == 1 and all(g.count("=") == 1 and "," not in g for g in groups):
        return [g.split("=", 1)[1] for g in groups]
    return list(groups)


#: where a point's label may go, in points from the point (tried in order)
_OFFSETS = ((7, 5), (7, -12), (-7, 5), (-7, -12), (7, 16), (7, -23), (-7, 16), (-7, -23))


def _place_labels(fig, ax, points: list[tuple[float, float]], labels: list[str]) -> None:
    """Annotate each point with its label where it overlaps no label placed before it, no other
    point and not the legend (the first free spot of :data:`_OFFSETS`; the first spot when none is
    free)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.tight_layout()
    marks = [ax.transData.transform(pt) for pt in points]
    legend = ax.get_legend()
    placed: list[Any] = [legend.get_window_extent(renderer)] if legend is not None else []
    order = sorted(range(len(points)), key=lambda i: (-points[i][1], points[i][0]))

    def label(i: int, dx: int, dy: int) -> tuple[Any, Any]:
        text = ax.annotate(labels[i], points[i], textcoords="offset points", xytext=(dx, dy),
                           ha="left" if dx > 0 else "right", fontsize=8)  # fmt: skip
        return text, text.get_window_extent(renderer).expanded(1.05, 1.15)

    for i in order:
        for dx, dy in _OFFSETS:
            text, box = label(i, dx, dy)
            clear = not any(box.overlaps(b) for b in placed) and not any(
                box.contains(mx, my) for j, (mx, my) in enumerate(marks) if j != i
            )
            if clear:
                break
            text.remove()
        else:  # no free spot: the first one
            text, box = label(i, *_OFFSETS[0])
        placed.append(box)


def mean_R(runs: Sequence[Any]) -> tuple[list[str], Any, int] | None:
    """``(tasks, mean R, runs used)`` over the runs with an R whose tasks are the first such
    run's (NaN where no run has a score); ``None`` when no run has an R."""
    import numpy as np

    with_r = [r for r in runs if r.R and r.tasks]
    if not with_r:
        return None
    tasks = with_r[0].tasks
    same = [r for r in with_r if r.tasks == tasks and len(r.R) == len(with_r[0].R)]
    stack = np.array(
        [[[np.nan if v is None else float(v) for v in row] for row in r.R] for r in same],
        dtype=np.float64,
    )
    counts = (~np.isnan(stack)).sum(axis=0)
    sums = np.nansum(stack, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return tasks, mean, len(same)


def _title(key_label: str, summary: dict[tuple[str, str], dict[str, Any]], used: int) -> str:
    parts = [f"{key_label} (mean of {used})"]
    for metric in ("trace/OP", "trace/BWT"):
        row = summary.get((key_label, metric))
        if row is not None:
            half = "no CI" if row["ci_half"] is None else f"± {row['ci_half']:.3f}"
            parts.append(f"{metric.split('/')[1]} {row['mean']:.3f} {half} (n={row['n']})")
    return "\n".join(parts)


def trace_R_png(
    groups: dict[Any, list[Any]], summary: list[dict[str, Any]], out: Path
) -> Path | None:
    """Draw ``trace_R.png``; ``None`` (nothing written) when no run has an R."""
    import numpy as np
    from matplotlib.figure import Figure

    means = [(group_label(k), mean_R(runs)) for k, runs in groups.items()]
    means = [(g, m) for g, m in means if m is not None]
    if not means:
        return None
    by = {(r["group"], r["metric"]): r for r in summary}
    n_tasks = max(len(m[0]) for _, m in means)
    cols = min(3, len(means))
    rows = math.ceil(len(means) / cols)
    size = 1.5 + 0.6 * n_tasks
    fig = Figure(figsize=(cols * (size + 1.0), rows * (size + 0.9)))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    image = None
    for ax, (group, (tasks, R, used)) in zip(axes, means, strict=False):
        image = ax.imshow(np.ma.masked_invalid(R), cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(R.shape[0]), [str(t + 1) for t in range(R.shape[0])], fontsize=7)
        ax.set_xlabel("evaluated task", fontsize=8)
        ax.set_ylabel("after round", fontsize=8)
        ax.set_title(_title(group, by, used), fontsize=8)
        for r in range(R.shape[0]):
            for i in range(R.shape[1]):
                if not math.isnan(R[r, i]):
                    color = "white" if R[r, i] < 0.5 else "black"
                    ax.text(i, r, f"{R[r, i]:.2f}", ha="center", va="center", color=color,
                            fontsize=6)  # fmt: skip
    for ax in axes[len(means) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=list(axes[: len(means)]), fraction=0.03)
    fig.suptitle("TRACE: mean R per group (row: after round t, column: task)", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return atomic_write(out / "trace_R.png", buf.getvalue())
