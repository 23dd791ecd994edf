"""Command wiring for ``python -m blockexp <command>``; the work happens in the modules called.

Training commands follow LightningCLI conventions (``fit``, ``validate``, ``test``, with
``--config file.yaml`` and dotted overrides). Offline commands:

* ``plan``   layer map and parameter counts from config.json alone, without torch
  (:func:`blockexp.io.planning.plan_summary`; the meta-device model only for hub ids, custom
  code, LoRA and MoEExpansion),
* ``expand`` write an expanded Hugging Face directory (:mod:`blockexp.io.streaming`, or
  :func:`blockexp.training.export.expand_in_memory`),
* ``export`` turn a Lightning training checkpoint into a Hugging Face directory
  (:func:`blockexp.training.export.export_checkpoint`),
* ``importance`` per-layer importance (:mod:`blockexp.evaluation.importance`),
* ``eval`` lm-evaluation-harness tasks on a model or checkpoint, offline
  (:func:`blockexp.evaluation.lmeval.command.run_eval`),
* ``sweep`` a grid of fit runs over one recipe (:func:`blockexp.sweep.command.sweep`),
* ``compare`` tables, intervals and plots over runs (:func:`blockexp.compare.command.compare`).
"""

from __future__ import annotations

import os
import sys
from argparse import ArgumentError
from typing import Any

from blockexp import errors

# Start-up: ``--help`` imports nothing but this module and :mod:`blockexp.errors`. A training
# command imports :mod:`blockexp.training.cli` (LightningCLI); an offline command imports its own
# function (:mod:`blockexp.commands`, ``importance``, ``eval``); ``plan`` and streaming ``expand``
# run without torch and every offline command without Lightning (tests/test_startup.py).

__all__ = ["main"]

TRAIN_COMMANDS = ("fit", "validate", "test", "predict")
OFFLINE_COMMANDS = ("plan", "expand", "export", "importance", "eval", "sweep", "compare")


USAGE = """usage: python -m blockexp <command> [options]

training (LightningCLI; see `python -m blockexp fit --help`, every option: --help-all):
  fit | validate | test     e.g. python -m blockexp fit --config configs/quickstart.yaml
offline:
  plan     layer map and parameter counts from config.json alone
  expand   write an expanded Hugging Face checkpoint
  export   convert a training checkpoint (.ckpt) into a Hugging Face directory
  importance  per-layer importance (angular distance, removal/insertion drops): CSV + PNG
  eval     lm-evaluation-harness tasks on a model dir or .ckpt, offline: table + JSON
experiments:
  sweep    a grid of fit runs over one recipe (seeds, strategies, options), resumable
  compare  one table of every run's metrics: mean +- 95% CI over seeds, paired tests, plots

errors in the input end with one line and exit code 2; add --debug for the traceback.
"""


TRAIN_HELP = """usage: python -m blockexp {command} --config FILE [group=option ...] [--KEY VALUE ...]

Runs Lightning's {command} on a composed config (LightningCLI conventions; docs/architecture.md).

  -c, --config FILE     a recipe: configs/quickstart.yaml, configs/trace/lora.yaml, ... (several
                        may be given; later ones and later options override earlier ones)
  group=option          swap a config piece, configs/<group>/<option>.yaml, e.g. expander=lora
                        logger=csv strategy=fsdp
                        (groups: {groups})
  --KEY VALUE           any key of the config, dotted, e.g.
                          --trainer.max_steps 100         --trainer.default_root_dir DIR
                          --trainer.accelerator cpu|gpu   --trainer.devices 8
                          --model.base DIR_OR_HUB_ID      --model.expander LlamaPro
                          --model.expander.num_groups 4   --model.optim.lr 2e-4
                          --data.init_args.batch_size 8   --seed_everything 1
  --ckpt_path PATH      resume from a checkpoint (e.g. DIR/checkpoints/last.ckpt)
  --print_config        print the composed config as YAML and exit (feed it back with --config)
  --debug               show the traceback of an error

Every option with its type and default (about 700 lines; builds every parser, ~15 s):
  python -m blockexp {command} --help-all
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
    "--dry_run",
    "--incomplete",
    "--plots",
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


def _sweep_argv(argv: list[str]) -> list[str]:
    """``sweep --config FILE`` names the sweep file (``--sweep_file``), not a file of the
    command's own options as jsonargparse's ``--config`` would; ``--set`` and ``--only`` may be
    repeated (``--set trainer.max_steps=20 --set seed=1``)."""
    import json

    out: list[str] = []
    lists: dict[str, list[str]] = {"--set": [], "--only": []}
    args = iter(argv)
    for arg in args:
        flag, eq, value = arg.partition("=")
        if flag in ("--config", "-c"):
            out += ["--sweep_file", value] if eq else ["--sweep_file"]
        elif flag in lists:
            lists[flag].append(value if eq else next(args, ""))
        else:
            out.append(arg)
    for flag, values in lists.items():
        if values:
            out += [flag, json.dumps(values)]
    return out


def _compare_argv(argv: list[str]) -> list[str]:
    """``compare RUN_DIR_OR_SWEEP ...``: the positional paths become ``--runs``."""
    import json

    runs, out, expects_value = [], [], False
    for arg in argv[1:]:
        if expects_value:
            out.append(arg)
            expects_value = False
        elif arg.startswith("-"):
            out.append(arg)
            expects_value = "=" not in arg and arg not in BOOL_FLAGS
        elif out and out[-1] in BOOL_FLAGS and arg.lower() in ("true", "false"):
            out.append(arg)
        else:
            runs.append(arg)
    return [argv[0], *out, *(["--runs", json.dumps(runs)] if runs else [])]


def _offline_command(name: str):
    """The function behind an offline command; ``importance`` and ``eval`` are imported only
    when they run (``importance`` needs torch)."""
    if name == "importance":
        from blockexp.evaluation.importance.command import importance

        return importance
    if name == "eval":
        from blockexp.evaluation.lmeval.command import run_eval

        return run_eval
    if name == "sweep":
        from blockexp.sweep.command import sweep

        return sweep
    if name == "compare":
        from blockexp.compare.command import compare

        return compare
    from blockexp import commands

    if name == "export":
        return commands.export_command()
    return {"plan": commands.plan, "expand": commands.expand}[name]


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
    # a training command's --help is one page; --help-all is LightningCLI's own --help
    short_help = bool(argv) and argv[0] in TRAIN_COMMANDS and bool({"-h", "--help"} & {*argv[1:]})
    argv = [("--help" if a == "--help-all" else a) for a in argv]
    if not explicit:
        sys.argv[1:] = argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return None
    if short_help:
        from blockexp.training.compose import GROUPS

        print(TRAIN_HELP.format(command=argv[0], groups=", ".join(GROUPS)), end="")
        return None
    from blockexp.io.inputs import config_files, declare_inputs

    declare_inputs(config_files(argv))  # no output may replace what the command reads
    command = argv[0]
    if command not in OFFLINE_COMMANDS and command not in TRAIN_COMMANDS:
        names = (*TRAIN_COMMANDS, *OFFLINE_COMMANDS)
        print(
            f"error: unknown command {command!r}{errors.suggest(command, names)}; commands: "
            f"{', '.join(names)} (see `{errors.PROG} --help`)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    from blockexp.expanders.registry import import_registered
    from blockexp.io.locks import release_all

    try:
        import_registered()  # strategies registered by path become visible to the parsers
        if command in OFFLINE_COMMANDS:
            from jsonargparse import CLI, auto_parser

            # Only this command's parser is built, so only its module is imported.
            commands = {command: _offline_command(command)}
            if command == "sweep":
                argv = _sweep_argv(argv)
            elif command == "compare":
                argv = _compare_argv(argv)
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
