"""Multi-node training of one run is Lightning's (DDP under torchrun or SLURM): the quickstart on
two "nodes" of one process each, launched by torchrun on localhost with gloo (docs/performance.md,
Many machines)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = 20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_command(rank: int, port: int) -> list[str]:
    """The documented torchrun command for node ``rank`` (``python -m torch.distributed.run`` is
    ``torchrun``), shortened to a few steps; the checkpoint callback is the recipe's with a
    period that fits them (the recipe's lm-eval callback is left out: minutes on a CPU)."""
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {
            "dirpath": "outputs/quickstart/checkpoints",
            "save_last": True,
            "every_n_train_steps": STEPS // 2,
        },
    }
    return [
        *(sys.executable, "-m", "torch.distributed.run"),
        *("--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank)),
        *("--master-addr", "127.0.0.1", "--master-port", str(port)),
        *("-m", "blockexp", "fit", "--config", str(REPO / "configs" / "quickstart.yaml")),
        *("--trainer.num_nodes", "2", "--trainer.strategy", "ddp"),
        *("--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", str(STEPS // 2)),
        *("--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false"),
        *("--trainer.callbacks", json.dumps([checkpoint])),
    ]


@pytest.mark.slow
def test_quickstart_on_two_nodes_with_torchrun(tmp_path):
    # The recipe's relative paths: outputs/ lands in tmp_path, data/ links to the repository's.
    (tmp_path / "data").symlink_to(REPO / "data")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    port = _free_port()
    nodes = [
        subprocess.Popen(
            _node_command(rank, port),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = []
    try:
        for node in nodes:
            logs.append(node.communicate(timeout=240)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    for rank, (node, log) in enumerate(zip(nodes, logs, strict=True)):
        assert node.returncode == 0, f"node {rank} failed:\n{log[-4000:]}"
    # one world of two processes, one per node; rank 0 alone reports
    assert "All distributed processes registered. Starting with 2 processes" in logs[0]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1]
    assert "blockexp summary" in logs[0] and "blockexp summary" not in logs[1]

    out = tmp_path / "outputs" / "quickstart"
    # the checkpoints written once (by global rank 0: no second copy, no leftover temporaries)
    import torch

    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == [f"epoch=0-step={STEPS}.ckpt", "last.ckpt"]
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == STEPS
    # one TensorBoard run, with the training loss
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert [p.name for p in (out / "tb").iterdir()] == ["version_0"]
    events = EventAccumulator(str(out / "tb" / "version_0")).Reload()
    assert [e.step for e in events.Scalars("train_loss")] == [STEPS // 2 - 1, STEPS - 1]
    # the export loads as a standard model, 4 -> 6 layers
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.num_hidden_layers == 6
    with torch.no_grad():
        logits = model(torch.tensor([[257, 72, 105]])).logits
    assert torch.isfinite(logits).all()
