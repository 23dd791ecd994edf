"""Every shipped config: recipes compose from their pieces and run one ``fast_dev_run`` step on
the CPU, and print the config they printed before composing by group; every piece combines with a
recipe; ``group=option`` swaps a piece; the composition rules give clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from blockexp.cli import main
from blockexp.errors import UsageError
from blockexp.training.cli import BlockexpCLI
from blockexp.training.compose import GROUPS, compose_args, compose_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
PIECE_DIRS = GROUPS
#: The shipped recipes, by name: a config of your own dropped into configs/ is not tested here
#: (add it to this list to have it smoke-tested too). configs/eval/ holds evaluation presets
#: for `blockexp eval --preset` (tests/test_lmeval.py).
SHIPPED_RECIPES = (
    "quickstart.yaml",
    "llama_pro/llama2_7b_cpt.yaml",
    "slayer/llama2_7b_cpt.yaml",
    "slayer/mistral_7b_cpt.yaml",
    "trace/llama_pro.yaml",
    "trace/lora.yaml",
    "trace/full_finetune.yaml",
    "trace/micro.yaml",
)
SHIPPED_PIECES = {
    "data": ("micro_trace", "quickstart", "trace"),
    "expander": ("full_finetune", "llama_pro", "lora", "slayer"),
    "logger": ("csv", "tensorboard", "wandb"),
    "model": ("llama2_7b", "mistral_7b", "tiny_llama"),
    "strategy": ("ddp", "fsdp"),
    "trainer": ("cpu", "gpu8_bf16"),
}
RECIPES = [CONFIGS / name for name in SHIPPED_RECIPES]
PIECES = [CONFIGS / g / f"{o}.yaml" for g, options in SHIPPED_PIECES.items() for o in options]


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _smoke_args(config: Path, tmp_path: Path) -> list[str]:
    """Overrides that let a recipe for GPUs, hub models or the released TRACE data run one step
    here: a tiny random base of the same depth, the CPU, stand-in TRACE data, outputs in tmp."""
    merged = compose_config(config)  # the pieces and the recipe merged, as the CLI does
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
    for path in (*RECIPES, *PIECES):
        assert path.is_file(), f"{_rel(path)} is listed as shipped but missing"
    assert set(PIECE_DIRS) == set(SHIPPED_PIECES)
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
    """Each piece, chosen as ``group=option``, overrides the quickstart recipe's and still parses
    (hub bases are not loaded; a piece may interpolate keys the recipe sets)."""
    monkeypatch.chdir(REPO)
    args = ["--config", str(CONFIGS / "quickstart.yaml"), f"{piece.parent.name}={piece.stem}"]
    parser_only = ["--trainer.logger", "false", "--print_config"]
    with pytest.raises(SystemExit) as exit_info:  # --print_config parses, prints and exits 0
        BlockexpCLI(args=[*args, *parser_only], run=False)
    assert exit_info.value.code in (0, None)


# ----------------------------------------------------------------- the printed config
#: tests/data/print_config/<name>.yaml: `fit ARGS --print_config` before configs composed by group
#: (the old `defaults:` expander), class paths as moved by Architecture v2 step 1; compared as
#: mappings after the one key rename, the module settings grouped (`_grouped`)
PRINTED = {
    "configs_quickstart": ["--config", "configs/quickstart.yaml"],
    "configs_trace_llama_pro": ["--config", "configs/trace/llama_pro.yaml"],
    "configs_trace_lora": ["--config", "configs/trace/lora.yaml"],
    "configs_trace_full_finetune": ["--config", "configs/trace/full_finetune.yaml"],
    "configs_trace_micro": ["--config", "configs/trace/micro.yaml"],
    "configs_llama_pro_llama2_7b_cpt": ["--config", "configs/llama_pro/llama2_7b_cpt.yaml"],
    "configs_slayer_llama2_7b_cpt": ["--config", "configs/slayer/llama2_7b_cpt.yaml"],
    "configs_slayer_mistral_7b_cpt": ["--config", "configs/slayer/mistral_7b_cpt.yaml"],
    "configs_strategy_ddp": ["--config", "configs/quickstart.yaml", "--config", "configs/strategy/ddp.yaml"],
    "configs_strategy_fsdp": ["--config", "configs/quickstart.yaml", "--config", "configs/strategy/fsdp.yaml"],
    # the same, with the strategy chosen as a group
    "configs_strategy_ddp (strategy=ddp)": ["--config", "configs/quickstart.yaml", "strategy=ddp"],
    "configs_strategy_fsdp (strategy=fsdp)": ["--config", "configs/quickstart.yaml", "strategy=fsdp"],
}  # fmt: skip


def _normal(printed: str) -> str:
    """``printed`` without the Lightning version line."""
    return re.sub(r"\A# lightning\.pytorch==\S+\n", "", printed)


def _printed(args: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # --print_config parses, prints and exits 0
        BlockexpCLI(args=["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def _grouped(printed: dict) -> dict:
    """A config printed before the module's settings were grouped, with its flat ``model`` keys
    moved into their groups (``model.lr`` -> ``model.optim.lr``): the only renames of keys."""
    import dataclasses

    from blockexp.training.settings import GROUPS

    group_of = {f.name: group for group, cls in GROUPS.items() for f in dataclasses.fields(cls)}
    model = {}
    for key, value in printed["model"].items():
        if key in group_of:
            model.setdefault(group_of[key], {})[key] = value
        else:
            model[key] = value
    return {**printed, "model": model}


@pytest.mark.parametrize("name", PRINTED)
def test_print_config_is_unchanged(name, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    expected = (REPO / "tests/data/print_config" / f"{name.split()[0]}.yaml").read_text()
    printed = _printed(PRINTED[name], capsys)
    now = yaml.safe_load(_normal(printed))
    assert now == _grouped(yaml.safe_load(_normal(expected)))
    # ... and it reads back: `fit --config printed.yaml --print_config` prints the same config
    assert "Unable to serialize" not in printed
    again = tmp_path / "printed.yaml"
    again.write_text(printed)
    assert _printed(["--config", str(again)], capsys) == printed


def test_printed_config_runs_and_checkpoints_stay_atomic(capsys, monkeypatch, tmp_path):
    """`fit --print_config > c.yaml && fit --config c.yaml` trains; checkpoints are still written
    by AtomicCheckpointIO though the printed config names no plugin."""
    from blockexp.training.checkpoint_io import AtomicCheckpointIO

    monkeypatch.chdir(REPO)
    printed = _printed(["--config", "configs/quickstart.yaml"], capsys)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(REPO / "data")
    (tmp_path / "c.yaml").write_text(printed)
    cli = main(["fit", "--config", "c.yaml", "--trainer.fast_dev_run", "true"])
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert (tmp_path / "outputs/quickstart/model/config.json").is_file()


# ------------------------------------------------------------------------ group overrides
def test_group_override_swaps_a_piece(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    trace = CONFIGS / "trace"
    # llama_pro.yaml with LoRA is lora.yaml but for its learning rate, batch (TRACE's LoRA
    # script's: docs/trace.md) and output directory
    swapped = compose_config(trace / "llama_pro.yaml", {"expander": "lora"})
    lora = compose_config(trace / "lora.yaml")
    assert [c["data"]["init_args"]["global_batch_size"] for c in (swapped, lora)] == [256, 32]
    for config in (swapped, lora):
        config["model"]["optim"].pop("lr")
        for key in ("batch_size", "global_batch_size"):
            config["data"]["init_args"].pop(key)
        config["trainer"].pop("default_root_dir")
        config["trainer"]["logger"]["init_args"].pop("save_dir")
        config["trainer"]["callbacks"][0]["init_args"].pop("dirpath")
    assert swapped == lora
    # nested: the Mistral recipe builds on the Llama-2 one, whose data the override replaces
    mistral = compose_config(CONFIGS / "slayer/mistral_7b_cpt.yaml", {"model": "tiny_llama"})
    assert mistral["model"]["base"]["model_type"] == "llama"
    assert mistral["model"]["output"]["export_dir"] == "outputs/slayer/mistral_7b/model"
    # on the command line, anywhere after the command; the printed config has LoRA's options
    out = _printed(["expander=lora", "--config", str(trace / "llama_pro.yaml")], capsys)
    printed = yaml.safe_load(out)
    assert printed["model"]["expander"]["class_path"] == "blockexp.expanders.LoRA"
    assert printed["model"]["expander"]["init_args"]["r"] == 8
    assert printed["trainer"]["default_root_dir"] == "outputs/trace/llama_pro"


def test_interpolations_write_an_output_directory_once():
    quickstart = compose_config(CONFIGS / "quickstart.yaml")
    trainer = quickstart["trainer"]
    assert trainer["default_root_dir"] == "outputs/quickstart"
    assert trainer["logger"]["init_args"]["save_dir"] == "outputs/quickstart"
    assert trainer["callbacks"][0]["init_args"]["dirpath"] == "outputs/quickstart/checkpoints"
    assert quickstart["model"]["output"]["export_dir"] == "outputs/quickstart/model"
    for recipe in RECIPES:  # each recipe names its output directory once
        lines = [line.split("#")[0] for line in recipe.read_text().splitlines()]
        assert "".join(lines).count("outputs/") == 1, recipe


def test_command_line_composition_keeps_other_arguments(tmp_path):
    plain = ["fit", "--config", str(CONFIGS / "model" / "tiny_llama.yaml"), "--x", "a=b"]
    assert compose_args(plain) == (plain, plain)  # no defaults, no interpolation: untouched
    args = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), "expander=lora", "--y", "1"]
    parsed, sources = compose_args(args)
    assert parsed[:2] == ["fit", "--config"] and parsed[3:] == ["--y", "1"]
    assert yaml.safe_load(parsed[2])["model"]["expander"]["class_path"].endswith("LoRA")
    # error messages read the files merged, in order (a key set in a piece names the piece)
    assert sources[-2:] == ["--y", "1"]
    files = [Path(f).relative_to(REPO).as_posix() for f in sources[2:-2:2]]
    assert files == [
        "configs/model/tiny_llama.yaml",
        "configs/expander/lora.yaml",
        "configs/data/quickstart.yaml",
        "configs/trainer/cpu.yaml",
        "configs/logger/tensorboard.yaml",
        "configs/quickstart.yaml",
    ]
    inline, _ = compose_args([f"--config={CONFIGS / 'quickstart.yaml'}"])
    assert inline[0].startswith("--config=") and "defaults" not in yaml.safe_load(inline[0][9:])


# ------------------------------------------------------------------------------- errors
def _fails(tmp_path: Path, files: dict[str, str], args: list[str], *parts: str) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(UsageError) as info:
        compose_args(args)
    message = str(info.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)


def test_unknown_group_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    quickstart = str(CONFIGS / "quickstart.yaml")
    _fails(
        tmp_path,
        {},
        ["--config", quickstart, "expandr=lora"],
        "unknown config group 'expandr'",
        "did you mean expander?",
        "groups: data, expander, logger, model, strategy, trainer",
    )
    _fails(
        tmp_path,
        {"r.yaml": "defaults:\n  - optim: adamw\n"},
        ["--config", str(tmp_path / "r.yaml")],
        "r.yaml: unknown config group 'optim' in `defaults`",
        "groups: data, expander",
    )
    # after an option, `name=value` is that option's value
    assert compose_args(["--config", quickstart, "--x", "expandr=lora"])[0][-1] == "expandr=lora"


def test_unknown_option_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    quickstart = str(CONFIGS / "quickstart.yaml")
    _fails(
        tmp_path,
        {},
        ["--config", quickstart, "expander=lorra"],
        "expander=lorra: no config 'lorra' in group 'expander'",
        "did you mean lora?",
        "options in configs/expander/: full_finetune, llama_pro, lora, slayer",
    )
    _fails(
        tmp_path,
        {"r.yaml": "defaults:\n  - model: tiny\n"},
        ["--config", str(tmp_path / "r.yaml")],
        "r.yaml (defaults: model: tiny): no config 'tiny' in group 'model'",
        "tiny_llama",
    )
    # a group with no folder, and overrides without a config that names groups
    monkeypatch.chdir(tmp_path)
    _fails(
        tmp_path,
        {"s.yaml": "defaults:\n  - strategy: ddp\n"},
        ["--config", str(tmp_path / "s.yaml")],
        "no strategy/ folder above",
    )
    _fails(
        tmp_path,
        {"p.yaml": "trainer: {max_steps: 1}\n"},
        ["--config", "p.yaml", "model=tiny_llama"],
        "model=tiny_llama: no --config names config groups",
    )


def test_missing_file_is_a_clear_error(tmp_path):
    _fails(
        tmp_path,
        {"missing.yaml": "defaults:\n  - nowhere.yaml\n"},
        ["--config", str(tmp_path / "missing.yaml")],
        "missing.yaml lists the default config 'nowhere.yaml', which does not exist",
    )


def test_cycle_is_a_clear_error(tmp_path):
    _fails(
        tmp_path,
        {"a.yaml": "defaults: [b.yaml]\n", "b.yaml": "defaults: [a.yaml]\n"},
        ["--config", str(tmp_path / "a.yaml")],
        "config defaults form a cycle:",
        "a.yaml -> ",
        "b.yaml -> ",
    )
    # a group file that builds on itself
    _fails(
        tmp_path,
        {"model/x.yaml": "defaults:\n  - model: x\n", "r.yaml": "defaults: [{model: x}]\n"},
        ["--config", str(tmp_path / "r.yaml")],
        "cycle",
        "x.yaml -> ",
    )


def test_malformed_yaml_is_a_clear_error(tmp_path):
    _fails(
        tmp_path,
        {"bad.yaml": "trainer:\n  max_steps: [1\n"},
        ["--config", str(tmp_path / "bad.yaml")],
        "bad.yaml:",
        "invalid YAML",
    )
    _fails(
        tmp_path,
        {"piece.yaml": "model: {a: 1\n", "r.yaml": "defaults: [piece.yaml]\n"},
        ["--config", str(tmp_path / "r.yaml")],
        "piece.yaml:",
        "invalid YAML",
    )
    _fails(
        tmp_path,
        {"list.yaml": "- a\n- b\n", "r2.yaml": "defaults: [list.yaml]\n"},
        ["--config", str(tmp_path / "r2.yaml")],
        "list.yaml: a config file holds keys",
    )
    _fails(
        tmp_path,
        {"d.yaml": "defaults: quickstart.yaml\n"},
        ["--config", str(tmp_path / "d.yaml")],
        "d.yaml: `defaults` must be a list",
    )
    _fails(
        tmp_path,
        {"e.yaml": "defaults:\n  - [1, 2]\n"},
        ["--config", str(tmp_path / "e.yaml")],
        "e.yaml: each `defaults` entry is `group: option`",
    )
    _fails(
        tmp_path,
        {"i.yaml": "trainer:\n  default_root_dir: ${run_dir}/x\n"},
        ["--config", str(tmp_path / "i.yaml")],
        "i.yaml: an interpolation does not resolve",
        "run_dir",
    )


def test_errors_reach_the_command_line_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/trace/llama_pro.yaml", "expander=lorra"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: expander=lorra: no config 'lorra' in group 'expander'")
    # an unknown key in a piece names the piece, as before
    piece = tmp_path / "model" / "typo.yaml"
    piece.parent.mkdir()
    piece.write_text("model:\n  lrr: 1.0\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"defaults:\n  - {CONFIGS / 'quickstart.yaml'}\n  - model: typo\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(recipe)])
    line = capsys.readouterr().err.splitlines()[0]
    assert "'model.lrr'" in line and str(piece) in line, line


def test_one_flag_moves_every_output_of_a_run(capsys, monkeypatch, tmp_path):
    """`--trainer.default_root_dir DIR` (either spelling) moves the checkpoints, the logs and the
    export that the recipe builds on it, as the run-directory error message promises."""
    monkeypatch.chdir(REPO)
    for flag in (
        ["--trainer.default_root_dir", str(tmp_path)],
        [f"--trainer.default_root_dir={tmp_path}"],
    ):
        printed = yaml.safe_load(_printed(["--config", "configs/quickstart.yaml", *flag], capsys))
        trainer = printed["trainer"]
        assert trainer["default_root_dir"] == str(tmp_path)
        assert trainer["callbacks"][0]["init_args"]["dirpath"] == f"{tmp_path}/checkpoints"
        assert trainer["logger"]["init_args"]["save_dir"] == str(tmp_path)
        assert printed["model"]["output"]["export_dir"] == f"{tmp_path}/model"
    # an option no interpolation refers to is left to the parser alone
    printed = yaml.safe_load(
        _printed(["--config", "configs/quickstart.yaml", "--trainer.max_steps", "3"], capsys)
    )
    assert printed["trainer"]["max_steps"] == 3
