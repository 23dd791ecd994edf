"""Layer-importance inputs: text blocks and multiple-choice questions, read and tokenised.

Text data: ``.txt`` files hold documents separated by blank lines, ``.jsonl`` (or ``.json``)
files ``{"text": ...}`` records. Multiple-choice file: JSON Lines, one object per question,
``{"question": str, "choices": [str, ...], "answer": int}`` (``answer`` indexes ``choices``).
Each choice is scored as the continuation ``" " + choice`` of the prompt
``question + "\\nAnswer:"``. Both are read with :mod:`blockexp.data.records`, so a bad record
is reported with its file and line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blockexp.data.records import check_data_file, iter_json_records, iter_paragraphs

__all__ = [
    "MultipleChoiceItem",
    "encode_multiple_choice",
    "load_multiple_choice",
    "load_text_blocks",
]


@dataclass(frozen=True)
class MultipleChoiceItem:
    """One multiple-choice question."""

    question: str
    choices: tuple[str, ...]
    answer: int


def load_multiple_choice(
    path: str | Path, max_items: int | None = None
) -> list[MultipleChoiceItem]:
    """Read a multiple-choice JSONL file (see the module docstring), checking every record.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file and line of a malformed record.
    """
    path = check_data_file(path, "multiple-choice file", (".jsonl", ".json"))
    items: list[MultipleChoiceItem] = []
    for number, record in iter_json_records(path):
        where = f"{path}:{number}"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected an object with question, choices, answer.")
        question, choices, answer = (record.get(k) for k in ("question", "choices", "answer"))
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: 'question' must be a non-empty string.")
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c.strip() for c in choices)
        ):
            raise ValueError(f"{where}: 'choices' must be a list of at least 2 non-empty strings.")
        if (
            not isinstance(answer, int)
            or isinstance(answer, bool)
            or not 0 <= answer < len(choices)
        ):
            raise ValueError(
                f"{where}: 'answer' must be an integer index into choices (0..{len(choices) - 1})."
            )
        items.append(MultipleChoiceItem(question, tuple(choices), answer))
        if max_items is not None and len(items) >= max_items:
            break
    if not items:
        raise ValueError(f"{path} has no questions.")
    return items


def _documents(path: Path) -> Iterator[str]:
    """The documents of a text file: ``{"text"}`` records of a .jsonl / .json file, else the
    paragraphs (separated by blank lines)."""
    if path.suffix.lower() in (".jsonl", ".json"):
        for number, record in iter_json_records(path):
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{path}:{number}: expected an object with a 'text' string.")
            yield record["text"]
    else:
        for _, doc in iter_paragraphs(path):
            yield doc


def load_text_blocks(
    path: str | Path, tokenizer: Any, seq_len: int, max_samples: int
) -> torch.Tensor:
    """Tokenise a text file and pack it into at most ``max_samples`` blocks of ``seq_len`` tokens.

    ``.txt`` files hold documents separated by blank lines; ``.jsonl`` files hold ``{"text": ...}``
    records. Documents are joined with the eos token; the trailing remainder is dropped.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is too short for one block, or a record is malformed.
    """
    path = check_data_file(path, "text data", (".txt", ".jsonl"))
    if seq_len < 2 or max_samples < 1:
        raise ValueError(
            f"seq_len must be >= 2 and max_samples >= 1 (got {seq_len}, {max_samples})."
        )
    ids: list[int] = []
    need = seq_len * max_samples
    for doc in _documents(path):
        ids += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= need:
            break
    n = min(len(ids) // seq_len, max_samples)
    if n == 0:
        raise ValueError(
            f"{path} has {len(ids)} tokens, fewer than one block of seq_len={seq_len}; "
            "give more text or a smaller --seq_len."
        )
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def encode_multiple_choice(
    items: list[MultipleChoiceItem], tokenizer: Any, max_len: int
) -> list[tuple[list[int], list[list[int]], int]]:
    """Token ids ``(context, continuations, answer)`` per item; the context is cut from the left
    so that the longest row fits in ``max_len`` tokens."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    out = []
    for item in items:
        context = tokenizer(item.question + "\nAnswer:", add_special_tokens=False)["input_ids"]
        conts = [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in item.choices]
        room = max(1, max_len - len(bos) - max(len(c) for c in conts))
        out.append((bos + context[-room:], conts, item.answer))
    return out
