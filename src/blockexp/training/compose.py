"""Config composition: ``defaults:`` lists and ``group=option`` overrides, merged by OmegaConf.

A config file names what it builds on in a ``defaults:`` list, applied in order before the file
itself, so the file holds only its delta::

    defaults:
      - model: tiny_llama          # configs/model/tiny_llama.yaml
      - expander: llama_pro        # configs/expander/llama_pro.yaml
      - llama2_7b_cpt.yaml         # a path, relative to this file

A ``group: option`` entry names ``<group>/<option>.yaml`` in the nearest folder above the file
that has a ``<group>/`` folder (else ``./configs``); the groups are :data:`GROUPS`. On the
command line ``group=option`` selects that group's file in place of the one the defaults name,
at any depth (or adds it after them when they name none). OmegaConf merges the files (mappings
key by key, lists and values replaced) and resolves ``${...}`` interpolations, so an output
directory is written once (``${trainer.default_root_dir}/checkpoints``). The parser then gets the
result as one ``--config`` (YAML text) and merges several ``--config`` and dotted overrides as
before; a file without a ``defaults:`` list or interpolation is passed on untouched.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from blockexp.errors import UsageError, flatten, suggest

__all__ = ["GROUPS", "compose_args", "compose_config", "split_overrides", "yaml_problem"]

#: the config groups: ``configs/<group>/<option>.yaml``, chosen with ``group: option``
GROUPS = ("data", "expander", "logger", "model", "strategy", "trainer")
CONFIG_FLAGS = ("--config", "-c")
_OVERRIDE = re.compile(r"([A-Za-z_]\w*)=(.*)", re.DOTALL)


def _show(path: Path) -> str:
    """``path`` as the user reads it: relative to the working directory when inside it."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def yaml_problem(path: Path, err: yaml.YAMLError) -> str:
    """``FILE:LINE: invalid YAML: PROBLEM``, the file as the user reads it."""
    mark = getattr(err, "problem_mark", None)
    where = f"{_show(path)}:{mark.line + 1}" if mark is not None else _show(path)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{where}: invalid YAML: {problem}"


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long to be a path
        return False


def split_overrides(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Take the ``group=option`` overrides out of ``argv`` (the last one of a group wins).

    A ``name=value`` token right after an option (``--key name=value``) is that option's value;
    elsewhere ``name`` must be one of :data:`GROUPS`.
    """
    overrides: dict[str, str] = {}
    rest: list[str] = []
    for i, arg in enumerate(argv):
        match = None if arg.startswith("-") else _OVERRIDE.fullmatch(arg)
        previous = argv[i - 1] if i else ""
        if match and previous not in CONFIG_FLAGS:
            group, option = match.groups()
            if group in GROUPS:
                overrides[group] = option
                continue
            if not (previous.startswith("-") and "=" not in previous):
                raise UsageError(
                    f"unknown config group {group!r} in {arg!r}{suggest(group, GROUPS)}; "
                    f"groups: {', '.join(GROUPS)}"
                )
        rest.append(arg)
    return overrides, rest


class _Composer:
    """Lists, for a config, the files it merges in order, and merges them. Each file is parsed
    at most twice, and each parse is cached: as plain YAML (its ``defaults``, whether it needs
    composing) and, when merged, by OmegaConf, whose loader types values as the merge expects
    (``1e-5`` is a float there and a string to PyYAML)."""

    def __init__(self, overrides: dict[str, str]) -> None:
        self.overrides = overrides
        self.used: set[str] = set()  # the groups some defaults list named
        self.read: dict[Path, Any] = {}
        self.loaded: dict[Path, Any] = {}

    def data(self, path: Path) -> Any:
        """The file's YAML as Python data (read as the parser reads a file it is given)."""
        resolved = path.resolve()
        if resolved not in self.read:
            try:
                self.read[resolved] = yaml.safe_load(resolved.read_text())
            except yaml.YAMLError as err:
                raise UsageError(yaml_problem(path, err)) from err
            except UnicodeDecodeError as err:
                raise UsageError(
                    f"{_show(path)}: not UTF-8 text ({err.reason} at byte {err.start})"
                ) from err
        return self.read[resolved]

    def load(self, path: Path) -> Any:
        """The file as an OmegaConf DictConfig without its ``defaults``."""
        from omegaconf import DictConfig, OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        resolved = path.resolve()
        if resolved not in self.loaded:
            if not isinstance(self.data(path), dict | None):
                raise UsageError(f"{_show(path)}: a config file holds keys, not a list or value")
            try:
                config = OmegaConf.load(resolved)
            except yaml.YAMLError as err:
                raise UsageError(yaml_problem(path, err)) from err
            except OmegaConfBaseException as err:
                raise UsageError(f"{_show(path)}: {flatten(str(err))}") from err
            assert isinstance(config, DictConfig)
            config.pop("defaults", None)
            self.loaded[resolved] = config
        return self.loaded[resolved]

    def defaults(self, path: Path) -> list | None:
        data = self.data(path)
        entries = data.get("defaults") if isinstance(data, dict) else None
        if entries is not None and not isinstance(entries, list):
            raise UsageError(
                f"{_show(path)}: `defaults` must be a list of `group: option` entries or config "
                f"file paths, not {entries!r}"
            )
        return entries

    def composes(self, path: Path) -> bool:
        """Whether ``path`` needs composing: a ``defaults`` list or an interpolation."""

        def interpolates(value: Any) -> bool:
            if isinstance(value, dict):
                return any(interpolates(v) for v in value.values())
            if isinstance(value, list):
                return any(interpolates(v) for v in value)
            return isinstance(value, str) and "${" in value

        return self.defaults(path) is not None or interpolates(self.data(path))

    def group_file(self, start: Path, group: str, option: str, named_by: str) -> Path:
        """``<group>/<option>.yaml`` in the nearest folder above ``start`` with a ``<group>/``."""
        folders = [d / group for d in (start, *start.parents)] + [Path("configs") / group]
        folder = next((f for f in folders if f.is_dir()), None)
        if folder is None:
            raise UsageError(
                f"{named_by}: no {group}/ folder above {_show(start)} or in ./configs holds the "
                f"config group {group!r}"
            )
        path = folder / f"{option}.yaml"
        if not _is_file(path):
            options = sorted(p.stem for p in folder.glob("*.yaml"))
            raise UsageError(
                f"{named_by}: no config {option!r} in group {group!r}{suggest(option, options)}; "
                f"options in {_show(folder)}/: {', '.join(options) or 'none'}"
            )
        return path

    def entry_file(self, path: Path, entry: Any) -> Path:
        """The file one ``defaults`` entry of ``path`` names (after the overrides)."""
        if isinstance(entry, str):
            piece = Path(os.path.normpath(path.resolve().parent / entry))
            if not _is_file(piece):
                raise UsageError(
                    f"{_show(path)} lists the default config {entry!r}, which does not exist "
                    f"(resolved to {piece})"
                )
            return piece
        if isinstance(entry, dict) and len(entry) == 1:
            ((group, option),) = entry.items()
            if group not in GROUPS:
                raise UsageError(
                    f"{_show(path)}: unknown config group {group!r} in `defaults`"
                    f"{suggest(str(group), GROUPS)}; groups: {', '.join(GROUPS)}"
                )
            if isinstance(option, str):
                self.used.add(group)
                if group in self.overrides:
                    option, named_by = self.overrides[group], f"{group}={self.overrides[group]}"
                else:
                    named_by = f"{_show(path)} (defaults: {group}: {option})"
                return self.group_file(path.resolve().parent, group, option, named_by)
        raise UsageError(
            f"{_show(path)}: each `defaults` entry is `group: option` ({', '.join(GROUPS)}) or a "
            f"config file path, not {entry!r}"
        )

    def files(self, path: Path, stack: tuple[Path, ...] = ()) -> list[Path]:
        """The files ``path`` merges, its defaults (recursively, in order) first."""
        resolved = path.resolve()
        if resolved in stack:
            cycle = " -> ".join(_show(p) for p in (*stack, resolved))
            raise UsageError(f"config defaults form a cycle: {cycle}")
        out: list[Path] = []
        for entry in self.defaults(path) or []:
            out += self.files(self.entry_file(path, entry), (*stack, resolved))
        return [*out, path]

    def merge(self, files: list[Path], edit: Callable[[Any], None] | None = None) -> dict:
        """The files merged in order, ``edit`` applied to the merged OmegaConf config, then
        interpolations resolved; ``defaults`` left out."""
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        configs = [self.load(path) for path in files]
        names = ", ".join(_show(p) for p in files)
        try:
            merged = OmegaConf.merge(*configs)
        except OmegaConfBaseException as err:
            raise UsageError(f"cannot merge {names}: {flatten(str(err))}") from err
        if edit is not None:
            edit(merged)
        try:
            return OmegaConf.to_container(merged, resolve=True)
        except OmegaConfBaseException as err:
            where = f" (at {err.full_key})" if getattr(err, "full_key", None) else ""
            raise UsageError(
                f"{_show(files[-1])}: an interpolation does not resolve{where}: "
                f"{str(err).splitlines()[0]} (merged from {names})"
            ) from err


def compose_config(
    path: str | os.PathLike,
    overrides: dict[str, str] | None = None,
    edit: Callable[[Any], None] | None = None,
) -> dict:
    """The config ``path`` composes (its defaults merged, interpolations resolved), with the
    ``group -> option`` ``overrides``; a group its defaults do not name is added after them.
    ``edit`` changes the merged OmegaConf config in place before interpolations resolve (a sweep
    cell sets its own ``trainer.default_root_dir`` there, so the paths built on it follow).

    Raises:
        UsageError: an unknown group or option, a missing file, a cycle, malformed YAML, or an
            interpolation that does not resolve.
    """
    composer = _Composer(dict(overrides or {}))
    files = _with_added_groups(composer, Path(path), composer.files(Path(path)))
    return composer.merge(files, edit)


def _with_added_groups(composer: _Composer, path: Path, files: list[Path]) -> list[Path]:
    """``files`` with the overridden groups no defaults list named, just before ``path``."""
    added = [
        composer.group_file(path.resolve().parent, group, option, f"{group}={option}")
        for group, option in composer.overrides.items()
        if group not in composer.used
    ]
    extra = [f for piece in added for f in composer.files(piece)]
    return [*files[:-1], *extra, files[-1]]


class _YAMLText(yaml.SafeDumper):
    """Writes every string quoted, so the parser reads back exactly the types merged."""


_YAMLText.add_representer(
    str, lambda dumper, s: dumper.represent_scalar("tag:yaml.org,2002:str", s, style='"')
)


_REFERENCE = re.compile(r"\$\{([\w.]+)\}")


def _option_values(argv: list[str]) -> dict[str, str]:
    """``{key: value}`` of the dotted options in ``argv`` (``--key value`` or ``--key=value``)."""
    out: dict[str, str] = {}
    for i, arg in enumerate(argv):
        if not arg.startswith("--") or arg.split("=")[0] in CONFIG_FLAGS:
            continue
        key, eq, value = arg[2:].partition("=")
        if eq:
            out[key] = value
        elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            out[key] = argv[i + 1]
    return out


def _set_referenced(values: dict[str, str]) -> Callable[[Any], None]:
    """An ``edit`` that sets, before interpolations resolve, each command-line option that an
    interpolation of the config refers to: ``--trainer.default_root_dir DIR`` then moves every
    path built on ``${trainer.default_root_dir}`` too (checkpoints, logs, the export)."""

    def edit(merged: Any) -> None:
        from omegaconf import OmegaConf

        if not values:
            return
        referenced: set[str] = set()

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)
            elif isinstance(node, str):
                referenced.update(_REFERENCE.findall(node))

        walk(OmegaConf.to_container(merged, resolve=False))
        for key in referenced & values.keys():
            OmegaConf.update(merged, key, yaml.safe_load(values[key]), merge=False)

    return edit


def compose_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Compose each ``--config FILE`` of a command line, applying its ``group=option`` overrides.

    A dotted option after a composed file that one of its interpolations refers to is set before
    they resolve (``--trainer.default_root_dir DIR`` moves the checkpoints, logs and export built
    on it), and is passed on to the parser as given.

    Returns:
        The arguments for the parser (a composed file becomes ``--config`` of its merged YAML
        text) and the same arguments with the files each composed one merges in its place, for
        error messages that name the file setting a key.

    Raises:
        UsageError: an unknown group or option, a missing file, a cycle, malformed YAML, an
            interpolation that does not resolve, or overrides without a config that has groups.
    """
    overrides, argv = split_overrides(argv)
    composer = _Composer(overrides)
    slots: list[tuple[int, Path, list[Path]]] = []  # (position of the value, file, its files)
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if arg in CONFIG_FLAGS and i + 1 < len(argv):
            position, value = i + 1, argv[i + 1]
        elif flag == "--config" and eq:
            position = i
        else:
            continue
        path = Path(value).expanduser()
        if _is_file(path) and composer.composes(path):
            slots.append((position, path, composer.files(path)))
    if overrides.keys() - composer.used:
        if not slots:
            given = " ".join(f"{g}={o}" for g, o in overrides.items())
            raise UsageError(
                f"{given}: no --config names config groups (a `defaults:` list); pass the "
                f"group's file with --config configs/<group>/<option>.yaml instead"
            )
        position, path, files = slots[-1]
        slots[-1] = (position, path, _with_added_groups(composer, path, files))
    parsed, sources = list(argv), list(argv)
    for position, _, files in reversed(slots):
        later = _option_values(argv[position + 1 :])
        text = yaml.dump(
            composer.merge(files, _set_referenced(later)), Dumper=_YAMLText, sort_keys=False
        )
        inline = argv[position].startswith("--config=")
        parsed[position] = f"--config={text}" if inline else text
        named = [a for f in files for a in ("--config", str(f))]
        sources[position - (0 if inline else 1) : position + 1] = named
    return parsed, sources
