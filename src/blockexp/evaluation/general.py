"""GeneralEval: lm-eval general-ability scores of the model being trained, before and after.

Forgetting is what block expansion exists to avoid, so it should be measured in the same run:

* at fit start (the base, or the expanded model that computes the base function),
* after every TRACE round (a :class:`~blockexp.trace.data.TRACEDataModule` asks for it),
* at fit end.

Every evaluation runs :func:`blockexp.evaluation.lmeval.harness.evaluate_model` (lm-eval's own task definitions) on
the model *as exported*: the expander's :meth:`~blockexp.expanders.Expander.export_model` (LoRA
merged into a copy, MoE unwrapped from its saver), under the module's precision policy.

Outputs, in ``output_dir`` (default: beside TRACE's R/OP/BWT when a
:class:`~blockexp.trace.callback.TRACECallback` runs, else ``<default_root_dir>/general``):
``general.json`` (every evaluation: label, step, per-task headline scores, their mean and
lm-eval's full results), ``general.csv`` and ``general.png`` (before/after bars per task, or
the general score per TRACE round beside the R heatmap). Scores are also logged as
``general/<task>`` and ``general/mean`` at the trainer's global step.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_info
from rich.console import Console
from rich.table import Table

from blockexp.io.outputs import atomic_write

__all__ = ["GeneralEval"]


class GeneralEval(L.Callback):
    """lm-eval tasks on the in-training model at fit start, after each TRACE round, at fit end.

    Args:
        tasks: lm-eval task/group/tag names or local task YAML names (default: the shipped
            ``blockexp_general`` tag: cloze, 4-way choice and sentence completion), as a list
            or a comma-separated string.
        preset: an evaluation list with per-task shots, headline metrics and group
            aggregation (e.g. ``configs/eval/llama_pro_general.yaml``); replaces ``tasks``. Its
            ``dtype`` and ``batch_size`` are not used: the model in training is evaluated under
            the module's precision policy, in batches of ``batch_size``.
        include_path: extra directories of task YAMLs.
        num_fewshot: override every task's shot count (default: the task's own).
        limit: documents per task (default: all; a ``fast_dev_run`` uses 2).
        batch_size: lm-eval batch size.
        output_dir: where ``general.{json,csv,png}`` go (default: see module docstring).
        at_fit_start / at_fit_end / every_trace_round: when to evaluate.
        seed: lm-eval's seeds (python, numpy, torch, few-shot sampler): one integer for all
            four or a list of four; default: lm-eval's own (0, 1234, 1234, 1234), so the
            few-shot prompts are those of ``lm_eval`` and ``blockexp eval``.
    """

    def __init__(
        self,
        tasks: list[str] | str = "blockexp_general",
        preset: str | None = None,
        include_path: list[str] | None = None,
        num_fewshot: int | None = None,
        limit: int | None = None,
        batch_size: int = 8,
        output_dir: str | None = None,
        at_fit_start: bool = True,
        at_fit_end: bool = True,
        every_trace_round: bool = True,
        seed: int | list[int] | None = None,
    ) -> None:
        from blockexp.evaluation.lmeval.harness import lm_eval_seeds, load_tasks
        from blockexp.evaluation.lmeval.preset import load_preset

        self.tasks = (
            [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
        )
        self.preset = preset
        self.metrics: dict[str, str] = {}
        self.shots: dict[str, int | None] = {}
        self.unsafe = False
        self.aggregate: dict[str, str] = {}
        if preset:
            spec = load_preset(preset)
            self.tasks, self.shots, self.metrics = spec.tasks, spec.num_fewshot, spec.metrics
            self.unsafe, self.aggregate = spec.confirm_run_unsafe_code, spec.aggregate
        self.include_path = list(include_path or [])
        self.num_fewshot = num_fewshot
        self.limit = limit
        self.batch_size = batch_size
        self.output_dir = output_dir
        self.at_fit_start = at_fit_start
        self.at_fit_end = at_fit_end
        self.every_trace_round = every_trace_round
        lm_eval_seeds(seed)  # a malformed seed fails now, not after the first epoch
        self.seed = seed
        self.entries: list[dict[str, Any]] = []
        self._default_dir = Path("general")
        self._trace_dir: Path | None = None
        self._trace_ref = None
        self._rounds = None
        # names and data checked now, so a missing dataset fails before any training
        load_tasks(self.tasks, self.include_path)

    # ------------------------------------------------------------------------ helpers
    @property
    def out_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return self._trace_dir or self._default_dir

    def follow_rounds(self, rounds: Any) -> None:
        """Evaluate after every round of a sequential run: ``rounds.finished_round(trainer)``
        gives the round (from 1) that the ending epoch completes, or ``None`` (TRACE's
        DataModule calls this in its ``setup``)."""
        self._rounds = rounds

    def report_beside(self, matrix: Any, out_dir: Path) -> None:
        """Write the reports into ``out_dir`` next to a score matrix ``matrix.R`` (rows: rounds,
        columns: ``matrix.tasks``), drawn beside the general score (TRACE's callback calls this
        in its ``setup``)."""
        self._trace_ref = matrix
        self._trace_dir = out_dir

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, label: str) -> dict:
        """Run the tasks on the model as exported; record, log and write the entry."""
        from blockexp.evaluation.lmeval.command import eval_view
        from blockexp.evaluation.lmeval.harness import evaluate_model
        from blockexp.evaluation.lmeval.scores import mean_score
        from blockexp.io.tokenization import load_tokenizer

        if any(e["label"] == label and e["step"] == trainer.global_step for e in self.entries):
            return next(e for e in self.entries if e["label"] == label)
        model = pl_module.model
        expander = getattr(pl_module, "expander", None)
        if expander is not None:
            model = eval_view(expander.export_model(model))
        spec = pl_module.tokenizer_spec() if hasattr(pl_module, "tokenizer_spec") else None
        dm_tok = getattr(trainer.datamodule, "tokenizer", None) if trainer.datamodule else None
        tokenizer = load_tokenizer(spec) if spec else dm_tok
        if tokenizer is None:
            raise ValueError("GeneralEval: no tokenizer (the module has no tokenizer_spec()).")
        autocast = getattr(pl_module, "_autocast", None)
        start = time.perf_counter()
        use_cache = getattr(model.config, "use_cache", None)
        model.config.use_cache = True
        try:
            with autocast() if autocast is not None else contextlib.nullcontext():
                results = evaluate_model(
                    model,
                    tokenizer,
                    self.tasks,
                    num_fewshot=self.num_fewshot if self.num_fewshot is not None else self.shots,
                    limit=2 if trainer.fast_dev_run else self.limit,
                    metrics=self.metrics,
                    aggregate=self.aggregate,
                    confirm_run_unsafe_code=self.unsafe,
                    batch_size=self.batch_size,
                    include_paths=self.include_path,
                    seed=self.seed,
                    # no standard errors: lm-eval bootstraps them in a process pool, whose
                    # forked workers inherit Lightning's SIGTERM handler and never exit
                    bootstrap_iters=0,
                )
        finally:
            model.config.use_cache = use_cache
        entry = {
            "label": label,
            "step": int(trainer.global_step),
            "epoch": int(trainer.current_epoch),
            "scores": results["scores"],
            "mean": mean_score(results["scores"]),
            "seconds": time.perf_counter() - start,
            "results": results["results"],
        }
        if results.get("aggregates"):
            entry["aggregates"] = results["aggregates"]
        self.entries.append(entry)
        if trainer.is_global_zero:
            metrics = {f"general/{k}": v for k, v in entry["scores"].items()}
            metrics["general/mean"] = entry["mean"]
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
            self.write_reports()
            scores = ", ".join(f"{k} {v:.4f}" for k, v in entry["scores"].items())
            rank_zero_info(
                f"GeneralEval [{label}] mean {entry['mean']:.4f} ({scores}; "
                f"{entry['seconds']:.1f}s)"
            )
        return entry

    # -------------------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._default_dir = Path(trainer.default_root_dir) / "general"
        if self.at_fit_start and not any(e["label"] == "start" for e in self.entries):
            self.evaluate(trainer, pl_module, "start")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.every_trace_round or self._rounds is None:
            return
        finished = self._rounds.finished_round(trainer)
        if finished is not None:
            self.evaluate(trainer, pl_module, f"round {finished}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the last TRACE round may already have evaluated this very model
        if self.at_fit_end and not (
            self.entries and self.entries[-1]["step"] == trainer.global_step
        ):
            self.evaluate(trainer, pl_module, "end")
        if trainer.is_global_zero and self.entries:
            self.write_reports()  # again: R is complete now, whatever the callback order
            self._print()

    # ------------------------------------------------------------------------ outputs
    def _print(self) -> None:
        tasks = sorted({t for e in self.entries for t in e["scores"]})
        table = Table(title="GeneralEval (lm-eval headline scores)")
        table.add_column("when")
        table.add_column("step", justify="right")
        for task in tasks:
            table.add_column(task, justify="right")
        table.add_column("mean", justify="right")
        for e in self.entries:
            cells = [f"{e['scores'][t]:.4f}" if t in e["scores"] else "" for t in tasks]
            table.add_row(e["label"], str(e["step"]), *cells, f"{e['mean']:.4f}")
        Console().print(table)
        rank_zero_info(f"GeneralEval results written to {self.out_dir}")

    def write_reports(self) -> None:
        """``general.json``, ``general.csv`` and ``general.png`` (each atomically)."""
        out = self.out_dir
        payload = {"tasks": self.tasks, "num_fewshot": self.num_fewshot, "limit": self.limit}
        payload["entries"] = self.entries
        atomic_write(out / "general.json", json.dumps(payload, indent=2, default=float))
        tasks = sorted({t for e in self.entries for t in e["scores"]})
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["label", "step", *tasks, "mean"])
        for e in self.entries:
            writer.writerow(
                [e["label"], e["step"], *[e["scores"].get(t, "") for t in tasks], e["mean"]]
            )
        atomic_write(out / "general.csv", buf.getvalue())
        atomic_write(out / "general.png", self._plot(tasks))

    def _plot(self, tasks: list[str]) -> bytes:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rounds = [e for e in self.entries if e["label"].startswith("round")]
        start = next((e for e in self.entries if e["label"] == "start"), None)
        trace_R = self._trace_matrix()
        if rounds or trace_R is not None:
            fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
            ax_r, ax_g = axes
            if trace_R is not None:
                shown = np.ma.masked_invalid(trace_R)
                image = ax_r.imshow(shown, cmap="viridis", vmin=0, vmax=1)
                names = list(getattr(self._trace_ref, "tasks", []) or range(len(trace_R)))
                ax_r.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
                ax_r.set_yticks(range(len(names)), [str(t + 1) for t in range(len(names))])
                ax_r.set_title("TRACE R (row: after round t, column: task)")
                ax_r.set_ylabel("after round t")
                fig.colorbar(image, ax=ax_r, fraction=0.046)
            else:
                ax_r.axis("off")
            xs = [0] if start else []
            ys = [start["mean"]] if start else []
            for e in rounds:
                xs.append(int(e["label"].split()[1]))
                ys.append(e["mean"])
            ax_g.plot(xs, ys, marker="o", label="mean of headline scores")
            for task in tasks:
                series = ([start] if start else []) + rounds
                ax_g.plot(
                    xs,
                    [e["scores"].get(task, math.nan) for e in series],
                    marker=".",
                    lw=0.8,
                    alpha=0.7,
                    label=task,
                )
            ax_g.set_xlabel("TRACE round (0 = before training)")
            ax_g.set_ylabel("general score")
            ax_g.set_title("General ability per round (lm-eval)")
            ax_g.legend(fontsize=7)
        else:
            fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(tasks) + 2), 4.5))
            width = 0.8 / max(1, len(self.entries))
            x = np.arange(len(tasks) + 1)
            for j, e in enumerate(self.entries):
                values = [e["scores"].get(t, math.nan) for t in tasks] + [e["mean"]]
                ax.bar(x + (j - (len(self.entries) - 1) / 2) * width, values, width,
                       label=f"{e['label']} (step {e['step']})")  # fmt: skip
            ax.set_xticks(x, [*tasks, "mean"], rotation=20, ha="right", fontsize=8)
            ax.set_ylabel("headline score")
            ax.set_title("General ability before / after training (lm-eval)")
            ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        return buf.getvalue()

    def _trace_matrix(self) -> np.ndarray | None:
        trainer_trace = getattr(self, "_trace_ref", None)
        return None if trainer_trace is None or trainer_trace.R is None else trainer_trace.R

    # -------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "entries": self.entries}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("tasks") and state_dict["tasks"] != self.tasks:
            raise ValueError(
                f"GeneralEval: the checkpoint was evaluated on {state_dict['tasks']}, this run "
                f"on {self.tasks}; resume with the same tasks or start a new run."
            )
        self.entries = list(state_dict.get("entries", []))
