"""Reading JSON records and text paragraphs from local files with errors naming file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "DataError",
    "check_data_file",
    "iter_json_records",
    "iter_paragraphs",
    "json_kind",
]


class DataError(ValueError):
    """Raised for invalid data sources or data-module settings."""


DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")


def check_data_file(
    path: str | Path,
    what: str,
    suffixes: tuple[str, ...] = DATA_SUFFIXES,
    fix: str = "check the path",
) -> Path:
    """``path`` (``~`` expanded) if it is a file; otherwise an error naming ``what`` it is for,
    whether it is a directory (listing up to 3 files in it that could be meant) or missing, and
    ``fix``.

    Raises:
        DataError: ``path`` is a directory.
        FileNotFoundError: nothing is at ``path``.
    """
    resolved = Path(path).expanduser()
    fix = f"; {fix}" if fix else ""
    if resolved.is_dir():
        from blockexp.errors import files_in

        inside = files_in(resolved, suffixes)
        hint = f" (e.g. {inside})" if inside else ""
        raise DataError(
            f"{what} {str(path)!r} is a directory; expected a {'/'.join(suffixes)} file: "
            f"point it at a file{hint}{fix}"
        )
    if not resolved.is_file():
        raise FileNotFoundError(
            f"{what} {str(path)!r} not found (resolved to {resolved.resolve()}){fix}"
        )
    return resolved


def json_kind(value: Any, limit: int = 40) -> str:
    """What a JSON value is, with its start, for messages: ``a JSON array ([1, 2, 3])``."""
    if isinstance(value, bool) or value is None:
        return f"JSON {json.dumps(value)}"
    types = (("array", list), ("number", int | float), ("string", str), ("object", dict))
    kind = next((f"a JSON {k}" for k, t in types if isinstance(value, t)), type(value).__name__)
    text = json.dumps(value, ensure_ascii=False, default=str)
    return f"{kind} ({text if len(text) <= limit else text[: limit - 3] + '...'})"


def iter_json_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, record)`` from a JSON Lines file or a JSON list, with 1-based line numbers.

    Args:
        path: a ``.jsonl`` file (one JSON value per line; blank lines skipped) or a file holding
            one JSON list (the line is where each element starts; a ``.jsonl`` file is read as a
            list only when its first line is not a JSON value by itself).

    Raises:
        FileNotFoundError: if the file does not exist.
        DataError: on a directory; on invalid UTF-8 or JSON, with file and line.
    """
    path = check_data_file(path, "data file")
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
    # A .jsonl file is one JSON value per line, even when its first line holds an array (a list
    # spread over several lines, which JSON Lines cannot be, is still read as one list).
    if not head.startswith(b"[") or (path.suffix.lower() == ".jsonl" and _first_line_is_json(path)):
        yield from _iter_json_lines(path)
        return
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, data, err) from None
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


def _first_line_is_json(path: Path) -> bool:
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    json.loads(raw.lstrip(b"\xef\xbb\xbf"))
                except ValueError:
                    return False
                return True
    return False


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


def _not_utf8(path: Path, data: bytes, err: UnicodeDecodeError) -> DataError:
    """The error for a file that is not UTF-8: where (line and byte), the encoding it most likely
    is and the ``iconv`` command that converts it. Text that decodes as Windows-1252 (a superset
    of Latin-1's printable range: most Western European files) is named so; otherwise
    charset-normalizer's guess is given as a guess."""
    line = data[: err.start].count(b"\n") + 1
    try:
        data.decode("cp1252")
        encoding, seems = "CP1252", "it looks like Windows-1252/Latin-1 (Western European)"
    except UnicodeDecodeError:
        from charset_normalizer import from_bytes

        best = from_bytes(data[:1_000_000]).best()
        encoding = best.encoding.upper().replace("_", "-") if best is not None else "LATIN1"
        seems = f"its encoding may be {encoding} (a guess)" if best is not None else "unknown"
    return DataError(
        f"{path}:{line}: not valid UTF-8 ({err.reason} at byte {err.start}); {seems}: convert "
        f"it with `iconv -f {encoding} -t UTF-8 {path} > {path.with_suffix('.utf8' + path.suffix)}`"
        " and point the data source at the converted file"
    )


def iter_paragraphs(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line, document)`` from a text file whose documents are separated by blank lines.

    The file is read as UTF-8 with universal newlines and split wherever two newlines follow
    each other; each document has its leading and trailing newlines stripped, whitespace-only
    ones are skipped.
    ``line`` is the 1-based line where the document starts.

    Raises:
        FileNotFoundError: if the file does not exist.
        DataError: on a directory; on invalid UTF-8, with file and byte.
    """
    path = check_data_file(path, "data file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, data, err) from None
    line = 1
    for chunk in text.split("\n\n"):
        if chunk.strip():
            yield line + len(chunk) - len(chunk.lstrip("\n")), chunk.strip("\n")
        line += chunk.count("\n") + 2
