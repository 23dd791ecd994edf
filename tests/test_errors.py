"""Every bad input to ``python -m blockexp`` ends in one ``error:`` line naming what is wrong,
where (the path or key) and the fix, with exit code 2: no traceback, no usage dump."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import lightning  # noqa: F401  (its log handler then writes to the real stderr, not a test's)
import pytest

from blockexp.cli import main
from blockexp.errors import UsageError
from tests.conftest import record_faults
from tests.test_faults import _quick_fit

REPO = Path(__file__).resolve().parents[1]
# Lines that may accompany the error line: the hint how to see the traceback, Lightning's seed
# note and torch's start-up log lines (W1203 12:00:00.000 ...).
NOISE = re.compile(r"^\(run with --debug|Seed set to \d+$|^[IWE]\d{4} \d\d:\d\d")


_TRIALS: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _count_bad_inputs():
    yield
    if _TRIALS:
        record_faults(
            "bad inputs (tests/test_errors.py)", trials=len(_TRIALS), one_line=len(_TRIALS)
        )


def _one_line(capsys, args: list[str]) -> str:
    """Run the CLI in-process; return its only line of output on stderr, the error line."""
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exit_info:
        warnings.simplefilter("ignore")  # Python warnings are not output of the error path
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "usage:" not in err and "tip:" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not NOISE.search(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Union subtypes" not in lines[0] and "__main__" not in lines[0], lines[0]
    _TRIALS.append(lines[0])
    return lines[0]


def _has(line: str, *parts: str) -> None:
    for part in parts:
        assert part in line, (part, line)


@pytest.fixture
def quick(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    return _quick_fit(tmp_path / "run")


def _sources(path: Path) -> list[str]:
    return ["--data.init_args.sources", f'[{{"name": "x", "path": "{path}"}}]']


# ------------------------------------------------------------- 1. the data module's own errors
@pytest.mark.parametrize(
    "case",
    ["missing file", "csv", "seq_len -5", "seq_len 1", "batch_size 0", "val_fraction", "tokenizer"],
)
def test_data_module_errors_report_their_root_cause(case, quick, tmp_path, capsys):
    csv = tmp_path / "table.csv"
    csv.write_text("text\nhello\n")
    cases = {
        "missing file": (_sources(tmp_path / "nope.jsonl"), ["nope.jsonl", "not found", "'x'"]),
        "csv": (_sources(csv), ["table.csv", "'.csv'", "set `format`", ".jsonl"]),
        "seq_len -5": (["--data.init_args.seq_len", "-5"], ["seq_len", ">= 2", "got -5"]),
        "seq_len 1": (["--data.init_args.seq_len", "1"], ["seq_len", ">= 2", "got 1"]),
        "batch_size 0": (["--data.init_args.batch_size", "0"], ["batch_size", ">= 1", "got 0"]),
        "val_fraction": (["--data.init_args.val_fraction", "1.5"], ["val_fraction", "[0, 1)"]),
        "tokenizer": (
            ["--model.tokenizer", str(tmp_path / "no_tokenizer")],
            ["no_tokenizer", "does not exist", "Pass an existing tokenizer directory"],
        ),
    }
    args, parts = cases[case]
    _has(_one_line(capsys, [*quick, *args]), *parts)


# ------------------------------------------- 2. unknown keys, config files and expanders
def test_unknown_option_suggests_the_close_match(quick, capsys):
    line = _one_line(capsys, [*quick, "--trainer.max_stpes", "5"])
    _has(line, "--trainer.max_stpes", "did you mean --trainer.max_steps?")
    _has(line, "python -m blockexp fit --help")


def test_a_setting_that_moved_into_a_group_names_its_new_place(quick, capsys):
    line = _one_line(capsys, [*quick, "--model.lr", "1e-3"])
    _has(line, "--model.lr", "did you mean --model.optim.lr?")


def test_unknown_key_in_a_config_file_names_the_file(quick, tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("trainer:\n  max_stpes: 5\n")
    line = _one_line(capsys, [*quick, "--config", str(config)])
    _has(line, "trainer.max_stpes", str(config), "did you mean trainer.max_steps?", "fit --help")


def test_missing_config_file(tmp_path, capsys):
    line = _one_line(capsys, ["fit", "--config", str(tmp_path / "nowhere.yaml")])
    _has(line, "nowhere.yaml", "not found", "--config", "python -m blockexp fit --help")


def test_unknown_expander_lists_the_registered_ones(quick, tiny_llama_dir, capsys):
    from blockexp.expanders import expander_names

    for args, command in (
        ([*quick, "--model.expander", "LLamaPro"], "fit"),
        (["plan", "--base", str(tiny_llama_dir), "--expander", "LLamaPro"], "plan"),
    ):
        line = _one_line(capsys, args)
        _has(line, "'LLamaPro'", "did you mean LlamaPro?", *expander_names())
        _has(line, f"python -m blockexp {command} --help")


def test_unknown_option_of_an_expander_suggests_its_own(quick, capsys):
    line = _one_line(capsys, [*quick, "--model.expander.num_grups", "2"])
    _has(line, "num_grups", "did you mean num_groups?")


def test_unknown_command_and_debug(capsys, quick):
    _has(_one_line(capsys, ["fti"]), "'fti'", "did you mean fit?", "python -m blockexp --help")
    with pytest.raises(UsageError, match="max_steps"):  # --debug: the exception, not one line
        main(["--debug", *quick, "--trainer.max_stpes", "5"])


# ------------------------------------------------------- 3. a directory as a data source
def test_a_directory_as_data_source_is_called_one(quick, tmp_path, capsys):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "part1.jsonl").write_text('{"text": "hello"}\n')
    line = _one_line(capsys, [*quick, *_sources(folder)])
    _has(line, str(folder), "is a directory", ".jsonl/.json/.parquet/.txt", "part1.jsonl")


# ------------------------------------------------------------ 4. a JSONL line that is no object
@pytest.mark.parametrize(
    "content, line_no, kind",
    [
        ("[1, 2, 3]\n", 1, "a JSON array ([1, 2, 3])"),  # first line: not read as a JSON list
        ('{"text": "ok"}\n5\n', 2, "a JSON number (5)"),
        ('"hello"\n', 1, 'a JSON string ("hello")'),
    ],
)
def test_a_jsonl_line_that_is_not_an_object(content, line_no, kind, quick, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    line = _one_line(capsys, [*quick, *_sources(bad)])
    _has(line, f"bad.jsonl:{line_no}", kind, 'expected a JSON object with a "text" field')


def test_a_latin1_text_file_names_the_encoding_and_the_conversion(quick, tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    text = "Ein Absatz über Käse und Brötchen.\n\nDer zweite Absatz: Grüße aus München, Köln.\n"
    bad.write_bytes(("Erste Zeile\n" + text * 20).encode("latin-1"))
    line = _one_line(capsys, [*quick, *_sources(bad)])
    _has(line, f"{bad}:2", "not valid UTF-8", "Windows-1252/Latin-1", "iconv -f CP1252 -t UTF-8")
    _has(line, str(tmp_path / "notes.utf8.txt"))
    # and the conversion it names gives a file that is read
    encoding = line.split("iconv -f ")[1].split()[0]
    assert bad.read_bytes().decode(encoding).encode("utf-8").decode("utf-8").startswith("Erste")


# ------------------------------------------------------------ 5. a directory as a checkpoint
def test_export_of_a_directory_names_the_checkpoint_inside(tmp_path, capsys):
    run = tmp_path / "ckpt"
    run.mkdir()
    for name in ("epoch=0-step=5.ckpt", "epoch=1-step=10.ckpt"):
        (run / name).write_bytes(b"")
    args = ["export", "--ckpt", str(run), "--out", str(tmp_path / "out")]
    line = _one_line(capsys, args)
    _has(line, str(run), "is a directory", "epoch=0-step=5.ckpt", "epoch=1-step=10.ckpt")
    (run / "last.ckpt").write_bytes(b"")
    line = _one_line(capsys, args)
    _has(line, str(run / "last.ckpt"))
    assert "epoch=0" not in line


# ----------------------------------------------------- 6. a truncated safetensors, streamed
def test_streamed_expand_of_a_truncated_file_names_it(tiny_llama_dir, tmp_path, capsys):
    base = tmp_path / "truncated"
    shutil.copytree(tiny_llama_dir, base)
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    out = tmp_path / "out"
    args = ["expand", "--base", str(base), "--out", str(out), "--expander", "LlamaPro"]
    line = _one_line(capsys, [*args, "--expander.num_groups", "2"])
    _has(line, str(weights), "truncated or corrupted", "re-download or re-save")
    assert not out.exists()


# --------------------------------------------- 7. an unsupported architecture, from its config
def test_fit_refuses_an_unsupported_architecture_before_loading_weights(quick, tmp_path, capsys):
    from transformers import GPT2Config

    base = tmp_path / "gpt2"
    GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=300).save_pretrained(base)
    (base / "model.safetensors").write_bytes(b"not a safetensors file" * 10)
    line = _one_line(capsys, [*quick, "--model.base", str(base)])
    _has(line, str(base), "'gpt2'", "supports:", "llama", "register_arch")


# ---------------------------------------- 8. an accelerator this machine lacks, before loading
def test_gpu_on_a_cpu_machine_is_refused_before_loading(quick, capsys, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from blockexp.training.cli import BlockexpCLI

    built = []
    original = BlockexpCLI.instantiate_classes
    monkeypatch.setattr(
        BlockexpCLI, "instantiate_classes", lambda self: built.append(1) or original(self)
    )
    line = _one_line(capsys, [*quick, "--trainer.accelerator", "gpu"])
    _has(line, "--trainer.accelerator gpu", "CUDA", "--trainer.accelerator cpu")
    assert not built  # refused before the model, the data or the trainer were built


def test_a_trace_batch_the_devices_do_not_divide_is_refused_before_building(capsys, monkeypatch):
    from blockexp.training.cli import BlockexpCLI

    monkeypatch.chdir(REPO)
    built = []
    original = BlockexpCLI.instantiate_classes
    monkeypatch.setattr(
        BlockexpCLI, "instantiate_classes", lambda self: built.append(1) or original(self)
    )
    args = ["fit", "--config", "configs/trace/micro.yaml", "--trainer.accelerator", "cpu"]
    line = _one_line(capsys, [*args, "--trainer.devices", "3"])
    _has(line, "global_batch_size 16", "batch_size 16 x 3 devices = 48")
    assert not built
