"""Start-up of ``python -m blockexp``: what each command imports (structure, not timing).

``--help``, ``plan`` and streaming ``expand`` must not import Lightning, and neither torch nor
transformers' modelling code (``benchmarks/startup.py`` times them; ``plan`` on a bare
config.json: ``tests/test_plan_config_only.py``); every offline command is Lightning-free.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from blockexp.expanders import FullFineTune, LlamaPro, PrefixStack, SLayer
from blockexp.expanders.dry_run import plan_summary
from blockexp.io import planning, streaming
from tests.conftest import ARCH_CONFIGS, make_arch_model

REPO = Path(__file__).resolve().parents[1]
LIGHTNING = {"lightning", "pytorch_lightning", "lightning_fabric"}
MODEL_STACK = {"torch", "transformers"}


def run_imports(*args: str) -> tuple[set[str], str]:
    """Top-level packages imported by ``python -X importtime -m blockexp *args`` (which must
    succeed), and its stdout."""
    cmd = [sys.executable, "-X", "importtime", "-m", "blockexp", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    modules = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return modules, result.stdout


def imported(*args: str) -> set[str]:
    """Top-level packages imported by ``python -X importtime -m blockexp *args``."""
    return run_imports(*args)[0]


@pytest.fixture
def checkpoint(tmp_path, tiny_llama_dir):
    """A local safetensors checkpoint and a plan config for it."""
    config = tmp_path / "plan.yaml"
    config.write_text(
        f"base: {tiny_llama_dir}\n"
        "expander:\n  class_path: LlamaPro\n  init_args:\n    num_groups: 2\n"
    )
    return tiny_llama_dir, config


def test_help_plan_and_streaming_expand_import_neither_lightning_nor_torch(checkpoint, tmp_path):
    base, config = checkpoint
    runs = {
        "--help": imported("--help"),
        "plan": imported("plan", "--json", "--config", str(config)),
        "expand": imported(
            "expand",
            "--base",
            str(base),
            "--out",
            str(tmp_path / "out"),
            "--expander",
            "LlamaPro",
            "--expander.num_groups",
            "2",
        ),
    }
    assert (tmp_path / "out" / "model.safetensors").is_file()
    for name, modules in runs.items():
        assert not modules & LIGHTNING, (name, sorted(modules & LIGHTNING))
        assert not modules & MODEL_STACK, (
            f"`python -m blockexp {name}` imports {sorted(modules & MODEL_STACK)}: something on "
            "its path imports torch or transformers at module level (import it inside the function "
            "that needs it)"
        )


def test_help_imports_only_the_command_wiring():
    """``--help`` prints the usage before anything else of blockexp is imported."""
    cmd = [sys.executable, "-X", "importtime", "-m", "blockexp", "--help"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    ours = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "| " in line
    }
    ours = {name for name in ours if name.split(".")[0] == "blockexp"}
    allowed = {
        "blockexp",
        "blockexp.__main__",
        "blockexp.cli",
        "blockexp.errors",
        "blockexp.console",
    }
    assert ours <= allowed, ours


@pytest.mark.parametrize("command", ["importance", "eval", "export", "expand"])
def test_offline_commands_do_not_import_lightning(command):
    assert not imported(command, "--help") & LIGHTNING


def test_plan_on_the_meta_model_does_without_lightning(tmp_path):
    """LoRA's parameters are counted on the model (built on the meta device), without Lightning;
    a plan-described strategy on the same config.json builds nothing
    (``tests/test_plan_config_only.py``)."""
    (tmp_path / "config.json").write_text(json.dumps(ARCH_CONFIGS["llama"]))
    modules = imported("plan", "--base", str(tmp_path), "--expander", "LoRA")
    assert not modules & LIGHTNING
    assert "torch" in modules  # the meta-device model


@pytest.mark.parametrize("config", [None, "class_path"], ids=["argv", "config_file"])
def test_every_strategy_is_registered_without_torch(tmp_path, config):
    """Every strategy registers without torch (no deferral): naming MoE on the command line or in
    a config works, and the registry maps each name to ``module:Class``."""
    (tmp_path / "config.json").write_text(json.dumps(ARCH_CONFIGS["llama"]))
    args = ["plan", "--base", str(tmp_path), "--json"]
    if config is None:
        args += ["--expander", "MoEExpansion"]
    else:
        (tmp_path / "plan.yaml").write_text("expander:\n  class_path: MoEExpansion\n")
        args += ["--config", str(tmp_path / "plan.yaml")]
    result = subprocess.run(
        [sys.executable, "-m", "blockexp", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["strategy"] == "MoEExpansion"


def test_importing_the_strategies_imports_neither_torch_nor_lightning():
    code = (
        "import sys, blockexp, blockexp.cli; from blockexp.expanders import expander_names; "
        "from blockexp.expanders.registry import _TARGETS; "
        "assert not {m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'transformers', 'lightning', 'pytorch_lightning'}, 'heavy import'; "
        "from blockexp.expanders import LlamaPro, Expander; from blockexp.layers import Plan; "
        "print(' '.join(f'{n}={_TARGETS[n]}' for n in expander_names()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]
    targets = dict(item.split("=") for item in result.stdout.split())
    assert targets["LlamaPro"] == "blockexp.expanders.llama_pro:LlamaPro"
    assert targets["MoEExpansion"] == "blockexp.expanders.moe:MoEExpansion"
    assert len(targets) == 7


@pytest.mark.parametrize("model_type", sorted(ARCH_CONFIGS))
def test_plan_from_safetensors_headers_equals_the_meta_model(tmp_path, model_type):
    """``plan`` on a local checkpoint reads the headers (no torch): same numbers as the model."""
    make_arch_model(model_type).save_pretrained(tmp_path)
    expanders = [
        LlamaPro(num_groups=2, train_embeddings=True, train_lm_head=True),
        SLayer(num_deleted=0),
        PrefixStack(num_blocks=1, train_norms=True),
        FullFineTune(),
    ]
    for expander in expanders:
        assert planning.cannot_plan(expander, tmp_path) is None
        assert planning.plan_summary(tmp_path, expander) == plan_summary(str(tmp_path), expander), (
            model_type,
            expander,
        )


def test_plan_counts_are_what_expand_writes(tiny_llama_dir, tmp_path):
    expander = SLayer(num_deleted=0, train_norms=True)
    summary = planning.plan_summary(tiny_llama_dir, expander)
    manifest = streaming.stream_expand(tiny_llama_dir, tmp_path / "out", expander)
    for key in ("base_num_layers", "base_params", "num_layers", "total_params"):
        assert summary[key] == manifest[key], key
    assert summary["trainable_params"] == manifest["trainable_params"]
    with pytest.raises(streaming.StreamingError, match="has no config.json"):
        planning.plan_summary(tmp_path / "missing", expander)


def test_a_strategy_registered_by_path_is_imported_when_named(tmp_path, monkeypatch, capsys):
    """``register_expander("Name", "module:Class")`` imports nothing until a command runs; then
    ``--expander Name`` finds the class."""
    import sys

    from blockexp.cli import main
    from blockexp.expanders.registry import (
        expander_names,
        register_expander,
        unregister_expander,
    )

    (tmp_path / "my_strategies.py").write_text(
        "from blockexp.expanders import Expander\n"
        "from blockexp.layers import LayerSpec, Plan\n\n\n"
        "class TopCopy(Expander):\n"
        "    streamable = True\n"
        "    preserves_function = True\n\n"
        "    def plan(self, num_layers):\n"
        "        specs = [LayerSpec(0, (i,), 'base') for i in range(num_layers)]\n"
        "        top = LayerSpec(0, (num_layers - 1,), 'copy', zero_out=True, trainable=True)\n"
        "        return Plan.from_groups(num_layers, [specs, [top]], strategy='TopCopy')\n"
    )
    (tmp_path / "config.json").write_text(json.dumps(ARCH_CONFIGS["llama"]))
    monkeypatch.syspath_prepend(str(tmp_path))
    register_expander("TopCopy", "my_strategies:TopCopy")
    try:
        assert "TopCopy" in expander_names() and "my_strategies" not in sys.modules
        main(["plan", "--base", str(tmp_path), "--json", "--expander", "TopCopy"])
        summary = json.loads(capsys.readouterr().out)
        assert summary["strategy"] == "TopCopy"
        assert summary["num_layers"] == summary["base_num_layers"] + 1
    finally:
        unregister_expander("TopCopy")
        sys.modules.pop("my_strategies", None)


def test_fit_help_is_short_and_full_help_is_one_flag_away():
    """`fit --help` is one page without Lightning; `--help-all` is LightningCLI's every option."""
    short = subprocess.run(
        [sys.executable, "-m", "blockexp", "fit", "--help"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert short.returncode == 0 and short.stderr == ""
    lines = short.stdout.splitlines()
    assert lines[0].startswith("usage: python -m blockexp fit --config FILE")
    assert len(lines) <= 30 and max(map(len, lines)) <= 100
    assert "python -m blockexp fit --help-all" in short.stdout
    assert not imported("fit", "--help") & (LIGHTNING | MODEL_STACK)
    full = subprocess.run(
        [sys.executable, "-m", "blockexp", "fit", "--help-all"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert full.returncode == 0
    assert "--trainer.max_steps" in full.stdout and len(full.stdout.splitlines()) > 300
