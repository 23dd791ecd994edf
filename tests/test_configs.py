"""Every shipped config: recipes compose from their pieces and run one ``fast_dev_run`` step on
the CPU; every piece combines with a recipe; the composition rules give clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from blockexp.cli import main
from blockexp.training.cli import BlockexpCLI, expand_config_defaults

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
PIECE_DIRS = ("model", "expander", "data", "trainer", "strategy")
#: configs/eval/ holds evaluation presets for `blockexp eval --preset` (tests/test_lmeval.py)
RECIPES = sorted(
    p
    for p in CONFIGS.rglob("*.yaml")
    if p.relative_to(CONFIGS).parts[0] not in (*PIECE_DIRS, "eval")
)
PIECES = sorted(p for p in CONFIGS.rglob("*.yaml") if p.relative_to(CONFIGS).parts[0] in PIECE_DIRS)


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _merged(config: Path) -> dict:
    """The recipe's pieces and its own file merged (later files win), as the CLI applies them."""
    merged: dict = {}

    def merge(into: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    args = expand_config_defaults(["--config", str(config)])
    for path in args[1::2][: args.count("--config")]:
        merge(merged, yaml.safe_load(Path(path).read_text()) or {})
    return merged


def _smoke_args(config: Path, tmp_path: Path) -> list[str]:
    """Overrides that let a recipe for GPUs, hub models or the released TRACE data run one step
    here: a tiny random base of the same depth, the CPU, stand-in TRACE data, outputs in tmp."""
    merged = _merged(config)
    args = ["--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)]
    model = merged.get("model", {})
    if not isinstance(model.get("base"), dict):  # a hub id: a tiny Llama with as many layers
        layers = {"meta-llama/Llama-2-7b-hf": 32, "mistralai/Mistral-7B-v0.1": 32}[model["base"]]
        tiny = yaml.safe_load((CONFIGS / "model" / "tiny_llama.yaml").read_text())
        tiny["model"]["base"]["num_hidden_layers"] = layers
        piece = tmp_path / "tiny_base.yaml"
        piece.write_text(yaml.safe_dump(tiny))
        args += ["--config", str(piece)]
    if merged.get("trainer", {}).get("accelerator") == "gpu":
        args += ["--config", str(CONFIGS / "trainer" / "cpu.yaml"), "--trainer.strategy", "auto"]
    if model.get("output", {}).get("export_dir"):
        args += ["--model.output.export_dir", str(tmp_path / "model")]
    data = merged.get("data", {})
    root = data.get("init_args", {}).get("root")
    if data.get("class_path", "").endswith("TRACEDataModule") and not (REPO / root).is_dir():
        from make_trace_data import generate_trace_standins

        generate_trace_standins(tmp_path / "trace_data", train=4, eval=1, test=1)
        args += ["--data.init_args.root", str(tmp_path / "trace_data")]
    if data.get("init_args", {}).get("seq_len", 0) > 512:
        args += ["--data.init_args.seq_len", "256"]  # the quickstart corpus as a 4k-token stand-in
    return args


def test_recipes_and_pieces_are_found():
    assert {_rel(p) for p in RECIPES} >= {
        "configs/quickstart.yaml",
        "configs/llama_pro/llama2_7b_cpt.yaml",
        "configs/slayer/llama2_7b_cpt.yaml",
        "configs/slayer/mistral_7b_cpt.yaml",
        "configs/trace/llama_pro.yaml",
        "configs/trace/lora.yaml",
        "configs/trace/full_finetune.yaml",
        "configs/trace/micro.yaml",
    }
    for recipe in RECIPES:  # each starts with the command that runs it and names its pieces
        text = recipe.read_text()
        assert text.startswith(f"# python -m blockexp fit --config {_rel(recipe)}"), recipe
        assert "defaults:" in text, recipe
    for folder in PIECE_DIRS:
        assert any(p.parent.name == folder for p in PIECES), folder


@pytest.mark.parametrize("config", RECIPES, ids=_rel)
def test_every_recipe_runs_fast_dev_run(config, tmp_path, monkeypatch):
    # Run in a scratch directory: the recipes' relative output paths (outputs/...) land there,
    # and their data paths (data/quickstart/...) resolve through a link to the repository's.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(REPO / "data")
    main(["fit", "--config", str(config), *_smoke_args(config, tmp_path)])
    assert not (tmp_path / "model").exists() or any((tmp_path / "model").iterdir())


@pytest.mark.parametrize("piece", PIECES, ids=_rel)
def test_every_piece_combines_with_a_recipe(piece, monkeypatch):
    """Each piece overrides the quickstart recipe and still parses (hub bases are not loaded)."""
    monkeypatch.chdir(REPO)
    args = ["--config", str(CONFIGS / "quickstart.yaml"), "--config", str(piece)]
    parser_only = ["--trainer.logger", "false", "--print_config"]
    with pytest.raises(SystemExit) as exit_info:  # --print_config parses, prints and exits 0
        BlockexpCLI(args=[*args, *parser_only], run=False)
    assert exit_info.value.code in (0, None)


def test_composition_errors_are_clear(tmp_path):
    missing = tmp_path / "missing.yaml"
    missing.write_text("defaults:\n  - nowhere.yaml\n")
    with pytest.raises(
        FileNotFoundError, match=r"missing.yaml lists the default config 'nowhere.yaml'"
    ):
        expand_config_defaults(["--config", str(missing)])
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("defaults: [b.yaml]\n")
    b.write_text("defaults: [a.yaml]\n")
    with pytest.raises(ValueError, match="cycle"):
        expand_config_defaults(["--config", str(a)])
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: quickstart.yaml\n")
    with pytest.raises(ValueError, match="must be a list"):
        expand_config_defaults(["--config", str(bad)])
    # Without defaults nothing changes; with them, pieces come first and the result names none.
    plain = ["fit", "--config", str(CONFIGS / "model" / "tiny_llama.yaml"), "--x", "1"]
    assert expand_config_defaults(plain) == plain
    expanded = expand_config_defaults(["--config", str(CONFIGS / "quickstart.yaml")])
    assert expanded[-2:] == ["--defaults", "null"]
    assert expanded[1].endswith("configs/model/tiny_llama.yaml")
    assert expanded[-3].endswith("configs/quickstart.yaml")
