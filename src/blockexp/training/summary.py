"""A rich summary table at the start and end of ``fit``."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.table import Table

__all__ = ["ExpansionSummary", "summary_rows"]


def _fmt_params(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def summary_rows(module) -> list[tuple[str, str]]:
    """Rows of the end-of-fit summary for a :class:`~blockexp.training.module.BlockExpansionModule`."""
    total, trainable = module.expansion.parameter_counts()
    base = module.base_info
    rows = [
        ("strategy", repr(module.expander)),
        (
            "layers (base -> expanded)",
            f"{base['num_layers']} -> {module.model.config.num_hidden_layers}",
        ),
        ("params (base -> expanded)", f"{_fmt_params(base['params'])} -> {_fmt_params(total)}"),
        (
            "trainable params",
            f"{_fmt_params(trainable)} ({100.0 * trainable / max(1, total):.2f}%)",
        ),
    ]
    plan = module.expansion.plan
    if plan is not None:
        rows.append(("new layers", ", ".join(map(str, plan.new_layers)) or "-"))
    history = module.val_history
    if history:
        rows.append(
            ("val loss before", f"{history[0]['val_loss']:.4f} (step {history[0]['step']})")
        )
    if len(history) > 1:
        rows.append(
            ("val loss after", f"{history[-1]['val_loss']:.4f} (step {history[-1]['step']})")
        )
    return rows


class ExpansionSummary(L.Callback):
    """Prints what was expanded and how validation loss moved, as a rich table."""

    def __init__(self) -> None:
        self.console = Console()

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(pl_module, "expansion", None) is None:
            return
        table = Table(title="blockexp summary", show_header=False)
        table.add_column("", style="bold")
        table.add_column("")
        for key, value in summary_rows(pl_module):
            table.add_row(key, value)
        self.console.print(table)
