"""Atomic outputs: the output guard, output directories renamed into place, atomic file writes."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from blockexp.io.inputs import OutputExistsError
from blockexp.io.load import ModelSpec
from blockexp.io.locks import acquire_output, release
from blockexp.io.manifest import MANIFEST_NAME

__all__ = [
    "atomic_output_dir",
    "atomic_write",
    "check_output_dir",
    "is_blockexp_output",
]


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


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file (0666 less the umask)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write one file atomically: into a temporary sibling, then renamed over ``path``. The file
    gets the usual mode (0666 less the umask), not the temporary's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
