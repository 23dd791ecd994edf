"""Concurrent writers, temporaries left by killed runs, planted links, and a full disk.

* Two processes writing one directory: the second ends with one ``error:`` line naming the first
  one's pid (``fit`` run directories, ``expand`` / ``export`` outputs), before writing anything.
* Start-up removes the ``.<name>.tmp-<pid>-<ns>`` temporaries of dead processes (``fit`` in its
  checkpoint directories, ``expand`` / ``export`` beside their output), never a live process's,
  never through a symbolic link.
* A checkpoint save that runs out of space ends with one line naming the file and the bytes,
  and the previous checkpoint stays intact (a real tmpfs; skipped where mounting is refused).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch  # noqa: F401  (its log handler binds to the session's stderr, not a test's)
import pytest
import torch

from blockexp.cli import main
from blockexp.io.locks import (
    DirectoryLockedError,
    acquire,
    lock_file,
    release,
)
from tests.conftest import record_faults
from tests.test_faults import REPO, _fit_args, _user_error

HOLDER = textwrap.dedent(
    """
    import sys
    from blockexp.io.locks import acquire
    acquire(sys.argv[1])
    print("locked", flush=True)
    sys.stdin.read()  # hold the lock until the test closes stdin (or kills this process)
    """
)


class Holder:
    """Another process holding the lock of ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout.readline().strip() == "locked"
        self.pid = self.proc.pid

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def holder():
    started: list[Holder] = []

    def start(directory: Path) -> Holder:
        started.append(Holder(directory))
        return started[-1]

    yield start
    for h in started:
        if h.proc.poll() is None:
            h.kill()


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=-1)
    return int(done.stdout)


def _stale(folder: Path, name: str, pid: int, size: int = 1 << 20, kind: str = "tmp") -> Path:
    """A directory named like a temporary of ``pid``, holding ``size`` bytes."""
    path = folder / f".{name}.{kind}-{pid}-{1000 + size}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"\0" * size)
    return path


# ------------------------------------------------------------------------------------ locks
def test_lock_is_exclusive_reentrant_and_survives_a_killed_holder(tmp_path, holder):
    out = tmp_path / "out"
    first = holder(out)
    with pytest.raises(DirectoryLockedError) as err:
        acquire(out)
    message = str(err.value)
    assert f"pid {first.pid}" in message and str(out) in message and "wait" in message
    first.kill()  # SIGKILL: the lock file stays, the kernel drops the lock
    assert lock_file(out).read_text().strip() == str(first.pid)
    lock = acquire(out)
    assert lock == tmp_path / ".out.lock" and lock.read_text().strip() == str(os.getpid())
    assert acquire(out) is None  # held by this process already: a no-op
    release(lock)
    assert not lock.exists()  # removed when released
    holder(out).stop()  # another process takes it, then ends: nothing left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_lock_file_removed_while_locking_is_not_held(tmp_path, monkeypatch):
    """The holder may remove its lock file between our open and our flock: the file we then
    lock is no longer the one at the path, and locking must start over on the new file."""
    import fcntl

    from blockexp.io import locks

    out = tmp_path / "out"
    real_flock, calls = fcntl.flock, []

    def flock(fd, operation):
        if not calls:  # the previous holder releases and removes the file just now
            lock_file(out).unlink()
        calls.append(operation)
        return real_flock(fd, operation)

    monkeypatch.setattr(locks.fcntl, "flock", flock)
    lock = acquire(out)
    assert len(calls) == 2  # the first, removed file was given up
    fd = locks._held[lock][0]
    assert os.fstat(fd).st_ino == os.stat(lock).st_ino
    release(lock)


def test_expand_and_export_into_a_locked_output_are_refused(
    tmp_path, holder, capsys, tiny_llama_dir
):
    out = tmp_path / "out"
    h = holder(out)
    expand = ["expand", "--base", str(tiny_llama_dir), "--out", str(out), "--expander", "LlamaPro"]
    line = _user_error(capsys, [*expand, "--expander.num_groups", "2"])
    assert f"pid {h.pid}" in line and str(out) in line, line
    # export takes the lock before reading the checkpoint's tensors: after the output guard,
    # which reads only its plain data (here a checkpoint with nothing else)
    fake = tmp_path / "fake.ckpt"
    torch.save({"blockexp": {}, "hyper_parameters": {"base": str(tiny_llama_dir)}}, fake)
    line = _user_error(capsys, ["export", "--ckpt", str(fake), "--out", str(out)])
    assert f"pid {h.pid}" in line and str(out) in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "base", "fake.ckpt"]
    h.stop()
    record_faults("second writer (expand, export) into a locked output", trials=2, refused=2)


def test_fit_into_a_locked_run_directory_is_refused_before_writing(
    tmp_path, holder, capsys, tiny_llama_dir, monkeypatch
):
    monkeypatch.chdir(REPO)
    root = tmp_path / "run"
    h = holder(root)
    line = _user_error(capsys, _fit_args(tiny_llama_dir, root, 1))
    assert f"pid {h.pid}" in line and str(root) in line, line
    assert not (root / "ckpt").exists() and not (root / "config.yaml").exists()
    h.stop()
    record_faults("second fit into a locked run directory", trials=1, refused=1, partial_outputs=0)


def test_programmatic_fit_locks_the_checkpoint_directory(
    tmp_path, holder, make_module, make_trainer
):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from tests.conftest import RandomBlocks

    ckpt = tmp_path / "run" / "ckpt"

    def fit():
        trainer = make_trainer(
            tmp_path / "run",
            2,
            enable_checkpointing=True,
            callbacks=[ModelCheckpoint(dirpath=ckpt, save_last=True)],
        )
        trainer.fit(make_module(), train_dataloaders=DataLoader(RandomBlocks(), batch_size=4))

    h = holder(ckpt)
    with pytest.raises(DirectoryLockedError, match=f"pid {h.pid}"):
        fit()
    assert not ckpt.exists()
    h.stop()
    fit()
    assert (ckpt / "last.ckpt").is_file()
    assert not list(tmp_path.rglob(".*.lock"))  # released at the end of fit


@pytest.mark.slow
def test_two_fits_started_together_into_one_directory(tmp_path, tiny_llama_dir):
    """The real race: two ``python -m blockexp fit`` processes, same run directory."""
    root = tmp_path / "run"
    args = _fit_args(tiny_llama_dir, root, 30, "--trainer.callbacks.every_n_train_steps", "5")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "blockexp", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    codes = [p.returncode for p in procs]
    print(f"\n[locks] two fits into one directory: return codes {codes}")
    assert sorted(codes) == [0, 2], errs
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    lines = [line for line in errs[loser].splitlines() if line.startswith("error:")]
    print(f"[locks] second process: {lines}")
    assert len(lines) == 1 and "Traceback" not in errs[loser], errs[loser]
    assert f"pid {procs[winner].pid}" in lines[0] and str(root) in lines[0]
    names = sorted(p.name for p in (root / "ckpt").iterdir())
    assert "last.ckpt" in names and "last-v1.ckpt" not in names, names
    assert torch.load(root / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 30
    assert not (tmp_path / ".run.lock").exists() and not (root / ".ckpt.lock").exists()
    record_faults("two fits started together, one directory", trials=2, refused=1, survived=1)


# ---------------------------------------------------------------------------- temporaries
def test_fit_removes_dead_runs_temporaries_at_start(tmp_path, tiny_llama_dir, monkeypatch):
    monkeypatch.chdir(REPO)
    root = tmp_path / "run"
    ckpt = root / "ckpt"
    dead = _dead_pid()
    stale = [_stale(ckpt, "other.ckpt", dead), _stale(ckpt, "last.ckpt", dead, 4096)]
    (ckpt / f".epoch=0-step=9.ckpt.tmp-{dead}-5").write_bytes(b"\0" * 4096)  # a file too
    alive = ckpt / f".other.ckpt.tmp-{os.getpid()}-7"
    alive.write_bytes(b"\0")
    unlike = ckpt / f".notes.tmp-{dead}"  # not our pattern (no timestamp)
    unlike.write_text("kept")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    planted = ckpt / f".link.ckpt.tmp-{dead}-8"
    planted.symlink_to(target, target_is_directory=True)
    main(_fit_args(tiny_llama_dir, root, 1))
    assert not any(p.exists() for p in stale)
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(
        ["last.ckpt", alive.name, unlike.name, planted.name]
    )
    assert (target / "precious.txt").read_text() == "keep me" and planted.is_symlink()


def test_export_removes_dead_runs_temporaries_before_reading_anything(tmp_path, capsys, holder):
    dead = _dead_pid()
    mine = _stale(tmp_path, "exported", dead)
    other = _stale(tmp_path, "other", dead)
    restored = _stale(tmp_path, "earlier", dead, kind="old")  # an output moved aside, then killed
    killed = holder(tmp_path / "killed")
    killed.kill()  # leaves .killed.lock, with its pid
    live = holder(tmp_path / "live")
    (tmp_path / ".foreign.lock").write_text("")  # another tool's lock file
    missing = tmp_path / "missing.ckpt"
    line = _user_error(capsys, ["export", "--ckpt", str(missing), "--out", str(tmp_path / "out")])
    assert "missing.ckpt" in line
    assert not mine.exists() and not other.exists() and not restored.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".foreign.lock", ".live.lock", "earlier"]
    live.stop()
    (tmp_path / ".foreign.lock").unlink()
    assert (tmp_path / "earlier" / "model.safetensors").stat().st_size == 1 << 20
    # the lock of an output in folders yet to be made: a refused command leaves none behind
    deep = tmp_path / "new" / "deeper" / "out"
    _user_error(capsys, ["export", "--ckpt", str(missing), "--out", str(deep)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier"]


def test_expand_removes_dead_runs_temporaries_beside_its_output(tmp_path, tiny_llama_dir):
    dead = _dead_pid()
    stale = [_stale(tmp_path, "out", dead), _stale(tmp_path, "out2", dead, kind="tmp")]
    alive = _stale(tmp_path, "out3", os.getpid())
    args = ["expand", "--base", str(tiny_llama_dir), "--out", str(tmp_path / "out")]
    main([*args, "--expander", "LlamaPro", "--expander.num_groups", "2"])
    assert not any(p.exists() for p in stale) and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "base", "out"]


def test_planted_links_named_like_temporaries_are_never_followed(tmp_path):
    from blockexp.io.outputs import atomic_output_dir
    from blockexp.io.stale import clean_stale_outputs

    dead = _dead_pid()
    targets = []
    for name in ("a", "b"):
        target = tmp_path / "elsewhere" / name
        target.mkdir(parents=True)
        (target / "precious.txt").write_text(name)
        targets.append(target)
    old = tmp_path / f".out.old-{dead}-1"  # would be "restored" as out: out -> anywhere
    old.symlink_to(targets[0], target_is_directory=True)
    tmp = tmp_path / f".out.tmp-{dead}-2"  # would be removed through the link
    tmp.symlink_to(targets[1], target_is_directory=True)
    out = tmp_path / "out"
    assert clean_stale_outputs(out) == []
    assert not os.path.lexists(out)
    with atomic_output_dir(out) as new:
        (new / "blockexp_manifest.json").write_text("{}")
    assert out.is_dir() and not out.is_symlink()
    assert sorted(p.name for p in out.iterdir()) == ["blockexp_manifest.json"]
    for target, name in zip(targets, "ab", strict=True):
        assert (target / "precious.txt").read_text() == name
    assert old.is_symlink() and tmp.is_symlink()  # left alone
    record_faults("planted .old/.tmp symlinks", trials=2, survived=2, lost_inputs=0)


# ------------------------------------------------------------------------------- disk full
@pytest.fixture
def small_disk():
    """``mount(folder, size)``: a tmpfs of ``size`` at ``folder`` (unmounted afterwards)."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str) -> Path:
        folder.mkdir(parents=True)
        if shutil.which("mount") is None:
            pytest.skip("no mount command here to make a small file system")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize(
    ("size", "top_k", "failing", "kept"),
    [
        ("400k", "0", "last.ckpt", ["last.ckpt"]),
        ("600k", "-1", "epoch=0-step=2.ckpt", ["epoch=0-step=1.ckpt", "last.ckpt"]),
    ],
    ids=["replacing-last", "every-step"],
)
def test_disk_full_during_a_checkpoint_save_is_one_line(
    tmp_path, tiny_llama_dir, small_disk, capsys, monkeypatch, size, top_k, failing, kept
):
    """A checkpoint of the tiny run is about 260 kB. 400 kB hold one last.ckpt but not its
    replacement beside it; 600 kB hold the first step's two files but not a third (torch's
    writer then fails with "unexpected pos", the OSError only its context). Either way: one
    line, and the checkpoints of step 1 stay, complete."""
    from blockexp.io.digests import check_stored_tensors
    from blockexp.training.export import load_checkpoint_file

    monkeypatch.chdir(REPO)
    root = tmp_path / "run"
    ckpt = small_disk(root / "ckpt", size)
    every_step = ["--trainer.callbacks.every_n_train_steps", "1"]
    args = _fit_args(tiny_llama_dir, root, 3, *every_step, "--trainer.callbacks.save_top_k", top_k)
    line = _user_error(capsys, args)
    print(f"\n[locks] disk full: {line}")
    assert line.startswith(f"error: no space left to write the checkpoint {ckpt / failing}: "), line
    needed = int(line.split("needs about ")[1].split(" bytes")[0].replace(",", ""))
    free = int(line.split(" and ")[1].split(" are free")[0].replace(",", ""))
    assert needed > free and needed > 100_000, line
    assert ("previous last.ckpt there is intact" in line) == (failing == "last.ckpt")
    assert sorted(p.name for p in ckpt.iterdir()) == kept  # no temporary left
    for name in kept:
        state = load_checkpoint_file(ckpt / name)
        assert state["global_step"] == 1
        check_stored_tensors(state["state_dict"], state["blockexp"]["stored_digest"], name)
    record_faults(
        f"disk full during a checkpoint save ({size})", trials=1, refused=1, lost_inputs=0
    )


def test_a_torch_write_failing_on_a_full_disk_is_reported_as_no_space(tmp_path, monkeypatch):
    """torch's writer may end with a RuntimeError ("unexpected pos") whose context is the
    ENOSPC: that is a full disk too. Another RuntimeError is left as it is."""
    from blockexp.training.checkpoint_io import AtomicCheckpointIO

    def full(obj, f):
        f.write(b"partial")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos"
            ) from None

    path = tmp_path / "last.ckpt"
    path.write_bytes(b"previous")
    checkpoint = {"state_dict": {"w": torch.zeros(1000)}, "optimizer_states": [torch.ones(10)]}
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as err:
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    assert err.value.errno == errno.ENOSPC
    assert str(err.value).startswith(f"no space left to write the checkpoint {path}: it needs ")
    assert "about 4,040 bytes" in str(err.value) and "previous last.ckpt" in str(err.value)
    assert path.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == [path.name]

    def broken(obj, f):
        raise RuntimeError("something else")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="something else"):
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)
