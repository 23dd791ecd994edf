"""Command wiring for ``python -m blockexp <command>``; the work happens in the modules called.

Training commands follow LightningCLI conventions (``fit``, ``validate``, ``test``, with
``--config file.yaml`` and dotted overrides). Offline commands:

* ``plan``   layer map and parameter counts from config.json alone
  (:func:`blockexp.expanders.dry_run.plan_summary`),
* ``expand`` write an expanded Hugging Face directory (:mod:`blockexp.streaming`, or
  :func:`blockexp.export.expand_in_memory`),
* ``export`` turn a Lightning training checkpoint into a Hugging Face directory
  (:func:`blockexp.export.export_checkpoint`),
* ``importance`` per-layer importance (:mod:`blockexp.importance`),
* ``eval`` lm-evaluation-harness tasks on a model or checkpoint, offline
  (:func:`blockexp.lmeval.command.run_eval`).
"""

from __future__ import annotations

import json as _json
import os
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningCLI
from rich.console import Console
from rich.table import Table

from ._compat import moved
from .expanders import Expander

__all__ = ["main", "plan", "expand", "export", "BlockexpCLI"]

TRAIN_COMMANDS = ("fit", "validate", "test", "predict")
OFFLINE_COMMANDS = ("plan", "expand", "export", "importance", "eval")

__getattr__ = moved(
    __name__,
    {"plan_summary": "blockexp.expanders.dry_run", "rebuild_from_checkpoint": "blockexp.export"},
)


def _console() -> Console:
    return Console(stderr=False)


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
    from .expanders.dry_run import plan_summary

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

    from .streaming import can_stream, stream_expand

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
    from .export import expand_in_memory

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
) -> Path:
    """Export a Lightning training checkpoint as a Hugging Face directory.

    Args:
        ckpt: a ``.ckpt`` file written by ``blockexp fit``.
        out: output directory.
        tokenizer: tokenizer spec to save beside the model (default: the one used in training).
        overwrite: replace an existing output directory (only an earlier blockexp output).
        base: the base model, when it is not where the checkpoint says it was (its frozen
            weights are checked against the checkpoint).
        trust_remote_code: allow the base's custom modelling code (never taken from the
            checkpoint).
    """
    from .export import export_checkpoint

    result = export_checkpoint(ckpt, out, tokenizer, overwrite, base, trust_remote_code)
    _console().print(f"Exported {ckpt} to {result}")
    return result


def expand_config_defaults(argv: list[str]) -> list[str]:
    """Compose configs: every ``--config FILE`` whose YAML has a ``defaults:`` list (paths
    relative to FILE) becomes ``--config`` of each default (recursively, in order) followed by
    ``--config FILE``, so FILE holds only its delta over the pieces it names. The merged result
    gets ``defaults: null`` (a saved config is complete and names no pieces).

    Raises:
        FileNotFoundError: a default that does not exist, naming the config that lists it.
        ValueError: a cycle, or a ``defaults`` entry that is not a list of paths.
    """
    import yaml

    def chain(path: Path, stack: tuple[Path, ...]) -> list[str]:
        resolved = path.expanduser().resolve()
        if resolved in stack:
            cycle = " -> ".join(str(p) for p in (*stack, resolved))
            raise ValueError(f"config defaults form a cycle: {cycle}")
        try:
            data = yaml.safe_load(resolved.read_text()) if resolved.is_file() else None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"{where}: invalid YAML: {problem}") from err
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
        defaults = data.get("defaults") if isinstance(data, dict) else None
        out: list[str] = []
        if defaults is not None:
            if not isinstance(defaults, list) or not all(isinstance(d, str) for d in defaults):
                raise ValueError(f"{path}: `defaults` must be a list of config file paths")
            for entry in defaults:
                piece = Path(os.path.normpath(resolved.parent / entry))
                if not piece.is_file():
                    raise FileNotFoundError(
                        f"{path} lists the default config {entry!r}, which does not exist "
                        f"(resolved to {piece})"
                    )
                out += chain(piece, (*stack, resolved))
        return [*out, "--config", str(path)]

    out: list[str] = []
    composed = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        pieces = chain(Path(value), ())
        composed = composed or len(pieces) > 2
        out += pieces
    if composed:
        out += ["--defaults", "null"]
    return out


class BlockexpCLI(LightningCLI):
    """LightningCLI with blockexp defaults: gradient clipping 1.0, the tokenizer given once (in
    ``model``) and linked to the data module, validation before training, rich progress bar and
    an end-of-fit summary table. Config files compose through ``defaults:`` lists
    (:func:`expand_config_defaults`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from .callbacks import ExpansionSummary
        from .module import BlockExpansionModule

        if isinstance(kwargs.get("args"), list):
            kwargs["args"] = expand_config_defaults(kwargs["args"])
        elif kwargs.get("args") is None:  # the command line: LightningCLI reads sys.argv
            sys.argv[1:] = expand_config_defaults(sys.argv[1:])

        kwargs.setdefault("model_class", BlockExpansionModule)
        kwargs.setdefault("subclass_mode_data", True)
        from .checkpoint_io import AtomicCheckpointIO

        kwargs.setdefault(
            "trainer_defaults",
            {
                "callbacks": [RichProgressBar(), ExpansionSummary()],
                "plugins": [AtomicCheckpointIO()],
            },
        )
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)

    def _parse_ckpt_path(self) -> None:
        """Resume from ``--ckpt_path`` without taking settings from the checkpoint.

        LightningCLI would merge the checkpoint's hyper-parameters over the user's config, so a
        checkpoint could switch on ``trust_remote_code`` or point ``base`` elsewhere. Here the
        config alone decides; the file is checked to be a readable checkpoint (a clear error
        otherwise), and its frozen weights are verified against the configured base when training
        resumes.
        """
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path:
            return
        from .export import load_checkpoint_file

        # Only the stored base is read here (Lightning loads the weights when fitting starts).
        state = load_checkpoint_file(ckpt_path, mmap=True)
        stored = state.get("hyper_parameters", {}).get("base")
        configured = self.config[self.config.subcommand].get("model", {}).get("base")
        if stored is not None and stored != configured:
            from .checkpoint import describe_spec

            print(
                f"Note: {ckpt_path} was trained on base {describe_spec(stored)!r}; resuming with "
                f"the configured base {describe_spec(configured)!r} (its frozen weights are "
                "checked against the checkpoint).",
                file=sys.stderr,
            )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        # The rich progress bar is a default: leave it out when the user turns the bar off or
        # brings another one.
        from lightning.pytorch.callbacks import ProgressBar

        own = [c for c in (config.get("callbacks") or []) if isinstance(c, ProgressBar)]
        if config.get("enable_progress_bar") is False or own:
            defaults = self.trainer_defaults.get("callbacks", [])
            self.trainer_defaults = {
                **self.trainer_defaults,
                "callbacks": [c for c in defaults if not isinstance(c, RichProgressBar)],
            }
        return super()._instantiate_trainer(config, callbacks)

    def add_arguments_to_parser(self, parser) -> None:
        from .loading import resolve_tokenizer_spec

        parser.add_argument(
            "--defaults",
            type=list[str] | None,
            default=None,
            help="config files this one builds on (paths relative to it), applied first",
        )
        parser.set_defaults({"trainer.gradient_clip_val": 1.0})
        parser.link_arguments(
            ("model.tokenizer", "model.base"),
            "data.init_args.tokenizer",
            compute_fn=resolve_tokenizer_spec,
        )

    def before_fit(self) -> None:
        cfg = self.config[self.subcommand]
        if not cfg.get("ckpt_path"):  # refuse a used run directory before anything runs
            self.model._check_run_dirs(self.trainer, resuming=False)
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


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input (config, data, architecture, checkpoint, files):
    reported in one line rather than with a traceback."""
    import pickle
    import zipfile

    from lightning.fabric.utilities.exceptions import MisconfigurationException

    errors: list[type[BaseException]] = [
        ValueError,
        OSError,
        EOFError,
        KeyError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        MisconfigurationException,
    ]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _report(err: BaseException) -> None:
    message = str(err) or type(err).__name__
    if isinstance(err, KeyError) and err.args:
        message = str(err.args[0])
    print(f"error: {message}", file=sys.stderr)
    print("(run with --debug, or BLOCKEXP_DEBUG=1, for the traceback)", file=sys.stderr)


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
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return None
    command = argv[0]
    if command not in OFFLINE_COMMANDS and command not in TRAIN_COMMANDS:
        print(f"Unknown command '{command}'.\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    try:
        if command in OFFLINE_COMMANDS:
            from jsonargparse import CLI

            from . import expanders  # noqa: F401  (registers the expander classes)
            from .importance import importance
            from .lmeval.command import run_eval

            commands = {"plan": plan, "expand": expand, "export": export}
            commands.update(importance=importance, eval=run_eval)
            return CLI(commands, args=_bare_flags(argv), as_positional=False)
        return BlockexpCLI(args=argv if explicit else None)
    except _user_errors() as err:
        if debug:
            raise
        _report(err)
        raise SystemExit(2) from None
