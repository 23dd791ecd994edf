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


def _fake_doc_deb(path, sources: dict[str, str]) -> None:
    """A minimal Debian package (ar archive with data.tar.xz) holding rst sources."""
    import io
    import tarfile

    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, text in sources.items():
            raw = text.encode()
            info = tarfile.TarInfo(f"./usr/share/doc/python3.11/html/_sources/{name}.rst.txt")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    members = [("debian-binary", b"2.0\n"), ("data.tar.xz", data.getvalue())]
    out = b"!<arch>\n"
    for name, body in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n"
        out += header.encode() + body + (b"\n" if len(body) % 2 else b"")
    path.write_bytes(out)


def _load_reproduce():
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "experiments/reproduce"
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("reproduce_run", folder / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    return run


def test_rst_prose_keeps_paragraphs_and_drops_code():
    run = _load_reproduce()
    text = (
        "Title\n=====\n\nThe :func:`open` function returns a ``file`` object for the path you give it.\n\n"
        "For example::\n\n    f = open('x')\n    f.read()\n\n>>> 1 + 1\n2\n\n"
        ".. function:: spam(x)\n\n   Return the spam of *x*, computed by the very careful spam machine.\n\n"
        ".. code-block:: python\n\n   print('this is code and must not be kept as prose at all')\n\n"
        "* A list item that is long enough to be a sentence of prose by itself.\n"
    )
    prose = run.corpus_mod.rst_prose(text).split("\n\n")
    assert prose == [
        "The open function returns a file object for the path you give it.",
        "Return the spam of x, computed by the very careful spam machine.",
        "A list item that is long enough to be a sentence of prose by itself.",
    ]


@pytest.mark.slow
def test_reproduce_experiment_smoke(tmp_path):
    """`experiments/reproduce/run.py --smoke` end to end on a fake documentation package."""
    import json

    run = _load_reproduce()
    out = tmp_path / "out"
    (out / "downloads").mkdir(parents=True)
    words = "quick brown lazy red small old new green tall quiet".split()

    def para(i: int) -> str:  # varied sentences, so the tasks find distinct distractors
        return " ".join(
            f"The {words[(i + j) % 10]} fox number {i * 7 + j} jumps over the {words[j % 10]} "
            f"dog near the river bank by the {words[(3 * i + j) % 10]} mill."
            for j in range(3)
        )

    sources = {f"doc{i}": f"Heading\n=======\n\n{para(i)}\n\n{para(i + 1)}\n" for i in range(60)}
    _fake_doc_deb(out / "downloads" / "python3.11-doc_0_all.deb", sources)
    run.main(["--smoke", "--out", str(out), "--only", "LlamaPro", "LoRA"])
    results = json.loads((out / "results.json").read_text())
    assert [r["strategy"] for r in results["rows"]] == ["LlamaPro", "LoRA"]
    assert "general_train_loss" in results["base"]
    for name in ("results.csv", "results.md", "results.png"):
        assert (out / name).stat().st_size > 0
