"""Tokenizer loading, including a built-in byte-level tokenizer that needs no files.

The built-in tokenizer (``spec="byte"``) maps every UTF-8 byte to its own id
(0..255, no merges), followed by three special tokens:

=========  ====  ===========
token      id    role
=========  ====  ===========
``<pad>``  256   padding
``<s>``    257   bos
``</s>``   258   eos
=========  ====  ===========

It is built in-process from a :class:`tokenizers.Tokenizer`, wrapped in a
:class:`transformers.PreTrainedTokenizerFast`, so it can be saved with
``save_pretrained`` and reloaded with ``AutoTokenizer.from_pretrained`` without
custom code. It is handy for tests, CPU smoke runs and toy models trained from
scratch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

__all__ = [
    "BYTE_BOS_ID",
    "BYTE_EOS_ID",
    "BYTE_PAD_ID",
    "BYTE_VOCAB_SIZE",
    "build_byte_tokenizer",
    "load_tokenizer",
]

BYTE_PAD_ID = 256
BYTE_BOS_ID = 257
BYTE_EOS_ID = 258
BYTE_VOCAB_SIZE = 259

_BYTE_SPECIALS = (("<pad>", BYTE_PAD_ID), ("<s>", BYTE_BOS_ID), ("</s>", BYTE_EOS_ID))

# A Hugging Face Hub id: "name" or "owner/name" made of word characters, "." and "-".
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _bytes_to_unicode() -> dict[int, str]:
    """Return the GPT-2 style byte -> printable unicode character table.

    This is the alphabet used by the ``ByteLevel`` pre-tokenizer/decoder of the
    ``tokenizers`` library: printable bytes map to themselves, the others to
    code points starting at 256.

    Returns:
        A dict mapping each byte value (0..255) to a single character.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """Build the deterministic byte-level tokenizer in-process.

    Returns:
        A fast tokenizer with ``len(tokenizer) == BYTE_VOCAB_SIZE`` where byte
        ``b`` has id ``b`` and ``<pad>``/``<s>``/``</s>`` have ids 256/257/258.
        It adds no special tokens when encoding (no post-processor).
    """
    byte_chars = _bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(tok, special=True, normalized=False) for tok, _ in _BYTE_SPECIALS]
    )
    for tok, expected_id in _BYTE_SPECIALS:  # guard against library behaviour changes
        if backend.token_to_id(tok) != expected_id:
            raise RuntimeError(
                f"byte tokenizer: {tok!r} got id {backend.token_to_id(tok)}, expected {expected_id}"
            )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        name_or_path="byte",
    )


def _looks_like_hub_id(spec: str) -> bool:
    """Return True if ``spec`` is shaped like ``name`` or ``owner/name`` on the Hub."""
    return bool(_HUB_ID_RE.match(spec)) and not spec.startswith((".", "~"))


def load_tokenizer(
    spec: str, trust_remote_code: bool = False
) -> transformers.PreTrainedTokenizerBase:
    """Load a tokenizer from a spec and make sure it can be used for packing.

    Args:
        spec: ``"byte"`` for the built-in byte-level tokenizer, otherwise a local
            directory or a Hugging Face Hub id passed to
            ``AutoTokenizer.from_pretrained``.
        trust_remote_code: Forwarded to ``AutoTokenizer.from_pretrained``.

    Returns:
        The tokenizer. Its ``eos_token`` is always set; if it had no pad
        token, ``pad_token`` is set to the eos token.

    Raises:
        FileNotFoundError: If ``spec`` is a filesystem path that does not exist
            (and does not look like a Hub id).
        OSError: If ``AutoTokenizer`` cannot load ``spec`` (e.g. a Hub id
            while offline).
        ValueError: If the tokenizer has no eos token (needed to separate
            packed documents).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            f"tokenizer spec must be a non-empty string ('byte', a local path or a Hub id), got {spec!r}"
        )
    if spec == "byte":
        return build_byte_tokenizer()

    path = Path(os.path.expanduser(spec))
    if not path.exists() and not _looks_like_hub_id(spec):
        raise FileNotFoundError(
            f"tokenizer path {spec!r} does not exist (resolved to {path.resolve()}). "
            "Pass an existing tokenizer directory, a Hugging Face Hub id, or 'byte' for the built-in tokenizer."
        )
    source = str(path) if path.exists() else spec
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise OSError(
            f"could not load tokenizer {spec!r}: {err}. If this is a Hub id, make sure it is cached locally "
            "(no network access is assumed); otherwise pass a local tokenizer directory or 'byte'."
        ) from err

    if tokenizer.eos_token is None or tokenizer.eos_token_id is None:
        raise ValueError(
            f"tokenizer {spec!r} has no eos token; one is required to separate documents when packing. "
            "Set `eos_token` in its tokenizer_config.json (or add a special token) and try again."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
