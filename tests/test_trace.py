"""TRACE data layout, the synthetic generator, and an end-to-end 2-task micro-TRACE run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from blockexp.cli import BlockexpCLI, main
from blockexp.data import DataError, TRACEDataModule
from blockexp.data.sft import IGNORE_INDEX
from blockexp.data.trace import TRACE_ORDER, read_trace_split
from blockexp.data.trace_synthetic import SYNTHETIC_TASK_METRICS, generate_micro_trace

REPO = Path(__file__).resolve().parents[1]


def test_default_order_is_the_papers():
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


def test_generator_is_deterministic_and_in_trace_format(tmp_path):
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


def _write_task(root, task, records_by_split):
    for split, records in records_by_split.items():
        (root / task).mkdir(parents=True, exist_ok=True)
        (root / task / f"{split}.json").write_text(json.dumps(records))


def test_datamodule_order_caps_masks_and_errors(tmp_path):
    recs = [{"prompt": f"Q{i}:", "answer": f"A{i}"} for i in range(10)]
    for task in ("FOMC", "C-STANCE"):
        _write_task(tmp_path, task, {"train": recs, "eval": recs[:4], "test": recs[:5]})
    dm = TRACEDataModule(
        str(tmp_path),
        tokenizer="byte",
        tasks=["FOMC", "C-STANCE"],
        epochs=[2, 1],
        max_train_samples=3,
        max_eval_samples=2,
    )
    assert dm.task_metrics == {"FOMC": "accuracy", "C-STANCE": "accuracy"}  # TRACE defaults
    assert [dm.task_for_epoch(e) for e in range(4)] == [0, 0, 1, 1]
    assert dm.task_bounds(1) == (2, 2) and dm.total_epochs == 3
    info = dm.describe()
    assert info["FOMC"]["train"] == 3 and info["FOMC"]["scored"] == 2
    ids, labels = dm.train_dataset_for("FOMC").examples[0]
    trained = [i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    assert (
        dm.tokenizer.decode(trained[:-1]).startswith("A")
        and trained[-1] == dm.tokenizer.eos_token_id
    )
    assert dm.tokenizer.decode(ids[: labels.index(trained[0])]).startswith("Q")
    # Over-long examples lose the prompt's start, never the answer.
    dm.max_length = 6
    ids, labels = dm.encode_example("a long prompt", "xyz")
    assert len(ids) == 6 and dm.tokenizer.decode(ids) == "ptxyz</s>"  # "...pt" + answer + eos
    assert (
        dm.tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100])
        == "xyz</s>"
    )

    with pytest.raises(DataError, match="no metric for tasks"):
        TRACEDataModule(str(tmp_path), tokenizer="byte", tasks=["FOMC", "Mystery"])
    with pytest.raises(FileNotFoundError, match="Mystery"):
        TRACEDataModule(
            str(tmp_path), tokenizer="byte", tasks=["Mystery"], task_metrics={"Mystery": "sari"}
        )
    with pytest.raises(DataError, match="epochs"):
        TRACEDataModule(str(tmp_path), tokenizer="byte", tasks=["FOMC"], epochs=[1, 2])
    bad = tmp_path / "bad.json"
    bad.write_text('[\n{"prompt": "p", "answer": "a"},\n{"prompt": "p", "answer": 3}\n]')
    with pytest.raises(DataError, match=r"bad\.json:3: 'answer' must be a string"):
        read_trace_split(bad)


def test_micro_trace_two_tasks_end_to_end(tmp_path, monkeypatch, capsys):
    root = tmp_path / "micro"
    generate_micro_trace(root, tasks=["Stance", "Reverse"], train=32, eval=4, test=8)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    main(
        [
            "fit",
            "--config",
            str(REPO / "configs/trace/llama_pro.yaml"),
            "--data.init_args.root",
            str(root),
            "--data.init_args.tasks",
            "[Stance, Reverse]",
            "--data.init_args.epochs",
            "1",
            "--trainer.default_root_dir",
            str(out),
            "--trainer.logger",
            "false",
            "--trainer.enable_checkpointing",
            "false",
        ]
    )
    trace = out / "trace"
    results = json.loads((trace / "R.json").read_text())
    assert results["tasks"] == ["Stance", "Reverse"] and results["rounds_done"] == 2
    R = results["R"]
    assert all(0.0 <= v <= 1.0 for row in R for v in row)
    # OP/BWT in the report are eqs. 6-7 of the written matrix.
    assert results["OP"][1] == pytest.approx((R[1][0] + R[1][1]) / 2)
    assert results["BWT"][1] == pytest.approx((R[1][0] - R[0][0]) / 2)
    assert results["BWT"][0] == 0.0
    rows = list(csv.reader((trace / "R.csv").open()))
    assert rows[0] == ["round", "trained", "Stance", "Reverse"] and len(rows) == 3
    assert float(rows[2][3]) == pytest.approx(R[1][1], abs=1e-6)
    assert (trace / "R.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| OP |" in (trace / "summary.md").read_text()
    preds = [
        json.loads(x) for x in (trace / "predictions/round2_Reverse.jsonl").read_text().splitlines()
    ]
    assert len(preds) == 8 and set(preds[0]) == {"prompt", "answer", "prediction"}
    assert "TRACE round 2/2" in capsys.readouterr().out


def test_trace_configs_parse(monkeypatch):
    monkeypatch.chdir(REPO)
    for config in sorted((REPO / "configs" / "trace").glob("*.yaml")):
        cli = BlockexpCLI(args=["--config", str(config), "--trainer.logger", "false"], run=False)
        assert isinstance(cli.datamodule, TRACEDataModule)
        assert cli.datamodule.tasks == ["Stance", "Arithmetic", "Reverse", "Headline", "Simplify"]
