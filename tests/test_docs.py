"""The walk-throughs of docs/strategies.md and docs/data.md run as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _walkthrough(doc: str, name: str, lang: str = "python") -> str:
    """The ``lang`` code block of ``doc`` that starts with ``# walkthrough: <name>``."""
    blocks = re.findall(rf"```{lang}\n(.*?)```", (REPO / "docs" / doc).read_text(), re.S)
    found = [b for b in blocks if b.startswith(f"# walkthrough: {name}\n")]
    assert len(found) == 1, f"{doc} must hold one '# walkthrough: {name}' {lang} block"
    return found[0]


@pytest.fixture
def middle_stack():
    """The strategy of docs/strategies.md, registered for the test and removed afterwards."""
    import sys
    import types

    from blockexp.expanders.registry import unregister_expander

    # As the walk-through says: a new module of blockexp/expanders/ (here made in memory).
    name = "blockexp.expanders.middle_stack"
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(_walkthrough("strategies.md", "strategies"), name, "exec"), module.__dict__)
    try:
        yield module.MiddleStack
    finally:
        unregister_expander("MiddleStack")
        sys.modules.pop(name, None)


def test_strategy_walkthrough(middle_stack, tiny_llama, tmp_path, capsys):
    from blockexp.cli import main
    from blockexp.expanders import (
        Expander,
        ExpanderConfigError,
        get_expander,
        register_expander,
    )

    assert get_expander("MiddleStack") is middle_stack  # registered by name
    expander = middle_stack(num_blocks=2)
    plan = expander.plan(4)
    assert [s.describe() for s in plan.layers] == [
        "base(0)",
        "base(1)",
        "copy(1)+zero",
        "copy(1)+zero",
        "base(2)",
        "base(3)",
    ]
    # Identity at initialisation, as it declares.
    base = tiny_llama(4)
    model = tiny_llama(4)
    expansion = expander.expand(model)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids).logits - base(ids).logits).abs().max() <= 1e-5
    assert {n.split(".")[2] for n in expansion.trainable} == {"2", "3"}
    # `plan` from a config alone and `expand` (streamed) work with it by name.
    base.save_pretrained(tmp_path / "base", safe_serialization=True)
    capsys.readouterr()
    by_name = ["--expander", "MiddleStack", "--expander.num_blocks", "2"]
    main(["plan", "--base", str(tmp_path / "base" / "config.json"), *by_name, "--json"])
    planned = json.loads(capsys.readouterr().out)
    assert planned["num_layers"] == 6 and [s["init"] for s in planned["layers"]].count("copy") == 2
    main(
        [
            "expand",
            "--base",
            str(tmp_path / "base"),
            "--out",
            str(tmp_path / "out"),
            "--expander",
            "MiddleStack",
            "--expander.num_blocks",
            "2",
        ]
    )
    manifest = json.loads((tmp_path / "out" / "blockexp_manifest.json").read_text())
    assert manifest["streamed"] is True and manifest["num_layers"] == 6
    # A declaration that contradicts the code is refused at registration.
    with pytest.raises(ExpanderConfigError, match="overrides expand"):

        @register_expander
        class Liar(Expander):
            streamable = True

            def plan(self, num_layers):
                return None

            def expand(self, model):
                return super().expand(model)


@pytest.fixture
def qa_project(tmp_path, monkeypatch):
    """A scratch project as docs/data.md lays it out: ``my_project/qa.py`` (the walk-through's
    DataModule file, importable as with ``PYTHONPATH=.``), ``data/qa.jsonl`` and ``configs/``;
    the working directory is the project root. Yields the imported module."""
    import importlib
    import sys

    (tmp_path / "my_project").mkdir()
    (tmp_path / "my_project" / "qa.py").write_text(_walkthrough("data.md", "data"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "qa.jsonl").write_text(
        "\n".join(json.dumps({"question": f"{i}+1=", "answer": str(i + 1)}) for i in range(16))
        + "\n"
    )
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield importlib.import_module("my_project.qa")
    finally:
        for name in ("my_project.qa", "my_project"):
            sys.modules.pop(name, None)


def test_data_walkthrough(qa_project, tmp_path, make_trainer):
    from blockexp.data.collate import IGNORE_INDEX
    from blockexp.data.loader import ResumableDataLoader
    from blockexp.data.records import DataError
    from blockexp.expanders import LlamaPro
    from blockexp.training.module import BlockExpansionModule
    from tests.conftest import tiny_llama_dict

    QADataModule = qa_project.QADataModule
    path = tmp_path / "data" / "qa.jsonl"
    dm = QADataModule(str(path), max_length=32, batch_size=4)
    dm.setup()
    example = dm.train_dataset[3]
    trained = [
        t
        for t, lab in zip(example["input_ids"].tolist(), example["labels"].tolist(), strict=True)
        if lab != IGNORE_INDEX
    ]
    assert dm.tokenizer.decode(trained) == "4</s>"  # the answer and eos, nothing else
    assert isinstance(dm.train_dataloader(), ResumableDataLoader)
    module = BlockExpansionModule(
        base=tiny_llama_dict(2), expander=LlamaPro(num_groups=1), validate_before_fit=False
    )
    trainer = make_trainer(tmp_path, 2)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2
    path.write_text('{"question": "a"}\n')
    with pytest.raises(DataError, match=r"qa\.jsonl:1: expected 'question' and 'answer'"):
        QADataModule(str(path)).setup()


def test_data_walkthrough_config_and_command_train(qa_project, tmp_path, capsys):
    """The walk-through's config and command, run as written (2 steps instead of 200)."""
    import shlex

    from blockexp.cli import main

    (tmp_path / "qa.yaml").write_text(_walkthrough("data.md", "data config", "yaml"))
    command = shlex.split(_walkthrough("data.md", "data command", "bash"), comments=True)
    prefix = ["PYTHONPATH=.", "python", "-m", "blockexp"]
    assert command[: len(prefix)] == prefix, command
    main([*command[len(prefix) :], "--trainer.max_steps", "2"])
    out = capsys.readouterr().out
    assert "blockexp summary" in out and "val loss before" in out
    checkpoints = sorted(tmp_path.glob("tb/version_0/checkpoints/*.ckpt"))
    assert [p.name for p in checkpoints] == ["epoch=0-step=2.ckpt"]
    ckpt = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
