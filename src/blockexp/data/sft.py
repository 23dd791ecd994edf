"""Supervised fine-tuning (SFT) data: local chat / instruction records -> masked token sequences.

Accepted records (one JSON object per line in ``.jsonl``, or a JSON list in ``.json``):

* ShareGPT: ``{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", ...}]}``
  (``human``/``user`` -> user, ``gpt``/``assistant``/``chatgpt``/``model`` -> assistant,
  ``system`` -> system);
* OpenAI-style: ``{"messages": [{"role": "user", "content": "..."}, ...]}``;
* Alpaca-style: ``{"instruction": "...", "input": "...", "output": "..."}`` (``input`` and
  ``system`` optional).

Each conversation is rendered with the tokenizer's chat template, or with
:data:`SIMPLE_CHAT_TEMPLATE` when the tokenizer has none. The loss is computed on assistant tokens
only: the rendered text is cut at every assistant turn (the text of ``messages[:k]`` with a
generation prompt, then of ``messages[:k + 1]``), each piece is tokenised separately, and only
the assistant pieces keep their labels (all other labels are -100). Multi-turn conversations
train on every assistant turn. Sequences are truncated on the right to ``max_length``; one whose
assistant tokens are all cut off is dropped (and counted). With ``packing`` whole examples are
placed greedily into rows of ``max_length`` tokens (an example never spans two rows).

Malformed input raises :class:`~blockexp.data.cpt.DataError` naming the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from blockexp.data import collate
from blockexp.data.base import BlockexpDataModule, check_fraction, check_int
from blockexp.data.collate import Collator
from blockexp.data.records import (
    DataError,
    check_data_file,
    iter_json_records,
    json_kind,
)

__all__ = [
    "SIMPLE_CHAT_TEMPLATE",
    "SFTDataModule",
    "SFTDataset",
    "encode_conversation",
    "iter_json_records",
    "normalize_record",
    "pack_examples",
    "read_conversations",
]

#: Used when the tokenizer has no chat template: ``<|role|>\ncontent`` per turn, the eos token
#: closes every assistant turn (so the model learns to stop), other turns end with a newline.
SIMPLE_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "system": "system",
}


# ---------------------------------------------------------------------------------- reading


def _text(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: {field} must be a string, got {type(value).__name__}")
    return value


def normalize_record(record: Any, where: str) -> list[dict[str, str]]:
    """Turn one ShareGPT, messages or instruction record into ``[{role, content}, ...]``.

    Args:
        record: the parsed JSON value.
        where: ``file:line`` prefix for error messages.

    Returns:
        The conversation (roles ``system``, ``user``, ``assistant``, or others from
        ``messages`` records, which are kept as context and never trained on).

    Raises:
        DataError: for an unknown layout, wrong types, an unknown ShareGPT speaker, or a
            conversation without a non-empty assistant turn.
    """
    if not isinstance(record, dict):
        raise DataError(
            f"{where}: expected a JSON object with 'messages', 'conversations' or 'instruction' "
            f"and 'output', got {json_kind(record)}"
        )
    if "conversations" in record:
        turns = record["conversations"]
        if not isinstance(turns, list) or not turns:
            raise DataError(f"{where}: 'conversations' must be a non-empty list of turns")
        messages = []
        for j, turn in enumerate(turns):
            if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
                raise DataError(
                    f"{where}: conversations[{j}] must be an object with 'from' and 'value'"
                )
            speaker = turn["from"]
            if speaker not in _SHAREGPT_ROLES:
                raise DataError(
                    f"{where}: conversations[{j}] has unknown speaker {speaker!r}; "
                    f"expected one of {sorted(_SHAREGPT_ROLES)}"
                )
            content = _text(turn["value"], where, f"conversations[{j}].value")
            messages.append({"role": _SHAREGPT_ROLES[speaker], "content": content})
    elif "messages" in record:
        turns = record["messages"]
        if not isinstance(turns, list) or not turns:
            raise DataError(f"{where}: 'messages' must be a non-empty list of messages")
        messages = []
        for j, turn in enumerate(turns):
            if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
                raise DataError(
                    f"{where}: messages[{j}] must be an object with 'role' and 'content'"
                )
            role = _text(turn["role"], where, f"messages[{j}].role")
            content = _text(turn["content"], where, f"messages[{j}].content")
            messages.append({"role": role, "content": content})
    elif "instruction" in record and "output" in record:
        instruction = _text(record["instruction"], where, "instruction")
        extra = _text(record.get("input") or "", where, "input")
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = []
        if record.get("system"):
            messages.append({"role": "system", "content": _text(record["system"], where, "system")})
        messages.append({"role": "user", "content": prompt})
        messages.append({"role": "assistant", "content": _text(record["output"], where, "output")})
    else:
        keys = ", ".join(repr(k) for k in list(record)[:10]) or "none"
        raise DataError(
            f"{where}: unknown record layout (fields: {keys}); expected 'conversations' "
            "(ShareGPT), 'messages' (role/content) or 'instruction' + 'output'"
        )
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise DataError(f"{where}: the conversation has no non-empty assistant turn to train on")
    return messages


def read_conversations(path: str | Path) -> list[list[dict[str, str]]]:
    """All conversations of one file, validated (see :func:`normalize_record`)."""
    conversations = [
        normalize_record(record, f"{Path(path)}:{line}") for line, record in iter_json_records(path)
    ]
    if not conversations:
        raise DataError(f"{path}: no records found")
    return conversations


# ------------------------------------------------------------------------------- tokenising


def _render(
    tokenizer: transformers.PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    template: str | None,
    add_generation_prompt: bool,
) -> str:
    return tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def chat_template_for(tokenizer: transformers.PreTrainedTokenizerBase) -> str | None:
    """The template to render with: ``None`` (the tokenizer's own) or the built-in one."""
    return None if getattr(tokenizer, "chat_template", None) else SIMPLE_CHAT_TEMPLATE


def encode_conversation(
    tokenizer: transformers.PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    max_length: int | None = None,
    template: str | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids and labels of one conversation; labels are -100 except on assistant turns.

    Args:
        tokenizer: the tokenizer.
        messages: ``[{role, content}, ...]``.
        max_length: truncate (on the right) to this many tokens.
        template: a Jinja chat template; default: the tokenizer's own, else
            :data:`SIMPLE_CHAT_TEMPLATE`.

    Returns:
        ``(input_ids, labels)`` of equal length.

    Raises:
        DataError: if the template does not render a conversation's prefixes consistently
            (the text of ``messages[:k]`` must start the text of ``messages[:k + 1]``).
    """
    template = template or chat_template_for(tokenizer)
    pieces: list[tuple[str, bool]] = []
    done = ""
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        # A conversation that opens with an assistant turn trains on its whole first turn.
        prefix = _render(tokenizer, messages[:k], template, add_generation_prompt=True) if k else ""
        full = _render(tokenizer, messages[: k + 1], template, add_generation_prompt=False)
        if not prefix.startswith(done) or not full.startswith(prefix):
            raise DataError(
                "the chat template does not render conversations prefix-consistently, so "
                "assistant tokens cannot be located; pass `chat_template` explicitly"
            )
        pieces.append((prefix[len(done) :], False))
        pieces.append((full[len(prefix) :], True))
        done = full
    whole = _render(tokenizer, messages, template, add_generation_prompt=False)
    if not whole.startswith(done):
        raise DataError("the chat template renders the full conversation inconsistently")
    pieces.append((whole[len(done) :], False))

    input_ids: list[int] = []
    labels: list[int] = []
    for text, trainable in pieces:
        if not text:
            continue
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=False)["input_ids"]
        input_ids.extend(ids)
        labels.extend(ids if trainable else [collate.IGNORE_INDEX] * len(ids))
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return input_ids, labels


def pack_examples(
    examples: Sequence[tuple[list[int], list[int]]], max_length: int
) -> list[tuple[list[int], list[int]]]:
    """Greedy first-fit packing of whole examples into rows of at most ``max_length`` tokens.

    Args:
        examples: ``(input_ids, labels)`` pairs, each at most ``max_length`` long.
        max_length: the row length.

    Returns:
        Rows ``(input_ids, labels)``; every example appears in exactly one row, in order within
        its row. Attention is not blocked between examples of a row (standard packing).
    """
    rows: list[tuple[list[int], list[int]]] = []
    free: list[int] = []
    for ids, labels in examples:
        if len(ids) > max_length:
            raise ValueError(f"an example of {len(ids)} tokens exceeds max_length={max_length}")
        for r, space in enumerate(free):
            if len(ids) <= space:
                rows[r][0].extend(ids)
                rows[r][1].extend(labels)
                free[r] -= len(ids)
                break
        else:
            rows.append((list(ids), list(labels)))
            free.append(max_length - len(ids))
    return rows


class SFTDataset(Dataset):
    """A map-style dataset of ``(input_ids, labels)`` token lists."""

    def __init__(self, examples: Sequence[tuple[list[int], list[int]]]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids, labels = self.examples[i]
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }


def tokenize_conversations(
    tokenizer: transformers.PreTrainedTokenizerBase,
    conversations: Sequence[list[dict[str, str]]],
    max_length: int,
    template: str | None = None,
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Encode conversations; return the examples that keep assistant tokens and the drop count."""
    examples, dropped = [], 0
    for messages in conversations:
        ids, labels = encode_conversation(tokenizer, messages, max_length, template)
        if any(label != collate.IGNORE_INDEX for label in labels[1:]):
            examples.append((ids, labels))
        else:
            dropped += 1
    return examples, dropped


# ------------------------------------------------------------------------------ data module


class SFTDataModule(BlockexpDataModule):
    """Supervised fine-tuning data from local JSON / JSONL files.

    Args:
        train_files: files of ShareGPT, messages or instruction records (mixed layouts allowed).
        tokenizer: ``"byte"``, a local tokenizer directory or a Hub id (linked from
            ``model.tokenizer`` by the CLI).
        val_files: held-out files; if empty, ``val_fraction`` of the training records is held out.
        max_length: tokens per example (longer ones are truncated on the right).
        batch_size: examples (or packed rows) per batch.
        packing: pack whole examples into rows of ``max_length`` tokens.
        val_fraction: fraction of training records held out when ``val_files`` is empty.
        chat_template: a Jinja chat template overriding the tokenizer's (and the built-in one).
        num_workers: DataLoader worker processes.
        seed: seed of the validation split and the training shuffle.
        trust_remote_code: forwarded to the tokenizer loader.

    Batches are right-padded ``{"input_ids", "attention_mask", "labels"}`` with -100 labels on
    padding and on every non-assistant token.
    """

    def __init__(
        self,
        train_files: list[str],
        tokenizer: str = "byte",
        val_files: list[str] | None = None,
        max_length: int = 1024,
        batch_size: int = 8,
        packing: bool = False,
        val_fraction: float = 0.05,
        chat_template: str | None = None,
        num_workers: int = 0,
        seed: int = 0,
        trust_remote_code: bool = False,
    ) -> None:
        if isinstance(train_files, str | os.PathLike):
            train_files = [str(train_files)]
        if not train_files:
            raise DataError("train_files must list at least one .json / .jsonl file")
        check_int("max_length", max_length, minimum=2)
        check_fraction("val_fraction", val_fraction)
        for path in [*train_files, *(val_files or [])]:
            check_data_file(path, "SFT data file", (".jsonl", ".json"))
        super().__init__(tokenizer, batch_size, num_workers, seed, trust_remote_code)
        self.save_hyperparameters()
        self.train_files = [str(p) for p in train_files]
        self.val_files = [str(p) for p in (val_files or [])]
        self.max_length = max_length
        self.packing = packing
        self.val_fraction = float(val_fraction)
        self.chat_template = chat_template
        self.train_dataset: SFTDataset | None = None
        self.val_dataset: SFTDataset | None = None
        self.dropped = 0

    def _encode(self, conversations: list[list[dict[str, str]]]) -> SFTDataset:
        examples, dropped = tokenize_conversations(
            self.tokenizer, conversations, self.max_length, self.chat_template
        )
        self.dropped += dropped
        if self.packing:
            examples = pack_examples(examples, self.max_length)
        return SFTDataset(examples)

    def setup(self, stage: str | None = None) -> None:
        """Read, validate, tokenise (and pack) the data; idempotent."""
        if self.train_dataset is not None:
            return
        train = [c for path in self.train_files for c in read_conversations(path)]
        if self.val_files:
            val = [c for path in self.val_files for c in read_conversations(path)]
        else:
            n_val = int(round(self.val_fraction * len(train)))
            if self.val_fraction > 0 and len(train) >= 2:
                n_val = min(max(1, n_val), len(train) - 1)
            order = np.random.default_rng(self.seed).permutation(len(train))
            held = set(order[:n_val].tolist())
            val = [c for i, c in enumerate(train) if i in held]
            train = [c for i, c in enumerate(train) if i not in held]
        self.dropped = 0
        self.train_dataset = self._encode(train)
        self.val_dataset = self._encode(val)
        if self.dropped:
            rank_zero_warn(
                f"{self.dropped} conversations lost every assistant token to truncation at "
                f"max_length={self.max_length} and were dropped"
            )
        if len(self.train_dataset) == 0:
            raise DataError(
                f"no training examples left after truncation to max_length={self.max_length}"
            )

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded, resumable), right-padded training batches."""
        return self.train_loader(self.train_dataset, Collator(self.pad_token_id))

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches (an empty list when there is no validation data)."""
        if self.val_dataset is not None and len(self.val_dataset) == 0:
            return []
        return self.eval_loader(self.val_dataset, Collator(self.pad_token_id))
