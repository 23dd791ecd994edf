"""Layer-importance outputs: the per-layer CSV and the three panels of SLayer's Figure 2 (PNG)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from blockexp.io.outputs import atomic_write

__all__ = ["plot_importance", "write_csv"]


def plot_importance(rows: list[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Draw the three panels of SLayer's Figure 2 into a PNG (written atomically).

    Panel (a): angular distance per layer; (b): score drop when the layer is removed; (c): score
    drop when a block is inserted after it (identity copy vs neighbour mean). The score is the
    multiple-choice accuracy drop when the rows have it, otherwise the validation-loss increase.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    layers = [int(r["layer"]) for r in rows]
    use_acc = "removal_acc_drop" in rows[0] or "insert_copy_acc_drop" in rows[0]
    key, label = ("acc_drop", "accuracy drop") if use_acc else ("loss_increase", "loss increase")
    fig = Figure(figsize=(15, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].bar(layers, [r["angular_distance"] for r in rows], color="tab:blue")
    axes[0].set(title="(a) angular distance (input vs output)", xlabel="layer", ylabel="distance")
    if f"removal_{key}" in rows[0]:
        axes[1].plot(layers, [r[f"removal_{key}"] for r in rows], "o-", color="tab:red")
    axes[1].set(title=f"(b) {label} after removing the layer", xlabel="layer", ylabel=label)
    for init, color in (("copy", "tab:orange"), ("mean", "tab:green")):
        col = f"insert_{init}_{key}"
        if col in rows[0]:
            name = "identity copy" if init == "copy" else "neighbour mean"
            axes[2].plot(layers, [r[col] for r in rows], "o-", color=color, label=name)
    axes[2].set(title=f"(c) {label} after inserting a block", xlabel="layer", ylabel=label)
    if axes[2].lines:
        axes[2].legend()
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[1:]:
        ax.axhline(0.0, color="grey", linewidth=0.8)
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write(path, buffer.getvalue())
    return path


def write_csv(rows: list[dict[str, float]], path: Path) -> None:
    """Write ``rows`` (one per layer) to ``path`` atomically; floats keep every digit."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(path, buffer.getvalue())
