"""SFT records: ShareGPT, messages and instruction layouts -> validated ``[{role, content}]`` lists.

Accepted records (one JSON object per line in ``.jsonl``, or a JSON list in ``.json``):

* ShareGPT: ``{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", ...}]}``
  (``human``/``user`` -> user, ``gpt``/``assistant``/``chatgpt``/``model`` -> assistant,
  ``system`` -> system);
* OpenAI-style: ``{"messages": [{"role": "user", "content": "..."}, ...]}``;
* Alpaca-style: ``{"instruction": "...", "input": "...", "output": "..."}`` (``input`` and
  ``system`` optional).

Malformed input raises :class:`~blockexp.data.records.DataError` naming the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blockexp.data.records import DataError, iter_json_records, json_kind

__all__ = ["normalize_record", "read_conversations"]

_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "system": "system",
}


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
