"""The TRACE callback: orchestrates a TRACE run and records the score matrix R, OP and BWT.

Schedule, evaluation and reports live in :mod:`blockexp.trace`; OP and BWT are LLaMA Pro's
eqs. 6-7 (Sec. 4.4), and the TRACE paper's BWT is reported beside (:mod:`blockexp.trace.matrix`).

Used with :class:`blockexp.trace.data.TRACEDataModule` in a single ``trainer.fit``. At set-up it sets
``trainer.reload_dataloaders_every_n_epochs = 1`` (the data module serves the task of the
running epoch) and ``max_epochs`` to the sum of the tasks' epochs. When the fit starts it prints
one line per task: examples, epochs, the batch (per device x devices x accumulation) and the
optimizer steps per epoch and in all (:func:`blockexp.trace.batch.plan_line`).

Optimizer and schedule follow the data module's ``protocol``
(:mod:`blockexp.trace.protocol`):

* ``trace``: the module's AdamW is kept for the whole sequence with weight decay 0 and one
  constant learning rate after ``warmup_steps`` of linear warmup (TRACE's
  ``get_constant_schedule_with_warmup``); the module's cosine schedule is not used.
* ``reset``: at every task boundary AdamW is rebuilt (no moments carried over) and the module's
  warmup + cosine schedule restarts over that task's steps.

After the last epoch of task ``t`` the tasks chosen by ``eval_tasks`` (``seen``: tasks 1..t) are
scored by generation with the protocol's decoding, and row ``t`` of R is filled. Outputs in
``output_dir`` (default ``<default_root_dir>/trace``), rewritten atomically after every round:
``R.csv``, ``R.json`` (R, OP_t, both BWT_t and the settings), ``R.png`` (heatmap and OP/BWT curves),
``summary.md`` (the layout of the LLaMA Pro paper's Tables 11-13), and per round and task
``predictions/round<t>_<task>.jsonl`` plus TRACE's ``predictions/results-<t-1>-<i>-<task>.json``
(:mod:`blockexp.trace.report`). With ``save_round_models`` every round's model is written as
a Hugging Face directory ``models/<t-1>/`` (TRACE's ``<output_dir>/<round>`` layout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from rich.console import Console

from blockexp.io.save import WEIGHTS_FORMATS
from blockexp.trace import report
from blockexp.trace.batch import BatchPlan, plan_line
from blockexp.trace.data import TRACEDataModule
from blockexp.trace.matrix import backward_transfer, overall_performance
from blockexp.trace.schedule import ProtocolScheduler
from blockexp.trace.scoring import score_task

__all__ = ["TRACECallback"]


class TRACECallback(L.Callback):
    """Drives a TRACE run and records the score matrix R, OP and BWT.

    Args:
        output_dir: where R and the reports go (default ``<trainer.default_root_dir>/trace``).
        save_predictions: write every round's generations (JSON Lines and TRACE's result files).
        save_round_models: after each task, write the model (as exported: LoRA merged, ...) to
            ``<output_dir>/models/<round>/`` with rounds counted from 0, the layout TRACE's
            ``inference/infer_single.py`` reads (``--inference_model_path <output_dir>/models``).
        round_model_format: ``safetensors`` (``save_pretrained``) or ``pytorch_bin``
            (``pytorch_model.bin``, the weights file TRACE's inference script loads).
    """

    def __init__(
        self,
        output_dir: str | None = None,
        save_predictions: bool = True,
        save_round_models: bool = False,
        round_model_format: str = "safetensors",
    ) -> None:
        if round_model_format not in WEIGHTS_FORMATS:
            raise ValueError(
                f"round_model_format must be one of {list(WEIGHTS_FORMATS)}, "
                f"got {round_model_format!r}"
            )
        self.output_dir = output_dir
        self.save_predictions = save_predictions
        self.save_round_models = save_round_models
        self.round_model_format = round_model_format
        self.tasks: list[str] = []
        self.metrics: dict[str, str] = {}
        self.R: np.ndarray | None = None
        self._settings_now: dict[str, Any] = {}
        self._scheduler = ProtocolScheduler()
        self._default_dir = Path("trace")
        self.console = Console()

    # --------------------------------------------------------------------------- set-up
    def _datamodule(self, trainer: L.Trainer) -> TRACEDataModule:
        dm = trainer.datamodule
        if not isinstance(dm, TRACEDataModule):
            raise TypeError(
                "TRACECallback needs data: {class_path: blockexp.trace.data.TRACEDataModule, ...}; "
                f"got {type(dm).__name__}"
            )
        return dm

    def _settings(self, dm: TRACEDataModule) -> dict[str, Any]:
        return {"protocol": dm.protocol.name, "scoring": dm.scoring, "eval_tasks": dm.eval_tasks}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = self._datamodule(trainer)
        if trainer.max_steps not in (-1, None) and not trainer.fast_dev_run:
            raise ValueError(
                f"trainer.max_steps={trainer.max_steps} would cut the TRACE task sequence short; "
                "remove it (the length is set by data.init_args.epochs per task)"
            )
        if self.save_round_models and not hasattr(pl_module, "export"):
            raise TypeError(
                "save_round_models needs a module with export() (blockexp's "
                f"BlockExpansionModule); got {type(pl_module).__name__}"
            )
        trainer.reload_dataloaders_every_n_epochs = 1
        if not trainer.fast_dev_run:  # a smoke run keeps its single step
            trainer.fit_loop.max_epochs = dm.total_epochs
        self.tasks = list(dm.tasks)
        self.metrics = dict(dm.task_metrics)
        n = len(self.tasks)
        if self.R is None or self.R.shape != (n, n):
            self.R = np.full((n, n), np.nan)
        self._settings_now = self._settings(dm)
        self._default_dir = Path(trainer.default_root_dir) / "trace"
        from blockexp.evaluation.general import GeneralEval

        for callback in trainer.callbacks:
            if isinstance(callback, GeneralEval):
                callback.report_beside(self, self.out_dir)

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else self._default_dir

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = self._datamodule(trainer)
        if not trainer.fast_dev_run:  # one line per task: examples, epochs, batch, steps
            plan = BatchPlan(dm.batch_size, trainer.world_size, trainer.accumulate_grad_batches)
            for task, counts in dm.describe().items():
                rank_zero_info(
                    plan_line(
                        task, counts["train"], counts["epochs"], plan, trainer.limit_train_batches
                    )
                )
        settings = getattr(pl_module, "settings", None)  # a BlockExpansionModule's
        weight_decay = settings.optim.weight_decay if settings is not None else 0.0
        if dm.protocol.weight_decay is not None and weight_decay != dm.protocol.weight_decay:
            rank_zero_info(
                f"TRACE protocol {dm.protocol.name!r}: weight decay {dm.protocol.weight_decay} "
                f"(the module's weight_decay={weight_decay} is not used; "
                "data.init_args.protocol=reset keeps it)."
            )

    # -------------------------------------------------------------------- optimisation
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._scheduler.on_epoch_start(trainer, pl_module, self._datamodule(trainer))

    # -------------------------------------------------------------------- evaluation
    def evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule, round_index: int
    ) -> dict[str, float]:
        """Score the tasks of round ``round_index`` (0-based) by generation; fill that row of R.

        Returns:
            ``{task: score}`` of the tasks scored.
        """
        dm = self._datamodule(trainer)
        model = getattr(pl_module, "model", None) or pl_module
        autocast = getattr(pl_module, "_autocast", None)
        scores: dict[str, float] = {}
        for i in dm.tasks_to_score(round_index):
            result = score_task(
                model, dm, round_index, i, autocast() if autocast is not None else None
            )
            self.R[round_index, i] = result.score
            scores[result.task] = result.score
            if self.save_predictions and trainer.is_global_zero:
                report.write_predictions(
                    self.out_dir / "predictions", round_index, result, dm.scoring
                )
            rank_zero_info(
                f"  TRACE round {round_index + 1}: {result.task} {result.metric} "
                f"{result.score:.3f} ({len(result.records)} prompts, {result.seconds:.1f}s)"
            )
        return scores

    def _save_round_model(self, trainer: L.Trainer, pl_module: L.LightningModule, r: int) -> None:
        if not trainer.is_global_zero:
            return
        path = self.out_dir / "models" / str(r)
        pl_module.export(path, overwrite=True, weights_format=self.round_model_format)
        rank_zero_info(f"  TRACE round {r + 1}: model written to {path}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = self._datamodule(trainer)
        task = dm.current_task
        if trainer.current_epoch != dm.task_bounds(task)[1]:
            return
        if self.save_round_models:
            self._save_round_model(trainer, pl_module, task)
        scores = self.evaluate(trainer, pl_module, task)
        t = task + 1
        op = overall_performance(self.R[:t], t)
        bwt = backward_transfer(self.R[:t], t)
        bwt_trace = backward_transfer(self.R[:t], t, "trace")
        logs = {"trace/OP": op, "trace/BWT": bwt, "trace/BWT_trace": bwt_trace}
        logs.update({f"trace/{name}": s for name, s in scores.items()})
        pl_module.log_dict({k: float(v) for k, v in logs.items()}, on_epoch=True, on_step=False)
        if trainer.is_global_zero:
            self.write_reports(dm)
            self.console.print(
                f"[bold]TRACE round {t}/{len(self.tasks)}[/] (trained {self.tasks[task]}): "
                f"OP {op:.3f}  BWT {bwt:.3f} (LLaMA Pro eq. 7; TRACE paper's {bwt_trace:.3f})"
            )

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.R is not None and not np.isnan(self.R[0, 0]):
            table, _ = report.render_summary(self.tasks, self.R)
            self.console.print(table)
            self.console.print(f"TRACE results written to {self.out_dir}")

    # ----------------------------------------------------------------------- outputs
    def _info(self, dm: TRACEDataModule | None) -> dict[str, Any]:
        info: dict[str, Any] = {"metrics": self.metrics}
        if dm is not None:
            info.update(self._settings(dm))
            info["decoding"] = {
                "do_sample": dm.do_sample,
                "temperature": dm.temperature if dm.do_sample else None,
                "max_new_tokens": {t: dm.max_new_tokens(t) for t in self.tasks},
                "max_prompt_len": dm.max_prompt_len,
            }
        return info

    def results(self, dm: TRACEDataModule | None = None) -> dict[str, Any]:
        """R, OP_t and BWT_t of the rounds done so far, with the run's settings, as plain data."""
        return report.results(self.tasks, self.R, **self._info(dm))

    def write_reports(self, dm: TRACEDataModule | None = None) -> None:
        """Write R.csv, R.json, R.png and summary.md (each atomically)."""
        report.write_reports(self.out_dir, self.tasks, self.R, **self._info(dm))

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "R": [] if self.R is None else self.R.tolist(),
            **self._settings_now,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        changed = {
            k: (state_dict[k], now)
            for k, now in self._settings_now.items()
            if k in state_dict and state_dict[k] != now
        }
        if changed:
            what = ", ".join(
                f"{k} {a!r} in the checkpoint, {b!r} now" for k, (a, b) in changed.items()
            )
            raise ValueError(
                f"This TRACE checkpoint was trained with other settings ({what}): resume with "
                "the checkpoint's settings, or start a new run."
            )
        if state_dict.get("R"):
            self.R = np.array(state_dict["R"], dtype=np.float64)
            self.tasks = list(state_dict.get("tasks", self.tasks))
