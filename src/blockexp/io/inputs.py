"""The files a command reads, which none of its outputs may equal, contain or lie inside.

The command line declares its config files here (:func:`declare_inputs`, from
:func:`blockexp.cli.main`); the output guard (:func:`blockexp.io.outputs.check_output_dir`) adds
them to the inputs each command passes it (base, checkpoint, tokenizer, data).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "OutputExistsError",
    "check_outside_inputs",
    "config_files",
    "declare_inputs",
    "declared_inputs",
    "paths_in",
]

_DECLARED: list[Path] = []


class OutputExistsError(FileExistsError):
    """Refusing to write an output directory."""


def declare_inputs(paths: list[str | os.PathLike]) -> None:
    """Replace the declared inputs of the running command (existing paths, resolved)."""
    _DECLARED[:] = [Path(p).expanduser().resolve() for p in paths if Path(p).expanduser().exists()]


def declared_inputs() -> list[Path]:
    """The inputs the running command declared (empty outside the command line)."""
    return list(_DECLARED)


INPUT_FLAGS = ("--config", "--ckpt_path")


def config_files(argv: list[str]) -> list[str]:
    """The values of the input flags (``--config FILE``, ``--ckpt_path FILE``, also with ``=``)
    of a command line."""
    found = []
    for i, arg in enumerate(argv):
        key, eq, value = arg.partition("=")
        if key in INPUT_FLAGS:
            if eq:
                found.append(value)
            elif i + 1 < len(argv):
                found.append(argv[i + 1])
    return found


def paths_in(value: Any, written: tuple[str, ...] = ("cache_dir",)) -> list[Path]:
    """Every existing file or directory named by a string inside ``value`` (mappings, lists and
    dataclasses are walked): the inputs a data module's hyper-parameters name (sources, data
    files, task roots), whatever their argument names; keys in ``written`` name what the module
    writes (its cache), not what it reads."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return [p for k, v in value.items() if k not in written for p in paths_in(v, written)]
    if isinstance(value, list | tuple):
        return [p for v in value for p in paths_in(v, written)]
    if isinstance(value, str | os.PathLike) and str(value):
        path = Path(value).expanduser()
        try:
            return [path.resolve()] if path.exists() else []
        except OSError:  # a string too long to be a path
            return []
    return []


def check_outside_inputs(
    out: str | os.PathLike, inputs: list[Any], written: tuple[str, ...] = (), flag: str = "--out"
) -> Path:
    """Refuse a results directory ``out`` that is, or lies inside, an input (``inputs`` plus the
    declared ones: a model directory, a data file), or whose files ``written`` would replace an
    input. For commands that write a few named files into a directory (``importance``,
    ``eval``), before any work.

    Returns:
        ``out``, resolved.
    """
    target = Path(out).expanduser().resolve()
    paths = [p for p in inputs if isinstance(p, str | os.PathLike)]
    for p in [*paths, *declared_inputs()]:
        path = Path(p).expanduser()
        if not path.exists():
            continue
        path = path.resolve()
        if target == path or path in target.parents or path in {target / w for w in written}:
            raise OutputExistsError(
                f"Refusing to write results to {target}: it is, lies inside or would replace "
                f"{path}, an input of this command. Choose another {flag} directory."
            )
    return target
