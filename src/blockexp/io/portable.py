"""Output directories that keep the base's files and load in transformers 4.x as well as 5.x.

Every directory blockexp writes (``blockexp expand``, streamed or in memory, ``blockexp export``
and the end-of-fit export) goes through :func:`finish_output` inside its atomic output directory:

1. **The base's other files are carried over** (:func:`carry_base_files`): everything that sits
   beside the weights of a local base directory (``generation_config.json``, chat templates,
   tokenizer files, ``README.md``, ``LICENSE``, preprocessor files, custom ``*.py`` code, ...),
   except

   * weights and their indexes (:func:`is_weight_file`: ``*.safetensors``, ``*.bin``, ``*.pt``,
     ``*.pth``, ``*.ckpt``, ``*.msgpack``, ``*.h5``, ``*.gguf``, ``*.onnx``, ``*.ot``,
     ``*.tflite`` and ``*.<one of those>.index.json``): they describe the base's weights, not the
     written ones;
   * the files blockexp writes itself (``config.json``, ``blockexp_manifest.json``), and any file
     the writer already put there (e.g. the README of an MoE export), except the two kinds the
     base is the authority on: ``generation_config.json`` (the base's file replaces the one
     ``save_pretrained`` derives, so it stays byte-identical: eos lists, sampling defaults) and,
     when the written tokenizer *is* the base's, its tokenizer files. When another tokenizer was
     saved, none of the base's tokenizer files are carried (a stray ``tokenizer.model`` beside
     another ``tokenizer.json`` would be picked up by 4.x slow tokenizers);
   * hidden entries (``.git``, ``.cache``, ``.gitattributes``, temporary files) and
     subdirectories, except ``additional_chat_templates/``. Subdirectories of model directories
     hold other formats of the base's weights (``original/``, ``onnx/``), training checkpoints
     (``checkpoint-*``) or caches, none of which describe the expanded model.

   A hub id has no directory: the tokenizer is fetched and saved, and the generation config is
   the one ``save_pretrained`` writes from ``model.generation_config`` (read from the hub).

2. **The written ``config.json`` and ``tokenizer_config.json`` are made portable**
   (:func:`make_portable`): fields that only transformers 5 understands get their 4.x spelling
   *beside* them, so 4.45-4.57 and 5.x read the same model (tested in
   ``tests/test_portable.py::test_loads_in_transformers_4x``). In ``config.json``:

   * ``dtype`` -> also ``torch_dtype`` (4.x reads only ``torch_dtype``; 4.56+ reads both);
   * ``rope_parameters`` -> also ``rope_theta`` and ``rope_scaling`` (``null`` for plain RoPE,
     else the parameters without ``rope_theta``; 4.x ignores ``rope_parameters`` and would fall
     back to its default theta, e.g. 10000 instead of Llama 3's 500000, without scaling).
     5.x gives ``rope_scaling`` precedence over ``rope_parameters`` and fills ``rope_theta`` in,
     so both describe one RoPE. Per-layer-type parameters (Gemma 3) become ``rope_theta`` /
     ``rope_scaling`` (full attention) and ``rope_local_base_freq`` (sliding attention); a
     ``partial_rotary_factor`` inside them also goes to the top level; Phi-3's ``longrope``
     becomes the three-key ``{"type", "short_factor", "long_factor"}`` 4.x validates;
   * fields 5.x renamed, found through the 5.x config class's ``attribute_map`` (e.g. Qwen3-MoE's
     ``num_local_experts`` -> also ``num_experts``, which 4.x reads and otherwise defaults to 128);
   * Gemma: ``hidden_act`` -> also ``hidden_activation`` (4.45 reads only the latter).

   In ``tokenizer_config.json``:

   * ``"tokenizer_class": "TokenizersBackend"`` (5.x's generic fast tokenizer, unknown to 4.x:
     "Tokenizer class TokenizersBackend does not exist") -> ``PreTrainedTokenizerFast``, which
     is the same class in 5.x (an alias), so 5.x behaves exactly as before. Model-specific classes
     (``LlamaTokenizer``, ``Qwen2Tokenizer``, ...) exist in both and are kept;
   * a list-valued ``extra_special_tokens`` (5.x's name for ``additional_special_tokens``; 4.47+
     expects a dict there and fails to load) -> ``additional_special_tokens``, which 5.x reads too;
   * the chat template(s) of ``chat_template.jinja`` / ``additional_chat_templates/`` are also
     written into ``tokenizer_config.json`` (4.45 reads templates only from there; 5.x and 4.57
     prefer the files, which are identical).

Fields are only added, never changed in meaning, and a file that needs nothing is not rewritten
(so a base's own portable files stay byte-identical). What cannot be expressed for 4.x is not
faked: sliding-window attention of Qwen2, Mixtral and Phi-3 is implemented only for
flash-attention in 4.45 (sequences longer than the window differ there), and architectures newer
than a 4.x release (Qwen3 and Gemma 3 need 4.50+, OLMo 2 4.47+) do not load in it at all.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = [
    "BLOCKEXP_FILES",
    "WEIGHT_SUFFIXES",
    "carry_base_files",
    "copy_tokenizer_files",
    "finish_output",
    "is_tokenizer_file",
    "is_weight_file",
    "local_dir",
    "make_portable",
    "portable_config",
    "portable_tokenizer_config",
    "same_source",
]

# Written by blockexp itself: never replaced by the base's copy.
BLOCKEXP_FILES = frozenset({"config.json", "blockexp_manifest.json"})
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".msgpack",
    ".h5",
    ".gguf",
    ".onnx",
    ".ot",
    ".tflite",
)
GENERATION_CONFIG = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"
# Subdirectories carried over (everything else below the base directory is left behind).
KEPT_SUBDIRS = (CHAT_TEMPLATE_DIR,)
_TOKENIZER_PREFIXES = (
    "tokenizer",
    "vocab",
    "merges",
    "special_tokens_map",
    "added_tokens",
    "chat_template",
    "spiece",
    "sentencepiece",
)


def is_weight_file(name: str) -> bool:
    """Whether a file name is model weights (or a sharded checkpoint's index of them)."""
    name = name.lower()
    if name.endswith(".index.json"):
        name = name.removesuffix(".index.json")
    return name.endswith(WEIGHT_SUFFIXES)


def is_tokenizer_file(name: str) -> bool:
    """Whether a base file belongs to its tokenizer (vocabularies, tokenizer config, chat
    templates)."""
    return (
        name == CHAT_TEMPLATE_DIR
        or name.startswith(_TOKENIZER_PREFIXES)
        or (name.endswith(".tiktoken"))
    )


def copy_tokenizer_files(base: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Copy the tokenizer files (:func:`is_tokenizer_file`) of the local directory ``base`` into
    ``dest``; returns the names copied, sorted."""
    base, dest = Path(base).expanduser(), Path(dest)
    copied = []
    for entry in sorted(base.iterdir(), key=lambda p: p.name):
        name = entry.name
        if name.startswith(".") or is_weight_file(name) or not is_tokenizer_file(name):
            continue
        if entry.is_file():
            shutil.copy2(entry, dest / name)
            copied.append(name)
    return copied


def local_dir(spec: Any) -> Path | None:
    """The local directory of a model spec, or ``None`` (hub id, inline config, missing path)."""
    if not isinstance(spec, str | os.PathLike):
        return None
    path = Path(spec).expanduser()
    return path if path.is_dir() else None


def same_source(a: Any, b: Any) -> bool:
    """Whether two model or tokenizer specs name the same thing (one directory, or equal ids)."""
    if not isinstance(a, str | os.PathLike) or not isinstance(b, str | os.PathLike):
        return False
    da, db = local_dir(a), local_dir(b)
    if da is not None and db is not None:
        return da.resolve() == db.resolve()
    return str(a) == str(b)


def carry_base_files(
    base: str | os.PathLike, dest: str | os.PathLike, tokenizer_from_base: bool = True
) -> list[str]:
    """Copy the non-weight files of the local directory ``base`` into ``dest`` (rules in the
    module docstring). Returns the names copied, sorted."""
    base, dest = Path(base).expanduser(), Path(dest)
    replace = {GENERATION_CONFIG}
    copied = []
    for entry in sorted(base.iterdir(), key=lambda p: p.name):
        name = entry.name
        if name.startswith(".") or name in BLOCKEXP_FILES or is_weight_file(name):
            continue
        tokenizer = is_tokenizer_file(name)
        if tokenizer and not tokenizer_from_base:
            continue
        target = dest / name
        may_replace = name in replace or tokenizer
        if entry.is_file():
            if target.exists() and not may_replace:
                continue
            shutil.copyfile(entry, target)  # follows links (a hub cache snapshot holds links)
            copied.append(name)
        elif entry.is_dir() and name in KEPT_SUBDIRS:
            if target.exists():
                if not may_replace:
                    continue
                shutil.rmtree(target)
            shutil.copytree(entry, target, ignore=shutil.ignore_patterns(".*"))
            copied.append(name)
    return copied


# The 5.x config classes' ``attribute_map`` (old name -> 5.x name) of the architectures blockexp
# writes, so that writing a streamed output needs no transformers import (a test checks them
# against the installed transformers); other model types are looked up.
_ATTRIBUTE_MAPS: dict[str, dict[str, str]] = {
    **dict.fromkeys(
        (
            "gemma",
            "gemma2",
            "gemma3_text",
            "llama",
            "mistral",
            "olmo2",
            "phi3",
            "qwen2",
            "qwen2_moe",
            "qwen3",
        ),
        {},
    ),
    "mixtral": {"num_experts": "num_local_experts"},
    "qwen3_moe": {"num_experts": "num_local_experts"},
}


def _attribute_map(model_type: Any) -> dict[str, str]:
    """The 5.x config class's ``attribute_map`` (old name -> 5.x name) for ``model_type``."""
    if not isinstance(model_type, str):
        return {}
    if model_type in _ATTRIBUTE_MAPS:
        return _ATTRIBUTE_MAPS[model_type]
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        return dict(getattr(CONFIG_MAPPING[model_type], "attribute_map", {}) or {})
    except (KeyError, ImportError, AttributeError):  # remote-code or unknown model types
        return {}


def _legacy_rope(rope: dict[str, Any]) -> tuple[Any, dict[str, Any] | None, Any]:
    """``(rope_theta, rope_scaling, partial_rotary_factor)`` of one flat RoPE parameter dict."""
    rest = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    if rest.get("rope_type", rest.get("type", "default")) == "default" and set(rest) <= {
        "rope_type",
        "type",
    }:
        rest = None
    return rope.get("rope_theta"), rest, rope.get("partial_rotary_factor")


def portable_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` contents with the 4.x spelling of 5.x-only fields added (see the module
    docstring); a new dict. Sub-configs (dicts with a ``model_type``) are treated alike."""
    out = dict(config)
    for key, value in config.items():
        if isinstance(value, dict) and "model_type" in value:
            out[key] = portable_config(value)
    dtype = out.get("dtype")
    if isinstance(dtype, str) and out.get("torch_dtype") != dtype:
        out["torch_dtype"] = dtype
    model_type = out.get("model_type")
    rope = out.get("rope_parameters")
    if isinstance(rope, dict) and rope:
        # 5.x reads a non-null rope_scaling in preference to rope_parameters.
        effective = out.get("rope_scaling") or rope
        nested = all(isinstance(v, dict) or v is None for v in effective.values())
        if nested:
            full = effective.get("full_attention")
            sliding = effective.get("sliding_attention")
            if isinstance(full, dict):
                theta, scaling, partial = _legacy_rope(full)
                if theta is not None:
                    out["rope_theta"] = theta
                out["rope_scaling"] = scaling
                if partial is not None:
                    out.setdefault("partial_rotary_factor", partial)
            if isinstance(sliding, dict) and sliding.get("rope_theta") is not None:
                out["rope_local_base_freq"] = sliding["rope_theta"]
        else:
            theta, scaling, partial = _legacy_rope(effective)
            if theta is None:
                theta = out.get("rope_theta")
            if theta is not None:
                out["rope_theta"] = theta
            if partial is not None:
                out.setdefault("partial_rotary_factor", partial)
            rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
            if model_type == "phi3" and rope_type in ("longrope", "su", "yarn"):
                # 4.x's Phi-3 config accepts exactly these three keys.
                scaling = {
                    "type": "longrope",
                    "short_factor": scaling.get("short_factor"),
                    "long_factor": scaling.get("long_factor"),
                }
            out["rope_scaling"] = scaling
    for old, new in _attribute_map(model_type).items():
        if new in out and old not in out:
            out[old] = out[new]
    if model_type == "gemma" and out.get("hidden_act") and not out.get("hidden_activation"):
        out["hidden_activation"] = out["hidden_act"]
    return out


def _chat_templates(directory: Path) -> dict[str, str]:
    templates = {}
    if (directory / CHAT_TEMPLATE_FILE).is_file():
        templates["default"] = (directory / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    extra = directory / CHAT_TEMPLATE_DIR
    if extra.is_dir():
        for path in sorted(extra.glob("*.jinja")):
            templates[path.stem] = path.read_text(encoding="utf-8")
    return templates


def portable_tokenizer_config(
    config: dict[str, Any], directory: str | os.PathLike | None = None
) -> dict[str, Any]:
    """``tokenizer_config.json`` contents readable by 4.x (see the module docstring); a new dict.
    ``directory`` (the tokenizer's) supplies ``tokenizer.json`` and the chat template files."""
    out = dict(config)
    directory = Path(directory) if directory is not None else None
    has_json = directory is None or (directory / "tokenizer.json").is_file()
    if out.get("tokenizer_class") == "TokenizersBackend" and has_json:
        out["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = out.get("extra_special_tokens")
    if isinstance(extra, list):
        merged = list(out.get("additional_special_tokens") or [])
        merged += [token for token in extra if token not in merged]
        out["additional_special_tokens"] = merged
        del out["extra_special_tokens"]
    if directory is not None and not out.get("chat_template"):
        templates = _chat_templates(directory)
        if list(templates) == ["default"]:
            out["chat_template"] = templates["default"]
        elif templates:
            out["chat_template"] = [{"name": k, "template": v} for k, v in templates.items()]
    return out


def _rewrite(path: Path, transform) -> bool:
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False  # not ours to repair
    if not isinstance(data, dict):
        return False
    new = transform(data)
    if new == data:
        return False
    path.write_text(json.dumps(new, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return True


def make_portable(directory: str | os.PathLike) -> list[str]:
    """Rewrite ``config.json`` and ``tokenizer_config.json`` of a written directory in place so
    that transformers 4.x and 5.x read them alike. Returns the names of the files rewritten."""
    directory = Path(directory)
    changed = []
    if _rewrite(directory / "config.json", portable_config):
        changed.append("config.json")
    if _rewrite(
        directory / "tokenizer_config.json",
        lambda data: portable_tokenizer_config(data, directory),
    ):
        changed.append("tokenizer_config.json")
    return changed


def finish_output(
    dest: str | os.PathLike, base: Any = None, tokenizer_from_base: bool = True
) -> list[str]:
    """Last step of every output directory, inside its atomic context: carry the non-weight files
    of ``base`` (when it is a local directory) and make the configs portable.

    Args:
        dest: the (temporary) output directory, already holding weights, config and tokenizer.
        base: the base model spec (a directory, hub id or inline config; only a directory has
            files to carry).
        tokenizer_from_base: whether the tokenizer written is the base's own; if not, the base's
            tokenizer files are left behind.

    Returns:
        The names of the base files carried over.
    """
    source = local_dir(base)
    carried = carry_base_files(source, dest, tokenizer_from_base) if source is not None else []
    make_portable(dest)
    return carried
