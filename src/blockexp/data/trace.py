"""The TRACE continual-learning benchmark (Wang et al., 2023, arXiv:2310.06762) as a DataModule.

Reads the released layout::

    <root>/<Task>/train.json   JSON list of {"prompt": ..., "answer": ...}
    <root>/<Task>/eval.json    (optional; validation loss of the current task)
    <root>/<Task>/test.json    scored by generation after every task (``eval_split``)

Tasks are learned one after the other, in ``tasks`` order (default: the order of the TRACE and
LLaMA Pro papers, :data:`TRACE_ORDER`), each for ``epochs`` epochs. The module picks the task of
the running epoch itself (``trainer.current_epoch``), so one ``trainer.fit`` with
``reload_dataloaders_every_n_epochs=1`` walks through the whole sequence (set up by
:class:`blockexp.callbacks.TRACECallback`, which also scores every task after each one).

Training examples are ``prompt + answer + eos`` with the loss on the answer and eos only
(``prompt_format="plain"``, as TRACE trains), or the conversation
``[user: prompt, assistant: answer]`` rendered by the chat template (``"chat"``). Over-long
examples lose the start of the prompt, never the answer.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from blockexp.data.records import DataError, iter_json_records
from blockexp.data.sft import (
    IGNORE_INDEX,
    SFTDataset,
    _Collator,
    chat_template_for,
    encode_conversation,
)
from blockexp.metrics.text import METRICS, TRACE_TASK_METRICS
from blockexp.tokenization import load_tokenizer

__all__ = ["TRACE_ORDER", "TRACEDataModule", "read_trace_split"]

#: Task order of the LLaMA Pro paper's Tables 11-13 (and TRACE's default order).
TRACE_ORDER: tuple[str, ...] = (
    "C-STANCE",
    "FOMC",
    "MeetingBank",
    "Py150",
    "ScienceQA",
    "NumGLUE-cm",
    "NumGLUE-ds",
    "20Minuten",
)
SPLITS = ("train", "eval", "test")


def read_trace_split(path: str | Path) -> list[dict[str, str]]:
    """Read one TRACE split file: a JSON list of records with string ``prompt`` and ``answer``.

    Raises:
        FileNotFoundError: if the file is missing.
        DataError: on malformed JSON or records, with file and line; on an empty file.
    """
    records = []
    for line, record in iter_json_records(path):
        where = f"{path}:{line}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected an object with 'prompt' and 'answer'")
        for field in ("prompt", "answer"):
            if field not in record:
                keys = ", ".join(repr(k) for k in list(record)[:10]) or "none"
                raise DataError(f"{where}: record has no {field!r} field (fields: {keys})")
            if not isinstance(record[field], str):
                raise DataError(
                    f"{where}: {field!r} must be a string, got {type(record[field]).__name__}"
                )
        records.append({"prompt": record["prompt"], "answer": record["answer"]})
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _cap(records: list[dict[str, str]], cap: int | None, seed: int, tag: str) -> list:
    """A seeded subset of ``cap`` records, in file order (all records when ``cap`` is None)."""
    if cap is None or cap >= len(records):
        return records
    rng = np.random.default_rng([seed, *tag.encode()])
    keep = np.sort(rng.choice(len(records), size=cap, replace=False))
    return [records[i] for i in keep]


class TRACEDataModule(L.LightningDataModule):
    """The TRACE tasks in sequence.

    Args:
        root: directory holding one sub-directory per task.
        tokenizer: tokenizer spec (linked from ``model.tokenizer`` by the CLI).
        tasks: task directory names in training order; default :data:`TRACE_ORDER`.
        epochs: epochs per task: one number for all, or one per task (TRACE uses 5, 3, 7, 5, 3,
            5, 5, 7 for its default order).
        max_train_samples: per-task cap on training records (seeded subset), None for all.
        max_eval_samples: per-task cap on scored records of ``eval_split``.
        eval_split: the split scored by generation (``test`` as TRACE; or ``eval``).
        task_metrics: metric per task (see :data:`blockexp.metrics.METRICS`); TRACE's own tasks
            default to :data:`blockexp.metrics.TRACE_TASK_METRICS`, other tasks must be listed.
        max_new_tokens: generation budget, for all tasks or per task; default per task: the
            longest tokenised answer among its scored records, plus 8.
        prompt_format: ``plain`` (prompt + answer + eos, as TRACE) or ``chat`` (chat template).
        max_length: the longest training example (prompts are cut from the left to fit).
        batch_size: training batch size.
        eval_batch_size: batch size of generation and validation.
        num_workers: DataLoader worker processes.
        seed: seed of the sample caps and the shuffle.
        trust_remote_code: forwarded to the tokenizer loader.
    """

    def __init__(
        self,
        root: str,
        tokenizer: str = "byte",
        tasks: list[str] | None = None,
        epochs: int | list[int] = 1,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        eval_split: str = "test",
        task_metrics: dict[str, str] | None = None,
        max_new_tokens: int | dict[str, int] | None = None,
        prompt_format: str = "plain",
        max_length: int = 1024,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"TRACE root {root!r} is not a directory (resolved to {self.root.resolve()}); "
                "generate a synthetic one with `python -m blockexp.data.trace_synthetic DIR`"
            )
        self.tasks = list(tasks) if tasks else list(TRACE_ORDER)
        if len(set(self.tasks)) != len(self.tasks):
            raise DataError(f"tasks must be unique, got {self.tasks}")
        if eval_split not in SPLITS:
            raise DataError(f"eval_split must be one of {SPLITS}, got {eval_split!r}")
        if prompt_format not in ("plain", "chat"):
            raise DataError(f"prompt_format must be 'plain' or 'chat', got {prompt_format!r}")
        epochs_list = [epochs] * len(self.tasks) if isinstance(epochs, int) else list(epochs)
        if len(epochs_list) != len(self.tasks) or any(
            isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in epochs_list
        ):
            raise DataError(
                f"epochs must be an integer >= 1 or one such integer per task "
                f"({len(self.tasks)} tasks), got {epochs!r}"
            )
        for name, cap in (
            ("max_train_samples", max_train_samples),
            ("max_eval_samples", max_eval_samples),
        ):
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
                raise DataError(f"{name} must be None or an integer >= 1, got {cap!r}")
        metrics = {**TRACE_TASK_METRICS, **(task_metrics or {})}
        missing = [t for t in self.tasks if t not in metrics]
        if missing:
            raise DataError(
                f"no metric for tasks {missing}: set data.init_args.task_metrics, e.g. "
                f"{{{missing[0]!r}: 'accuracy'}} (metrics: {sorted(METRICS)})"
            )
        unknown = {t: m for t, m in metrics.items() if t in self.tasks and m not in METRICS}
        if unknown:
            raise DataError(f"unknown metrics {unknown}; choose from {sorted(METRICS)}")
        for task in self.tasks:
            for split in ("train", eval_split):
                path = self.root / task / f"{split}.json"
                if not path.is_file():
                    raise FileNotFoundError(
                        f"TRACE task {task!r}: {path} is missing (expected "
                        f"<root>/<Task>/{{train,eval,test}}.json)"
                    )
        self.epochs = epochs_list
        self.task_metrics = {t: metrics[t] for t in self.tasks}
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.eval_split = eval_split
        self._max_new_tokens = max_new_tokens
        self.prompt_format = prompt_format
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
        self.task_index = 0  # used when no trainer is attached
        self._train: dict[str, SFTDataset] = {}
        self._val: dict[str, SFTDataset] = {}
        self._scored: dict[str, list[dict[str, str]]] = {}

    # -------------------------------------------------------------------------- schedule
    @property
    def total_epochs(self) -> int:
        """Epochs of the whole sequence."""
        return sum(self.epochs)

    def task_bounds(self, task: int) -> tuple[int, int]:
        """``(first epoch, last epoch)`` (0-based, inclusive) of task number ``task``."""
        start = sum(self.epochs[:task])
        return start, start + self.epochs[task] - 1

    def task_for_epoch(self, epoch: int) -> int:
        """The task trained during ``epoch`` (the last task for epochs past the end)."""
        for t, end in enumerate(itertools.accumulate(self.epochs)):
            if epoch < end:
                return t
        return len(self.tasks) - 1

    @property
    def current_task(self) -> int:
        """The task of the running epoch (``task_index`` when no trainer is attached)."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return self.task_for_epoch(trainer.current_epoch)
        return self.task_index

    # -------------------------------------------------------------------------- encoding
    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids the model sees before it answers (also the generation input)."""
        if self.prompt_format == "chat":
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                chat_template=chat_template_for(self.tokenizer),
                tokenize=False,
                add_generation_prompt=True,
            )
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]

    def encode_example(self, prompt: str, answer: str) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)`` of one record: labels only on the answer (and eos)."""
        if self.prompt_format == "chat":
            messages = [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": answer},
            ]
            ids, labels = encode_conversation(self.tokenizer, messages)
        else:
            head = self.encode_prompt(prompt)
            tail = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            tail = [*tail, self.tokenizer.eos_token_id]
            ids, labels = head + tail, [IGNORE_INDEX] * len(head) + tail
        if len(ids) > self.max_length:  # cut the prompt's start, keep the answer
            first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
            cut = min(len(ids) - self.max_length, first)
            ids, labels = ids[cut:][: self.max_length], labels[cut:][: self.max_length]
        return ids, labels

    def answer_length(self, answer: str) -> int:
        """Tokens of an answer (without eos)."""
        return len(self.tokenizer(answer, add_special_tokens=False)["input_ids"])

    # -------------------------------------------------------------------------- data
    def _records(self, task: str, split: str, cap: int | None) -> list[dict[str, str]]:
        return _cap(
            read_trace_split(self.root / task / f"{split}.json"), cap, self.seed, f"{task}/{split}"
        )

    def setup(self, stage: str | None = None) -> None:
        """Read and tokenise every task (idempotent)."""
        if self._train:
            return
        for task in self.tasks:
            train = self._records(task, "train", self.max_train_samples)
            self._train[task] = SFTDataset([self.encode_example(**r) for r in train])
            val_path = self.root / task / "eval.json"
            val = self._records(task, "eval", self.max_eval_samples) if val_path.is_file() else []
            self._val[task] = SFTDataset([self.encode_example(**r) for r in val])
            self._scored[task] = self._records(task, self.eval_split, self.max_eval_samples)

    def scored_records(self, task: str) -> list[dict[str, str]]:
        """The records of ``eval_split`` scored by generation for ``task``."""
        self.setup()
        return self._scored[task]

    def max_new_tokens(self, task: str) -> int:
        """Generation budget of ``task``."""
        if isinstance(self._max_new_tokens, int):
            return self._max_new_tokens
        if isinstance(self._max_new_tokens, dict) and task in self._max_new_tokens:
            return int(self._max_new_tokens[task])
        return max(self.answer_length(r["answer"]) for r in self.scored_records(task)) + 8

    def metric_name(self, task: str) -> str:
        """The metric of ``task`` (a key of :data:`blockexp.metrics.METRICS`)."""
        return self.task_metrics[task]

    def train_dataset_for(self, task: str) -> SFTDataset:
        """Tokenised training examples of ``task``."""
        self.setup()
        return self._train[task]

    def _loader(self, dataset: SFTDataset, shuffle: bool, batch_size: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            collate_fn=_Collator(self.tokenizer.pad_token_id, "right"),
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        """Training batches of the current task (re-made every epoch)."""
        self.setup()
        task = self.tasks[self.current_task]
        return self._loader(self._train[task], True, self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        """Validation loss batches of the current task's ``eval.json`` (empty if absent)."""
        self.setup()
        dataset = self._val[self.tasks[self.current_task]]
        if len(dataset) == 0:
            return []
        return self._loader(dataset, False, self.eval_batch_size)

    def describe(self) -> dict[str, Any]:
        """Per-task counts: training examples, scored records, metric, epochs."""
        self.setup()
        return {
            task: {
                "train": len(self._train[task]),
                "scored": len(self._scored[task]),
                "metric": self.task_metrics[task],
                "epochs": self.epochs[i],
            }
            for i, task in enumerate(self.tasks)
        }
