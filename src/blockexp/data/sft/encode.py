"""SFT tokenising: conversations -> token ids with labels on assistant turns only (and packing).

Each conversation is rendered with the tokenizer's chat template, or with
:data:`SIMPLE_CHAT_TEMPLATE` when the tokenizer has none. The loss is computed on assistant tokens
only: the rendered text is cut at every assistant turn (the text of ``messages[:k]`` with a
generation prompt, then of ``messages[:k + 1]``), each piece is tokenised separately, and only
the assistant pieces keep their labels (all other labels are -100). Multi-turn conversations
train on every assistant turn. Sequences are truncated on the right to ``max_length``; one whose
assistant tokens are all cut off is dropped (and counted). With packing, whole examples are
placed greedily into rows of ``max_length`` tokens (an example never spans two rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import transformers
from torch.utils.data import Dataset

from blockexp.data.collate import IGNORE_INDEX
from blockexp.data.records import DataError

__all__ = [
    "SIMPLE_CHAT_TEMPLATE",
    "SFTDataset",
    "chat_template_for",
    "encode_conversation",
    "pack_examples",
    "tokenize_conversations",
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
        labels.extend(ids if trainable else [IGNORE_INDEX] * len(ids))
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
        if any(label != IGNORE_INDEX for label in labels[1:]):
            examples.append((ids, labels))
        else:
            dropped += 1
    return examples, dropped
