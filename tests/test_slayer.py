"""SLayer: the plan (Llama SLayer 8B layout), the mean initialisation, pruning with the merged final
block, the trainable set, options, and importance-guided placement recorded in the manifest."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from blockexp.cli import main
from blockexp.expanders import ExpanderConfigError, SLayer, build_expander
from blockexp.io.manifest import MANIFEST_NAME
from blockexp.layers import get_arch

LLAMA2_7B_PARAMS = 6_738_415_616
LLAMA2_7B_LAYER = 202_383_360


def test_plan_matches_llama_slayer_8b():
    plan = SLayer().plan(32)
    assert plan.num_layers == 38
    new = [s for s in plan.layers if s.zero_out]
    # One new block after original layers 1, 3, ..., 15, each the mean of its two neighbours.
    assert [s.source for s in new] == [(i, i + 1) for i in range(1, 16, 2)]
    for spec in new:
        assert spec.init == "mean" and spec.trainable
        below = plan.layers[spec.index - 1]
        assert below.init == "base" and below.source == (spec.source[0],)
    # Layers 30 and 31 are deleted; the final block is mean(29, 30, 31) and trains.
    kept = [s.source[0] for s in plan.layers if s.init == "base"]
    assert kept == list(range(29))
    final = plan.layers[-1]
    assert final.source == (29, 30, 31) and final.init == "mean" and not final.zero_out
    assert plan.trainable_layers == [s.index for s in new] + [37]


def test_plan_command_from_config_json_alone(tmp_path, capsys):
    from transformers import LlamaConfig

    LlamaConfig(
        num_hidden_layers=32,
        hidden_size=4096,
        intermediate_size=11008,
        num_attention_heads=32,
        vocab_size=32000,
    ).save_pretrained(tmp_path)
    main(["plan", "--base", str(tmp_path / "config.json"), "--expander", "SLayer", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["num_layers"] == 38
    # +8 new blocks, -2 deleted layers; 8 new blocks and the merged final block train.
    assert data["total_params"] == LLAMA2_7B_PARAMS + 6 * LLAMA2_7B_LAYER
    assert data["trainable_params"] == 9 * LLAMA2_7B_LAYER
    assert data["layers"][-1]["source"] == [29, 30, 31]
    main(["plan", "--base", str(tmp_path), "--expander", "SLayer"])  # the table
    assert "32 -> 38" in capsys.readouterr().out


def test_plan_options():
    assert [s.describe() for s in SLayer(init="copy", zero_out=False).plan(8).layers] == [
        "base(0)",
        "base(1)",
        "copy(1)",
        "base(2)",
        "base(3)",
        "copy(3)",
        "base(4)",
        "mean(5,6,7)",
    ]
    merged = SLayer(merge="discarded_only").plan(8).layers[-1]
    assert merged.source == (6, 7) and merged.trainable
    assert SLayer(merge="discarded_only", num_deleted=1).plan(8).layers[-1].describe() == "copy(7)"
    no_prune = SLayer(num_deleted=0).plan(32)
    assert no_prune.num_layers == 40 and no_prune.trainable_layers == no_prune.new_layers
    # The paper's 1/3 variant: 1 block per 2 layers, 6 times, from the first layer.
    third = SLayer(fraction=1 / 3).plan(36)
    assert [s.source for s in third.layers if s.zero_out] == [(i, i + 1) for i in range(1, 12, 2)]
    assert [s.source for s in SLayer(num_segments=4).plan(32).layers if s.zero_out] == [
        (3, 4),
        (7, 8),
        (11, 12),
        (15, 16),
    ]


@pytest.mark.parametrize(
    "kwargs,num_layers,message",
    [
        ({"num_segments": 3}, 32, r"cannot be split into num_segments=3.*\[1, 2, 4, 8, 16\]"),
        ({"num_deleted": 3}, 4, "keep at least 2"),
        ({"fraction": 1.0, "num_deleted": 0}, 4, "upper neighbour"),
        ({"fraction": 0.0}, 4, "fraction must be in"),
        ({"init": "zeros"}, 4, "init must be"),
        ({"placement": "importance"}, 4, "needs importance_file"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, num_layers, message):
    with pytest.raises(ExpanderConfigError, match=message):
        SLayer(**kwargs).plan(num_layers)


def test_init_means_pruning_and_layer_idx(tiny_llama):
    base = tiny_llama(6)
    model = copy.deepcopy(base)
    SLayer(num_deleted=2).expand(model)  # span 3, one segment: block after 2; 4, 5 deleted
    old = get_arch(base).layers(base)
    new = get_arch(model).layers(model)
    assert model.config.num_hidden_layers == len(new) == 5
    assert [layer.self_attn.layer_idx for layer in new] == list(range(5))
    for i in range(3):  # kept layers are unchanged
        for (name, param), ref in zip(new[i].named_parameters(), old[i].parameters(), strict=True):
            assert torch.equal(param, ref), name
    block, final = new[3], new[4]
    old_params = [dict(layer.named_parameters()) for layer in old]
    for name, param in block.named_parameters():
        if name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            assert torch.count_nonzero(param) == 0
        else:  # norms included
            torch.testing.assert_close(param, (old_params[2][name] + old_params[3][name]) / 2)
    for name, param in final.named_parameters():
        want = (old_params[3][name] + old_params[4][name] + old_params[5][name]) / 3
        torch.testing.assert_close(param, want)
    assert final.self_attn.q_proj.weight.data_ptr() != old[3].self_attn.q_proj.weight.data_ptr()


def test_trainable_set_is_new_blocks_and_final_block(tiny_llama):
    model = tiny_llama(8)
    expansion = SLayer().expand(model)  # blocks after 1 and 3; 6, 7 deleted; final mean(5, 6, 7)
    expansion.freeze()
    assert expansion.plan.trainable_layers == [2, 5, 7]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(expansion.trainable)
    layers = get_arch(model).layers(model)
    want = {id(p) for i in (2, 5, 7) for p in layers[i].parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == want
    assert not model.model.embed_tokens.weight.requires_grad
    assert not model.lm_head.weight.requires_grad and not model.model.norm.weight.requires_grad
    with_emb = SLayer(train_embeddings=True).expand(tiny_llama(8))
    assert "model.embed_tokens.weight" in with_emb.trainable


def test_preserves_function_only_without_pruning(tiny_llama):
    assert SLayer.preserves_function is False  # not for every argument (declared per class)
    assert SLayer().is_identity() is False
    assert SLayer(num_deleted=0, zero_out=False).is_identity() is False
    exp = SLayer(num_deleted=0)
    assert exp.is_identity() is True and SLayer.preserves_function is False
    base = tiny_llama(8)
    model = copy.deepcopy(base)
    exp.expand(model)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        assert (base(ids).logits - model(ids).logits).abs().max() <= 1e-5
        pruned = copy.deepcopy(base)
        SLayer().expand(pruned)
        assert (base(ids).logits - pruned(ids).logits).abs().max() > 1e-2


def _write_profile(path, scores):
    lines = ["layer,angular_distance,removal_loss_increase"]
    lines += [f"{i},{s},{-s}" for i, s in enumerate(scores)]
    path.write_text("\n".join(lines) + "\n")


def test_importance_placement_is_pure_and_validated(tmp_path):
    profile = tmp_path / "importance.csv"
    _write_profile(profile, [0.1, 0.5, 0.2, 0.9, 0.8, 0.3, 0.4, 0.05])
    exp = SLayer(placement="importance", importance_file=str(profile), num_blocks=2)
    # Candidates: the first half (0..3), with a kept upper neighbour -> top-2 of 0..3 = 3, 1.
    assert exp.insert_after(8) == [1, 3]
    assert exp.plan(8) == exp.plan(8)
    assert [s.source for s in exp.plan(8).layers if s.zero_out] == [(1, 2), (3, 4)]
    by_removal = SLayer(
        placement="importance",
        importance_file=str(profile),
        importance_metric="removal_loss_increase",
        num_blocks=2,
        fraction=1.0,
    )
    assert by_removal.insert_after(8) == [0, 2]
    with pytest.raises(ExpanderConfigError, match="has 8 layers but the model has 6"):
        exp.plan(6)
    with pytest.raises(ExpanderConfigError, match="importance_metric to one of"):
        SLayer(placement="importance", importance_file=str(profile), importance_metric="nope")
    with pytest.raises(FileNotFoundError, match="python -m blockexp importance"):
        SLayer(placement="importance", importance_file=str(tmp_path / "missing.csv"))
    with pytest.raises(ExpanderConfigError, match="exceeds the 4 candidate layers"):
        SLayer(placement="importance", importance_file=str(profile), num_blocks=5).plan(8)


def test_importance_placement_recorded_in_manifest(tiny_llama_dir, tmp_path):
    profile = tmp_path / "importance.csv"
    _write_profile(profile, [0.1, 0.5, 0.2, 0.9])
    out = tmp_path / "expanded"
    main(
        [
            "expand",
            "--base",
            str(tiny_llama_dir),
            "--out",
            str(out),
            "--expander",
            "SLayer",
            "--expander.placement",
            "importance",
            "--expander.importance_file",
            str(profile),
            "--expander.fraction",
            "1.0",
            "--expander.num_blocks",
            "2",
            "--expander.num_deleted",
            "0",
        ]
    )
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    extra = manifest["extra"]
    # Layer 3 scores highest but has no upper neighbour to average with: blocks after 1 and 2.
    assert extra["placement"] == "importance" and extra["insert_after"] == [1, 2]
    assert extra["importance"]["scores"] == [0.1, 0.5, 0.2, 0.9]
    assert extra["importance"]["metric"] == "angular_distance"
    assert manifest["new_layers"] == [2, 4] and manifest["num_layers"] == 6
    # The manifest alone rebuilds the same plan (the profile is stored; the file is not needed).
    profile.unlink()
    rebuilt = build_expander(manifest["expander"])
    assert rebuilt.plan(4).to_dict() == manifest["plan"]
