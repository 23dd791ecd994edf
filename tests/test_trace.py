"""TRACE: layout and defaults, TRACE's tokenisation, the two protocols, resume, outputs, and the
shipped configs run unchanged (released layout: 36 evaluations; micro tasks)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from make_trace_data import (
    SYNTHETIC_TASK_METRICS,
    TRACE_STANDINS,
    generate_micro_trace,
    generate_trace_standins,
)

from blockexp.cli import main
from blockexp.data.collate import IGNORE_INDEX
from blockexp.data.records import DataError
from blockexp.expanders import LlamaPro
from blockexp.trace.callback import TRACECallback
from blockexp.trace.data import TRACEDataModule
from blockexp.trace.protocol import TRACE_EPOCHS
from blockexp.trace.report import trace_eval_entry
from blockexp.trace.tasks import TRACE_ORDER, read_trace_split
from blockexp.trace.text import TRACE_TASK_METRICS, build_metric
from blockexp.training.cli import BlockexpCLI
from blockexp.training.module import BlockExpansionModule
from blockexp.training.schedules import constant_with_warmup
from blockexp.training.settings import Optim
from blockexp.training.trainer import make_trainer
from tests.conftest import tiny_llama_dict

REPO = Path(__file__).resolve().parents[1]


def test_default_order_and_epochs_are_traces():
    assert TRACE_ORDER == (
        "C-STANCE",
        "FOMC",
        "MeetingBank",
        "Py150",
        "ScienceQA",
        "NumGLUE-cm",
        "NumGLUE-ds",
        "20Minuten",
    )
    assert [TRACE_EPOCHS[t] for t in TRACE_ORDER] == [5, 3, 7, 5, 3, 5, 5, 7]
    assert constant_with_warmup(0, 0) == 1.0
    assert [constant_with_warmup(s, 4) for s in (0, 1, 4, 100)] == [0.0, 0.25, 1.0, 1.0]


def test_generators_are_deterministic_and_in_trace_format(tmp_path):
    a = generate_micro_trace(tmp_path / "a", train=6, eval=2, test=3, seed=1)
    generate_micro_trace(tmp_path / "b", train=6, eval=2, test=3, seed=1)
    assert len(a) >= 4 and set(a) == set(SYNTHETIC_TASK_METRICS)
    for task in a:
        for split, n in (("train", 6), ("eval", 2), ("test", 3)):
            path = tmp_path / "a" / task / f"{split}.json"
            records = json.loads(path.read_text())  # a plain JSON list, as released TRACE
            assert len(records) == n
            assert all(set(r) == {"prompt", "answer"} for r in records)
            assert path.read_bytes() == (tmp_path / "b" / task / f"{split}.json").read_bytes()
    # The shipped data is what the generator writes.
    shipped = tmp_path / "shipped"
    generate_micro_trace(shipped)
    for path in sorted((REPO / "data" / "micro_trace").rglob("*.json")):
        assert (
            path.read_bytes()
            == (shipped / path.relative_to(REPO / "data" / "micro_trace")).read_bytes()
        )
    # Stand-ins under TRACE's own task names, in the released layout.
    counts = generate_trace_standins(tmp_path / "standins", train=3, eval=1, test=2)
    assert list(counts) == list(TRACE_ORDER) == list(TRACE_STANDINS)
    science = read_trace_split(tmp_path / "standins" / "ScienceQA" / "test.json")
    assert science[0]["answer"][0] in "ABC" and science[0]["answer"][1] == "\n"


def _write_task(root, task, records_by_split):
    for split, records in records_by_split.items():
        (root / task).mkdir(parents=True, exist_ok=True)
        (root / task / f"{split}.json").write_text(json.dumps(records))


def test_released_layout_defaults_to_traces_tasks_epochs_metrics_and_protocol(tmp_path):
    generate_trace_standins(tmp_path, train=3, eval=1, test=2)
    dm = TRACEDataModule(str(tmp_path))
    assert dm.tasks == list(TRACE_ORDER)
    assert dm.epochs == [5, 3, 7, 5, 3, 5, 5, 7] and dm.total_epochs == 40
    assert dm.task_metrics == TRACE_TASK_METRICS
    assert (dm.protocol.name, dm.scoring, dm.eval_tasks) == ("trace", "trace", "seen")
    assert dm.do_sample and dm.temperature == 0.1 and dm.max_new_tokens("FOMC") == 512
    assert sum(len(dm.tasks_to_score(r)) for r in range(8)) == 36
    full = TRACEDataModule(str(tmp_path), eval_tasks="all", protocol="reset")
    assert sum(len(full.tasks_to_score(r)) for r in range(8)) == 64
    assert not full.do_sample  # reset: greedy, budget = longest gold answer + 8 tokens
    longest = max(full.answer_length(r["answer"]) for r in full.scored_records("MeetingBank"))
    assert full.max_new_tokens("MeetingBank") == longest + 8
    # A partial layout is refused with what is missing and what was found.
    (tmp_path / "FOMC" / "train.json").unlink()
    with pytest.raises(DataError, match=r"missing: FOMC.*found: 20Minuten, C-STANCE"):
        TRACEDataModule(str(tmp_path))
    with pytest.raises(DataError, match="protocol must be one of"):
        TRACEDataModule(str(tmp_path), tasks=["C-STANCE"], protocol="deepspeed")
    with pytest.raises(DataError, match="scoring must be one of"):
        TRACEDataModule(str(tmp_path), tasks=["C-STANCE"], scoring="strict")
    with pytest.raises(DataError, match="eval_tasks must be one of"):
        TRACEDataModule(str(tmp_path), tasks=["C-STANCE"], eval_tasks="some")
    with pytest.raises(FileNotFoundError, match="released TRACE data"):
        TRACEDataModule(str(tmp_path / "nowhere"))


def test_datamodule_order_caps_masks_and_errors(tmp_path):
    recs = [{"prompt": f"Q{i}:", "answer": f"A{i}"} for i in range(10)]
    for task in ("FOMC", "C-STANCE"):
        _write_task(tmp_path, task, {"train": recs, "eval": recs[:4], "test": recs[:5]})
    dm = TRACEDataModule(
        str(tmp_path),
        tokenizer="byte",
        tasks=["FOMC", "C-STANCE"],
        max_train_samples=3,
        max_eval_samples=2,
    )
    assert dm.epochs == [3, 5]  # TRACE's epochs follow the task, not the position
    assert dm.task_metrics == {"FOMC": "accuracy", "C-STANCE": "accuracy"}  # TRACE defaults
    dm = TRACEDataModule(
        str(tmp_path), tasks=["FOMC", "C-STANCE"], epochs=[2, 1], max_train_samples=3
    )
    assert [dm.task_for_epoch(e) for e in range(4)] == [0, 0, 1, 1]
    assert dm.task_bounds(1) == (2, 2) and dm.total_epochs == 3
    assert dm.describe()["FOMC"]["train"] == 3

    with pytest.raises(DataError, match="no metric for tasks"):
        TRACEDataModule(str(tmp_path), tasks=["FOMC", "Mystery"], epochs=1)
    with pytest.raises(DataError, match="epochs exist only for its own tasks"):
        TRACEDataModule(str(tmp_path), tasks=["Mystery"], task_metrics={"Mystery": "sari"})
    with pytest.raises(FileNotFoundError, match="Mystery"):
        TRACEDataModule(
            str(tmp_path), tasks=["Mystery"], task_metrics={"Mystery": "sari"}, epochs=1
        )
    with pytest.raises(DataError, match="epochs"):
        TRACEDataModule(str(tmp_path), tasks=["FOMC"], epochs=[1, 2])
    bad = tmp_path / "bad.json"
    bad.write_text('[\n{"prompt": "p", "answer": "a"},\n{"prompt": "p", "answer": 3}\n]')
    with pytest.raises(DataError, match=r"bad\.json:3: 'answer' must be a string"):
        read_trace_split(bad)


def _bpe_tokenizer():
    """A byte-level BPE whose merges cross the prompt/answer boundary (" yes" is one token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["Is it raining? Answer: yes", "Is it dry? Answer: no"] * 50, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def test_prompt_and_answer_are_tokenised_together_as_trace(tmp_path):
    _write_task(tmp_path, "FOMC", {"train": [{"prompt": "p", "answer": "a"}], "test": []})
    dm = TRACEDataModule(str(tmp_path), tasks=["FOMC"])
    dm.tokenizer = _bpe_tokenizer()
    tok, bos, eos = dm.tokenizer, dm.tokenizer.bos_token_id, dm.tokenizer.eos_token_id
    prompt, answer = "Is it raining? Answer: ", "yes"
    joint = tok(prompt + answer, add_special_tokens=False)["input_ids"]
    alone = tok(answer, add_special_tokens=False)["input_ids"]
    separate = tok(prompt, add_special_tokens=False)["input_ids"] + alone
    assert joint != separate[: len(joint)] and len(joint) < len(separate)  # the boundary merges
    ids, labels = dm.encode_example(prompt, answer)
    assert ids == [bos, *joint, eos]  # one piece, then eos and bos: TRACE's collator
    # The label mask is TRACE's: the last len(tokens(answer)) + 1 positions, whatever the
    # boundary did; here they hold " yes" (merged with the prompt's space) and eos.
    n = len(alone) + 1
    assert labels == [IGNORE_INDEX] * (len(ids) - n) + ids[-n:]
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == " yes</s>"
    # Without a merge across the boundary the mask is exactly the answer's tokens and eos.
    ids, labels = dm.encode_example("Is it raining? Answer:", " yes")
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == " yes</s>"
    # Over-long: cut from the left to max_prompt_len + max_ans_len, then no eos and no bos
    # (TRACE appends them only while the sequence is shorter than the limit).
    dm.max_prompt_len, dm.max_ans_len = 4, 2
    ids, labels = dm.encode_example(prompt, answer)
    assert ids == joint[-6:] and eos not in ids and bos not in ids
    # Generation prompts: cut from the left to max_prompt_len, bos only when shorter.
    assert dm.encode_prompt(prompt) == tok(prompt, add_special_tokens=False)["input_ids"][-4:]
    dm.max_prompt_len = 100
    assert dm.encode_prompt(prompt) == [bos, *tok(prompt, add_special_tokens=False)["input_ids"]]


def test_generation_decodes_as_trace_and_keeps_the_training_rng(tiny_llama):
    from blockexp.io.tokenization import load_tokenizer
    from blockexp.trace.generation import generate_answers

    model, tok = tiny_llama(2), load_tokenizer("byte")
    prompts = [[257, *b"Answer:"], [257, *b"Q"], [257, *b"Longer prompt here:"]]
    got = generate_answers(model, tok, prompts, max_new_tokens=6, batch_size=2)
    for prompt, answer in zip(prompts, got, strict=True):  # one prompt at a time, no padding
        ids = torch.tensor([prompt])
        out = model.generate(
            ids, max_new_tokens=6, do_sample=False, pad_token_id=256, eos_token_id=258
        )
        expected = tok.batch_decode(
            out[:, len(prompt) :], skip_special_tokens=True, clean_up_tokenization_spaces=False
        )[0]  # TRACE's inference decoding: no stripping
        assert answer == expected
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    a = generate_answers(model, tok, prompts, 6, do_sample=True, temperature=0.1, seed=3)
    b = generate_answers(model, tok, prompts, 6, do_sample=True, temperature=0.1, seed=3)
    assert a == b and torch.equal(torch.rand(3), before)  # seeded, and the outer RNG untouched


class _Watch(L.Callback):
    """Records lr and weight decay of every step and the optimizer's step count at the end."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.weight_decay: set[float] = set()
        self.adam_steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        groups = trainer.optimizers[0].param_groups
        self.lrs.append(groups[0]["lr"])
        self.weight_decay |= {g["weight_decay"] for g in groups}

    def on_train_end(self, trainer, pl_module):
        state = trainer.optimizers[0].state
        self.adam_steps = int(max(float(s["step"]) for s in state.values()))


def _run(root, out, protocol, ckpt=None, warmup_steps=0, **callback):
    generate_micro_trace(root, tasks=["Stance", "Arithmetic"], train=16, eval=2, test=4)
    data = TRACEDataModule(
        str(root),
        tasks=["Stance", "Arithmetic"],
        task_metrics=SYNTHETIC_TASK_METRICS,
        epochs=[2, 1],
        protocol=protocol,
        max_prompt_len=96,
        max_ans_len=4,
        batch_size=8,
        warmup_steps=warmup_steps,
    )
    module = BlockExpansionModule(
        base=tiny_llama_dict(2),
        expander=LlamaPro(num_groups=1),
        optim=Optim(lr=1e-3, weight_decay=0.1),
    )
    watch = _Watch()
    trace = TRACECallback(output_dir=str(out / "trace"), **callback)
    per_epoch = L.pytorch.callbacks.ModelCheckpoint(dirpath=out / "ckpt", save_top_k=-1)
    per_step = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=out / "steps", save_top_k=-1, every_n_train_steps=1
    )
    trainer = make_trainer(
        gradient_clip_val=None,
        callbacks=[watch, trace, per_epoch, per_step],
        limit_val_batches=0,
        default_root_dir=out,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    return watch, trace, module


def test_trace_protocol_one_optimizer_constant_lr_no_weight_decay(tmp_path):
    watch, trace, _ = _run(tmp_path / "data", tmp_path / "run", "trace")
    assert len(watch.lrs) == 6  # 2 steps per epoch, 3 epochs
    assert watch.lrs == [1e-3] * 6 and watch.weight_decay == {0.0}
    assert watch.adam_steps == 6  # one AdamW across both tasks: moments carried over
    assert np.isnan(trace.R[0, 1]) and not np.isnan(trace.R[1]).any()  # seen tasks only
    watch, _, _ = _run(tmp_path / "data", tmp_path / "warm", "trace", warmup_steps=4)
    assert watch.lrs == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])


def test_reset_protocol_restarts_optimizer_and_schedule_per_task(tmp_path):
    watch, trace, _ = _run(tmp_path / "data", tmp_path / "run", "reset")
    assert watch.adam_steps == 2  # the last task's steps only: AdamW rebuilt at the boundary
    assert watch.weight_decay == {0.0, 0.1}  # the module's (none on norms and biases)
    assert watch.lrs[4] == watch.lrs[0]  # each task restarts its warmup + cosine schedule
    assert np.isnan(trace.R[0, 1]) and not np.isnan(trace.R[1]).any()


@pytest.mark.parametrize(
    "where",
    [
        "ckpt/epoch=1-step=4.ckpt",  # end of task 1, round 1 scored
        "steps/epoch=2-step=5.ckpt",  # inside task 2's epoch, one of its two batches done
    ],
)
def test_resume_gives_the_uninterrupted_run(tmp_path, where):
    full_watch, full, module = _run(tmp_path / "data", tmp_path / "full", "trace")
    ckpt = tmp_path / "full" / where
    assert ckpt.is_file()
    watch, resumed, again = _run(tmp_path / "data", tmp_path / "resumed", "trace", ckpt=str(ckpt))
    np.testing.assert_array_equal(resumed.R, full.R)
    assert watch.lrs == full_watch.lrs[-len(watch.lrs) :] and watch.adam_steps == 6
    for (name, a), b in zip(module.model.named_parameters(), again.model.parameters(), strict=True):
        assert torch.equal(a, b), name  # bitwise: same batches, same optimizer, same schedule
    # A checkpoint of one protocol does not resume under another.
    with pytest.raises(ValueError, match="protocol 'trace' in the checkpoint, 'reset' now"):
        _run(tmp_path / "data", tmp_path / "other", "reset", ckpt=str(ckpt))


def test_round_models_and_trace_result_files(tmp_path):
    from transformers import AutoModelForCausalLM

    _, trace, module = _run(
        tmp_path / "data",
        tmp_path / "run",
        "trace",
        save_round_models=True,
        round_model_format="pytorch_bin",
    )
    out = tmp_path / "run" / "trace"
    for r in (0, 1):  # TRACE's <output_dir>/<round> layout, rounds from 0
        folder = out / "models" / str(r)
        assert (folder / "pytorch_model.bin").is_file() and (folder / "config.json").is_file()
        assert (folder / "tokenizer.json").is_file()
        state = torch.load(folder / "pytorch_model.bin", weights_only=True)  # as TRACE loads it
        assert "model.layers.2.mlp.down_proj.weight" in state  # the expanded depth (3 layers)
    reloaded = AutoModelForCausalLM.from_pretrained(out / "models" / "1").eval()
    ids = torch.tensor([[257, 65, 66, 67]])
    with torch.no_grad():
        expected = module.model.eval()(ids).logits
        torch.testing.assert_close(reloaded(ids).logits, expected)
    # TRACE's result files: the eval entry is the score of the file's own results and labels.
    files = sorted((out / "predictions").glob("results-*.json"))
    assert [f.name for f in files] == [
        "results-0-0-Stance.json",
        "results-1-0-Stance.json",
        "results-1-1-Arithmetic.json",
    ]
    for f, (r, i) in zip(files, [(0, 0), (1, 0), (1, 1)], strict=True):
        data = json.loads(f.read_text())
        assert set(data) >= {"eval", "prompts", "results", "labels"}
        assert data["blockexp"]["metric"] == SYNTHETIC_TASK_METRICS[["Stance", "Arithmetic"][i]]
        metric = build_metric(data["blockexp"]["metric"])
        metric.update(data["results"], data["labels"], data["prompts"])
        assert data["eval"] == {"accuracy": pytest.approx(float(metric.compute()))}
        assert data["eval"]["accuracy"] == pytest.approx(trace.R[r, i])
    assert trace_eval_entry("edit_similarity", 0.5) == {"similarity": 50.0}
    assert trace_eval_entry("sari", 0.4) == {"sari": [{"sari": 40.0}]}
    assert trace_eval_entry("rouge_l", 0.3) == {"rouge-L": 0.3}


def test_released_layout_config_runs_unchanged(tmp_path, monkeypatch):
    """`fit --config configs/trace/llama_pro.yaml --data.init_args.root DIR`, nothing else."""
    root = tmp_path / "TRACE"
    generate_trace_standins(root, train=4, eval=1, test=2)
    monkeypatch.chdir(tmp_path)  # the config writes to outputs/trace/llama_pro
    main(
        [
            "fit",
            "--config",
            str(REPO / "configs/trace/llama_pro.yaml"),
            "--data.init_args.root",
            str(root),
        ]
    )
    out = tmp_path / "outputs" / "trace" / "llama_pro"
    results = json.loads((out / "trace" / "R.json").read_text())
    assert results["tasks"] == list(TRACE_ORDER) and results["rounds_done"] == 8
    assert results["evaluations"] == 36
    assert (results["protocol"], results["scoring"], results["eval_tasks"]) == (
        "trace",
        "trace",
        "seen",
    )
    assert results["decoding"]["do_sample"] and results["decoding"]["temperature"] == 0.1
    R = np.array([[np.nan if v is None else v for v in row] for row in results["R"]])
    assert np.isnan(R[np.triu_indices(8, 1)]).all() and not np.isnan(R[np.tril_indices(8)]).any()
    t = 8
    assert results["OP"][-1] == pytest.approx(R[t - 1].mean())
    assert results["BWT"][-1] == pytest.approx((R[t - 1] - np.diag(R)).sum() / t)
    assert results["BWT_trace"][-1] == pytest.approx((R[t - 1] - np.diag(R)).sum() / (t - 1))
    assert set(results["BWT_definitions"]) == {"BWT", "BWT_trace"}
    rows = list(csv.reader((out / "trace" / "R.csv").open()))
    assert rows[0] == ["round", "trained", *TRACE_ORDER] and len(rows) == 9
    assert (out / "trace" / "R.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "trace" / "summary.md").read_text()
    assert "| OP |" in summary and "| BWT (LLaMA Pro eq. 7) |" in summary
    assert "| BWT (TRACE paper) |" in summary
    predictions = out / "trace" / "predictions"
    assert len(list(predictions.glob("round*_*.jsonl"))) == 36
    assert len(list(predictions.glob("results-*-*-*.json"))) == 36
    line = json.loads((predictions / "round8_20Minuten.jsonl").read_text().splitlines()[0])
    assert set(line) == {"prompt", "answer", "prediction", "score"}
    assert (out / "checkpoints" / "last.ckpt").is_file()
    # GeneralEval (one line in the config): the general score before and after every round,
    # written beside R/OP/BWT and logged
    general = json.loads((out / "trace" / "general.json").read_text())
    labels = [e["label"] for e in general["entries"]]
    assert labels == ["start", *[f"round {t}" for t in range(1, 9)]]
    assert all(set(e["scores"]) == {"blockexp_cloze", "blockexp_choice", "blockexp_complete"}
               for e in general["entries"])  # fmt: skip
    assert general["limit"] == 20
    assert len((out / "trace" / "general.csv").read_text().splitlines()) == 10
    assert (out / "trace" / "general.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trace_configs_parse(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    names = ("llama_pro.yaml", "lora.yaml", "full_finetune.yaml", "micro.yaml")  # the shipped
    configs = [REPO / "configs" / "trace" / name for name in names]
    root = tmp_path / "TRACE"
    generate_trace_standins(root, train=2, eval=1, test=1)
    for config in configs:
        args = ["--config", str(config), "--trainer.logger", "false"]
        if config.name != "micro.yaml":
            args += ["--data.init_args.root", str(root)]
        cli = BlockexpCLI(args=args, run=False)
        dm = cli.datamodule
        assert isinstance(dm, TRACEDataModule) and dm.protocol.name == "trace"
        if config.name == "micro.yaml":
            assert dm.tasks == ["Stance", "Arithmetic", "Reverse", "Headline", "Simplify"]
        else:
            assert dm.tasks == list(TRACE_ORDER) and dm.epochs == [5, 3, 7, 5, 3, 5, 5, 7]
            assert (dm.max_prompt_len, dm.max_ans_len) == (1024, 512)
        callbacks = [c for c in cli.trainer.callbacks if isinstance(c, TRACECallback)]
        assert len(callbacks) == 1
    # docs/trace.md: per-round models for TRACE's inference script from the command line.
    cli = BlockexpCLI(
        args=[
            "--config",
            str(REPO / "configs/trace/lora.yaml"),
            "--data.init_args.root",
            str(root),
            "--trainer.logger",
            "false",
            "--trainer.callbacks.init_args.save_round_models",
            "true",
            "--trainer.callbacks.init_args.round_model_format",
            "pytorch_bin",
        ],
        run=False,
    )
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, TRACECallback)]
    assert callback.save_round_models and callback.round_model_format == "pytorch_bin"


def test_micro_config_end_to_end(tmp_path, monkeypatch, capsys):
    root = tmp_path / "micro"
    generate_micro_trace(root, tasks=["Stance", "Reverse"], train=32, eval=4, test=8)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    main(
        [
            "fit",
            "--config",
            str(REPO / "configs/trace/micro.yaml"),
            "--data.init_args.root",
            str(root),
            "--data.init_args.tasks",
            "[Stance, Reverse]",
            "--data.init_args.epochs",
            "1",
            "--data.init_args.eval_tasks",
            "all",
            "--trainer.default_root_dir",
            str(out),
            "--trainer.logger",
            "false",
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.callbacks",
            "[]",
            "--trainer.callbacks+=blockexp.trace.callback.TRACECallback",
        ]
    )
    results = json.loads((out / "trace" / "R.json").read_text())
    assert results["tasks"] == ["Stance", "Reverse"] and results["evaluations"] == 4  # all
    assert all(0.0 <= v <= 1.0 for row in results["R"] for v in row)
    assert "TRACE round 2/2" in capsys.readouterr().out
