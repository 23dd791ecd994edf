"""Temporaries that killed processes left: found by name, removed only when their process is gone.

blockexp writes every output beside its final name and renames it into place: a directory (or a
checkpoint file) being written is ``.<name>.tmp-<pid>-<ns>``, and a previous output moved aside
just before the rename is ``.<name>.old-<pid>-<ns>``. A process killed mid-write leaves them
(25-120 MB for a small model). The functions here remove those of processes that no longer run,
and nothing else: only entries matching that exact pattern, never one whose process is alive,
and never a symbolic link (a link named like a temporary was not made by blockexp; it is left
alone, and its target is never read, moved or deleted). Lock files (``.<name>.lock``,
:mod:`blockexp.io.locks`) do not match.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

__all__ = ["TEMPORARY", "clean_stale_outputs", "clean_stale_temporaries", "pid_alive"]

#: ``.<name>.<kind>-<pid>-<ns>``: what :class:`~blockexp.io.outputs.atomic_output_dir` and
#: :class:`~blockexp.training.checkpoint_io.AtomicCheckpointIO` write beside their outputs.
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>[0-9]+)-[0-9]+$")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _remove_or_restore(path: Path, name: str, kind: str) -> bool:
    """Drop a stale temporary, or put a moved-aside output back where its output is missing.
    Symbolic links are skipped (``False``): nothing is done through them."""
    if path.is_symlink():
        return False
    target = path.parent / name
    if kind == "old" and not os.path.lexists(target):
        os.replace(path, target)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return True


def clean_stale_temporaries(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove what killed blockexp processes left in ``directory``: ``.<name>.tmp-<pid>-<ns>``
    entries of processes that no longer run, and ``.<name>.old-<pid>-<ns>`` ones, which are
    renamed back to ``<name>`` when that is missing (restored first, then half-written copies
    dropped). ``name``: only the temporaries of that output; default: all of them.

    Returns:
        The paths removed or restored.
    """
    directory = Path(directory)
    try:
        entries = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    stale = []
    for entry in entries:
        match = TEMPORARY.match(entry)
        if match and (name is None or match["name"] == name) and not pid_alive(int(match["pid"])):
            stale.append(match)
    done = []
    for kind in ("old", "tmp"):
        for match in stale:
            path = directory / match.string
            if match["kind"] == kind and _remove_or_restore(path, match["name"], kind):
                done.append(path)
    return done


def clean_stale_outputs(out: str | os.PathLike) -> list[Path]:
    """Remove what killed runs left beside ``out`` (:func:`clean_stale_temporaries` for the
    temporaries of ``out`` only); a moved-aside previous output is put back when ``out`` itself
    is missing.

    Returns:
        The paths removed or restored.
    """
    out = Path(out).expanduser().resolve()
    return clean_stale_temporaries(out.parent, out.name)
