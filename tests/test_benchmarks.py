"""The arithmetic inside the benchmark scripts (their timed parts need large runs or a GPU)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mfu_flops_reduce_to_6n_when_everything_trains():
    mfu = _load("mfu_gpu")
    layers, hidden, seq, vocab, per_layer = 32, 4096, 4096, 32000, 202_383_360
    head = vocab * hidden
    n = per_layer * layers + head
    full = mfu.model_flops_per_token(n, head, per_layer, layers, 0, n, seq, hidden)
    assert full == 6 * n + 12 * layers * hidden * seq


def test_mfu_flops_of_llama_pro_8_3b():
    mfu = _load("mfu_gpu")
    layers, hidden, seq, vocab, per_layer = 40, 4096, 4096, 32000, 202_383_360
    head = vocab * hidden
    n = per_layer * layers + head
    # LLaMA Pro: the lowest new block is layer 4; 8 new blocks train.
    got = mfu.model_flops_per_token(n, head, per_layer, layers, 4, 8 * per_layer, seq, hidden)
    attention = 4 * seq * hidden
    want = (2 * n + attention * layers) + (2 * head + (2 * per_layer + 2 * attention) * 36)
    want += 2 * 8 * per_layer
    assert got == want
    assert got < 6 * n + 12 * layers * hidden * seq


def test_train_step_flop_ratio():
    step = _load("train_step")
    # 12 layers in 3 groups -> 15 layers, lowest trainable index 4 (in the expanded model).
    assert step.flop_ratio(12, 3) == (2 * 15 + 2 * (15 - 4) + 2 * 3) / (6 * 15)


def test_startup_benchmark_smoke(tmp_path):
    """``benchmarks/startup.py --smoke``: a tiny checkpoint, one round of every timed command."""
    import subprocess
    import sys

    cmd = [sys.executable, str(BENCH / "startup.py"), "--smoke", "--work", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    rows = ("cp -r", "expand (streaming)", "plan --json", "config.json only", "--help")
    for row in (*rows, "expand / cp:"):
        assert row in out, out
    assert (tmp_path / "base" / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "expand_out").exists()  # outputs are removed, the base is kept


def test_vs_trainer_benchmark_smoke():
    """``benchmarks/vs_trainer.py --smoke``: both sides train a tiny expanded Llama, same
    trainable parameters, one round of each."""
    import subprocess
    import sys

    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate ([bench])")
    cmd = [sys.executable, str(BENCH / "vs_trainer.py"), "--smoke"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "names and counts equal on both sides" in out, out
    assert "median blockexp/peer over 1 rounds: tokens/s" in out, out


@pytest.mark.slow
def test_train_step_benchmark_smoke():
    """``benchmarks/train_step.py --smoke``: the memory table and the loss check on a tiny shape
    (the quantised base and in-backward opt-ins against the peer layout)."""
    import subprocess
    import sys

    pytest.importorskip("torchao")
    cmd = [sys.executable, str(BENCH / "train_step.py"), "--smoke", "--parts", "memory,loss",
           "--variants", "lean-int8 (quantised base),optimizer_in_backward"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for row in ("peer layout (lean, fp32 AdamW)", "lean-int8 (quantised base)", "lean (reference)"):
        assert row in out, out
    assert out.count("optimizer_in_backward") >= 2, out


def test_readme_timings_smoke():
    """benchmarks/readme_timings.py (the README's Timings table) runs its cheap rows and prints a
    table row per command with its wall time and peak memory."""
    import subprocess
    import sys

    cmd = [sys.executable, str(BENCH / "readme_timings.py"), "--only", "plan,help"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| `python -m")]
    assert len(rows) == 2 and all(" s | " in row and " MB | " in row for row in rows)
    assert "plan --base llama2-7b/config.json" in rows[0]
