"""The experiments run end to end at toy sizes (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _cli(argv: list[str]) -> None:
    from blockexp.cli import main

    main(argv)


@pytest.mark.slow
def test_strategies_experiment_smoke(tmp_path, monkeypatch):
    """prepare.py, base.yaml and sweep.yaml end to end at toy sizes, two strategies."""
    import csv
    import importlib.util

    folder = REPO / "experiments/strategies"
    monkeypatch.chdir(tmp_path)  # the experiment's paths are relative to the working directory
    spec = importlib.util.spec_from_file_location("strategies_prepare", folder / "prepare.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    assert prepare.main([]) == {"general": 60, "domain": 60}
    _cli(["fit", "--config", str(folder / "base.yaml"), "--trainer.max_steps", "3"])
    assert (tmp_path / "outputs/experiments/strategies/base/config.json").is_file()
    _cli(
        ["sweep", "--config", str(folder / "sweep.yaml"), "--set", "trainer.max_steps=3"]
        + ["--only", "strategy-LlamaPro*", "--only", "strategy-LoRA*"]
    )
    out = tmp_path / "outputs/experiments/strategies/sweep/compare"
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert {r["group"] for r in rows} == {"strategy=LlamaPro", "strategy=LoRA"}
    assert (out / "gain_forgetting.png").stat().st_size > 0


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

    folder = REPO / "experiments/reproduce"
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("reproduce_prepare", folder / "prepare.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    return prepare


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
def test_reproduce_experiment_smoke(tmp_path, monkeypatch):
    """prepare.py --smoke, base.yaml and sweep.yaml end to end on a fake documentation package
    (two strategies, three seeds, a few steps; 300 documents, so the held-out prose pool holds
    more than one 256-token block)."""
    import csv

    prepare = _load_reproduce()
    monkeypatch.chdir(tmp_path)  # the experiment's paths are relative to the working directory
    out = tmp_path / "outputs/experiments/reproduce"
    (out / "downloads").mkdir(parents=True)
    words = "quick brown lazy red small old new green tall quiet".split()

    def para(i: int) -> str:  # varied sentences, so the tasks find distinct distractors
        return " ".join(
            f"The {words[(i + j) % 10]} fox number {i * 7 + j} jumps over the {words[j % 10]} "
            f"dog near the river bank by the {words[(3 * i + j) % 10]} mill."
            for j in range(3)
        )

    sources = {f"doc{i}": f"Heading\n=======\n\n{para(i)}\n\n{para(i + 1)}\n" for i in range(300)}
    _fake_doc_deb(out / "downloads" / "python3.11-doc_0_all.deb", sources)
    info = prepare.main(["--smoke"])
    assert info["tasks"] == ["repro_cloze", "repro_choice", "repro_complete", "repro_code_line"]
    folder = REPO / "experiments/reproduce"
    _cli(["fit", "--config", str(folder / "base.yaml"), "--trainer.max_steps", "3"])
    _cli(
        ["sweep", "--config", str(folder / "sweep.yaml"), "--set", "trainer.max_steps=2"]
        + ["--only", "strategy-LlamaPro*", "--only", "strategy-LoRA*"]
    )
    rows = list(csv.DictReader((out / "sweep/compare/summary.csv").open()))
    assert {r["group"] for r in rows} == {"strategy=LlamaPro", "strategy=LoRA"}
    metrics = {r["metric"] for r in rows}
    assert {"forgetting", "gain", "general/repro_code_line/end"} <= metrics, metrics
