"""TRACE continual learning: train task after task, score every task after each one.

Used with :class:`blockexp.data.TRACEDataModule` in one ``trainer.fit``::

    epochs:   | task 1 (e1 epochs) | task 2 (e2 epochs) | ... | task T |
    after each task t:  greedy generation on every task i -> R[t, i]
                        OP_t, BWT_t (LLaMA Pro eqs. 6-7)   -> logged, written

The callback sets ``trainer.reload_dataloaders_every_n_epochs = 1`` (the data module serves the
task of the running epoch) and ``max_epochs`` to the sum of the tasks' epochs.

Optimizer and schedule: every task gets its own learning-rate schedule (the module's linear
warmup + cosine decay, stretched over that task's steps), as TRACE fine-tunes each task in turn
with its own schedule; with ``reset_optimizer`` (default) the AdamW state is also rebuilt at each
task boundary, so no moment estimates leak from one task into the next.

Outputs in ``output_dir`` (default ``<default_root_dir>/trace``), rewritten atomically after every
task: ``R.csv`` and ``R.json`` (the matrix, OP_t, BWT_t), ``R.png`` (heatmap), ``summary.md`` (the
layout of the LLaMA Pro paper's Tables 11-13) and ``predictions/round<t>_<task>.jsonl``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.types import LRSchedulerConfig
from rich.console import Console
from rich.table import Table

from blockexp.data.sft import pad_collate
from blockexp.data.trace import TRACEDataModule
from blockexp.metrics.continual import backward_transfer, overall_performance
from blockexp.metrics.text import build_metric

__all__ = ["TRACECallback", "generate_answers", "render_summary"]


def _write_atomic(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int = 16,
) -> list[str]:
    """Greedy, KV-cached, left-padded batched generation; returns the decoded continuations.

    Args:
        model: a ``transformers`` causal LM (or a peft wrapper of one).
        tokenizer: its tokenizer (``pad_token_id`` and ``eos_token_id`` are used).
        prompts: token ids of each prompt.
        max_new_tokens: generation budget.
        batch_size: prompts per ``generate`` call.
    """
    device = next(model.parameters()).device
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    answers: list[str] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            batch = pad_collate([{"input_ids": torch.tensor(p)} for p in chunk], pad, side="left")
            out = model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                use_cache=True,
                pad_token_id=pad,
                eos_token_id=eos,
            )
            for row in out[:, batch["input_ids"].shape[1] :].tolist():
                if eos in row:
                    row = row[: row.index(eos)]
                answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return answers


def render_summary(tasks: list[str], R: np.ndarray) -> tuple[Table, str]:
    """The score table in the paper's layout (tasks x rounds, then OP and BWT) as a rich table
    and as Markdown."""
    rounds = int((~np.isnan(np.diag(R))).sum())
    table = Table(title="TRACE: score on each task (rows) after each round (columns)")
    table.add_column("Task \\ Round", style="bold")
    for r in range(rounds):
        table.add_column(str(r + 1), justify="right")
    md = ["| Task \\ Round | " + " | ".join(str(r + 1) for r in range(rounds)) + " |"]
    md.append("|---" * (rounds + 1) + "|")
    for i, task in enumerate(tasks):
        cells = [
            f"{R[r, i]:.3f}" if r >= i and not math.isnan(R[r, i]) else "-" for r in range(rounds)
        ]
        table.add_row(task, *cells)
        md.append(f"| {task} | " + " | ".join(cells) + " |")
    if rounds:
        op = overall_performance(R[:rounds], rounds)
        bwt = backward_transfer(R[:rounds], rounds)
        pad = [""] * (rounds - 1)
        table.add_row("OP", *pad, f"{op:.3f}", style="bold green")
        table.add_row("BWT", *pad, f"{bwt:.3f}", style="bold green")
        md.append("| OP | " + " | ".join([*pad, f"{op:.3f}"]) + " |")
        md.append("| BWT | " + " | ".join([*pad, f"{bwt:.3f}"]) + " |")
    return table, "\n".join(md) + "\n"


class TRACECallback(L.Callback):
    """Drives a TRACE run and records the score matrix R, OP and BWT.

    Args:
        output_dir: where R and the reports go (default ``<trainer.default_root_dir>/trace``).
        reset_optimizer: rebuild the optimizer (fresh AdamW moments) at every task boundary;
            the per-task learning-rate schedule is always restarted.
        save_predictions: write every round's generations as JSON Lines.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        reset_optimizer: bool = True,
        save_predictions: bool = True,
    ) -> None:
        self.output_dir = output_dir
        self.reset_optimizer = reset_optimizer
        self.save_predictions = save_predictions
        self.tasks: list[str] = []
        self.metrics: dict[str, str] = {}
        self.R: np.ndarray | None = None
        self.console = Console()

    # --------------------------------------------------------------------------- set-up
    def _datamodule(self, trainer: L.Trainer) -> TRACEDataModule:
        dm = trainer.datamodule
        if not isinstance(dm, TRACEDataModule):
            raise TypeError(
                "TRACECallback needs data: {class_path: blockexp.data.TRACEDataModule, ...}; "
                f"got {type(dm).__name__}"
            )
        return dm

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = self._datamodule(trainer)
        if trainer.max_steps not in (-1, None):
            raise ValueError(
                f"trainer.max_steps={trainer.max_steps} would cut the TRACE task sequence short; "
                "remove it (the length is set by data.init_args.epochs per task)"
            )
        trainer.reload_dataloaders_every_n_epochs = 1
        trainer.fit_loop.max_epochs = dm.total_epochs
        self.tasks = list(dm.tasks)
        self.metrics = dict(dm.task_metrics)
        n = len(self.tasks)
        if self.R is None or self.R.shape != (n, n):
            self.R = np.full((n, n), np.nan)

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else self._default_dir

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._default_dir = Path(trainer.default_root_dir) / "trace"

    # ----------------------------------------------------------------- per-task schedule
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = self._datamodule(trainer)
        task = dm.current_task
        first, _ = dm.task_bounds(task)
        configs = trainer.strategy.lr_scheduler_configs
        if configs and getattr(configs[0].scheduler, "_blockexp_trace_task", None) == task:
            return
        epoch = trainer.current_epoch
        if self.reset_optimizer and task > 0 and epoch == first:
            trainer.strategy.setup_optimizers(trainer)
        if not trainer.optimizers:
            return
        optimizer = trainer.optimizers[0]
        hp = pl_module.hparams
        per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        total = max(1, per_epoch * dm.epochs[task])
        warmup = int(round(float(hp.get("warmup_ratio", 0.0)) * total))
        min_ratio = float(hp.get("min_lr_ratio", 0.0))
        from blockexp.module import cosine_with_warmup

        def schedule(step: int) -> float:
            return cosine_with_warmup(step, total, warmup, min_ratio)

        for group in optimizer.param_groups:  # restart from the peak lr of the task
            group["lr"] = group.get("initial_lr", group["lr"])
            group.pop("initial_lr", None)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        done = (epoch - first) * per_epoch  # > 0 only when resuming inside a task
        if done:
            scheduler.last_epoch = done
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
                group["lr"] = base * schedule(done)
        scheduler._blockexp_trace_task = task
        trainer.strategy.lr_scheduler_configs = [
            LRSchedulerConfig(scheduler, interval="step", frequency=1)
        ]

    # -------------------------------------------------------------------- evaluation
    def evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule, round_index: int
    ) -> list[float]:
        """Score every task with greedy generation; fill row ``round_index`` of R."""
        dm = self._datamodule(trainer)
        model = getattr(pl_module, "model", None) or pl_module
        scores = []
        for task in self.tasks:
            records = dm.scored_records(task)
            budget = dm.max_new_tokens(task)
            limit = max(1, dm.max_length - budget)
            prompts = [dm.encode_prompt(r["prompt"])[-limit:] for r in records]
            preds = generate_answers(model, dm.tokenizer, prompts, budget, dm.eval_batch_size)
            metric = build_metric(self.metrics[task])
            metric.update(preds, [r["answer"] for r in records], [r["prompt"] for r in records])
            score = float(metric.compute())
            scores.append(score)
            if self.save_predictions and trainer.is_global_zero:
                lines = "".join(
                    json.dumps({"prompt": r["prompt"], "answer": r["answer"], "prediction": p})
                    + "\n"
                    for r, p in zip(records, preds, strict=True)
                )
                _write_atomic(
                    self.out_dir / "predictions" / f"round{round_index + 1}_{task}.jsonl", lines
                )
        self.R[round_index] = scores
        return scores

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = self._datamodule(trainer)
        task = dm.current_task
        if trainer.current_epoch != dm.task_bounds(task)[1]:
            return
        scores = self.evaluate(trainer, pl_module, task)
        t = task + 1
        op = overall_performance(self.R[:t], t)
        bwt = backward_transfer(self.R[:t], t)
        logs = {"trace/OP": op, "trace/BWT": bwt}
        logs.update({f"trace/{name}": s for name, s in zip(self.tasks, scores, strict=True)})
        pl_module.log_dict({k: float(v) for k, v in logs.items()}, on_epoch=True, on_step=False)
        if trainer.is_global_zero:
            self.write_reports()
            self.console.print(
                f"[bold]TRACE round {t}/{len(self.tasks)}[/] (trained {self.tasks[task]}): "
                f"OP {op:.3f}  BWT {bwt:.3f}"
            )

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.R is not None and not np.isnan(self.R[0, 0]):
            table, _ = render_summary(self.tasks, self.R)
            self.console.print(table)
            self.console.print(f"TRACE results written to {self.out_dir}")

    # ----------------------------------------------------------------------- outputs
    def results(self) -> dict[str, Any]:
        """R, OP_t and BWT_t of the rounds done so far, as plain data."""
        rounds = int((~np.isnan(np.diag(self.R))).sum())
        return {
            "tasks": self.tasks,
            "metrics": self.metrics,
            "rounds_done": rounds,
            "R": [[None if math.isnan(v) else float(v) for v in row] for row in self.R],
            "OP": [overall_performance(self.R[:t], t) for t in range(1, rounds + 1)],
            "BWT": [backward_transfer(self.R[:t], t) for t in range(1, rounds + 1)],
        }

    def write_reports(self) -> None:
        """Write R.csv, R.json, R.png and summary.md (each atomically)."""
        out = self.out_dir
        results = self.results()
        _write_atomic(out / "R.json", json.dumps(results, indent=2) + "\n")
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["round", "trained", *self.tasks])
        for r in range(results["rounds_done"]):
            row = ["" if v is None else f"{v:.6f}" for v in results["R"][r]]
            writer.writerow([r + 1, self.tasks[r], *row])
        _write_atomic(out / "R.csv", buf.getvalue())
        _, md = render_summary(self.tasks, self.R)
        _write_atomic(out / "summary.md", md)
        _write_atomic(out / "R.png", self._heatmap_png())

    def _heatmap_png(self) -> bytes:
        from matplotlib.figure import Figure

        n = len(self.tasks)
        fig = Figure(figsize=(1.2 + 0.9 * n, 1.0 + 0.7 * n))
        ax = fig.add_subplot()
        data = np.ma.masked_invalid(self.R)
        image = ax.imshow(data, cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(n), self.tasks, rotation=45, ha="right")
        ax.set_yticks(range(n), [f"{r + 1}: {t}" for r, t in enumerate(self.tasks)])
        ax.set_xlabel("evaluated task")
        ax.set_ylabel("after training round")
        for r in range(n):
            for i in range(n):
                if not math.isnan(self.R[r, i]):
                    ax.text(
                        i,
                        r,
                        f"{self.R[r, i]:.2f}",
                        ha="center",
                        va="center",
                        color="white" if self.R[r, i] < 0.5 else "black",
                        fontsize=8,
                    )
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        return buf.getvalue()

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "R": [] if self.R is None else self.R.tolist()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("R"):
            self.R = np.array(state_dict["R"], dtype=np.float64)
            self.tasks = list(state_dict.get("tasks", self.tasks))
