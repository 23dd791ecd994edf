"""What a TRACE run writes: R with OP/BWT, a summary, a heatmap and every round's predictions.

Layout under the output directory (each file written atomically)::

    R.json  R.csv  summary.md  R.png
    predictions/round<t>_<task>.jsonl          t = 1..n; prompt, answer, prediction, score
    predictions/results-<r>-<i>-<task>.json    TRACE's inference output: r = round - 1,
                                               i = task index (both 0-based, as TRACE names them)
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.table import Table

from blockexp.io.outputs import atomic_write
from blockexp.trace.matrix import BWT_DEFINITIONS, backward_transfer, overall_performance

if TYPE_CHECKING:
    from blockexp.trace.scoring import TaskResult

__all__ = [
    "heatmap_png",
    "render_summary",
    "results",
    "trace_eval_entry",
    "write_predictions",
    "write_reports",
]


#: Row labels of the two BWTs (:data:`~blockexp.trace.matrix.BWT_DEFINITIONS`), named by source.
BWT_LABELS = {"llama_pro": "BWT (LLaMA Pro eq. 7)", "trace": "BWT (TRACE paper)"}
#: Their keys in R.json: ``BWT`` is LLaMA Pro's (the default), ``BWT_trace`` the TRACE paper's.
BWT_KEYS = {"llama_pro": "BWT", "trace": "BWT_trace"}


def _rounds_done(R: np.ndarray) -> int:
    return int((~np.isnan(np.diag(R))).sum())


def render_summary(tasks: list[str], R: np.ndarray) -> tuple[Table, str]:
    """The score table in the LLaMA Pro paper's layout (tasks x rounds, then OP and both BWTs, each
    labelled by its source) as a rich table and as Markdown. Entries never evaluated show ``-``."""
    rounds = _rounds_done(R)
    table = Table(title="TRACE: score on each task (rows) after each round (columns)")
    table.add_column("Task \\ Round", style="bold")
    for r in range(rounds):
        table.add_column(str(r + 1), justify="right")
    md = ["| Task \\ Round | " + " | ".join(str(r + 1) for r in range(rounds)) + " |"]
    md.append("|---" * (rounds + 1) + "|")
    for i, task in enumerate(tasks):
        cells = [f"{R[r, i]:.3f}" if not math.isnan(R[r, i]) else "-" for r in range(rounds)]
        table.add_row(task, *cells)
        md.append(f"| {task} | " + " | ".join(cells) + " |")
    if rounds:
        pad = [""] * (rounds - 1)
        op = overall_performance(R[:rounds], rounds)
        rows = [("OP", op)] + [
            (BWT_LABELS[d], backward_transfer(R[:rounds], rounds, d)) for d in BWT_DEFINITIONS
        ]
        for label, value in rows:
            table.add_row(label, *pad, f"{value:.3f}", style="bold green")
            md.append(f"| {label} | " + " | ".join([*pad, f"{value:.3f}"]) + " |")
    return table, "\n".join(md) + "\n"


def results(tasks: list[str], R: np.ndarray, **info: Any) -> dict[str, Any]:
    """R, OP_t and both BWT_t (``BWT``: LLaMA Pro eq. 7; ``BWT_trace``: the TRACE paper's) of the
    rounds done so far, plus ``info`` (metrics, protocol, ...)."""
    rounds = _rounds_done(R)
    return {
        "tasks": list(tasks),
        **info,
        "rounds_done": rounds,
        "evaluations": int((~np.isnan(R)).sum()),
        "R": [[None if math.isnan(v) else float(v) for v in row] for row in R],
        "OP": [overall_performance(R[:t], t) for t in range(1, rounds + 1)],
        **{
            BWT_KEYS[d]: [backward_transfer(R[:t], t, d) for t in range(1, rounds + 1)]
            for d in BWT_DEFINITIONS
        },
        "BWT_definitions": {
            BWT_KEYS[d]: f"{d}: {formula} ({source})"
            for d, (formula, source) in BWT_DEFINITIONS.items()
        },
    }


def heatmap_png(tasks: list[str], R: np.ndarray) -> bytes:
    """R as a heatmap (blank where not evaluated) beside OP_t and BWT_t per round, as PNG."""
    from matplotlib.figure import Figure

    n = len(tasks)
    rounds = _rounds_done(R)
    fig = Figure(figsize=(1.6 + 0.9 * n + 4.0, 1.2 + 0.7 * n))
    ax, curve = fig.subplots(1, 2, width_ratios=[1.0 + 0.9 * n, 4.0])
    image = ax.imshow(np.ma.masked_invalid(R), cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), tasks, rotation=45, ha="right")
    ax.set_yticks(range(n), [f"{r + 1}: {t}" for r, t in enumerate(tasks)])
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after training round")
    ax.set_title("score R[round, task]")
    for r in range(n):
        for i in range(n):
            if not math.isnan(R[r, i]):
                color = "white" if R[r, i] < 0.5 else "black"
                ax.text(i, r, f"{R[r, i]:.2f}", ha="center", va="center", color=color, fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046)
    xs = list(range(1, rounds + 1))
    if rounds:
        curve.plot(xs, [overall_performance(R[:t], t) for t in xs], "o-", label="OP")
        for (d, label), style in zip(BWT_LABELS.items(), ("s-", "v--"), strict=True):
            curve.plot(xs, [backward_transfer(R[:t], t, d) for t in xs], style, label=label)
        curve.legend()
    curve.axhline(0.0, color="grey", linewidth=0.5)
    curve.set_xlim(0.5, n + 0.5)
    curve.set_xticks(range(1, n + 1))
    curve.set_xlabel("round")
    curve.set_title("OP and BWT after each round")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_reports(out: Path, tasks: list[str], R: np.ndarray, **info: Any) -> dict[str, Any]:
    """Write ``R.json``, ``R.csv``, ``summary.md`` and ``R.png`` under ``out``; return the
    results."""
    data = results(tasks, R, **info)
    atomic_write(out / "R.json", json.dumps(data, indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["round", "trained", *tasks])
    for r in range(data["rounds_done"]):
        row = ["" if v is None else f"{v:.6f}" for v in data["R"][r]]
        writer.writerow([r + 1, tasks[r], *row])
    atomic_write(out / "R.csv", buf.getvalue())
    atomic_write(out / "summary.md", render_summary(tasks, R)[1])
    atomic_write(out / "R.png", heatmap_png(tasks, R))
    return data


def trace_eval_entry(metric: str, score: float) -> dict[str, Any]:
    """The ``eval`` entry of a TRACE result file for a score in [0, 1], in TRACE's keys and
    scales: ``accuracy`` and ``rouge-L`` in [0, 1], ``similarity`` in [0, 100], and ``sari`` in
    [0, 100] wrapped as ``[{"sari": x}]`` (TRACE's ``caculate_sari`` returns a 1-tuple)."""
    if metric == "rouge_l":
        return {"rouge-L": score}
    if metric == "edit_similarity":
        return {"similarity": 100.0 * score}
    if metric == "sari":
        return {"sari": [{"sari": 100.0 * score}]}
    return {"accuracy": score}


def write_predictions(out: Path, round_index: int, result: TaskResult, scoring: str) -> None:
    """One round's predictions on one task, as JSON Lines and as TRACE's result file.

    Args:
        out: the predictions directory.
        round_index: 0-based round (the task just trained).
        result: the task's evaluation in that round (:func:`~.evaluation.score_task`).
        scoring: ``trace`` or ``lenient``.
    """
    records, task = result.records, result.task
    lines = "".join(
        json.dumps(
            {"prompt": r["prompt"], "answer": r["answer"], "prediction": p, "score": s},
            ensure_ascii=False,
        )
        + "\n"
        for r, p, s in zip(records, result.predictions, result.per_sample, strict=True)
    )
    atomic_write(out / f"round{round_index + 1}_{task}.jsonl", lines)
    trace_file = {
        "eval": trace_eval_entry(result.metric, result.score),
        "prompts": [r["prompt"] for r in records],
        "results": result.predictions,
        "labels": [r["answer"] for r in records],
        "blockexp": {"metric": result.metric, "scoring": scoring, "score": result.score},
    }
    atomic_write(
        out / f"results-{round_index}-{result.index}-{task}.json",
        json.dumps(trace_file, ensure_ascii=False),
    )
