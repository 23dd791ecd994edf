"""Model files: loading a base model, writing outputs atomically, and the expansion manifest.

A *model spec* is one of:

* a local directory holding ``config.json`` and weights (``save_pretrained`` layout),
* a Hugging Face hub id (``meta-llama/Llama-2-7b-hf``), resolved by ``transformers``,
* an inline config dict with a ``model_type`` key (tiny random models for tests and the
  quickstart), built with ``AutoModelForCausalLM.from_config`` under a fixed seed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blockexp.io.inputs import OutputExistsError
from blockexp.io.locks import acquire_output, release
from blockexp.io.stale import clean_stale_outputs

if TYPE_CHECKING:  # torch and transformers: imported where a model is built, not to plan
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = [
    "MANIFEST_NAME",
    "ModelSpec",
    "ModelLoadError",
    "OutputExistsError",
    "atomic_output_dir",
    "atomic_write",
    "check_output_dir",
    "clean_stale_outputs",
    "is_blockexp_output",
    "build_manifest",
    "manifest_dict",
    "describe_spec",
    "manifest_base",
    "load_config",
    "load_model",
    "resolve_dtype",
    "save_pretrained_atomic",
    "write_manifest",
]

MANIFEST_NAME = "blockexp_manifest.json"

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


def _check_local(spec: str) -> Path | None:
    """Return the local path of ``spec`` if it is one; raise if it looks like a missing path."""
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
        return _config_from_dict(spec)
    path = _check_local(spec)
    if path is not None and path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        return _config_from_dict(data, source=str(path))
    if path is not None and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; is it a Hugging Face model directory?")
    return AutoConfig.from_pretrained(str(path or spec), trust_remote_code=trust_remote_code)


def _config_from_dict(data: dict[str, Any], source: str = "inline config") -> PretrainedConfig:
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
        config = _config_from_dict(spec)
        if isinstance(torch_dtype, torch.dtype):
            # Built in that dtype (not cast afterwards), so that buffers such as the rotary
            # frequencies keep the precision transformers gives them.
            kwargs["dtype"] = torch_dtype
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, **kwargs)
        return model
    path = _check_local(spec)
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


def _is_within(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def is_blockexp_output(path: str | os.PathLike) -> bool:
    """Whether a directory was written by blockexp (``expand``, ``export`` or a fit export)."""
    return (Path(path) / MANIFEST_NAME).is_file()


def check_output_dir(
    out: str | os.PathLike,
    protect: list[ModelSpec | os.PathLike] = (),
    keep_away: list[str | os.PathLike] = (),
    overwrite: bool = False,
    overwrite_hint: str = "pass --overwrite true",
) -> Path:
    """Check that ``out`` may be written, before any work is done (see
    :class:`atomic_output_dir` for the rules). ``protect`` holds the command's inputs (any model
    spec: inline configs and hub ids have nothing on disk and are skipped; files and
    directories, resolved through symlinks); the config files the command line declared
    (:mod:`blockexp.io.inputs`) are added.

    Returns:
        ``out``, resolved.

    Raises:
        OutputExistsError: naming the conflict and the fix.
    """
    from blockexp.io.inputs import declared_inputs

    out = Path(out).expanduser().resolve()
    for p in [*protect, *declared_inputs()]:
        if not isinstance(p, str | os.PathLike) or not Path(p).expanduser().exists():
            continue
        pp = Path(p).expanduser().resolve()
        if _is_within(out, pp) or _is_within(pp, out):
            relation = "is" if out == pp else "lies inside" if _is_within(out, pp) else "holds"
            raise OutputExistsError(
                f"Refusing to write to {out}: it {relation} {pp}, an input of this command (a "
                "base, checkpoint, tokenizer, data or config file), which writing there could "
                "destroy. Choose an output directory outside every input."
            )
    for p in keep_away:
        pp = Path(p).expanduser().resolve()
        if _is_within(pp, out):
            raise OutputExistsError(
                f"Refusing to write to {out}: it holds {pp} (this run's outputs or checkpoints), "
                "which replacing it would delete. Choose a directory of its own, e.g. "
                f"{pp / 'model'}."
            )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise OutputExistsError(
                f"Output {out} already exists and is not empty. Choose a new directory or "
                f"{overwrite_hint}."
            )
        if not out.is_dir() or not is_blockexp_output(out):
            raise OutputExistsError(
                f"Output {out} is not empty and is not an earlier blockexp output (it has no "
                f"{MANIFEST_NAME}), so it is not replaced even with overwrite. Choose another "
                "directory, or empty it yourself."
            )
    return out


class atomic_output_dir:
    """Context manager: write into a temporary sibling, rename into place on success.

    A crash leaves only a ``.<name>.tmp-<pid>-*`` directory, never a half-written ``out``, and
    the next write beside ``out`` removes what dead processes left there. ``out`` is locked
    against other processes from the start (:func:`blockexp.io.locks.acquire_output`).
    Refuses to write into (or over) any directory in ``protect`` (e.g. the base checkpoint),
    to write over a directory in ``keep_away`` or one containing it (a run or checkpoint
    directory), over an existing non-empty ``out`` unless ``overwrite``, and even then over
    anything but an earlier blockexp output (which has a manifest).
    """

    def __init__(
        self,
        out: str | os.PathLike,
        protect: list[ModelSpec | os.PathLike] = (),
        overwrite: bool = False,
        keep_away: list[str | os.PathLike] = (),
        overwrite_hint: str = "pass --overwrite true",
    ):
        check_output_dir(out, protect, keep_away, overwrite, overwrite_hint)  # before any write
        self.lock = acquire_output(out)  # held until the rename (None: held already)
        try:
            self.out = check_output_dir(out, protect, keep_away, overwrite, overwrite_hint)
        except BaseException:
            release(self.lock)
            raise
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{os.getpid()}-{time.time_ns()}"

    def __enter__(self) -> Path:
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir()
        except BaseException:
            release(self.lock)
            raise
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return
            old = None
            if self.out.exists():
                old = self.out.parent / f".{self.out.name}.old-{os.getpid()}-{time.time_ns()}"
                os.replace(self.out, old)
            os.replace(self.tmp, self.out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            release(self.lock)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write one file atomically: into a temporary sibling, then renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` as the directory's :data:`MANIFEST_NAME` (inside an atomic output
    directory, so no temporary file of its own)."""
    path = Path(directory) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


WEIGHTS_FORMATS = ("safetensors", "pytorch_bin")


def save_pretrained_atomic(
    model: PreTrainedModel,
    out: str | os.PathLike,
    tokenizer=None,
    manifest: dict[str, Any] | None = None,
    protect: list[ModelSpec | os.PathLike] = (),
    overwrite: bool = False,
    max_shard_size: str | int = "5GB",
    dtype: torch.dtype | None = None,
    weights_format: str = "safetensors",
    keep_away: list[str | os.PathLike] = (),
    overwrite_hint: str = "pass --overwrite true",
    base: ModelSpec | None = None,
    tokenizer_from_base: bool = True,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save ``model``, its config, ``tokenizer`` and the manifest, atomically (the rules of
    :class:`atomic_output_dir`).

    ``state_dict``: the weights to write instead of ``model.state_dict()`` (e.g. the full
    tensors gathered from an FSDP2-sharded model on every rank, :func:`full_state_dict`); an
    FSDP2-sharded ``model`` without it is gathered here (a collective: every rank must call).

    ``base`` (a local directory; hub ids and inline configs have no files) lends its other
    non-weight files (``generation_config.json``, README, chat template, ...; its tokenizer files
    too when ``tokenizer_from_base``), and ``config.json`` / ``tokenizer_config.json`` are made
    readable by transformers 4.x as well (:func:`blockexp.io.portable.finish_output`).

    ``dtype`` stores every floating-point tensor in that dtype (one tensor at a time; tensors
    already in it are not copied), e.g. bf16 for a model trained with frozen bf16 weights and fp32
    trainable ones, so the checkpoint has one dtype, as its config says.

    ``weights_format`` is ``safetensors`` (``save_pretrained``'s sharded safetensors) or
    ``pytorch_bin``: one ``pytorch_model.bin`` holding a plain dict of tensors (loadable with
    ``torch.load(weights_only=True)``), the file TRACE's inference scripts read.
    """
    import torch

    if weights_format not in WEIGHTS_FORMATS:
        raise ValueError(f"weights_format must be one of {WEIGHTS_FORMATS}, got {weights_format!r}")
    if state_dict is None:
        state_dict = full_state_dict(model)
    with atomic_output_dir(out, protect, overwrite, keep_away, overwrite_hint) as tmp:
        kwargs: dict[str, Any] = {} if state_dict is None else {"state_dict": state_dict}
        if dtype is not None:
            kwargs["state_dict"] = {
                k: v.to(dtype) if v.is_floating_point() else v
                for k, v in (state_dict if state_dict is not None else model.state_dict()).items()
            }
        if weights_format == "pytorch_bin":
            state = kwargs.get("state_dict") or model.state_dict()
            tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
            torch.save(tensors, tmp / "pytorch_model.bin")
            model.config.dtype = str(dtype or model.dtype).split(".")[1]
            model.config.architectures = [type(model).__name__]
            model.config.save_pretrained(tmp)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(tmp)
        else:
            model.save_pretrained(
                tmp, safe_serialization=True, max_shard_size=max_shard_size, **kwargs
            )
            _unprefix_fsdp_architectures(tmp / "config.json")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        from blockexp.io.portable import finish_output

        finish_output(tmp, base, tokenizer_from_base)
        if manifest is not None:
            write_manifest(tmp, manifest)
    return Path(out).expanduser().resolve()


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The full (unsharded) state dict of an FSDP2-sharded ``model`` on the CPU, or ``None`` when
    no parameter is sharded (a DTensor). Gathering is a collective: every rank must call it, in
    the same order, even if only rank 0 writes the result."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return None
    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return None
    out = {}
    for key, value in model.state_dict().items():
        if isinstance(value, DTensor):
            value = value.full_tensor()
        out[key] = value.detach().cpu()
    return out


def _unprefix_fsdp_architectures(config_file: Path) -> None:
    """FSDP2 renames a sharded model's class (``FSDPLlamaForCausalLM``), which
    ``save_pretrained`` records as the architecture; write the model's own class name."""
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text())
    names = config.get("architectures") or []
    fixed = [n[len("FSDP") :] if n.startswith("FSDP") else n for n in names]
    if fixed != names:
        config["architectures"] = fixed
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def build_manifest(
    expansion, expander, base: ModelSpec, base_num_layers: int, base_params: int
) -> dict[str, Any]:
    """The JSON manifest written next to every expanded checkpoint."""
    total, trainable = expansion.parameter_counts()
    return manifest_dict(
        expander,
        base,
        base_num_layers,
        base_params,
        num_layers=expansion.model.config.num_hidden_layers,
        total_params=total,
        trainable_params=trainable,
        plan=expansion.plan,
        trainable_names=expansion.trainable,
        extra=expansion.extra,
    )


def manifest_dict(
    expander,
    base: ModelSpec,
    base_num_layers: int,
    base_params: int,
    num_layers: int,
    total_params: int,
    trainable_params: int,
    plan,
    trainable_names,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest from its parts (used where no model object exists, e.g. streaming)."""
    from importlib.metadata import version  # the installed distribution's (pyproject.toml)

    return {
        "blockexp_version": version("blockexp"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base": manifest_base(base),
        "base_num_layers": base_num_layers,
        "base_params": base_params,
        "num_layers": num_layers,
        "total_params": total_params,
        "trainable_params": trainable_params,
        "expander": expander.config(),
        "new_layers": plan.new_layers if plan else [],
        "trainable_layers": plan.trainable_layers if plan else [],
        "trainable_parameters": sorted(trainable_names),
        "plan": plan.to_dict() if plan else None,
        **({"extra": extra} if extra else {}),
    }
