"""Reading JSON records from local files with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["DataError", "iter_json_records"]


class DataError(ValueError):
    """Raised for invalid data sources or data-module settings."""


def iter_json_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, record)`` from a JSON Lines file or a JSON list, with 1-based line numbers.

    Args:
        path: a ``.jsonl`` file (one JSON value per line; blank lines skipped) or a file holding
            one JSON list (the line is where each element starts).

    Raises:
        FileNotFoundError: if the file does not exist.
        DataError: on invalid UTF-8 or JSON, with file and line.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} not found (resolved to {path.resolve()})")
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
    if not head.startswith(b"["):
        yield from _iter_json_lines(path)
        return
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        decoder = json.JSONDecoder()
        idx = len(text) - len(stripped) + 1
        expect_value = True
        while True:
            while idx < len(text) and text[idx].isspace():
                idx += 1
            if idx >= len(text):
                line = text.count("\n", 0, idx) + 1
                raise DataError(f"{path}:{line}: unterminated JSON list (missing ']')")
            if text[idx] == "]" and (expect_value is not True or text[idx - 1] != ","):
                if text[idx + 1 :].strip():
                    line = text.count("\n", 0, idx + 1) + 1
                    raise DataError(f"{path}:{line}: unexpected data after the JSON list")
                return
            if not expect_value:
                if text[idx] != ",":
                    line = text.count("\n", 0, idx) + 1
                    raise DataError(f"{path}:{line}: expected ',' or ']' between list elements")
                idx += 1
                expect_value = True
                continue
            line = text.count("\n", 0, idx) + 1
            try:
                record, end = decoder.raw_decode(text, idx)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}:{err.lineno}: invalid JSON ({err.msg}, column {err.colno})"
                ) from None
            yield line, record
            idx, expect_value = end, False


def _iter_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """JSON Lines, read line by line (memory bounded by the longest line)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1:
                raw = raw.lstrip(b"\xef\xbb\xbf")
            if not raw.strip():
                continue  # blank lines are skipped
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}:{lineno}: line {lineno} is not valid UTF-8 ({err.reason})"
                ) from None
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}:{lineno}: malformed JSON on line {lineno} ({err.msg}, column "
                    f"{err.colno}); each line of a .jsonl file must be one complete JSON object"
                ) from None
            yield lineno, record
