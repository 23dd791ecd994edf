"""CPT tokenisation: each source's documents -> token ids followed by eos, cached by ``datasets``.

A source is loaded with ``datasets.load_dataset`` (``json``/``parquet``/``text`` builders, split
``train``) and every document is tokenised once with ``Dataset.map(batched=True)``. The map has
an explicit fingerprint derived from the loaded data, the text column and the tokenizer's
serialised definition, so the Arrow cache file is reused by later runs (also across processes).
Each document is followed by the eos token. Empty / whitespace-only documents are dropped.
Special-token strings that occur literally in the text (e.g. ``"</s>"``) are tokenised as plain
text, never as control tokens.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import tokenizers
import transformers

from blockexp.data.cpt.sources import DataSource, describe_source
from blockexp.data.records import DataError

__all__ = ["TokenizeBatch", "split_long_text", "tokenize_source", "tokenizer_fingerprint"]

# Bump when the tokenisation logic changes so old cache files are not reused.
_MAP_VERSION = "cpt-tokenize-v1"


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


def tokenize_source(
    source: DataSource,
    tokenizer: transformers.PreTrainedTokenizerBase,
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """Load one (already validated) source and tokenise it (cached by ``datasets``).

    Args:
        source: The source.
        tokenizer: The tokenizer.
        cache_dir: ``datasets`` cache directory (default: the ``datasets`` default).

    Returns:
        A dataset with one ``input_ids`` row (ending in eos) per non-blank document.

    Raises:
        DataError: If ``datasets`` cannot load the file, or it holds no documents.
    """
    fmt = source.resolved_format
    path = str(Path(source.path).expanduser().resolve())
    kwargs: dict[str, Any] = {"sample_by": "paragraph"} if fmt == "text" else {}
    try:
        raw = datasets.load_dataset(
            fmt, data_files=path, split="train", cache_dir=cache_dir, **kwargs
        )
    except Exception as err:  # datasets/Arrow errors are obscure: say which source failed
        raise DataError(
            f"{describe_source(source)}: datasets failed to load {path}: {type(err).__name__}: {err}"
        ) from err
    column = source.column
    if column not in raw.column_names:
        raise DataError(
            f"{describe_source(source)}: loaded data has no column {column!r} (columns: {raw.column_names})"
        )

    eos_id = tokenizer.eos_token_id
    fingerprint = hashlib.sha256(
        "|".join(
            [
                _MAP_VERSION,
                raw._fingerprint,
                column,
                fmt,
                str(eos_id),
                tokenizer_fingerprint(tokenizer),
            ]
        ).encode()
    ).hexdigest()[:32]
    tokenized = raw.map(
        TokenizeBatch(tokenizer, column, eos_id, strip_newlines=fmt == "text"),
        batched=True,
        remove_columns=raw.column_names,
        features=datasets.Features({"input_ids": datasets.List(datasets.Value("int32"))}),
        new_fingerprint=fingerprint,
        desc=f"Tokenizing {source.name}",
    )
    if len(tokenized) == 0:
        raise DataError(f"{describe_source(source)} is empty: no non-blank documents after loading")
    return tokenized
