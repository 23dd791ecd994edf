"""Command wiring for ``python -m blockexp <command>``; the work happens in the modules called.

Training commands follow LightningCLI conventions (``fit``, ``validate``, ``test``, with
``--config file.yaml`` and dotted overrides). Offline commands:

* ``plan``   layer map and parameter counts from config.json alone
  (:func:`blockexp.expanders.dry_run.plan_summary`),
* ``expand`` write an expanded Hugging Face directory (:mod:`blockexp.io.streaming`, or
  :func:`blockexp.training.export.expand_in_memory`),
* ``export`` turn a Lightning training checkpoint into a Hugging Face directory
  (:func:`blockexp.training.export.export_checkpoint`),
* ``importance`` per-layer importance (:mod:`blockexp.evaluation.importance`),
* ``eval`` lm-evaluation-harness tasks on a model or checkpoint, offline
  (:func:`blockexp.evaluation.lmeval.command.run_eval`).
"""

from __future__ import annotations

import json as _json
import os
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import Any

from blockexp import errors
from blockexp.expanders import Expander
from blockexp.io.locks import release_all

# Start-up: this module imports neither Lightning nor torch (the strategies register without
# torch, see blockexp.expanders). A training command imports :mod:`blockexp.training.cli`
# (LightningCLI); each offline command imports what it uses; ``--help``, ``plan`` and streaming
# ``expand`` run without torch (tests/test_startup.py).

__all__ = ["main", "plan", "expand", "export"]

TRAIN_COMMANDS = ("fit", "validate", "test", "predict")
OFFLINE_COMMANDS = ("plan", "expand", "export", "importance", "eval")


def _console() -> Any:  # a rich Console
    from rich.console import Console

    return Console(stderr=False)


def plan(
    base: str, expander: Expander, json: bool = False, trust_remote_code: bool = False
) -> None:
    """Print the layer map and parameter counts of an expansion, from config.json alone.

    A local safetensors checkpoint and a streamable strategy are planned as ``expand`` streams
    them, from config.json and the safetensors headers (:func:`blockexp.io.streaming.plan_summary`,
    no torch); otherwise the model is built on the meta device
    (:func:`blockexp.expanders.dry_run.plan_summary`). Both give the same numbers.

    Args:
        base: model directory, path to a config.json, or hub id.
        expander: the strategy, e.g. ``--expander LlamaPro --expander.num_groups 8``.
        json: print one JSON object (keys num_layers, total_params, trainable_params, layers).
        trust_remote_code: allow custom config code from the hub.
    """
    from blockexp.io import streaming

    if streaming.can_stream(expander, base) is None:
        summary = streaming.plan_summary(base, expander)
    else:
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


def export(
    ckpt: str,
    out: str,
    tokenizer: str | None = None,
    overwrite: bool = False,
    base: str | None = None,
    trust_remote_code: bool = False,
    allow_unverified: bool = False,
) -> Path:
    """Export a Lightning training checkpoint as a Hugging Face directory: see
    :func:`blockexp.training.export.export_checkpoint`, whose text this command shows as its help."""
    from blockexp.training.export import export_checkpoint

    result = export_checkpoint(
        ckpt, out, tokenizer, overwrite, base, trust_remote_code, allow_unverified
    )
    how = "stated with --base" if base is not None else "as the checkpoint records it"
    _console().print(f"Exported {ckpt} to {result} (base {how}, checked against its record)")
    return result


USAGE = """usage: python -m blockexp <command> [options]

training (LightningCLI; see `python -m blockexp fit --help`):
  fit | validate | test     e.g. python -m blockexp fit --config configs/quickstart.yaml
offline:
  plan     layer map and parameter counts from config.json alone
  expand   write an expanded Hugging Face checkpoint
  export   convert a training checkpoint (.ckpt) into a Hugging Face directory
  importance  per-layer importance (angular distance, removal/insertion drops): CSV + PNG
  eval     lm-evaluation-harness tasks on a model dir or .ckpt, offline: table + JSON

errors in the input end with one line and exit code 2; add --debug for the traceback.
"""


BOOL_FLAGS = (
    "--json",
    "--overwrite",
    "--trust_remote_code",
    "--in_memory",
    "--log_samples",
    "--online",
    "--confirm_run_unsafe_code",
    "--allow_unverified",
)


def _bare_flags(argv: list[str]) -> list[str]:
    """Let boolean options be given bare (``--json``) as well as ``--json true``."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg in BOOL_FLAGS and (nxt is None or nxt.startswith("--")):
            out.append("true")
    return out


def _offline_command(name: str):
    """The function behind an offline command; ``importance`` and ``eval`` are imported only
    when they run (``importance`` needs torch)."""
    if name == "importance":
        from blockexp.evaluation.importance.command import importance

        return importance
    if name == "eval":
        from blockexp.evaluation.lmeval.command import run_eval

        return run_eval
    if name == "export":  # one text for the command and the function (the options' help)
        from blockexp.training.export import export_checkpoint

        export.__doc__ = export_checkpoint.__doc__
    return {"plan": plan, "expand": expand, "export": export}[name]


def main(argv: list[str] | None = None) -> Any:
    """Entry point of ``python -m blockexp``.

    Bad input (config, data, architecture, checkpoint, files) ends with a one-line ``error:``
    naming the problem and exit code 2; ``--debug`` (or ``BLOCKEXP_DEBUG=1``) shows the traceback
    instead.
    """
    explicit = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("BLOCKEXP_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not explicit:
        sys.argv[1:] = argv
    from blockexp.io.inputs import config_files, declare_inputs

    declare_inputs(config_files(argv))  # no output may replace what the command reads
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return None
    command = argv[0]
    if command not in OFFLINE_COMMANDS and command not in TRAIN_COMMANDS:
        names = (*TRAIN_COMMANDS, *OFFLINE_COMMANDS)
        print(
            f"error: unknown command {command!r}{errors.suggest(command, names)}; commands: "
            f"{', '.join(names)} (see `{errors.PROG} --help`)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    try:
        if command in OFFLINE_COMMANDS:
            from jsonargparse import CLI, auto_parser

            # Only this command's parser is built, so only its module is imported.
            commands = {command: _offline_command(command)}
            kwargs = {"as_positional": False, **errors.PARSER_KWARGS, "env_prefix": "BLOCKEXP"}
            try:
                return CLI(commands, args=_bare_flags(argv), **kwargs)
            except ArgumentError as err:  # built again for its option names
                raise errors.UsageError(
                    errors.explain_usage(err, auto_parser(commands, **kwargs), argv)
                ) from err
        from blockexp.training.cli import BlockexpCLI

        return BlockexpCLI(args=argv if explicit else None)
    except errors.user_errors() as err:
        if debug:
            raise
        errors.report(err)
        raise SystemExit(2) from None
    finally:
        release_all()  # the directories this command locked (in-process callers go on)
