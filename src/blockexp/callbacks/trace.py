"""The TRACE callback: trains the task sequence under its protocol, scores the tasks after each
one, and writes the score matrix R with OP and BWT (LLaMA Pro, Sec. 4.4, eqs. 6-7).

Used with :class:`blockexp.data.TRACEDataModule` in a single ``trainer.fit``. At set-up it sets
``trainer.reload_dataloaders_every_n_epochs = 1`` (the data module serves the task of the
running epoch) and ``max_epochs`` to the sum of the tasks' epochs.

Optimizer and schedule follow the data module's ``protocol``
(:mod:`blockexp.continual.protocol`):

* ``trace``: the module's AdamW is kept for the whole sequence with weight decay 0 and one
  constant learning rate after ``warmup_steps`` of linear warmup (TRACE's
  ``get_constant_schedule_with_warmup``); the module's cosine schedule is not used.
* ``reset``: at every task boundary AdamW is rebuilt (no moments carried over) and the module's
  warmup + cosine schedule restarts over that task's steps.

After the last epoch of task ``t`` the tasks chosen by ``eval_tasks`` (``seen``: tasks 1..t) are
scored by generation with the protocol's decoding, and row ``t`` of R is filled. Outputs in
``output_dir`` (default ``<default_root_dir>/trace``), rewritten atomically after every round:
``R.csv``, ``R.json`` (R, OP_t, BWT_t and the settings), ``R.png`` (heatmap and OP/BWT curves),
``summary.md`` (the layout of the LLaMA Pro paper's Tables 11-13), and per round and task
``predictions/round<t>_<task>.jsonl`` plus TRACE's ``predictions/results-<t-1>-<i>-<task>.json``
(:mod:`blockexp.continual.report`). With ``save_round_models`` every round's model is written as
a Hugging Face directory ``models/<t-1>/`` (TRACE's ``<output_dir>/<round>`` layout).
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.types import LRSchedulerConfig
from rich.console import Console

from blockexp.checkpoint import WEIGHTS_FORMATS
from blockexp.continual import report
from blockexp.continual.generation import generate_answers
from blockexp.continual.protocol import constant_with_warmup
from blockexp.data.trace import TRACEDataModule
from blockexp.metrics.continual import backward_transfer, overall_performance
from blockexp.metrics.text import build_metric

__all__ = ["TRACECallback", "generate_answers", "render_summary"]

render_summary = report.render_summary


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
        # The scheduler this callback installed and what for (compared by identity: a marker
        # attribute would travel into checkpoints with the scheduler's state and come back on
        # the module's own scheduler when resuming).
        self._installed: tuple[Any, Any] | None = None
        self._default_dir = Path("trace")
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

    def _settings(self, dm: TRACEDataModule) -> dict[str, Any]:
        return {"protocol": dm.protocol.name, "scoring": dm.scoring, "eval_tasks": dm.eval_tasks}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = self._datamodule(trainer)
        if trainer.max_steps not in (-1, None):
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
        trainer.fit_loop.max_epochs = dm.total_epochs
        self.tasks = list(dm.tasks)
        self.metrics = dict(dm.task_metrics)
        n = len(self.tasks)
        if self.R is None or self.R.shape != (n, n):
            self.R = np.full((n, n), np.nan)
        self._settings_now = self._settings(dm)

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else self._default_dir

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._default_dir = Path(trainer.default_root_dir) / "trace"
        dm = self._datamodule(trainer)
        weight_decay = pl_module.hparams.get("weight_decay", 0.0) if pl_module.hparams else 0.0
        if dm.protocol.weight_decay is not None and weight_decay != dm.protocol.weight_decay:
            rank_zero_info(
                f"TRACE protocol {dm.protocol.name!r}: weight decay {dm.protocol.weight_decay} "
                f"(the module's weight_decay={weight_decay} is not used; "
                "data.init_args.protocol=reset keeps it)."
            )

    # -------------------------------------------------------------------- optimisation
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = self._datamodule(trainer)
        if not trainer.optimizers:
            return
        if dm.protocol.one_optimizer:
            self._one_schedule(trainer, dm)
        else:
            self._task_schedule(trainer, pl_module, dm)

    @staticmethod
    def _restart_from_peak(optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            group["lr"] = group.get("initial_lr", group["lr"])
            group.pop("initial_lr", None)

    def _current(self, trainer: L.Trainer, tag: Any) -> bool:
        configs = trainer.strategy.lr_scheduler_configs
        return (
            self._installed is not None
            and bool(configs)
            and configs[0].scheduler is self._installed[0]
            and self._installed[1] == tag
        )

    def _install(self, trainer: L.Trainer, scheduler, done: int, tag: Any) -> None:
        if done:  # resuming: continue the schedule where it stopped
            scheduler.last_epoch = done
            for group, base, fn in zip(
                scheduler.optimizer.param_groups,
                scheduler.base_lrs,
                scheduler.lr_lambdas,
                strict=True,
            ):
                group["lr"] = base * fn(done)
        self._installed = (scheduler, tag)
        trainer.strategy.lr_scheduler_configs = [
            LRSchedulerConfig(scheduler, interval="step", frequency=1)
        ]

    def _one_schedule(self, trainer: L.Trainer, dm: TRACEDataModule) -> None:
        """``trace``: one optimizer, weight decay 0, one constant schedule after warmup."""
        optimizer = trainer.optimizers[0]
        for group in optimizer.param_groups:
            group["weight_decay"] = dm.protocol.weight_decay
        if self._current(trainer, "trace"):
            return
        self._restart_from_peak(optimizer)
        schedule = functools.partial(constant_with_warmup, warmup_steps=dm.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self._install(trainer, scheduler, trainer.global_step, "trace")

    def _task_schedule(
        self, trainer: L.Trainer, pl_module: L.LightningModule, dm: TRACEDataModule
    ) -> None:
        """``reset``: fresh AdamW and the module's warmup + cosine schedule for every task."""
        task = dm.current_task
        first, _ = dm.task_bounds(task)
        if self._current(trainer, ("reset", task)):
            return
        epoch = trainer.current_epoch
        if task > 0 and epoch == first:
            trainer.strategy.setup_optimizers(trainer)
        optimizer = trainer.optimizers[0]
        hp = pl_module.hparams
        per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        total = max(1, per_epoch * dm.epochs[task])
        warmup = int(round(float(hp.get("warmup_ratio", 0.0)) * total))
        min_ratio = float(hp.get("min_lr_ratio", 0.0))
        from blockexp.module import cosine_with_warmup

        schedule = functools.partial(
            cosine_with_warmup, total=total, warmup=warmup, min_ratio=min_ratio
        )
        self._restart_from_peak(optimizer)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        done = (epoch - first) * per_epoch  # > 0 only when resuming inside a task
        self._install(trainer, scheduler, done, ("reset", task))

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
            task = self.tasks[i]
            started = time.perf_counter()
            records = dm.scored_records(task)
            prompts = [r["prompt"] for r in records]
            answers = [r["answer"] for r in records]
            predictions = generate_answers(
                model,
                dm.tokenizer,
                dm.encode_prompts(prompts),
                dm.max_new_tokens(task),
                batch_size=dm.eval_batch_size,
                do_sample=dm.do_sample,
                temperature=dm.temperature,
                seed=dm.seed * 1_000_003 + round_index * len(self.tasks) + i,
                autocast=autocast() if autocast is not None else None,
                pad_token_id=dm.pad_token_id,
            )
            metric = build_metric(self.metrics[task], dm.scoring)
            per_sample = metric.scores(predictions, answers, prompts)
            score = float(np.mean(per_sample)) if per_sample else 0.0
            self.R[round_index, i] = score
            scores[task] = score
            if self.save_predictions and trainer.is_global_zero:
                report.write_predictions(
                    self.out_dir / "predictions",
                    round_index,
                    i,
                    task,
                    records,
                    predictions,
                    per_sample,
                    self.metrics[task],
                    dm.scoring,
                )
            rank_zero_info(
                f"  TRACE round {round_index + 1}: {task} {self.metrics[task]} {score:.3f} "
                f"({len(records)} prompts, {time.perf_counter() - started:.1f}s)"
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
        logs = {"trace/OP": op, "trace/BWT": bwt}
        logs.update({f"trace/{name}": s for name, s in scores.items()})
        pl_module.log_dict({k: float(v) for k, v in logs.items()}, on_epoch=True, on_step=False)
        if trainer.is_global_zero:
            self.write_reports(dm)
            self.console.print(
                f"[bold]TRACE round {t}/{len(self.tasks)}[/] (trained {self.tasks[task]}): "
                f"OP {op:.3f}  BWT {bwt:.3f}"
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
        saved = {k: state_dict[k] for k in self._settings_now if k in state_dict}
        changed = {k: (v, self._settings_now[k]) for k, v in saved.items()}
        changed = {k: pair for k, pair in changed.items() if pair[0] != pair[1]}
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
