"""CPT sources: the named corpora of the mixture and their up-front validation, file and line.

Each source's file is checked before ``datasets`` sees it (existence, JSON syntax per line, text
field presence and type, non-empty) so that problems are reported with the file name and 1-based
line number instead of an obscure ``datasets``/Arrow error. Text (``.txt``) files hold documents
separated by blank lines (:func:`blockexp.data.records.iter_paragraphs`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blockexp.data.records import (
    DataError,
    check_data_file,
    iter_json_records,
    iter_paragraphs,
    json_kind,
)

__all__ = ["DataSource", "check_source_path", "describe_source", "infer_format", "validate_source"]

_FORMAT_BY_SUFFIX = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}
_FORMATS = ("json", "parquet", "text")


def infer_format(path: str | Path) -> str:
    """Infer the ``datasets`` builder name from a file extension.

    Args:
        path: Data file path.

    Returns:
        ``"json"`` for ``.jsonl``/``.json``, ``"parquet"`` for ``.parquet`` and
        ``"text"`` for ``.txt``.

    Raises:
        DataError: If the extension is not recognised.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMAT_BY_SUFFIX:
        raise DataError(
            f"cannot infer the format of {str(path)!r} from its extension {suffix!r}; "
            f"use one of {sorted(_FORMAT_BY_SUFFIX)} or set `format` to one of {list(_FORMATS)}"
        )
    return _FORMAT_BY_SUFFIX[suffix]


@dataclass
class DataSource:
    """One named local corpus in the pre-training mixture.

    Attributes:
        name: Unique name of the source (used in stats and error messages).
        path: Path to a ``.jsonl``/``.json`` (records with a text field, or a
            JSON list of such records), ``.parquet`` or ``.txt`` file.
        weight: Sampling multiplier (> 0). A source with weight ``w``
            contributes ``round(w * n_blocks)`` training blocks per epoch.
        text_field: Name of the text field/column (ignored for ``.txt``).
        format: ``"json"``, ``"parquet"`` or ``"text"``; inferred from the
            extension when ``None``.
    """

    name: str
    path: str
    weight: float = 1.0
    text_field: str = "text"
    format: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise DataError(f"data source name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.path, (str, os.PathLike)) or not str(self.path).strip():
            raise DataError(
                f"data source {self.name!r}: path must be a non-empty string, got {self.path!r}"
            )
        self.path = str(self.path)
        try:
            weight = float(self.weight)
        except (TypeError, ValueError):
            raise DataError(
                f"data source {self.name!r}: weight must be a number > 0, got {self.weight!r}"
            ) from None
        if not math.isfinite(weight) or weight <= 0:
            raise DataError(
                f"data source {self.name!r}: weight must be a finite number > 0, got {self.weight!r} "
                "(remove the source instead of giving it weight 0)"
            )
        self.weight = weight
        if self.format is not None and self.format not in _FORMATS:
            raise DataError(
                f"data source {self.name!r}: format must be one of {list(_FORMATS)} or None, got {self.format!r}"
            )
        if not isinstance(self.text_field, str) or not self.text_field:
            raise DataError(f"data source {self.name!r}: text_field must be a non-empty string")

    @property
    def resolved_format(self) -> str:
        """The builder name: ``format`` if given, else inferred from ``path``."""
        if self.format is not None:
            return self.format
        try:
            return infer_format(self.path)
        except DataError as err:
            raise DataError(f"data source {self.name!r}: {err}") from None

    @property
    def column(self) -> str:
        """Name of the text column after loading (``"text"`` for text files)."""
        return "text" if self.resolved_format == "text" else self.text_field


def describe_source(source: DataSource) -> str:
    """``source 'name' (path)``, for messages."""
    return f"source {source.name!r} ({source.path})"


def _check_record(record: Any, source: DataSource, where: str) -> bool:
    """Validate one JSON record; return True if it holds a non-blank document."""
    if not isinstance(record, dict):
        raise DataError(
            f'{where}: expected a JSON object with a "{source.text_field}" field like '
            f'{{"{source.text_field}": "..."}}, got {json_kind(record)}'
        )
    if source.text_field not in record:
        keys = ", ".join(repr(k) for k in list(record)[:10]) or "none"
        raise DataError(
            f"{where}: record has no {source.text_field!r} field (fields: {keys}); "
            f"fix the record or set text_field for source {source.name!r}"
        )
    text = record[source.text_field]
    if not isinstance(text, str):
        raise DataError(
            f"{where}: field {source.text_field!r} must be a string, got {type(text).__name__}"
        )
    return bool(text.strip())


def _validate_json(source: DataSource, path: Path) -> int:
    """Validate a JSON Lines file (or a JSON list of records); return the document count."""
    n_docs = 0
    for line, record in iter_json_records(path):
        n_docs += _check_record(record, source, f"{path}:{line}: line {line}")
    return n_docs


def _validate_parquet(source: DataSource, path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(
            f"{path}: not a readable parquet file ({err}) in {describe_source(source)}"
        ) from None
    if source.text_field not in schema.names:
        raise DataError(
            f"{path}: parquet file has no column {source.text_field!r} (columns: {schema.names}); "
            f"set text_field for source {source.name!r}"
        )
    col_type = schema.field(source.text_field).type
    if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
        raise DataError(
            f"{path}: column {source.text_field!r} must be a string column, got {col_type}"
        )
    column = pq.read_table(path, columns=[source.text_field]).column(0)
    if column.null_count:
        first_null = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}: row {first_null + 1} has a null {source.text_field!r}")
    return sum(1 for text in column.to_pylist() if text.strip())


def _validate_text(source: DataSource, path: Path) -> int:
    try:
        return sum(1 for _ in iter_paragraphs(path))
    except DataError as err:
        raise DataError(f"{err} in {describe_source(source)}") from None


def check_source_path(source: DataSource) -> Path:
    """The source's file, or an error saying that it is missing or a directory."""
    fix = f"check the path of source {source.name!r} in the source list"
    return check_data_file(source.path, "data file", fix=fix)


def validate_source(source: DataSource) -> int:
    """Check that a source's file exists and is well formed.

    Args:
        source: The source to check.

    Returns:
        The number of non-blank documents in the file.

    Raises:
        FileNotFoundError: If the file does not exist.
        DataError: If the file is malformed (with file and line number where
            possible) or holds no documents.
    """
    path = check_source_path(source)
    fmt = source.resolved_format
    if fmt == "json":
        n_docs = _validate_json(source, path)
    elif fmt == "parquet":
        n_docs = _validate_parquet(source, path)
    else:
        n_docs = _validate_text(source, path)
    if n_docs == 0:
        raise DataError(
            f"{describe_source(source)} is empty: no non-blank documents found in {path}"
        )
    return n_docs
