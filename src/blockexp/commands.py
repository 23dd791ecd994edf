"""The offline commands ``plan``, ``expand`` and ``export``: functions that do the work and print.

Their signatures are the commands' options (jsonargparse builds each parser from them); the work
happens in :mod:`blockexp.io.planning`, :mod:`blockexp.io.streaming`,
:mod:`blockexp.expanders.dry_run` and :mod:`blockexp.training.export`. Imported by :func:`blockexp.cli.main` only when one of them runs,
so ``--help`` does not import the strategies.
"""

from __future__ import annotations

import json as _json
from pathlib import Path
from typing import Any

from blockexp.expanders import Expander

__all__ = ["expand", "export_command", "plan"]


def _console() -> Any:  # a rich Console
    from rich.console import Console

    return Console(stderr=False)


def plan(
    base: str, expander: Expander, json: bool = False, trust_remote_code: bool = False
) -> None:
    """Print the layer map and parameter counts of an expansion, from config.json alone.

    No model is built and neither torch nor transformers is imported
    (:func:`blockexp.io.planning.plan_summary`): the tensors come from the safetensors headers
    of a local checkpoint, or, for a directory with only config.json or a config.json path, from
    the shapes config.json gives (:func:`blockexp.layers.shapes.param_shapes`). A hub id, custom
    modelling code (``auto_map``) and strategies that add modules a plan does not describe
    (LoRA, MoEExpansion) are planned on a model built on the meta device
    (:func:`blockexp.expanders.dry_run.plan_summary`), with a note on stderr saying why. Both
    give the same numbers.

    Args:
        base: model directory, path to a config.json, or hub id.
        expander: the strategy, e.g. ``--expander LlamaPro --expander.num_groups 8``.
        json: print one JSON object (keys num_layers, total_params, trainable_params, layers).
        trust_remote_code: allow custom config code from the hub.
    """
    from blockexp.io import planning

    reason = planning.cannot_plan(expander, base)
    if reason is None:
        summary = planning.plan_summary(base, expander)
    else:
        import sys

        print(f"note: building the model on the meta device to plan: {reason}.", file=sys.stderr)
        from blockexp.expanders.dry_run import plan_summary

        summary = plan_summary(base, expander, trust_remote_code)
    if json:
        print(_json.dumps(summary, indent=2))
        return
    from rich.table import Table

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

    The output holds safetensors weights, the updated config.json, ``blockexp_manifest.json``
    (plan, new and trainable layers) and the base's other files (tokenizer, generation config,
    chat template, README, ...), with configs transformers 4.x reads too
    (:mod:`blockexp.io.portable`). The base directory is never
    written to. A local safetensors checkpoint expanded by a depth-changing strategy is streamed
    tensor by tensor (:mod:`blockexp.io.streaming`: memory does not grow with the model, dtype kept,
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

    from blockexp.io.streaming import can_stream, stream_expand

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
    from blockexp.training.export import expand_in_memory

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("starting", total=3)
        started = []

        def step(description: str) -> None:
            progress.update(task, advance=1 if started else 0, description=description)
            started.append(description)

        manifest = expand_in_memory(
            base, out, expander, dtype, overwrite, trust_remote_code, max_shard_size, step
        )
        progress.update(task, completed=3, description="done")
    console.print(
        f"Wrote {out}: {manifest['base_num_layers']} -> {manifest['num_layers']} layers, "
        f"{manifest['total_params']:,} params ({manifest['trainable_params']:,} trainable); "
        f"tokenizer: {', '.join(manifest['tokenizer_files']) or 'none found'}"
    )
    return Path(out)


def export_command() -> Any:
    """The ``export`` command: :func:`blockexp.training.export.export_checkpoint` itself (its
    signature and docstring are the command's options and help), then one line saying what was
    written and which base was used."""
    import functools
    import inspect

    from blockexp.training.export import export_checkpoint

    @functools.wraps(export_checkpoint)
    def export(*args: Any, **kwargs: Any) -> Path:
        result = export_checkpoint(*args, **kwargs)
        given = inspect.signature(export_checkpoint).bind(*args, **kwargs).arguments
        how = "stated with --base" if given.get("base") else "as the checkpoint records it"
        _console().print(
            f"Exported {given['ckpt']} to {result} (base {how}, checked against its record)"
        )
        return result

    return export
