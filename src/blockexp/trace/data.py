"""The TRACE continual-learning benchmark (Wang et al., 2023, arXiv:2310.06762) as a DataModule.

Reads the released layout (:mod:`blockexp.trace.tasks`): ``<root>/<Task>/{train,eval,test}.json``.

Tasks are learned one after the other, in ``tasks`` order. When ``root`` holds TRACE's eight task
folders and ``tasks`` is not given, the order is TRACE's
(:data:`~blockexp.trace.tasks.TRACE_ORDER`) and each task gets TRACE's epochs (5, 3, 7, 5, 3, 5, 5,
7). The module picks the task of the running epoch itself (``trainer.current_epoch``), so one
``trainer.fit`` with ``reload_dataloaders_every_n_epochs=1`` walks through the whole sequence (set
up by :class:`blockexp.trace.callback.TRACECallback`, which also scores the tasks after each one).
``global_batch_size`` fixes the examples per optimizer step whatever the device count: at
``setup("fit")`` it sets ``trainer.accumulate_grad_batches`` (:mod:`blockexp.trace.batch`).

``protocol`` (``trace`` by default, or ``reset``; :mod:`blockexp.trace.protocol`) fixes
how the callback schedules the optimizer and decodes; ``scoring`` (``trace`` or ``lenient``;
:mod:`blockexp.trace`) how answers are scored; ``eval_tasks`` which tasks are scored after
each round (``seen``: the tasks trained so far, as TRACE; ``all``: the full matrix).

Training examples (``prompt_format="plain"``) are tokenised as TRACE's collator does: the text
``prompt + answer`` in one piece (no special tokens, cut from the left to
``max_prompt_len + max_ans_len``), then eos appended and bos prepended while the sequence is
shorter than that limit; the loss is on the last ``len(tokens(answer)) + 1`` positions (the
answer tokenised alone, plus eos). Generation prompts are ``prompt`` cut from the left to
``max_prompt_len`` tokens, with bos prepended when shorter. A tokenizer without a bos token uses
its eos token there (TRACE's tokenizer loader does the same). ``prompt_format="chat"`` renders
``[user: prompt, assistant: answer]`` with the chat template instead (not TRACE's format).
"""

from __future__ import annotations

import itertools
from typing import Any

from torch.utils.data import DataLoader

from blockexp.data.base import BlockexpDataModule, check_int
from blockexp.data.collate import IGNORE_INDEX, Collator
from blockexp.data.records import DataError
from blockexp.data.sft.encode import SFTDataset, chat_template_for, encode_conversation
from blockexp.trace.batch import check_before_build, check_global_batch, set_accumulation
from blockexp.trace.protocol import TRACE_EPOCHS, Protocol, get_protocol
from blockexp.trace.tasks import (
    SPLITS,
    check_task_files,
    default_tasks,
    read_trace_split,
    sample_records,
    trace_root,
)
from blockexp.trace.text import METRICS, SCORING, TRACE_TASK_METRICS

__all__ = ["TRACEDataModule"]

EVAL_TASKS = ("seen", "all")


class TRACEDataModule(BlockexpDataModule):
    """The TRACE tasks in sequence (a new training loader every epoch: the running task's).

    Args:
        root: directory holding one sub-directory per task.
        tokenizer: tokenizer spec (linked from ``model.tokenizer`` by the CLI).
        tasks: task directory names in training order; default: TRACE's eight tasks in TRACE's
            order (``root`` must hold them).
        protocol: ``trace`` (TRACE's scripts: one optimizer, constant LR after warmup, weight
            decay 0, sampling at temperature 0.1 with ``max_ans_len`` new tokens) or ``reset``
            (optimizer and warmup + cosine schedule restarted per task, module's weight decay,
            greedy decoding, budget longest gold + 8). See :mod:`blockexp.trace.protocol`.
        scoring: ``trace`` (TRACE's evaluation code, comparable with published tables) or
            ``lenient`` (stripped answers, answer extraction; *not* comparable with TRACE).
        eval_tasks: ``seen`` scores the tasks trained so far after each round (TRACE: 36
            evaluations for 8 tasks); ``all`` scores every task every round (the full matrix).
        epochs: epochs per task: one number for all, or one per task; default TRACE's epochs
            (5, 3, 7, 5, 3, 5, 5, 7 for C-STANCE ... 20Minuten), which only exist for its tasks.
        max_train_samples: per-task cap on training records (seeded subset), None for all.
        max_eval_samples: per-task cap on scored records of ``eval_split``.
        eval_split: the split scored by generation (``test`` as TRACE; or ``eval``).
        task_metrics: metric per task (see :data:`blockexp.trace.text.METRICS`); TRACE's own tasks
            default to :data:`blockexp.trace.text.TRACE_TASK_METRICS`, other tasks must be listed.
        max_prompt_len: prompt tokens kept for generation (cut from the left; TRACE: 1024).
        max_ans_len: answer budget (TRACE: 512); training sequences keep at most
            ``max_prompt_len + max_ans_len`` tokens, cut from the left.
        max_new_tokens: generation budget, for all tasks or per task; default the protocol's
            (``trace``: ``max_ans_len``; ``reset``: the longest gold answer + 8).
        do_sample: sample (True) or decode greedily (False); default the protocol's.
        temperature: sampling temperature; default the protocol's (0.1).
        warmup_steps: linear warmup (optimizer steps) of the ``trace`` protocol's one constant
            schedule (TRACE's scripts: 0). The ``reset`` protocol uses the module's
            ``warmup_ratio`` per task instead.
        prompt_format: ``plain`` (prompt + answer, as TRACE) or ``chat`` (chat template).
        batch_size: training batch size of one device.
        global_batch_size: examples per optimizer step (TRACE's per-device batch x GPUs x
            accumulation); the accumulation is derived from it for the devices in use. ``None``:
            ``trainer.accumulate_grad_batches`` as set.
        eval_batch_size: batch size of generation and validation.
        num_workers: DataLoader worker processes.
        seed: seed of the sample caps, the shuffle and the sampling.
        trust_remote_code: forwarded to the tokenizer loader.
    """

    check_before_build = staticmethod(check_before_build)  # the CLI's early batch check

    reload_every_epoch = True

    def __init__(
        self,
        root: str,
        tokenizer: str = "byte",
        tasks: list[str] | None = None,
        protocol: str = "trace",
        scoring: str = "trace",
        eval_tasks: str = "seen",
        epochs: int | list[int] | None = None,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        eval_split: str = "test",
        task_metrics: dict[str, str] | None = None,
        max_prompt_len: int = 1024,
        max_ans_len: int = 512,
        max_new_tokens: int | dict[str, int] | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        warmup_steps: int = 0,
        prompt_format: str = "plain",
        batch_size: int = 8,
        global_batch_size: int | None = None,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        trust_remote_code: bool = False,
    ) -> None:
        root_path = trace_root(root)
        try:
            protocol_spec: Protocol = get_protocol(protocol)
        except ValueError as err:
            raise DataError(str(err)) from None
        if scoring not in SCORING:
            raise DataError(f"scoring must be one of {list(SCORING)}, got {scoring!r}")
        if eval_tasks not in EVAL_TASKS:
            raise DataError(f"eval_tasks must be one of {list(EVAL_TASKS)}, got {eval_tasks!r}")
        task_list = list(tasks) if tasks else default_tasks(root_path)
        if len(set(task_list)) != len(task_list):
            raise DataError(f"tasks must be unique, got {task_list}")
        if eval_split not in SPLITS:
            raise DataError(f"eval_split must be one of {SPLITS}, got {eval_split!r}")
        if prompt_format not in ("plain", "chat"):
            raise DataError(f"prompt_format must be 'plain' or 'chat', got {prompt_format!r}")
        if epochs is None:
            unknown = [t for t in task_list if t not in TRACE_EPOCHS]
            if unknown:
                raise DataError(
                    f"set data.init_args.epochs (one number, or one per task): TRACE's per-task "
                    f"epochs exist only for its own tasks, not for {unknown}"
                )
            epochs_list = [TRACE_EPOCHS[t] for t in task_list]
        else:
            epochs_list = [epochs] * len(task_list) if isinstance(epochs, int) else list(epochs)
        if len(epochs_list) != len(task_list) or any(
            isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in epochs_list
        ):
            raise DataError(
                f"epochs must be an integer >= 1 or one such integer per task "
                f"({len(task_list)} tasks), got {epochs!r}"
            )
        check_int("max_train_samples", max_train_samples, allow_none=True)
        check_int("max_eval_samples", max_eval_samples, allow_none=True)
        check_int("max_prompt_len", max_prompt_len)
        check_int("max_ans_len", max_ans_len)
        check_int("eval_batch_size", eval_batch_size)
        check_int("batch_size", batch_size)
        check_global_batch(global_batch_size, batch_size)
        check_int("warmup_steps", warmup_steps, minimum=0)
        if temperature is not None and temperature <= 0:
            raise DataError(f"temperature must be > 0, got {temperature!r}")
        metrics = {**TRACE_TASK_METRICS, **(task_metrics or {})}
        missing = [t for t in task_list if t not in metrics]
        if missing:
            raise DataError(
                f"no metric for tasks {missing}: set data.init_args.task_metrics, e.g. "
                f"{{{missing[0]!r}: 'accuracy'}} (metrics: {sorted(METRICS)})"
            )
        unknown = {t: m for t, m in metrics.items() if t in task_list and m not in METRICS}
        if unknown:
            raise DataError(f"unknown metrics {unknown}; choose from {sorted(METRICS)}")
        check_task_files(root_path, task_list, eval_split)
        super().__init__(tokenizer, batch_size, num_workers, seed, trust_remote_code)
        self.save_hyperparameters()
        self.root = root_path
        self.protocol = protocol_spec
        self.tasks = task_list
        self.epochs = epochs_list
        self.scoring = scoring
        self.eval_tasks = eval_tasks
        self.task_metrics = {t: metrics[t] for t in self.tasks}
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.eval_split = eval_split
        self.max_prompt_len = max_prompt_len
        self.max_ans_len = max_ans_len
        self._max_new_tokens = max_new_tokens
        self.do_sample = self.protocol.do_sample if do_sample is None else bool(do_sample)
        self.temperature = self.protocol.temperature if temperature is None else temperature
        if self.do_sample and self.temperature is None:
            self.temperature = 1.0
        self.warmup_steps = warmup_steps
        self.prompt_format = prompt_format
        self.eval_batch_size = eval_batch_size
        self.global_batch_size = global_batch_size
        self.task_index = 0  # used when no trainer is attached
        self._train: dict[str, SFTDataset] = {}
        self._val: dict[str, SFTDataset] = {}
        self._scored: dict[str, list[dict[str, str]]] = {}
        self._answer_budget: dict[str, int] = {}  # reset protocol: longest gold answer + 8

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

    def tasks_to_score(self, round_index: int) -> list[int]:
        """Indices of the tasks scored after round ``round_index`` (0-based)."""
        if self.eval_tasks == "seen":
            return list(range(round_index + 1))
        return list(range(len(self.tasks)))

    # -------------------------------------------------------------------------- encoding
    @property
    def bos_token_id(self) -> int:
        """The id put before every sequence: bos, or eos for a tokenizer without bos."""
        bos = self.tokenizer.bos_token_id
        return self.tokenizer.eos_token_id if bos is None else bos

    def _tokens(self, texts: list[str], limit: int) -> list[list[int]]:
        """Token ids of each text without special tokens, cut from the left to ``limit``."""
        if not texts:
            return []
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [row[-limit:] if len(row) > limit else row for row in ids]

    def encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        """Generation inputs: each prompt cut from the left to ``max_prompt_len`` tokens, with
        bos prepended when shorter (``plain``), or the chat-template rendering (``chat``)."""
        limit = self.max_prompt_len
        if self.prompt_format == "chat":
            texts = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}],
                    chat_template=chat_template_for(self.tokenizer),
                    tokenize=False,
                    add_generation_prompt=True,
                )
                for p in prompts
            ]
            return self._tokens(texts, limit)
        return [
            [self.bos_token_id, *ids] if len(ids) < limit else ids
            for ids in self._tokens(prompts, limit)
        ]

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids the model sees before it answers (see :meth:`encode_prompts`)."""
        return self.encode_prompts([prompt])[0]

    def encode_examples(self, records: list[dict[str, str]]) -> list[tuple[list[int], list[int]]]:
        """``(input_ids, labels)`` of each record; labels only on the answer and eos."""
        limit = self.max_prompt_len + self.max_ans_len
        if self.prompt_format == "chat":
            return [self._encode_chat(r["prompt"], r["answer"], limit) for r in records]
        joint = self._tokens([r["prompt"] + r["answer"] for r in records], limit)
        answers = self._tokens([r["answer"] for r in records], limit)
        eos, bos = self.tokenizer.eos_token_id, self.bos_token_id
        examples = []
        for ids, answer in zip(joint, answers, strict=True):
            if len(ids) < limit:
                ids = [*ids, eos]
            if len(ids) < limit:
                ids = [bos, *ids]
            n = min(len(answer) + (1 if len(answer) < limit else 0), len(ids))
            labels = [IGNORE_INDEX] * (len(ids) - n) + ids[len(ids) - n :]
            examples.append((ids, labels))
        return examples

    def encode_example(self, prompt: str, answer: str) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)`` of one record (see :meth:`encode_examples`)."""
        return self.encode_examples([{"prompt": prompt, "answer": answer}])[0]

    def _encode_chat(self, prompt: str, answer: str, limit: int) -> tuple[list[int], list[int]]:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        ids, labels = encode_conversation(self.tokenizer, messages)
        if len(ids) > limit:  # cut the prompt's start, keep the answer
            first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
            cut = min(len(ids) - limit, first)
            ids, labels = ids[cut:][:limit], labels[cut:][:limit]
        return ids, labels

    def answer_length(self, answer: str) -> int:
        """Tokens of an answer (without eos)."""
        return len(self.tokenizer(answer, add_special_tokens=False)["input_ids"])

    # -------------------------------------------------------------------------- data
    def _records(self, task: str, split: str, cap: int | None) -> list[dict[str, str]]:
        return sample_records(
            read_trace_split(self.root / task / f"{split}.json"), cap, self.seed, f"{task}/{split}"
        )

    def finished_round(self, trainer: Any) -> int | None:
        """The round (from 1) that the epoch ending now completes, else ``None``."""
        task = self.current_task
        return task + 1 if trainer.current_epoch == self.task_bounds(task)[1] else None

    def setup(self, stage: str | None = None) -> None:
        """Read and tokenise every task (idempotent); general-ability evaluation
        (:class:`~blockexp.evaluation.general.GeneralEval`) follows the rounds; at ``fit`` the
        trainer's accumulation makes ``global_batch_size``."""
        from blockexp.evaluation.general import GeneralEval

        if stage == "fit" and getattr(self, "trainer", None) is not None:
            set_accumulation(self.trainer, self.global_batch_size, self.batch_size)
        for callback in getattr(getattr(self, "trainer", None), "callbacks", None) or ():
            if isinstance(callback, GeneralEval):
                callback.follow_rounds(self)
        if self._train:
            return
        for task in self.tasks:
            train = self._records(task, "train", self.max_train_samples)
            self._train[task] = SFTDataset(self.encode_examples(train))
            val_path = self.root / task / "eval.json"
            val = self._records(task, "eval", self.max_eval_samples) if val_path.is_file() else []
            self._val[task] = SFTDataset(self.encode_examples(val))
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
        if self.protocol.budget == "max_ans_len":
            return self.max_ans_len
        if task not in self._answer_budget:  # asked at every evaluation and report
            answers = self.scored_records(task)
            self._answer_budget[task] = max(self.answer_length(r["answer"]) for r in answers) + 8
        return self._answer_budget[task]

    def metric_name(self, task: str) -> str:
        """The metric of ``task`` (a key of :data:`blockexp.trace.text.METRICS`)."""
        return self.task_metrics[task]

    def train_dataloader(self) -> DataLoader:
        """Training batches of the current task (re-made every epoch)."""
        self.setup()
        task = self.tasks[self.current_task]
        return self.train_loader(self._train[task], Collator(self.pad_token_id))

    def val_dataloader(self) -> DataLoader | list:
        """Validation loss batches of the current task's ``eval.json`` (empty if absent)."""
        self.setup()
        dataset = self._val[self.tasks[self.current_task]]
        if len(dataset) == 0:
            return []
        return self.eval_loader(dataset, Collator(self.pad_token_id), self.eval_batch_size)

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
