"""Exclusive locks on the directories a process writes, so two runs never write into one.

A directory ``D`` is locked through the file ``.<D's name>.lock`` beside it (in its parent; inside
``D``, as ``.blockexp.lock``, when the parent cannot be written), with ``fcntl.flock``: exclusive,
non-blocking, released by the kernel when the process ends however it ends. The file records the
holder's pid, for the message the next process gets (:class:`DirectoryLockedError`). A lock this
process holds already is not taken again (taking it is a no-op, and releasing is left to whoever
took it). Released locks are removed; one a killed process left is reused by the next process
locking that directory, or removed by the next output written beside it (:func:`sweep_stale_locks`).
After locking, the path is checked to still name the locked file (a holder may have removed it in
between), so two processes cannot each lock a file of their own.

What is locked:

* ``expand`` and ``export`` outputs, while they are written (:func:`writing_output`, also taken
  by :class:`~blockexp.io.outputs.atomic_output_dir`);
* a ``fit`` run's directories, by global rank 0, for the whole fit (:func:`hold_run_dirs`):
  ``trainer.default_root_dir`` (unless it is the working directory, Lightning's default, whose
  logs are versioned), every checkpoint directory and ``model.output.export_dir``.

Lock files never match the temporaries :mod:`blockexp.io.stale` removes.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
import re
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "DirectoryLockedError",
    "acquire",
    "acquire_output",
    "held",
    "hold_run_dirs",
    "lock_file",
    "release",
    "release_all",
    "sweep_stale_locks",
    "clean_beside",
    "writing_output",
]

INSIDE_NAME = ".blockexp.lock"

# lock file -> (descriptor, pid of the process holding it, folders made for it)
_held: dict[Path, tuple[int, int, list[Path]]] = {}


class DirectoryLockedError(OSError):
    """Another process holds the lock of a directory; the message names it, the holder's pid and
    what to do."""

    def __init__(self, directory: Path, lock: Path, pid: int | None) -> None:
        self.directory, self.lock, self.pid = directory, lock, pid
        holder = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(
            f"{directory} is in use by another blockexp process ({holder}, lock file {lock}): "
            "wait for it to finish, or choose another directory."
        )


def _canonical(directory: str | os.PathLike) -> Path:
    return Path(directory).expanduser().resolve()


def lock_file(directory: str | os.PathLike) -> Path:
    """The lock file of ``directory``: ``.<name>.lock`` in its parent."""
    directory = _canonical(directory)
    if not directory.name:  # the file system root
        return directory / INSIDE_NAME
    return directory.parent / f".{directory.name}.lock"


def _holder(fd: int) -> int | None:
    """The pid a lock file records; waits briefly for a holder that has just locked it."""
    for _ in range(50):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.02)
    return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    st = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def _take(lock: Path, directory: Path) -> int | None:
    """Lock ``lock`` (created if missing); its descriptor, or ``None`` where the file system
    has no locks."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise DirectoryLockedError(directory, lock, pid) from None
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return None  # no locking on this file system: run unlocked, as before
            raise
        if _same_file(fd, lock):
            break
        os.close(fd)  # the holder removed the file between our open and lock: lock the new one
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def acquire(directory: str | os.PathLike) -> Path | None:
    """Lock ``directory`` for this process (created parents as needed).

    Returns:
        The lock file, or ``None`` when this process holds the lock already (or the file system
        cannot lock): then there is nothing for the caller to release.

    Raises:
        DirectoryLockedError: another process holds it.
    """
    directory = _canonical(directory)
    lock = lock_file(directory)
    for candidate in (lock, directory / INSIDE_NAME):
        held = _held.get(candidate)
        if held is not None and held[1] == os.getpid():
            return None
    made = _missing(lock.parent)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = _take(lock, directory)
    except PermissionError:  # an unwritable parent: lock inside the directory instead
        lock, made = directory / INSIDE_NAME, _missing(directory)
        directory.mkdir(parents=True, exist_ok=True)
        fd = _take(lock, directory)
    if fd is None:
        return None
    _held[lock] = (fd, os.getpid(), made)
    return lock


def _missing(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist, deepest first (removed again on release
    if still empty, so that a refused command leaves no folders behind)."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def release(lock: Path | None) -> None:
    """Release and remove a lock file that :func:`acquire` returned (``None``: nothing to do)."""
    held = _held.pop(lock, None) if lock is not None else None
    if held is None:
        return
    fd, pid, made = held
    if pid != os.getpid():  # a forked child's copy: the lock is its parent's
        return
    try:
        if _same_file(fd, lock):  # removed while locked, so no other process has it
            os.unlink(lock)
        for folder in made:
            os.rmdir(folder)  # fails, and stops, at the first folder that holds something
    except OSError:
        pass
    finally:
        os.close(fd)


def held() -> list[Path]:
    """The lock files this process holds now."""
    return [lock for lock, (_, pid, _) in _held.items() if pid == os.getpid()]


def release_all() -> None:
    """Release every lock this process took (at exit, and when the command line ends)."""
    for lock in list(_held):
        release(lock)


atexit.register(release_all)


def sweep_stale_locks(folder: str | os.PathLike) -> list[Path]:
    """Remove the ``.<name>.lock`` files in ``folder`` that killed processes left: unlocked,
    and recording the pid of a process that no longer runs (any other file, e.g. another tool's
    lock, is left alone). Each is locked while it is removed, so a process opening it meanwhile
    notices (:func:`acquire` re-checks the path) and locks a new file.

    Returns:
        The lock files removed.
    """
    from blockexp.io.stale import pid_alive

    folder, removed = Path(folder), []
    try:
        names = [n for n in os.listdir(folder) if n.startswith(".") and n.endswith(".lock")]
    except OSError:
        return removed
    for name in names:
        path = folder / name
        if path in _held:
            continue
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            text = os.pread(fd, 32, 0).decode("ascii", "replace")
            if (
                stat.S_ISREG(os.fstat(fd).st_mode)
                and re.fullmatch(r"[0-9]+\n", text)
                and not pid_alive(int(text))
                and _same_file(fd, path)
            ):
                os.unlink(path)
                removed.append(path)
        except OSError:  # held by a live process, or gone
            pass
        finally:
            os.close(fd)
    return removed


def clean_beside(out: str | os.PathLike) -> None:
    """Remove what dead processes left beside the output ``out``: temporaries
    (:func:`blockexp.io.stale.clean_stale_temporaries` on its parent) and lock files
    (:func:`sweep_stale_locks`)."""
    from blockexp.io.stale import clean_stale_temporaries

    parent = _canonical(out).parent
    if parent.is_dir():
        clean_stale_temporaries(parent)
        sweep_stale_locks(parent)


def acquire_output(out: str | os.PathLike) -> Path | None:
    """Lock the output directory ``out`` (:func:`acquire`), then :func:`clean_beside` it."""
    lock = acquire(out)
    try:
        clean_beside(out)
    except BaseException:
        release(lock)
        raise
    return lock


@contextmanager
def writing_output(out: str | os.PathLike) -> Iterator[Path | None]:
    """:func:`acquire_output` for the ``with`` block: a command writing ``out`` holds it from
    its start, so that a second writer is refused before either does any work."""
    lock = acquire_output(out)
    try:
        yield lock
    finally:
        release(lock)


def _is_local(path: Any) -> bool:
    return bool(path) and "://" not in str(path)


def hold_run_dirs(trainer: Any, export_dir: str | os.PathLike | None = None) -> list[Path]:
    """Lock a fit's directories for the rest of the process, on global rank 0 only (other ranks
    write nothing there), then remove the temporaries dead processes left in its checkpoint
    directories (:func:`blockexp.io.stale.clean_stale_temporaries`).

    Returns:
        The lock files taken now (locks held already are not repeated).

    Raises:
        DirectoryLockedError: another process writes into one of them; nothing stays locked.
    """
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from blockexp.io.stale import clean_stale_temporaries

    # Before the strategy sets the global rank, the first process of every node has rank 0.
    node = os.environ.get("NODE_RANK") or "0"
    if getattr(rank_zero_only, "rank", 0) != 0 or node != "0":
        return []
    dirs = []
    root = trainer.default_root_dir
    if _is_local(root) and _canonical(root) != _canonical(os.getcwd()):
        dirs.append(_canonical(root))
    checkpoints = [
        _canonical(cb.dirpath) for cb in trainer.checkpoint_callbacks if _is_local(cb.dirpath)
    ]
    dirs += checkpoints
    if _is_local(export_dir):
        dirs.append(_canonical(export_dir))
    taken: list[Path] = []
    try:
        for directory in dict.fromkeys(dirs):
            lock = acquire(directory)
            if lock is not None:
                taken.append(lock)
    except BaseException:
        for lock in reversed(taken):
            release(lock)
        raise
    for directory in checkpoints:
        clean_stale_temporaries(directory)
    return taken
