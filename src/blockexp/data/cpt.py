"""Continual pre-training (CPT) data: local text corpora -> packed, weighted token blocks.

Pipeline, per named source:

1. Validate the file up front (existence, JSON syntax per line, text field
   presence and type, non-empty) so problems are reported with the file name
   and 1-based line number instead of an obscure ``datasets``/Arrow error.
2. Load it with ``datasets.load_dataset`` (``json``/``parquet``/``text``
   builders, split ``train``).
3. Tokenise every document once with ``Dataset.map(batched=True)``. The map
   has an explicit fingerprint derived from the loaded data, the text column
   and the tokenizer's serialised definition, so the Arrow cache file is reused
   by later runs (also across processes). Each document is followed by the
   eos token. Empty / whitespace-only documents are dropped. Special-token
   strings that occur literally in the text (e.g. ``"</s>"``) are tokenised as
   plain text, never as control tokens.
4. Hold out ``val_fraction`` of the documents (seeded, before packing, so no
   document is in both splits).
5. Pack the documents of each split, in their original order, into
   contiguous blocks of exactly ``seq_len`` tokens; the trailing remainder is
   dropped. Blocks may span document boundaries (separated by eos).
6. Apply the mixture weight to the training blocks: weight ``w`` yields
   ``round(w * n_blocks)`` blocks, i.e. ``floor(w)`` full copies plus a seeded
   random subset (without replacement) for the fractional part. Validation is
   unweighted.

Packing happens in memory (int32), which is fine for corpora up to a few
hundred million tokens.

Text (``.txt``) files: documents are separated by blank lines (paragraph
mode), leading/trailing newlines of each document are stripped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import tokenizers
import torch
import transformers
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from blockexp.data.base import BlockexpDataModule, check_fraction, check_int
from blockexp.data.records import (
    DataError,
    check_data_file,
    iter_json_records,
    json_kind,
)

__all__ = ["CPTDataModule", "DataError", "DataSource", "PackedBlocks", "infer_format"]

# Bump when the tokenisation logic changes so old cache files are not reused.
_MAP_VERSION = "cpt-tokenize-v1"

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


# --------------------------------------------------------------------------- validation


def _describe(source: DataSource) -> str:
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
            f"{path}: not a readable parquet file ({err}) in {_describe(source)}"
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
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not valid UTF-8 ({err.reason} at byte {err.start}) in {_describe(source)}"
        ) from None
    return sum(1 for doc in text.replace("\r\n", "\n").split("\n\n") if doc.strip())


def _check_path(source: DataSource) -> Path:
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
    path = _check_path(source)
    fmt = source.resolved_format
    if fmt == "json":
        n_docs = _validate_json(source, path)
    elif fmt == "parquet":
        n_docs = _validate_parquet(source, path)
    else:
        n_docs = _validate_text(source, path)
    if n_docs == 0:
        raise DataError(f"{_describe(source)} is empty: no non-blank documents found in {path}")
    return n_docs


# --------------------------------------------------------------------------- tokenisation


def split_long_text(text: str, max_chars: int) -> list[str]:
    """``text`` cut into pieces of at most about ``max_chars`` characters, each cut right after a
    whitespace character where there is one in the last tenth of the window (so a word is not
    split), else at ``max_chars``. Joining the pieces gives ``text`` back."""
    if len(text) <= max_chars:
        return [text]
    pieces, start = [], 0
    while len(text) - start > max_chars:
        end = start + max_chars
        window = text[end - max_chars // 10 : end]
        cut = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
        if cut >= 0:
            end = end - max_chars // 10 + cut + 1
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


class TokenizeBatch:
    """Picklable batched map function: texts -> token ids followed by eos.

    Memory stays bounded for any document: a text longer than ``max_chars`` characters is
    tokenised in pieces (:func:`split_long_text`), at most ``group_chars`` characters at a time,
    and its ids are kept as an int32 array. A piece boundary falls after a whitespace character;
    tokenizers that split words on whitespace (byte-level BPE, the byte tokenizer) give the same
    ids as for the whole text, others may differ by a token at each boundary. Documents up to
    ``max_chars`` are tokenised whole, as before.

    Args:
        tokenizer: The tokenizer.
        column: Text column to read.
        eos_token_id: Id appended after every document.
        strip_newlines: Strip leading/trailing newlines of each text (used for
            paragraph-split ``.txt`` files).
        max_chars: longest text tokenised in one piece.
        group_chars: most characters handed to the tokenizer in one call.
    """

    def __init__(
        self,
        tokenizer: transformers.PreTrainedTokenizerBase,
        column: str,
        eos_token_id: int,
        strip_newlines: bool = False,
        max_chars: int = 100_000,
        group_chars: int = 2_000_000,
    ) -> None:
        self.tokenizer = tokenizer
        self.column = column
        self.eos_token_id = int(eos_token_id)
        self.strip_newlines = strip_newlines
        self.max_chars = max_chars
        self.group_chars = group_chars

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(
            texts,
            add_special_tokens=False,
            split_special_tokens=True,
            return_attention_mask=False,
            verbose=False,
        )["input_ids"]

    def _encode_long(self, text: str) -> np.ndarray:
        parts, group, size = [], [], 0
        for piece in split_long_text(text, self.max_chars):
            if group and size + len(piece) > self.group_chars:
                parts += [np.asarray(ids, dtype=np.int32) for ids in self._encode(group)]
                group, size = [], 0
            group.append(piece)
            size += len(piece)
        parts += [np.asarray(ids, dtype=np.int32) for ids in self._encode(group)]
        parts.append(np.asarray([self.eos_token_id], dtype=np.int32))
        return np.concatenate(parts)

    def __call__(self, batch: Mapping[str, list[Any]]) -> dict[str, list]:
        """Tokenise a batch; blank documents are dropped."""
        texts = batch[self.column]
        if self.strip_newlines:
            texts = [t.strip("\r\n") for t in texts]
        texts = [t for t in texts if t and not t.isspace()]
        if not texts:
            return {"input_ids": []}
        short = [t for t in texts if len(t) <= self.max_chars]
        encoded = iter(self._encode(short) if short else [])
        out: list = []
        for text in texts:
            if len(text) <= self.max_chars:
                out.append([*next(encoded), self.eos_token_id])
            else:
                out.append(self._encode_long(text))
        return {"input_ids": out}


def tokenizer_fingerprint(tokenizer: transformers.PreTrainedTokenizerBase) -> str:
    """A deterministic hash of a tokenizer's behaviour-relevant definition.

    Args:
        tokenizer: The tokenizer.

    Returns:
        A hex digest that is stable across processes.
    """
    h = hashlib.sha256()
    h.update(f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}".encode())
    h.update(
        f"|transformers={transformers.__version__}|tokenizers={tokenizers.__version__}|".encode()
    )
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # slow tokenizer: vocabulary plus datasets' pickle-based hash
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
        h.update(datasets.fingerprint.Hasher.hash(tokenizer).encode())
    return h.hexdigest()


def _flat_tokens(tokenized: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Return (all token ids concatenated, per-document offsets) of a tokenised dataset."""
    lists = tokenized.data.column("input_ids").combine_chunks()
    values = lists.flatten().to_numpy(zero_copy_only=False)
    offsets = lists.offsets.to_numpy()
    return values, (offsets - offsets[0]).astype(np.int64)


def _pack(
    values: np.ndarray, offsets: np.ndarray, doc_mask: np.ndarray, seq_len: int
) -> tuple[np.ndarray, int]:
    """Concatenate the selected documents in order and cut into ``seq_len`` blocks.

    Returns:
        ``(blocks [n_blocks, seq_len] int32, number of tokens before dropping the remainder)``.
    """
    lengths = np.diff(offsets)
    token_mask = np.repeat(doc_mask, lengths)
    flat = values[token_mask]
    n_blocks = len(flat) // seq_len
    blocks = np.ascontiguousarray(
        flat[: n_blocks * seq_len].reshape(n_blocks, seq_len), dtype=np.int32
    )
    return blocks, len(flat)


class PackedBlocks(Dataset):
    """A map-style dataset of packed token blocks.

    Args:
        blocks: ``int`` array ``[n_blocks, seq_len]``.
        index: Optional row indices into ``blocks`` (repeats allowed), used for
            mixture weighting; defaults to every row once.
        eos_id: When given, items also carry ``position_ids`` that restart after every EOS
            (document masking: see :func:`blockexp.data.packing.packed_position_ids`).
    """

    def __init__(
        self, blocks: np.ndarray, index: np.ndarray | None = None, eos_id: int | None = None
    ) -> None:
        self.blocks = blocks
        self.eos_id = eos_id
        self.index = (
            np.arange(len(blocks), dtype=np.int64)
            if index is None
            else np.asarray(index, dtype=np.int64)
        )

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(self.blocks[self.index[i]].astype(np.int64))
        item = {"input_ids": ids, "labels": ids.clone()}
        if self.eos_id is not None:
            from blockexp.data.packing import packed_position_ids

            item["position_ids"] = packed_position_ids(ids[None], self.eos_id)[0]
        return item


def _rng(seed: int, name: str, purpose: str) -> np.random.Generator:
    return np.random.default_rng(
        [int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode()), zlib.crc32(purpose.encode())]
    )


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


# --------------------------------------------------------------------------- data module


class CPTDataModule(BlockexpDataModule):
    """Packed, mixture-weighted continual pre-training data from local files.

    Args:
        sources: The named corpora of the mixture (unique names).
        tokenizer: ``"byte"``, a local tokenizer directory or a Hub id (see
            :func:`blockexp.io.tokenization.load_tokenizer`).
        seq_len: Tokens per training block (>= 2).
        batch_size: Blocks per batch.
        val_fraction: Fraction of each source's documents held out for
            validation, in ``[0, 1)``. When > 0, every source with >= 2
            documents holds out at least 1 (and keeps at least 1 for training).
        num_workers: DataLoader worker processes.
        seed: Seed for the validation split, the fractional mixture subset and
            the training shuffle.
        cache_dir: ``datasets`` cache directory (default: the ``datasets``
            default cache, usually ``~/.cache/huggingface/datasets``).
        trust_remote_code: Forwarded to the tokenizer loader.
        document_masking: Also emit ``position_ids`` that restart after every EOS, so that no
            token attends across a document boundary inside a packed block (transformers builds
            the block-diagonal mask for SDPA/eager; with flash-attn the module flattens the batch
            to variable-length attention). Off by default, as in LLaMA Pro's packing.

    Batches are ``{"input_ids": LongTensor[B, seq_len], "labels": LongTensor[B, seq_len]}``
    with ``labels == input_ids`` (the model shifts internally), plus ``position_ids`` with
    ``document_masking``.

    Attributes:
        tokenizer: The loaded tokenizer (available right after ``__init__``).
        train_dataset: :class:`PackedBlocks` of weighted training blocks (after ``setup``).
        val_dataset: :class:`PackedBlocks` of unweighted validation blocks (after ``setup``;
            may be empty when ``val_fraction == 0``).
        tokenized: Per-source tokenised ``datasets.Dataset`` (one row per non-blank document).
        val_doc_indices: Per-source row indices (into ``tokenized[name]``) of held-out documents.

    Raises:
        DataError: For invalid settings or sources (checked in ``__init__``)
            and for malformed/insufficient data (checked when data is built).
        FileNotFoundError: If a source file does not exist.
    """

    def __init__(
        self,
        sources: list[DataSource],
        tokenizer: str = "byte",
        seq_len: int = 256,
        batch_size: int = 8,
        val_fraction: float = 0.05,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        trust_remote_code: bool = False,
        document_masking: bool = False,
    ) -> None:
        if isinstance(sources, (DataSource, Mapping)) or not sources:
            raise DataError(
                "`sources` must be a non-empty list of DataSource(name=..., path=..., weight=...)"
            )
        sources = [DataSource(**s) if isinstance(s, Mapping) else s for s in sources]
        names = [s.name for s in sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise DataError(
                f"duplicate data source names {duplicates}; every source needs a unique name"
            )
        check_int("seq_len", seq_len, minimum=2, why="inputs and shifted labels")
        check_fraction("val_fraction", val_fraction, hint="use 0 to disable validation")
        for source in sources:
            _check_path(source)
            source.resolved_format  # noqa: B018  (raises DataError for unknown extensions)

        super().__init__(tokenizer, batch_size, num_workers, seed, trust_remote_code)
        self.sources = sources
        self.seq_len = seq_len
        self.val_fraction = float(val_fraction)
        self.cache_dir = cache_dir
        self.document_masking = document_masking
        self._validated: set[tuple] = set()
        self.save_hyperparameters(
            {
                "sources": [asdict(s) for s in sources],
                "tokenizer": tokenizer,
                "seq_len": seq_len,
                "batch_size": batch_size,
                "val_fraction": self.val_fraction,
                "num_workers": num_workers,
                "seed": seed,
                "cache_dir": cache_dir,
                "trust_remote_code": trust_remote_code,
                "document_masking": document_masking,
            }
        )

        self.train_dataset: PackedBlocks | None = None
        self.val_dataset: PackedBlocks | None = None
        self.tokenized: dict[str, datasets.Dataset] = {}
        self.val_doc_indices: dict[str, list[int]] = {}
        self._stats: dict[str, Any] | None = None

    # ------------------------------------------------------------------ building

    def tokenize_source(self, source: DataSource) -> datasets.Dataset:
        """Validate, load and tokenise one source (cached by ``datasets``).

        Args:
            source: The source.

        Returns:
            A dataset with one ``input_ids`` row (ending in eos) per non-blank document.
        """
        self._validate_once(source)
        fmt = source.resolved_format
        path = str(Path(source.path).expanduser().resolve())
        kwargs: dict[str, Any] = {"sample_by": "paragraph"} if fmt == "text" else {}
        try:
            raw = datasets.load_dataset(
                fmt, data_files=path, split="train", cache_dir=self.cache_dir, **kwargs
            )
        except Exception as err:  # datasets/Arrow errors are obscure: say which source failed
            raise DataError(
                f"{_describe(source)}: datasets failed to load {path}: {type(err).__name__}: {err}"
            ) from err
        column = source.column
        if column not in raw.column_names:
            raise DataError(
                f"{_describe(source)}: loaded data has no column {column!r} (columns: {raw.column_names})"
            )

        eos_id = self.tokenizer.eos_token_id
        fingerprint = hashlib.sha256(
            "|".join(
                [
                    _MAP_VERSION,
                    raw._fingerprint,
                    column,
                    fmt,
                    str(eos_id),
                    tokenizer_fingerprint(self.tokenizer),
                ]
            ).encode()
        ).hexdigest()[:32]
        tokenized = raw.map(
            TokenizeBatch(self.tokenizer, column, eos_id, strip_newlines=fmt == "text"),
            batched=True,
            remove_columns=raw.column_names,
            features=datasets.Features({"input_ids": datasets.List(datasets.Value("int32"))}),
            new_fingerprint=fingerprint,
            desc=f"Tokenizing {source.name}",
        )
        if len(tokenized) == 0:
            raise DataError(f"{_describe(source)} is empty: no non-blank documents after loading")
        return tokenized

    def _validate_once(self, source: DataSource) -> None:
        """:func:`validate_source`, skipped when this file (same size and mtime) passed before."""
        stat = Path(source.path).expanduser().stat()
        key = (
            source.name,
            source.path,
            source.text_field,
            source.format,
            stat.st_size,
            stat.st_mtime_ns,
        )
        if key not in self._validated:
            validate_source(source)
            self._validated.add(key)

    def prepare_data(self) -> None:
        """Validate and tokenise every source once (fills the ``datasets`` cache)."""
        for source in self.sources:
            self.tokenize_source(source)

    def setup(self, stage: str | None = None) -> None:
        """Build the packed train/val datasets (idempotent; same for every stage).

        Args:
            stage: Lightning stage (``"fit"``, ``"validate"``, ...); ignored.
        """
        if self.train_dataset is not None:
            return
        seq_len = self.seq_len
        train_parts: list[np.ndarray] = []
        train_index: list[np.ndarray] = []
        val_parts: list[np.ndarray] = []
        per_source: dict[str, dict[str, Any]] = {}
        offset = 0
        for source in self.sources:
            tokenized = self.tokenize_source(source)
            self.tokenized[source.name] = tokenized
            values, offsets = _flat_tokens(tokenized)
            n_docs = len(offsets) - 1

            n_val = 0
            if self.val_fraction > 0 and n_docs >= 2:
                n_val = min(max(1, _round_half_up(self.val_fraction * n_docs)), n_docs - 1)
            elif self.val_fraction > 0:
                rank_zero_warn(
                    f"{_describe(source)} has a single document; none is held out for validation"
                )
            val_mask = np.zeros(n_docs, dtype=bool)
            if n_val:
                val_mask[
                    _rng(self.seed, source.name, "val").choice(n_docs, size=n_val, replace=False)
                ] = True

            self.val_doc_indices[source.name] = np.flatnonzero(val_mask).tolist()
            train_blocks, train_tokens = _pack(values, offsets, ~val_mask, seq_len)
            val_blocks, val_tokens = _pack(values, offsets, val_mask, seq_len)
            n_blocks = len(train_blocks)
            if n_blocks == 0:
                raise DataError(
                    f"{_describe(source)}: too little data for one training block: found {train_tokens} tokens "
                    f"in {n_docs - n_val} training documents (eos included) but seq_len={seq_len} needs at least "
                    f"{seq_len}; add data, lower seq_len or lower val_fraction"
                )
            if n_val and len(val_blocks) == 0:
                rank_zero_warn(
                    f"{_describe(source)}: the {n_val} held-out documents ({val_tokens} tokens) are shorter than "
                    f"seq_len={seq_len}, so this source has no validation blocks"
                )

            n_weighted = max(1, _round_half_up(source.weight * n_blocks))
            full = n_weighted // n_blocks
            rest = n_weighted - full * n_blocks
            index = [np.tile(np.arange(n_blocks, dtype=np.int64), full)]
            if rest:
                subset = _rng(self.seed, source.name, "mixture").choice(
                    n_blocks, size=rest, replace=False
                )
                index.append(np.sort(subset).astype(np.int64))
            index_arr = np.concatenate(index) + offset
            offset += n_blocks
            train_parts.append(train_blocks)
            train_index.append(index_arr)
            val_parts.append(val_blocks)

            per_source[source.name] = {
                "weight": source.weight,
                "docs": n_docs,
                "train_docs": n_docs - n_val,
                "val_docs": n_val,
                "tokens": int(len(values)),
                "train_tokens": int(train_tokens),
                "val_tokens": int(val_tokens),
                "blocks": n_blocks,
                "train_blocks": int(len(index_arr)),
                "val_blocks": int(len(val_blocks)),
            }

        eos_id = self.tokenizer.eos_token_id if self.document_masking else None
        self.train_dataset = PackedBlocks(
            np.concatenate(train_parts), np.concatenate(train_index), eos_id=eos_id
        )
        self.val_dataset = PackedBlocks(np.concatenate(val_parts), eos_id=eos_id)
        self._stats = {
            "seq_len": seq_len,
            "train_blocks": len(self.train_dataset),
            "val_blocks": len(self.val_dataset),
            "sources": per_source,
        }

    def stats(self) -> dict[str, Any]:
        """Per-source and total counts (available after :meth:`setup`).

        Returns:
            ``{"seq_len", "train_blocks", "val_blocks", "sources": {name: {...}}}``
            where each source entry has ``weight``, ``docs``/``train_docs``/
            ``val_docs``, ``tokens``/``train_tokens``/``val_tokens`` (eos
            included, before dropping remainders), ``blocks`` (unweighted
            training blocks), ``train_blocks`` (after weighting) and
            ``val_blocks``.

        Raises:
            RuntimeError: If called before :meth:`setup`.
        """
        if self._stats is None:
            raise RuntimeError(
                "CPTDataModule.stats() is available after setup(); call dm.setup('fit') first"
            )
        return json.loads(json.dumps(self._stats))  # deep copy of plain types

    # ------------------------------------------------------------------ loaders

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded, resumable) loader over the weighted training blocks."""
        return self.train_loader(self.train_dataset)

    def val_dataloader(self) -> DataLoader:
        """Loader over the unweighted validation blocks, in order."""
        return self.eval_loader(self.val_dataset)
