"""Scoring one TRACE task after one round: generate its answers and score them."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from blockexp.trace.generation import generate_answers
from blockexp.trace.text import score_samples

__all__ = ["TaskResult", "score_task"]


@dataclass
class TaskResult:
    """One task's evaluation in one round.

    Attributes:
        task: the task's name.
        index: its index in the task list.
        metric: the metric's name.
        records: the scored ``{"prompt", "answer"}`` records.
        predictions: the decoded generations.
        per_sample: each record's score.
        seconds: wall time of generation and scoring.
    """

    task: str
    index: int
    metric: str
    records: list[dict[str, str]]
    predictions: list[str]
    per_sample: list[float]
    seconds: float

    @property
    def score(self) -> float:
        """The mean per-sample score, in [0, 1] (TRACE's aggregate; 0 without samples)."""
        return float(sum(self.per_sample) / len(self.per_sample)) if self.per_sample else 0.0


def score_task(
    model: torch.nn.Module,
    dm,
    round_index: int,
    task_index: int,
    autocast: contextlib.AbstractContextManager | None = None,
) -> TaskResult:
    """Generate and score task ``task_index`` after round ``round_index`` (both 0-based).

    Decoding follows the data module (protocol's sampling and budget; prompts encoded as the
    protocol says); the sampling seed depends on the data module's seed, the round and the task,
    so a run is reproducible and resuming gives the same generations.

    Args:
        model: the causal LM (or its peft wrapper).
        dm: the :class:`~blockexp.trace.data.TRACEDataModule`.
        round_index: the round just trained.
        task_index: the task to score.
        autocast: entered around generation (the module's precision policy).
    """
    started = time.perf_counter()
    task = dm.tasks[task_index]
    records = dm.scored_records(task)
    prompts = [r["prompt"] for r in records]
    predictions = generate_answers(
        model,
        dm.tokenizer,
        dm.encode_prompts(prompts),
        dm.max_new_tokens(task),
        batch_size=dm.eval_batch_size,
        do_sample=dm.do_sample,
        temperature=dm.temperature,
        seed=dm.seed * 1_000_003 + round_index * len(dm.tasks) + task_index,
        autocast=autocast,
        pad_token_id=dm.pad_token_id,
    )
    metric = dm.metric_name(task)
    per_sample = score_samples(
        metric, predictions, [r["answer"] for r in records], prompts, dm.scoring
    )
    return TaskResult(
        task,
        task_index,
        metric,
        records,
        predictions,
        per_sample,
        time.perf_counter() - started,
    )
