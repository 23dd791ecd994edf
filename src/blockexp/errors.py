"""One-line reports of bad input to ``python -m blockexp``: what, where, and the fix.

:func:`report` prints an error as one ``error:`` line: the exception the user's input caused,
found under the wrappers jsonargparse puts around it (:func:`root_cause`), on one line.
:func:`explain_usage` turns a parser error (an unknown option or config key, a missing config
file, an unknown expander, an invalid value) into one line with a close match and the command's
``--help``; parsers are built with :data:`PARSER_KWARGS` so that they raise instead of printing
their usage. Nothing here imports torch, Lightning or jsonargparse at module level.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "PARSER_KWARGS",
    "PROG",
    "UsageError",
    "explain_usage",
    "files_in",
    "flatten",
    "report",
    "root_cause",
    "suggest",
    "user_errors",
]

PROG = "python -m blockexp"
# Parsers raise ArgumentError (explained in one line) instead of printing usage and exiting.
PARSER_KWARGS = {"prog": PROG, "exit_on_error": False}


class UsageError(ValueError):
    """A bad option, config key or value, already explained in one line."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input (config, data, architecture, checkpoint, files):
    reported in one line rather than with a traceback."""
    import argparse
    import pickle
    import zipfile

    errors: list[type[BaseException]] = [
        ValueError,
        OSError,
        EOFError,
        KeyError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        argparse.ArgumentError,
    ]
    # Only Lightning raises this, so it is imported when it can have been raised (the offline
    # commands do not import Lightning at all).
    lightning_errors = sys.modules.get("lightning.fabric.utilities.exceptions")
    if lightning_errors is not None:
        errors.append(lightning_errors.MisconfigurationException)
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def files_in(directory: Path, suffixes: Iterable[str], prefer: str = "", limit: int = 3) -> str:
    """Up to ``limit`` files in ``directory`` (searched recursively when none is at its top) with
    one of ``suffixes``, ``prefer`` alone if it is there: ``"a, b"``, or ``""`` for none."""
    import itertools

    if prefer and (directory / prefer).is_file():
        return str(directory / prefer)
    suffixes = tuple(s.lower() for s in suffixes)
    top = sorted(f for f in directory.iterdir() if f.suffix.lower() in suffixes and f.is_file())
    if not top:
        deep = (f for f in directory.rglob("*") if f.suffix.lower() in suffixes and f.is_file())
        top = sorted(itertools.islice(deep, limit))
    return ", ".join(str(f) for f in top[:limit])


# ------------------------------------------------------------------------------ causes
def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from (``raise ... from``), outermost first."""
    out: list[BaseException] = []
    while err is not None and all(err is not e for e in out):
        out.append(err)
        err = err.__cause__
    return out


def _raised_by_parser(err: BaseException) -> bool:
    """Whether ``err`` was raised inside jsonargparse (a wrapper, or its own check)."""
    module = sys.modules.get("jsonargparse")
    tb = err.__traceback__
    if module is None or tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    package = os.path.dirname(os.path.abspath(module.__file__))
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(package + os.sep)


def root_cause(err: BaseException) -> BaseException:
    """The exception the input caused: the outermost in ``err``'s cause chain that jsonargparse
    did not raise (it wraps what a class's ``__init__`` raises, e.g. a data module's check, in
    "Does not validate against any of the Union subtypes"); ``err`` itself if there is none."""
    return next((e for e in _chain(err) if not _raised_by_parser(e)), err)


def flatten(message: str) -> str:
    """``message`` on one line. A jsonargparse union report keeps only the subtypes' errors that
    are not "Expected a <class 'NoneType'>" (the value given was not None)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if lines and lines[0].startswith("Does not validate against any of the Union subtypes"):
        bullets = [line[2:] for line in lines if line.startswith("- ")]
        kept = [b for b in bullets if not re.fullmatch(r"Expected a <class 'NoneType'>\.?", b)]
        if kept or bullets:
            return "; ".join(kept or bullets)
    lines = [line for line in lines if not line.startswith(("Given value", "Subtypes:"))]
    return " ".join(line.removeprefix("- ") for line in lines)


def report(err: BaseException) -> None:
    """Print ``err`` as one ``error:`` line (and how to see the traceback) on stderr."""
    cause = root_cause(err)
    if not isinstance(cause, user_errors()):
        cause = err
    message = str(cause) or type(cause).__name__
    if isinstance(cause, KeyError) and cause.args:
        message = str(cause.args[0])
    print(f"error: {flatten(message)}", file=sys.stderr)
    print("(run with --debug, or BLOCKEXP_DEBUG=1, for the traceback)", file=sys.stderr)


# ------------------------------------------------------------------------------ usage
def suggest(word: str, choices: Iterable[str], prefix: str = "") -> str:
    """`` (did you mean X?)`` for the closest of ``choices`` to ``word`` (case-insensitive), or
    ``""``."""
    by_lower = {c.lower(): c for c in choices}
    group, dot, leaf = word.lower().rpartition(".")
    moved = [c for c in by_lower if dot and c.startswith(f"{group}.") and c.endswith(f".{leaf}")]
    if len(moved) == 1:  # a key that moved into a group (model.lr -> model.optim.lr)
        return f" (did you mean {prefix}{by_lower[moved[0]]}?)"
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {prefix}{by_lower[close[0]]}?)" if close else ""


def _find(messages: list[str], pattern: str) -> re.Match | None:
    return next((m for m in (re.search(pattern, s) for s in messages) if m), None)


def _options(parser: Any) -> list[str]:
    """Keys of the long options ``parser`` accepts (``trainer.max_steps``, ...)."""
    actions = getattr(parser, "_actions", [])
    return [s[2:] for a in actions for s in a.option_strings if s.startswith("--")]


def _subparser(parser: Any, command: str) -> Any:
    action = getattr(parser, "_subcommands_action", None)
    return action._name_parser_map.get(command, parser) if action is not None else parser


def _config_files(argv: list[str]) -> list[str]:
    files = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _lookup(data: Any, key: str) -> tuple[bool, Any]:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return False, None
        data = data[part]
    return True, data


def _config_value(argv: list[str], key: str) -> tuple[str | None, Any]:
    """``(file, value)`` of ``key`` in the last ``--config`` file that sets it."""
    import yaml

    for path in reversed(_config_files(argv)):
        try:
            found, value = _lookup(yaml.safe_load(Path(path).expanduser().read_text()), key)
        except (OSError, ValueError, yaml.YAMLError):
            continue
        if found:
            return path, value
    return None, None


def _given(argv: list[str], key: str) -> str | None:
    """The value the command line or a config file gives ``key`` (a class name for a
    subclass option: ``--key NAME``, ``--key.class_path NAME`` or ``key: {class_path: NAME}``)."""
    value = None
    for i, arg in enumerate(argv):
        name, eq, inline = arg.partition("=")
        if name in (f"--{key}", f"--{key}.class_path"):
            value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    if value is None:
        _, value = _config_value(argv, key)
        if isinstance(value, dict):
            value = value.get("class_path")
    return value if isinstance(value, str) else None


def _init_parameters(class_path: str) -> list[str]:
    import importlib
    import inspect

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, TypeError, ValueError):
        return []


def explain_usage(err: BaseException, parser: Any, argv: list[str]) -> str:
    """One line for a parser error ``err`` of ``python -m blockexp ARGV``: the offending option,
    key or value, where it came from, a close match, and the command's ``--help``."""
    command = argv[0] if argv and not argv[0].startswith("-") else ""
    see = f"see `{' '.join([PROG, command, '--help'] if command else [PROG, '--help'])}`"
    messages = [str(e) for e in _chain(err)]
    options = _options(_subparser(parser, command))

    if match := _find(messages, r"unrecognized arguments: (\S+)"):
        key = match.group(1).lstrip("-").split("=", 1)[0]
        return f"unknown option --{key}{suggest(key, options, '--')}; {see}"
    if match := _find(messages, r"(?:Group '([^']+)' does|Subcommand '[^']+' does) not accept "):
        key = _find(messages, r"accept option '([^']+)'").group(1)
        key = f"{match.group(1)}.{key}" if match.group(1) else key
        path, _ = _config_value(argv, key)
        where = f" in {path}" if path else ""
        return f"unknown key {key!r}{where}{suggest(key, options)}; fix or remove it ({see})"
    parent = _find(messages, r'Parser key "([^"]+)"')
    key = parent.group(1) if parent else None
    if key is not None and key.rsplit(".", 1)[-1] == "expander":
        from blockexp.expanders import expander_names

        names, value = expander_names(), _given(argv, key)
        module, _, short = (value or "").rpartition(".")
        if value and short not in names and (not module or module.startswith("blockexp")):
            return (
                f"unknown expander {value!r} for --{key}{suggest(value, names)}; registered: "
                f"{', '.join(names)} ({see})"
            )
    if key == "config":
        for path in _config_files(argv):
            if not Path(path).expanduser().is_file():
                what = "is a directory" if Path(path).expanduser().is_dir() else "not found"
                return (
                    f"config file {path!r} {what} (resolved to {Path(path).resolve()}); "
                    f"pass an existing YAML file to --config ({see})"
                )
    if match := _find(messages, r"Option '([^']+)' is not accepted"):
        class_path = _find(messages, r"class_path '([^']+)'")
        choices = _init_parameters(class_path.group(1)) if class_path else []
        owner = f"{class_path.group(1).rsplit('.', 1)[-1]} has no" if class_path else "unknown"
        where = f" (--{key}.{match.group(1)})" if key else ""
        return f"{owner} option {match.group(1)!r}{where}{suggest(match.group(1), choices)}; {see}"
    if match := _find(messages, r"the following arguments are required: (.+)"):
        keys = [k.strip().removeprefix(f"{command}.") for k in match.group(1).split(",")]
        return f"missing required option {', '.join('--' + k for k in keys)}; {see}"
    detail = flatten(messages[-1])
    if key is not None:
        return f"invalid value for --{key}: {detail}; {see}"
    return f"{flatten(messages[0])}; {see}"
