"""lm-evaluation-harness integration: `blockexp eval`, the shipped local tasks, presets and the
GeneralEval callback (all offline, on tiny random models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from blockexp.cli import main
from blockexp.evaluation.lmeval.build import (
    choice_docs,
    cloze_docs,
    code_line_docs,
    complete_docs,
)
from blockexp.evaluation.lmeval.harness import (
    EvalError,
    evaluate_model,
    load_tasks,
    shipped_tasks,
)
from blockexp.evaluation.lmeval.preset import load_preset
from blockexp.evaluation.lmeval.scores import headline_scores
from blockexp.evaluation.lmeval.tasks import TASKS_DIR, load_jsonl, process_next_line
from blockexp.training.settings import Optim

REPO = Path(__file__).resolve().parents[1]
GENERAL = ["blockexp_cloze", "blockexp_choice", "blockexp_complete"]
PROSE = [
    "The river ran past the old mill. Children played near the water every summer afternoon. "
    "In the evening the baker closed his shop and walked home along the quiet street.",
    "Many travellers stopped at the inn before crossing the mountains. The innkeeper kept a "
    "ledger of every guest and their destination. Snow closed the pass for most of the winter.",
]


def _byte_tokenizer():
    from blockexp.io.tokenization import load_tokenizer

    return load_tokenizer("byte")


def test_shipped_tasks_are_regenerated_by_the_script(tmp_path):
    """The shipped task files are exactly what scripts/make_eval_tasks.py writes."""
    from make_eval_tasks import main as make

    make(["--out", str(tmp_path)])
    assert shipped_tasks() == [
        "blockexp_choice",
        "blockexp_cloze",
        "blockexp_code_line",
        "blockexp_complete",
    ]
    for name in shipped_tasks():
        shipped = (TASKS_DIR / f"{name}.jsonl").read_text()
        assert (tmp_path / f"{name}.jsonl").read_text() == shipped
        assert len(shipped.splitlines()) == 100
        yaml_text = (TASKS_DIR / f"{name}.yaml").read_text()
        assert f"data_file: {name}.jsonl" in yaml_text  # relative: resolved against TASKS_DIR


def test_builders_make_the_documented_documents():
    cloze = cloze_docs(PROSE, 10, seed=0)
    assert cloze and all(d["text"].split(" ")[-1].isalpha() for d in cloze)
    assert all(not d["text"].endswith(".") for d in cloze)
    choice = choice_docs(PROSE, 10, seed=0)
    for d in choice:
        assert len(d["endings"]) == 4 and len(set(d["endings"])) == 4
        assert d["ctx"] + " " + d["endings"][d["label"]] in " ".join(PROSE)
    complete = complete_docs(PROSE, 10, seed=0)
    assert all(len(d["target"].split()) == 2 for d in complete)
    assert all((d["context"] + " " + d["target"] + ".") in " ".join(PROSE) for d in complete)
    code = ["def f(x):\n    y = x + 1\n    return y\n"]
    lines = code_line_docs(code, 10, seed=0, min_target_chars=5)
    assert {d["target"] for d in lines} == {"    y = x + 1", "    return y"}
    assert all(not d["context"].endswith("\n") for d in lines)
    assert cloze_docs(PROSE, 10, seed=0) == cloze  # deterministic
    # Repetitive text without enough distinct endings is refused (it used to loop forever).
    repeated = ["The quick brown fox jumps over the lazy dog near the river bank today."] * 20
    with pytest.raises(ValueError, match="different endings"):
        choice_docs(repeated, 5, seed=0)


def test_next_line_scoring_takes_the_line_after_the_first_newline():
    doc = {"target": "    return y"}
    assert process_next_line(doc, ["\n    return y\n    z = 1"]) == {
        "exact_match": 1.0,
        "edit_sim": 1.0,
    }
    assert process_next_line(doc, ["  # the line goes on"])["exact_match"] == 0.0  # no newline
    assert process_next_line(doc, ["\n    return x"])["edit_sim"] == pytest.approx(1 - 2 / 16)


def test_malformed_task_data_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: malformed JSON on line 2"):
        load_jsonl(str(bad))
    with pytest.raises(FileNotFoundError, match=r"missing.jsonl'? not found"):
        load_jsonl(str(tmp_path / "missing.jsonl"))


def test_task_without_data_on_disk_fails_with_one_line_naming_it(tmp_path):
    (tmp_path / "needs_hub.yaml").write_text(
        "task: needs_hub\ndataset_path: nobody/not_on_disk\noutput_type: loglikelihood\n"
        "test_split: test\ndoc_to_text: '{{text}}'\ndoc_to_target: ' x'\n"
        "metric_list:\n  - metric: acc\n"
    )
    with pytest.raises(EvalError, match=r"task 'needs_hub' could not be loaded offline") as err:
        load_tasks(["blockexp_cloze", "needs_hub"], [tmp_path])
    assert "\n" not in str(err.value)


def test_unknown_task_lists_the_shipped_ones():
    with pytest.raises(
        EvalError, match=r"unknown task\(s\) \['no_such_task_xyz'\].*blockexp_cloze"
    ):
        load_tasks(["no_such_task_xyz"])


def test_in_process_scores_equal_lm_evals_own_hf_path(tiny_llama_dir):
    """evaluate_model (a model object through HFLM) gives lm-eval's numbers: the same tasks run by
    lm-eval's own `--model hf --model_args pretrained=DIR` path score identically."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM

    tasks = ["blockexp_cloze", "blockexp_choice", "blockexp_code_line"]
    ours = evaluate_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
        _byte_tokenizer(),
        tasks,
        limit=6,
        batch_size=4,
    )
    ref = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(tiny_llama_dir), "device": "cpu", "dtype": "float32"},
        tasks=tasks,
        task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
        limit=6,
        batch_size=4,
        bootstrap_iters=1000,
    )
    for task in tasks:
        for key, value in ref["results"][task].items():
            if "," in key and "_stderr" not in key:
                assert ours["results"][task][key] == pytest.approx(value, rel=1e-6), (task, key)
    assert set(ours["scores"]) == set(tasks)
    assert ours["scores"]["blockexp_choice"] == ours["results"]["blockexp_choice"]["acc_norm,none"]


def test_eval_command_prints_a_table_and_writes_json(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "evals"
    path = main(
        ["eval", "--model", str(tiny_llama_dir), "--tasks", "blockexp_general,blockexp_code_line",
         "--limit", "4", "--batch_size", "4", "--out", str(out)]
    )  # fmt: skip
    data = json.loads(Path(path).read_text())
    assert Path(path).parent == out
    assert set(data["scores"]) == {*GENERAL, "blockexp_code_line"}  # the tag expands
    assert all(0.0 <= v <= 1.0 for v in data["scores"].values())
    assert data["n-samples"]["blockexp_cloze"]["effective"] == 4
    printed = capsys.readouterr().out
    assert "blockexp_cloze" in printed and "headline scores" in printed
    # default location: <run dir>/eval beside the model directory, never inside it
    default = main(
        ["eval", "--model", str(tiny_llama_dir), "--tasks", "blockexp_cloze", "--limit", "2"]
    )
    assert Path(default).parent == tiny_llama_dir.parent / "eval"


def test_eval_command_errors_are_one_line(tiny_llama_dir, tmp_path, capsys):
    for args, expected in (
        (["--model", str(tmp_path / "nowhere"), "--tasks", "blockexp_cloze"], "does not exist"),
        (["--model", str(tiny_llama_dir)], "no tasks"),
        (["--model", str(tiny_llama_dir), "--tasks", "x", "--limit", "0"], "--limit must be > 0"),
        (["--model", str(tiny_llama_dir), "--preset", str(tmp_path / "p.yaml")], "does not exist"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(["eval", *args])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err, err


def test_per_task_shots_and_presets(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    out = evaluate_model(
        model, _byte_tokenizer(), ["blockexp_cloze", "blockexp_choice"],
        num_fewshot={"blockexp_cloze": 2}, limit=3, batch_size=4,
        metrics={"blockexp_choice": "acc"},
    )  # fmt: skip
    assert out["n-shot"] == {"blockexp_cloze": 2, "blockexp_choice": 0}
    assert out["scores"]["blockexp_choice"] == out["results"]["blockexp_choice"]["acc,none"]
    paper = load_preset(REPO / "configs/eval/llama_pro_general.yaml")
    # LLaMA Pro, Sec. 4.1: ARC 25, HellaSwag 10, MMLU 5, TruthfulQA 0, Winogrande 5, GSM8K 5,
    # HumanEval 0, MBPP 3
    assert paper.num_fewshot == {
        "arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0, "winogrande": 5,
        "gsm8k": 5, "humaneval": 0, "mbpp": 3,
    }  # fmt: skip
    assert not paper.confirm_run_unsafe_code
    local = load_preset(REPO / "configs/eval/local_general.yaml")
    assert set(local.tasks) == set(shipped_tasks())


def test_bad_preset_is_a_clear_error(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("tasks:\n  - {task: blockexp_cloze, num_fewshot: -1}\n")
    with pytest.raises(EvalError, match="num_fewshot must be an integer >= 0"):
        load_preset(preset)
    preset.write_text("tasks: []\n")
    with pytest.raises(EvalError, match="non-empty list"):
        load_preset(preset)


def test_headline_prefers_the_unfiltered_metric_and_exact_keys():
    results = {"results": {"t": {"acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.7},
                           "g": {"exact_match,strict-match": 0.2, "exact_match,flexible": 0.4}}}  # fmt: skip
    assert headline_scores(results) == {"t": 0.7, "g": 0.2}
    assert headline_scores(results, metrics={"g": "exact_match,flexible"})["g"] == 0.4


@pytest.mark.parametrize("strategy", ["LlamaPro", "LoRA", "MoEExpansion"])
def test_general_eval_before_after_as_exported(strategy, tiny_llama_dir, tmp_path, fit_module):
    """GeneralEval scores the model as exported; at fit start the function-preserving
    expansion scores exactly what the base scores; the end differs after training."""
    from transformers import AutoModelForCausalLM

    from blockexp.evaluation.general import GeneralEval
    from blockexp.expanders import get_expander
    from blockexp.training.module import BlockExpansionModule

    args = {"LlamaPro": {"num_groups": 2}, "LoRA": {"r": 4, "alpha": 8}, "MoEExpansion": {}}
    module = BlockExpansionModule(
        base=str(tiny_llama_dir),
        expander=get_expander(strategy)(**args[strategy]),
        optim=Optim(lr=5e-2),
    )
    callback = GeneralEval(tasks="blockexp_cloze,blockexp_choice", limit=4, batch_size=4)
    fit_module(module, tmp_path, steps=3, callbacks=[callback])
    labels = [e["label"] for e in callback.entries]
    assert labels == ["start", "end"] and callback.entries[1]["step"] == 3
    base = evaluate_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir), _byte_tokenizer(),
        ["blockexp_cloze", "blockexp_choice"], limit=4, batch_size=4,
    )  # fmt: skip
    start = callback.entries[0]["results"]
    for task in ("blockexp_cloze", "blockexp_choice"):
        for key in ("acc,none",):
            assert start[task][key] == base["results"][task][key]
    assert start["blockexp_cloze"]["perplexity,none"] == pytest.approx(
        base["results"]["blockexp_cloze"]["perplexity,none"], rel=1e-5
    )
    end = callback.entries[1]["results"]["blockexp_cloze"]["perplexity,none"]
    assert end != pytest.approx(start["blockexp_cloze"]["perplexity,none"], rel=1e-6)
    out = tmp_path / "general"
    for name in ("general.json", "general.csv", "general.png"):
        assert (out / name).stat().st_size > 0
    assert len((out / "general.csv").read_text().splitlines()) == 3
    if strategy == "LoRA":  # the merged copy was evaluated; the adapters are still there
        assert any("lora_" in n for n, _ in module.model.named_parameters())


def test_general_eval_resume_restores_entries_and_refuses_other_tasks():
    from blockexp.evaluation.general import GeneralEval

    a = GeneralEval(tasks="blockexp_cloze")
    a.entries = [{"label": "start", "step": 0, "scores": {"blockexp_cloze": 0.1}, "mean": 0.1}]
    b = GeneralEval(tasks="blockexp_cloze")
    b.load_state_dict(a.state_dict())
    assert b.entries == a.entries
    with pytest.raises(ValueError, match="resume with the same tasks"):
        GeneralEval(tasks="blockexp_choice").load_state_dict(a.state_dict())


def test_eval_of_a_training_checkpoint_equals_its_export(tmp_path, make_module, make_trainer):
    import lightning as L
    from torch.utils.data import DataLoader

    from tests.conftest import RandomBlocks

    module = make_module()
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    trainer = make_trainer(tmp_path, 2, enable_checkpointing=True, callbacks=[ckpt])
    trainer.fit(module, train_dataloaders=DataLoader(RandomBlocks(), batch_size=4))
    exported = module.export(tmp_path / "model")
    args = ["--tasks", "blockexp_cloze", "--limit", "3", "--out", str(tmp_path / "e")]
    a = json.loads(
        Path(main(["eval", "--model", str(tmp_path / "checkpoints/last.ckpt"), *args])).read_text()
    )
    b = json.loads(Path(main(["eval", "--model", str(exported), *args])).read_text())
    assert a["results"]["blockexp_cloze"]["perplexity,none"] == pytest.approx(
        b["results"]["blockexp_cloze"]["perplexity,none"], rel=1e-6
    )
    assert torch.is_grad_enabled()
