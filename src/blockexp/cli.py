"""Command line: ``python -m blockexp <command>``.

Training commands follow LightningCLI conventions (``fit``, ``validate``, ``test``, with
``--config file.yaml`` and dotted overrides). Offline commands:

* ``plan``   layer map and parameter counts from config.json alone (meta device, no weights),
* ``expand`` write an expanded Hugging Face directory (safetensors, config, tokenizer, manifest),
* ``export`` turn a Lightning training checkpoint into a Hugging Face directory.
"""

from __future__ import annotations

import json as _json
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningCLI
from rich.console import Console
from rich.table import Table

from .expanders import Expander

__all__ = ["main", "plan", "expand", "export", "BlockexpCLI"]

TRAIN_COMMANDS = ("fit", "validate", "test", "predict")
OFFLINE_COMMANDS = ("plan", "expand", "export", "importance")
from .streaming import copy_tokenizer_files  # noqa: E402  (lightning-free import)


def _console() -> Console:
    return Console(stderr=False)


def plan_summary(base: str, expander: Expander, trust_remote_code: bool = False) -> dict[str, Any]:
    """Plan an expansion from a config alone: the model is built on the meta device."""
    from transformers import AutoModelForCausalLM

    from .checkpoint import load_config

    config = load_config(base, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    base_layers = int(config.num_hidden_layers)
    base_params = sum(p.numel() for p in model.parameters())
    expansion = expander.expand(model)
    total, trainable = expansion.parameter_counts()
    if expansion.plan is not None:
        layers = [
            {
                "index": s.index,
                "source": list(s.source),
                "init": s.init,
                "zero_out": s.zero_out,
                "trainable": s.trainable,
            }
            for s in expansion.plan.layers
        ]
    else:
        layers = [
            {"index": i, "source": [i], "init": "base", "zero_out": False, "trainable": None}
            for i in range(base_layers)
        ]
    return {
        "model_type": config.model_type,
        "strategy": type(expander).__name__,
        "expander": expander.config(),
        "base_num_layers": base_layers,
        "base_params": base_params,
        "num_layers": int(expansion.model.config.num_hidden_layers),
        "total_params": total,
        "trainable_params": trainable,
        "layers": layers,
    }


def plan(
    base: str, expander: Expander, json: bool = False, trust_remote_code: bool = False
) -> None:
    """Print the layer map and parameter counts of an expansion, from config.json alone.

    Args:
        base: model directory, path to a config.json, or hub id.
        expander: the strategy, e.g. ``--expander LlamaPro --expander.num_groups 8``.
        json: print one JSON object (keys num_layers, total_params, trainable_params, layers).
        trust_remote_code: allow custom config code from the hub.
    """
    summary = plan_summary(base, expander, trust_remote_code)
    if json:
        print(_json.dumps(summary, indent=2))
        return
    table = Table(title=f"{summary['strategy']} plan for {base}")
    for col in ("new index", "source", "init", "trainable"):
        table.add_column(col)
    for layer in summary["layers"]:
        init = layer["init"] + ("+zero_out" if layer["zero_out"] else "")
        style = "bold green" if layer["trainable"] else None
        table.add_row(
            str(layer["index"]),
            ",".join(map(str, layer["source"])),
            init,
            "yes" if layer["trainable"] else "no",
            style=style,
        )
    console = _console()
    console.print(table)
    total, trainable = summary["total_params"], summary["trainable_params"]
    console.print(
        f"layers {summary['base_num_layers']} -> {summary['num_layers']}; "
        f"params {summary['base_params']:,} -> {total:,}; "
        f"trainable {trainable:,} ({100.0 * trainable / max(1, total):.2f}%)"
    )


def _copy_tokenizer(base: str, dest: Path) -> list[str]:
    """Copy tokenizer files from a local base directory (or fetch them for a hub id)."""
    local = Path(base).expanduser()
    if local.is_dir():
        return copy_tokenizer_files(local, dest)
    copied = []
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(base).save_pretrained(dest)
        copied.append("tokenizer")
    except (OSError, ValueError):
        pass
    return copied


def expand(
    base: str,
    out: str,
    expander: Expander,
    dtype: str = "auto",
    overwrite: bool = False,
    trust_remote_code: bool = False,
    max_shard_size: str = "5GB",
    in_memory: bool = False,
) -> Path:
    """Expand a base model and write it as a Hugging Face directory, atomically.

    The output holds safetensors weights, the updated config.json, the base's tokenizer files
    and ``blockexp_manifest.json`` (plan, new and trainable layers). The base directory is never
    written to. A local safetensors checkpoint expanded by a depth-changing strategy is streamed
    tensor by tensor (:mod:`blockexp.streaming`: memory does not grow with the model, dtype kept,
    bitwise equal to in-memory expansion); other cases load the model in memory.

    Args:
        base: base model directory or hub id.
        out: output directory (must not exist or be empty unless ``overwrite``).
        expander: the strategy, e.g. ``--expander LlamaPro --expander.num_groups 8``.
        dtype: ``auto`` keeps the checkpoint's dtype.
        overwrite: replace an existing output directory.
        trust_remote_code: allow custom modelling code from the hub.
        max_shard_size: safetensors shard size.
        in_memory: load the whole model and expand it in memory even when it could be streamed.
    """
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from .checkpoint import atomic_output_dir, build_manifest, load_model
    from .streaming import can_stream, stream_expand

    protect = [base] if Path(base).expanduser().exists() else []
    console = _console()
    reason = "--in_memory was given" if in_memory else can_stream(expander, base)
    if reason is None:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task(f"streaming {expander!r} to {out}", total=None)
            manifest = stream_expand(
                base,
                out,
                expander,
                dtype,
                overwrite,
                max_shard_size,
                trust_remote_code=trust_remote_code,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        console.print(
            f"Wrote {out} (streamed): {manifest['base_num_layers']} -> {manifest['num_layers']} "
            f"layers, {manifest['total_params']:,} params "
            f"({manifest['trainable_params']:,} trainable)"
        )
        return Path(out)
    console.print(f"Expanding in memory: {reason}.")
    with atomic_output_dir(out, protect=protect, overwrite=overwrite) as tmp:
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
        ) as progress:
            task = progress.add_task("loading base model", total=3)
            model = load_model(base, dtype=dtype, trust_remote_code=trust_remote_code)
            base_layers = int(model.config.num_hidden_layers)
            base_params = sum(p.numel() for p in model.parameters())
            progress.update(task, advance=1, description=f"expanding with {expander!r}")
            expansion = expander.expand(model)
            progress.update(task, advance=1, description=f"writing {out}")
            model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
            copied = _copy_tokenizer(base, tmp)
            manifest = build_manifest(expansion, expander, base, base_layers, base_params)
            (tmp / "blockexp_manifest.json").write_text(_json.dumps(manifest, indent=2) + "\n")
            progress.update(task, advance=1, description="done")
    total, trainable = expansion.parameter_counts()
    console.print(
        f"Wrote {out}: {base_layers} -> {model.config.num_hidden_layers} layers, "
        f"{total:,} params ({trainable:,} trainable); tokenizer: {', '.join(copied) or 'none found'}"
    )
    return Path(out)


def rebuild_from_checkpoint(state: dict[str, Any], name: str | Path = "checkpoint"):
    """Rebuild the plain ``transformers`` model of a ``blockexp fit`` checkpoint.

    Self-contained checkpoints (``save_frozen=true``): the base architecture is built from the
    stored base config without initialising its weights (untouched allocations cost no resident
    memory), the stored expander is applied (so the module tree matches training exactly) and all
    weights are assigned. Trainable-only checkpoints (the default): the base is loaded from its
    spec as in training, checked against the stored fingerprint of the frozen weights, expanded,
    and the trained parameters are assigned. The expander's
    :meth:`~blockexp.expanders.Expander.export_model` then gives the model to save.
    """
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from .checkpoint import _config_from_dict, describe_spec
    from .expanders import build_expander
    from .module import check_fingerprint, load_expanded

    info = state["blockexp"]
    expander = build_expander(info["manifest"]["expander"])
    prefix = "model."
    weights = {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    fingerprint = info.get("frozen_fingerprint")
    if fingerprint is None:
        config = _config_from_dict(info["base_config"])
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config)
        expansion = expander.expand(model)
    else:
        hp = state.get("hyper_parameters", {})
        expansion, _, _ = load_expanded(hp, expander)
        check_fingerprint(expansion.model, fingerprint, describe_spec(hp["base"]))
        missing = sorted(n for n in expansion.trainable if n not in weights)
        if missing:
            raise ValueError(
                f"{name}: trainable parameters missing from the checkpoint: {missing[:3]}"
            )
    try:
        expansion.model.load_state_dict(weights, strict=fingerprint is None, assign=True)
    except RuntimeError as err:
        raise ValueError(f"{name}: weights do not match the stored model: {err}") from err
    expansion.model.tie_weights()
    model = expander.export_model(expansion.model)
    model.config.use_cache = True
    return model


def export(ckpt: str, out: str, tokenizer: str | None = None, overwrite: bool = False) -> Path:
    """Export a Lightning training checkpoint as a Hugging Face directory.

    Args:
        ckpt: a ``.ckpt`` file written by ``blockexp fit``.
        out: output directory.
        tokenizer: tokenizer spec to save beside the model (default: the one used in training).
        overwrite: replace an existing output directory.
    """
    from .checkpoint import save_pretrained_atomic
    from .tokenization import load_tokenizer

    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {ckpt} does not exist.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    info = state.get("blockexp")
    if info is None:
        raise ValueError(f"{ckpt} was not written by blockexp fit (no 'blockexp' entry).")
    model = rebuild_from_checkpoint(state, path)
    spec = tokenizer or info.get("tokenizer")
    tok = load_tokenizer(spec) if spec else None
    from .module import export_dtype

    policy = state.get("hyper_parameters", {}).get("precision_policy", "full")
    result = save_pretrained_atomic(
        model, out, tok, info["manifest"], overwrite=overwrite, dtype=export_dtype(policy)
    )
    _console().print(f"Exported {ckpt} to {result}")
    return result


class BlockexpCLI(LightningCLI):
    """LightningCLI with blockexp defaults: gradient clipping 1.0, the tokenizer given once (in
    ``model``) and linked to the data module, validation before training, rich progress bar and
    an end-of-fit summary table."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from .callbacks import ExpansionSummary
        from .module import BlockExpansionModule

        kwargs.setdefault("model_class", BlockExpansionModule)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault(
            "trainer_defaults", {"callbacks": [RichProgressBar(), ExpansionSummary()]}
        )
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        from .module import resolve_tokenizer_spec

        parser.set_defaults({"trainer.gradient_clip_val": 1.0})
        parser.link_arguments(
            ("model.tokenizer", "model.base"),
            "data.init_args.tokenizer",
            compute_fn=resolve_tokenizer_spec,
        )

    def before_fit(self) -> None:
        cfg = self.config[self.subcommand]
        if self.model.hparams.validate_before_fit and not cfg.get("ckpt_path"):
            self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)


USAGE = """usage: python -m blockexp <command> [options]

training (LightningCLI; see `python -m blockexp fit --help`):
  fit | validate | test     e.g. python -m blockexp fit --config configs/quickstart.yaml
offline:
  plan     layer map and parameter counts from config.json alone
  expand   write an expanded Hugging Face checkpoint
  export   convert a training checkpoint (.ckpt) into a Hugging Face directory
  importance  per-layer importance (angular distance, removal/insertion drops): CSV + PNG
"""


BOOL_FLAGS = ("--json", "--overwrite", "--trust_remote_code", "--in_memory")


def _bare_flags(argv: list[str]) -> list[str]:
    """Let boolean options be given bare (``--json``) as well as ``--json true``."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg in BOOL_FLAGS and (nxt is None or nxt.startswith("--")):
            out.append("true")
    return out


def main(argv: list[str] | None = None) -> Any:
    """Entry point of ``python -m blockexp``."""
    explicit = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return None
    command = argv[0]
    if command in OFFLINE_COMMANDS:
        from jsonargparse import CLI

        from . import expanders  # noqa: F401  (registers the expander classes)

        try:
            from .importance import importance

            return CLI(
                [plan, expand, export, importance], args=_bare_flags(argv), as_positional=False
            )
        except (ValueError, KeyError, OSError) as err:  # user errors: one clear line, exit 2
            print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
            raise SystemExit(2) from err
    if command in TRAIN_COMMANDS:
        return BlockexpCLI(args=argv if explicit else None)
    print(f"Unknown command '{command}'.\n\n{USAGE}", file=sys.stderr)
    raise SystemExit(2)
