"""The experiments run end to end at toy sizes (slow)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_strategies_experiment_smoke(tmp_path):
    import importlib.util
    from pathlib import Path

    from blockexp.expanders import expander_names

    script = Path(__file__).resolve().parents[1] / "experiments/strategies/run.py"
    spec = importlib.util.spec_from_file_location("strategies_run", script)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    out = tmp_path / "out"
    rows = run.main(["--steps", "3", "--base-steps", "3", "--val-batches", "1", "--out", str(out)])
    assert [r["strategy"] for r in rows] == expander_names()
    for name in ("results.csv", "results.md", "results.png"):
        assert (out / name).stat().st_size > 0
    assert len((out / "results.csv").read_text().splitlines()) == len(rows) + 1
