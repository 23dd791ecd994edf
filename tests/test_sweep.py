"""``blockexp sweep``: cells from a grid, run in-process, by worker processes and by submitit's
local executor; finished cells skipped, killed ones resumed bitwise, failed ones recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from blockexp.cli import main
from blockexp.errors import UsageError
from blockexp.sweep.cell import read_state
from blockexp.sweep.grid import expand_grid

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "tests/data/sweep/recipe.yaml"
HELDOUT = {
    "corpora": {
        "general": "data/quickstart/general.jsonl",
        "domain": "data/quickstart/domain.jsonl",
    },
    "forgetting": "general",
    "gain": "domain",
    "seq_len": 32,
    "max_blocks": 4,
}
LORA = {"model.expander": {"class_path": "blockexp.expanders.LoRA", "init_args": {"r": 2}}}


def _sweep_file(tmp_path: Path, name: str = "tiny", **extra) -> Path:
    spec = {
        "name": name,
        "recipe": str(RECIPE),
        "out": str(tmp_path / name),
        "grid": {"strategy": {"LlamaPro": {}, "LoRA": LORA}, "seed": [0, 1]},
        "evaluate": {"heldout": HELDOUT},
        "reference": {"strategy": "LlamaPro"},
        "checkpoint_every": 2,
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _after(out: Path) -> dict[str, tuple]:
    """Each cell's held-out losses after training and its last train loss."""
    found = {}
    for cell in sorted((out / "cells").iterdir()):
        held = json.loads((cell / "heldout/heldout.json").read_text())["corpora"]
        state = read_state(cell)
        found[cell.name] = (
            tuple(held[k]["after"] for k in sorted(held)),
            state["metrics"]["train_loss"],
            state["metrics"]["global_step"],
        )
    return found


def _one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: "), err
    return err[0]


def test_grid_expands_in_file_order_with_readable_ids():
    cells = expand_grid(
        {
            "strategy": {"A": {"expander": "lora"}, "B x": {}},
            "seed": [0, 1],
            "model.optim.lr": [0.1],
        },
        {"trainer.max_steps": 5},
        "s.yaml",
    )
    assert [c.id for c in cells] == [
        "strategy-A__seed-0__lr-0.1",
        "strategy-A__seed-1__lr-0.1",
        "strategy-B_x__seed-0__lr-0.1",
        "strategy-B_x__seed-1__lr-0.1",
    ]
    assert cells[1].overrides == {
        "trainer.max_steps": 5,
        "expander": "lora",
        "seed": 1,
        "model.optim.lr": 0.1,
    }
    assert cells[1].params == {"strategy": "A", "seed": 1, "model.optim.lr": 0.1}
    with pytest.raises(UsageError, match="same directory name"):
        expand_grid({"strategy": {"a b": {}, "a_b": {}}}, {}, "s.yaml")


def test_bad_sweep_files_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    bad = tmp_path / "bad.yaml"
    cases = {
        "grdi: {}\nrecipe: r.yaml": "unknown key 'grdi' (did you mean grid?)",
        "name: x": "no `recipe:`",
        "recipe: nothere.yaml": "recipe 'nothere.yaml' does not exist",
        f"recipe: {RECIPE}\nlauncher: slrum": "unknown launcher 'slrum'",
        f"recipe: {RECIPE}\nevaluate: {{heldot: {{}}}}": "unknown evaluation 'heldot'",
        f"recipe: {RECIPE}\ngrid: {{seed: 3}}": "grid.seed is a non-empty list",
        "recipe: r.yaml\ngrid: [1\n": "bad.yaml:3: invalid YAML",
    }
    for text, message in cases.items():
        bad.write_text(text)
        line = _one_line_error(capsys, ["sweep", "--config", str(bad), "--dry_run"])
        assert message in line, (text, line)
    line = _one_line_error(capsys, ["sweep", "--config", str(tmp_path / "none.yaml")])
    assert "does not exist" in line


def test_cell_configs_follow_the_cell(tmp_path, monkeypatch):
    """Overrides reach init_args, the seed seeds the data too, outputs follow the cell."""
    monkeypatch.chdir(REPO)
    path = _sweep_file(
        tmp_path,
        grid={"model.expander.num_groups": [1, 2], "seed": [3]},
        set={"model.output.export_dir": "${trainer.default_root_dir}/model"},
    )
    main(["sweep", "--config", str(path), "--dry_run"])
    cell = tmp_path / "tiny/cells/num_groups-2__seed-3"
    config = yaml.safe_load((cell / "cell.yaml").read_text())
    assert config["model"]["expander"]["init_args"] == {"num_groups": 2}
    assert config["seed_everything"] == 3 and config["data"]["init_args"]["seed"] == 3
    assert config["model"]["seed"] == 3
    assert config["model"]["output"]["export_dir"] == f"{cell}/model"
    logger = config["trainer"]["logger"]["init_args"]
    assert logger["save_dir"] == str(cell) and logger["version"] == ""
    names = [cb["class_path"].rsplit(".", 1)[1] for cb in config["trainer"]["callbacks"]]
    assert names == ["ModelCheckpoint", "HeldoutLoss", "TrackParams"]
    assert read_state(cell)["status"] == "pending"


def test_outputs_outside_the_cell_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    path = _sweep_file(tmp_path, set={"model.output.export_dir": str(tmp_path / "shared")})
    line = _one_line_error(capsys, ["sweep", "--config", str(path), "--dry_run"])
    assert "model.output.export_dir" in line and "outside the cell directory" in line


def test_sweep_runs_skips_finished_cells_and_refuses_changed_ones(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    path = _sweep_file(tmp_path)
    main(["sweep", "--config", str(path)])
    out = tmp_path / "tiny"
    states = {c.name: read_state(c) for c in (out / "cells").iterdir()}
    assert sorted(states) == [
        "strategy-LlamaPro__seed-0",
        "strategy-LlamaPro__seed-1",
        "strategy-LoRA__seed-0",
        "strategy-LoRA__seed-1",
    ]
    assert all(s["status"] == "done" and s["attempts"] == 1 for s in states.values())
    after = _after(out)
    # the seed changes the run (data order), even for LLaMA Pro's deterministic init
    assert after["strategy-LlamaPro__seed-0"] != after["strategy-LlamaPro__seed-1"]
    summary = (out / "compare/summary.csv").read_text()
    assert "strategy=LlamaPro" in summary and "strategy=LoRA" in summary
    assert (out / "compare/paired.csv").is_file() and (
        out / "compare/gain_forgetting.png"
    ).is_file()
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["axes"] == {"strategy": ["LlamaPro", "LoRA"], "seed": [0, 1]}

    capsys.readouterr()
    main(["sweep", "--config", str(path), "--compare", "false"])
    assert "(4 done, 0 to run" in capsys.readouterr().out
    assert all(read_state(c)["attempts"] == 1 for c in (out / "cells").iterdir())

    line = _one_line_error(capsys, ["sweep", "--config", str(path), "--set", "trainer.max_steps=7"])
    assert "started with another config" in line and "strategy-LlamaPro__seed-0" in line


def test_a_failing_cell_is_recorded_and_the_others_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    path = _sweep_file(tmp_path, grid={"model.expander.num_groups": [1, 3]}, evaluate={})
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--config", str(path), "--compare", "false"])
    assert exit_info.value.code == 1
    good, bad = (read_state(tmp_path / f"tiny/cells/num_groups-{n}") for n in (1, 3))
    assert good["status"] == "done"
    assert bad["status"] == "failed" and "\n" not in bad["error"]
    assert "num_groups" in bad["error"] or "groups" in bad["error"], bad["error"]
    assert (tmp_path / "tiny/cells/num_groups-3/error.txt").is_file()
    assert "failed: num_groups-3:" in capsys.readouterr().out


def _sweep_process(path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "blockexp", "sweep", "--config", str(path), *args]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


@pytest.mark.slow  # about 2 minutes: three sweeps of worker processes
def test_a_killed_worker_resumes_to_the_same_bits(tmp_path):
    """Kill a worker mid-cell; the re-run resumes from the last checkpoint and ends with the
    metrics of an uninterrupted sweep, bit for bit."""
    grid = {"seed": [0]}
    common = dict(grid=grid, set={"trainer.max_steps": 40}, launcher={"name": "processes"})
    whole = _sweep_file(tmp_path, "whole", **common)
    split = _sweep_file(tmp_path, "split", **common)
    assert _sweep_process(whole, "--compare", "false").wait(timeout=600) == 0

    proc = _sweep_process(split, "--compare", "false")
    cell = tmp_path / "split/cells/seed-0"
    deadline = time.monotonic() + 300
    while not (cell / "checkpoints/last.ckpt").is_file():
        assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint appeared"
        time.sleep(0.02)
    os.kill(read_state(cell)["pid"], signal.SIGKILL)
    output = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 1, output
    killed = read_state(cell)
    assert killed["status"] == "failed" and "SIGKILL" in killed["error"], killed

    assert _sweep_process(split, "--compare", "false").wait(timeout=600) == 0
    resumed = read_state(cell)
    assert resumed["status"] == "done" and resumed["attempts"] == 2
    assert resumed["resumed_from"].endswith("last.ckpt")
    assert _after(tmp_path / "whole") == _after(tmp_path / "split")


@pytest.mark.slow  # about 45 s: submitit's job processes
def test_submitit_local_executor_runs_the_cells(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.chdir(REPO)
    path = _sweep_file(
        tmp_path, grid={"seed": [0, 1]}, launcher={"name": "submitit", "cluster": "local"}
    )
    main(["sweep", "--config", str(path), "--workers", "2", "--compare", "false"])
    out = tmp_path / "tiny"
    assert all(read_state(c)["status"] == "done" for c in (out / "cells").iterdir())
    assert list((out / "submitit").glob("*/*_log.out")), "submitit wrote no job logs"
    inline = _sweep_file(tmp_path, "inline", grid={"seed": [0, 1]})
    main(["sweep", "--config", str(inline), "--compare", "false"])
    for (held_a, loss_a, step_a), (held_b, loss_b, step_b) in zip(
        _after(out).values(), _after(tmp_path / "inline").values(), strict=True
    ):
        assert step_a == step_b == 6
        assert held_a == pytest.approx(held_b, rel=1e-5) and loss_a == pytest.approx(
            loss_b, rel=1e-5
        )


@pytest.mark.parametrize("name", ["strategies", "reproduce", "trace_micro"])
def test_shipped_sweep_files_compose_into_fit_configs(name, tmp_path, capsys, monkeypatch):
    """Every experiment's sweep file writes its cells, and a cell's config parses as a fit
    config (class paths and arguments checked by the parser, nothing trained)."""
    monkeypatch.chdir(REPO)
    sweep_file = REPO / f"experiments/{name}/sweep.yaml"
    main(["sweep", "--config", str(sweep_file), "--dry_run", "--out", str(tmp_path / name)])
    cells = sorted((tmp_path / name / "cells").iterdir())
    spec = yaml.safe_load(sweep_file.read_text())
    sizes = [len(v) for v in spec["grid"].values()]
    assert len(cells) == sizes[0] * sizes[1]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(cells[-1] / "cell.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["default_root_dir"] == str(cells[-1])
    assert printed["seed_everything"] == spec["grid"]["seed"][-1]


@pytest.mark.parametrize("stop", [SystemExit, KeyboardInterrupt])
def test_a_stopped_fit_is_not_recorded_as_done(tmp_path, monkeypatch, stop):
    """SIGTERM makes Lightning leave the fit with SystemExit; Ctrl-C raises KeyboardInterrupt:
    the cell is failed (to be resumed), never done, and the stop goes on up."""
    import blockexp.sweep.cell as cell_module

    (tmp_path / "cell.yaml").write_text("trainer: {callbacks: []}\n")

    def stopped(argv):
        raise stop()

    monkeypatch.setattr(cell_module, "_fit", stopped)
    with pytest.raises(stop):
        cell_module.run_cell(tmp_path)
    state = read_state(tmp_path)
    assert state["status"] == "failed" and "interrupted" in state["error"], state
