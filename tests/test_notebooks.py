"""Every code cell of the notebooks under notebooks/ runs, in order, in one namespace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch, capsys):
    monkeypatch.chdir(path.parent.parent)
    cells = json.loads(path.read_text())["cells"]
    code = [("".join(c["source"]), i) for i, c in enumerate(cells) if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    namespace: dict = {"__name__": "__main__"}
    for source, index in code:
        exec(compile(source, f"{path.name}[cell {index}]", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "same generation: True" in out
    assert "model.safetensors" in out
