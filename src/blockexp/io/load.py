"""Loading a base model or its config from a directory, a hub id or an inline config dict.

A *model spec* is one of:

* a local directory holding ``config.json`` and weights (``save_pretrained`` layout),
* a Hugging Face hub id (``meta-llama/Llama-2-7b-hf``), resolved by ``transformers``,
* an inline config dict with a ``model_type`` key (tiny random models for tests and the
  quickstart), built with ``AutoModelForCausalLM.from_config`` under a fixed seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and transformers: imported where a model is built, not to plan
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = [
    "ModelLoadError",
    "ModelSpec",
    "config_from_dict",
    "describe_spec",
    "load_config",
    "load_model",
    "local_path",
    "manifest_base",
    "resolve_dtype",
]

ModelSpec = str | dict[str, Any]


class ModelLoadError(OSError):
    """A model directory or hub id that cannot be loaded (the message names it)."""


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """``"auto"`` (keep the checkpoint's dtype), ``None`` or a torch dtype name."""
    if dtype is None or dtype == "auto":
        return dtype
    import torch  # not to plan or stream with the checkpoint's own dtypes

    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype.removeprefix("torch.")
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    resolved = getattr(torch, aliases.get(name, name), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"Unknown dtype '{dtype}'. Use auto, float32, bfloat16 or float16.")
    return resolved


def local_path(spec: str) -> Path | None:
    """The local path ``spec`` names, or ``None`` for a hub id.

    Raises:
        FileNotFoundError: if ``spec`` looks like a path that does not exist.
    """
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or spec.endswith(".json"):
        raise FileNotFoundError(
            f"Base model '{spec}' does not exist. Give a local directory with config.json and "
            "weights, a config.json file (for plan), or a hub id like 'org/name'."
        )
    return None


def describe_spec(spec: ModelSpec) -> str:
    """A short string for logs and manifests."""
    if isinstance(spec, dict):
        return f"inline:{spec.get('model_type', '?')}"
    return str(spec)


def manifest_base(spec: ModelSpec) -> str:
    """How a manifest records the base: an existing local path as an absolute path (so the
    manifest stays valid when the output directory or the working directory moves), a hub id
    as given, an inline config as ``inline:<model_type>``."""
    if isinstance(spec, dict):
        return describe_spec(spec)
    path = Path(spec).expanduser()
    if path.exists():
        return str(path.resolve())
    return str(spec)


def load_config(spec: ModelSpec, trust_remote_code: bool = False) -> PretrainedConfig:
    """Load a model config from a directory, a ``config.json`` path, a hub id or an inline dict."""
    from transformers import AutoConfig

    if isinstance(spec, dict):
        return config_from_dict(spec)
    path = local_path(spec)
    if path is not None and path.is_file():
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"{path} is a file that is not a model config (not valid JSON: {err}): the base "
                "must be a Hugging Face model directory, a hub id, or a config.json file"
            ) from err
        if not isinstance(data, dict):
            raise ValueError(
                f"{path} holds JSON but not a model config (an object with 'model_type'): the "
                "base must be a Hugging Face model directory, a hub id, or a config.json file"
            )
        return config_from_dict(data, source=str(path))
    if path is not None and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; is it a Hugging Face model directory?")
    return AutoConfig.from_pretrained(str(path or spec), trust_remote_code=trust_remote_code)


def config_from_dict(data: dict[str, Any], source: str = "inline config") -> PretrainedConfig:
    """The transformers config that a ``config.json``-style dict describes (``source`` names it
    in errors)."""
    data = dict(data)
    model_type = data.pop("model_type", None)
    if not model_type:
        raise ValueError(f"{source} has no 'model_type' (e.g. \"llama\").")
    data.pop("transformers_version", None)
    from transformers import AutoConfig

    try:
        return AutoConfig.for_model(model_type, **data)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err


def load_model(
    spec: ModelSpec,
    dtype: str | torch.dtype | None = "auto",
    trust_remote_code: bool = False,
    seed: int = 0,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """Load a causal LM from a model spec (see module docstring).

    Args:
        spec: local directory, hub id or inline config dict.
        dtype: ``"auto"`` keeps the checkpoint's dtype; otherwise a torch dtype or its name.
        trust_remote_code: passed to ``transformers``; off unless the user turns it on.
        seed: initialisation seed for inline configs (random weights).
        attn_implementation: e.g. ``"sdpa"`` or ``"flash_attention_2"``; default: transformers'.
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = resolve_dtype(dtype)
    kwargs: dict[str, Any] = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if isinstance(spec, dict):
        config = config_from_dict(spec)
        if isinstance(torch_dtype, torch.dtype):
            # Built in that dtype (not cast afterwards), so that buffers such as the rotary
            # frequencies keep the precision transformers gives them.
            kwargs["dtype"] = torch_dtype
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, **kwargs)
        return model
    path = local_path(spec)
    if path is not None and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; is it a Hugging Face model directory?")
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(path or spec), dtype=torch_dtype, trust_remote_code=trust_remote_code, **kwargs
        )
    except Exception as err:  # name the model: library errors often do not
        from safetensors import SafetensorError

        if isinstance(err, SafetensorError | EOFError) or (
            isinstance(err, OSError | ValueError) and str(path or spec) not in str(err)
        ):
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ModelLoadError(
                f"cannot load the model {path or spec}: {reason} (a truncated or corrupted "
                "weights file, or not a model this transformers release can build?)"
            ) from err
        raise
