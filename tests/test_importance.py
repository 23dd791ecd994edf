"""Layer importance: angular distance, removal / insertion drops, multiple-choice scoring, and the
`importance` command end to end on a tiny saved model."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import pytest
import torch

from blockexp.cli import main
from blockexp.evaluation.importance.inputs import (
    MultipleChoiceItem,
    encode_multiple_choice,
    load_multiple_choice,
    load_text_blocks,
)
from blockexp.evaluation.importance.measure import (
    angular_distance,
    choice_log_likelihoods,
    evaluate,
    layer_angular_distances,
)
from blockexp.evaluation.importance.surgery import insertion_plan, removal_plan, temporary_plan
from blockexp.expanders import SLayer
from blockexp.io.tokenization import load_tokenizer
from blockexp.layers import get_arch
from blockexp.layers.surgery import zero_residual_writers

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "importance_sample"


def test_angular_distance_hand_checked():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 4.0]])
    y = torch.tensor([[0.0, 1.0], [5.0, 0.0], [-1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    got = angular_distance(x, y)
    torch.testing.assert_close(got, torch.tensor([0.5, 0.0, 1.0, 0.25, 0.0]), atol=2e-4, rtol=0)


def test_layer_angular_distances_match_hidden_states(tiny_llama):
    model = tiny_llama(4)
    zero_residual_writers(get_arch(model).layers(model)[1], get_arch(model))  # layer 1 = identity
    blocks = torch.randint(0, 256, (3, 10), generator=torch.Generator().manual_seed(0))
    distances = layer_angular_distances(model, blocks, batch_size=2)
    with torch.no_grad():
        hidden = model(blocks, output_hidden_states=True).hidden_states
    for i in range(3):  # hidden_states[i] is layer i's input; the last entry is after the norm
        want = angular_distance(hidden[i], hidden[i + 1]).mean().item()
        assert distances[i] == pytest.approx(want, abs=1e-5)
    assert distances[1] == pytest.approx(0.0, abs=1e-3)
    assert min(distances[0], distances[2], distances[3]) > 0.01


def test_temporary_plans_change_and_restore_the_model():
    from blockexp.io.load import load_model
    from tests.conftest import tiny_llama_dict

    config = tiny_llama_dict(
        4, model_type="qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=2
    )
    model = load_model(config, dtype="float32").eval()
    arch = get_arch(model)
    layers = list(arch.layers(model))
    before = copy.deepcopy(model.config.to_dict())
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
        with temporary_plan(model, removal_plan(4, 2)):
            assert model.config.num_hidden_layers == 3
            assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"]
            assert not torch.allclose(model(ids).logits, ref)
        with temporary_plan(model, insertion_plan(4, 1, "mean")):
            assert model.config.num_hidden_layers == 5 and model.config.max_window_layers == 3
            assert torch.isfinite(model(ids).logits).all()
        with pytest.raises(RuntimeError), temporary_plan(model, insertion_plan(4, 3, "copy")):
            raise RuntimeError("restored even on errors")
        assert list(arch.layers(model)) == layers
        assert [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2, 3]
        assert model.config.to_dict() == before
        assert torch.equal(model(ids).logits, ref)
    with pytest.raises(ValueError, match="no upper neighbour"):
        insertion_plan(4, 3, "mean")


def test_identity_layer_costs_nothing_to_remove_or_copy(tiny_llama):
    model = tiny_llama(4)
    zero_residual_writers(get_arch(model).layers(model)[2], get_arch(model))
    blocks = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(2))
    base = evaluate(model, blocks)["loss"]
    with temporary_plan(model, removal_plan(4, 2)):
        assert evaluate(model, blocks)["loss"] == pytest.approx(base, abs=1e-5)
    with temporary_plan(model, insertion_plan(4, 2, "copy")):
        assert evaluate(model, blocks)["loss"] == pytest.approx(base, abs=1e-5)
    with temporary_plan(model, removal_plan(4, 0)):
        assert abs(evaluate(model, blocks)["loss"] - base) > 1e-3


def test_multiple_choice_scoring(tiny_llama):
    model = tiny_llama(2)
    tok = load_tokenizer("byte")
    items = [
        MultipleChoiceItem("Is the sky blue?", ("yes", "no", "maybe so"), 0),
        MultipleChoiceItem("Two plus two?", ("four", "five"), 1),
        MultipleChoiceItem("Pick one", ("a", "bb", "ccc", "d"), 2),
    ]
    encoded = encode_multiple_choice(items, tok, max_len=64)
    best = []
    for context, conts, _ in encoded:
        scores = choice_log_likelihoods(model, context, conts, pad_id=256)
        # Each padded score equals the unpadded log-likelihood computed on its own.
        for cont, score in zip(conts, scores, strict=True):
            ids = torch.tensor([context + cont])
            with torch.no_grad():
                logprobs = model(ids).logits.log_softmax(-1)[0]
            want = sum(float(logprobs[len(context) - 1 + k, t]) for k, t in enumerate(cont))
            assert score == pytest.approx(want, abs=1e-4)
        best.append(max(range(len(scores)), key=scores.__getitem__))
    right = [(c, k, b) for (c, k, _), b in zip(encoded, best, strict=True)]
    wrong = [(c, k, (b + 1) % len(k)) for (c, k, _), b in zip(encoded, best, strict=True)]
    blocks = torch.randint(0, 256, (1, 8))
    assert evaluate(model, blocks, right, pad_id=256)["acc"] == 1.0
    assert evaluate(model, blocks, wrong, pad_id=256)["acc"] == 0.0


def test_bad_inputs_are_clear_errors(tmp_path):
    bad = tmp_path / "mc.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": "q"}\n')
    with pytest.raises(ValueError, match=r"mc.jsonl:2: 'choices'"):
        load_multiple_choice(bad)
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 2}\n')
    with pytest.raises(ValueError, match=r"mc.jsonl:1: 'answer' must be an integer index"):
        load_multiple_choice(bad)
    assert len(load_multiple_choice(SAMPLE / "choices.jsonl")) == 8
    tok = load_tokenizer("byte")
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    with pytest.raises(ValueError, match="fewer than one block"):
        load_text_blocks(short, tok, seq_len=64, max_samples=2)
    with pytest.raises(FileNotFoundError):
        load_text_blocks(tmp_path / "none.txt", tok, 8, 1)
    blocks = load_text_blocks(SAMPLE / "domain.txt", tok, seq_len=32, max_samples=5)
    assert blocks.shape == (5, 32)
    assert blocks[0, 0].item() == ord("A")


def test_importance_command_end_to_end(tiny_llama_dir, tmp_path):
    out = tmp_path / "importance"
    main(
        [
            "importance",
            "--base",
            str(tiny_llama_dir),
            "--data",
            str(SAMPLE / "domain.txt"),
            "--choices",
            str(SAMPLE / "choices.jsonl"),
            "--out",
            str(out),
            "--seq_len",
            "32",
            "--max_samples",
            "3",
            "--max_questions",
            "3",
        ]
    )
    with (out / "importance.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["layer"]) for r in rows] == [0, 1, 2, 3]
    for column in (
        "angular_distance",
        "removal_loss_increase",
        "removal_acc_drop",
        "insert_copy_loss_increase",
        "insert_mean_loss_increase",
        "insert_mean_acc_drop",
    ):
        assert column in rows[0]
    assert all(0.0 < float(r["angular_distance"]) < 1.0 for r in rows)
    assert math.isnan(float(rows[-1]["insert_mean_loss"]))  # the top layer has no upper neighbour
    assert all(math.isfinite(float(r["removal_loss_increase"])) for r in rows)
    assert (out / "importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "importance.json").read_text())
    assert summary["num_layers"] == 4 and summary["questions"] == 3
    assert set(summary["baseline"]) == {"loss", "ppl", "acc"}
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporaries
    # The profile drives SLayer's importance placement.
    exp = SLayer(placement="importance", importance_file=str(out / "importance.csv"), num_deleted=0)
    distances = [float(r["angular_distance"]) for r in rows]
    assert exp.insert_after(4) == [max(range(2), key=distances.__getitem__)]
