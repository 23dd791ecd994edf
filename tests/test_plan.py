from __future__ import annotations

import pytest

from blockexp.expanders import ExpanderConfigError, LlamaPro
from blockexp.layers import LayerSpec, Plan, PlanError


def test_llama_pro_plan_matches_paper_8_3b():
    # LLaMA Pro 8.3B: LLaMA2-7B (32 layers), N=8 groups, P=1 -> 40 layers.
    plan = LlamaPro(num_groups=8, blocks_per_group=1).plan(32)
    assert plan.num_layers == 40
    assert plan.new_layers == [4, 9, 14, 19, 24, 29, 34, 39]
    assert plan.trainable_layers == plan.new_layers
    for idx in plan.new_layers:
        spec = plan.layers[idx]
        # Each new block is an identity copy of its group's top layer (the one just below it).
        assert spec.init == "copy" and spec.zero_out and spec.trainable
        assert spec.source == (plan.layers[idx - 1].source[0],)
    kept = [s.source[0] for s in plan.layers if s.init == "base"]
    assert kept == list(range(32))


def test_llama_pro_plan_p2_copies_top_two_of_each_group():
    plan = LlamaPro(num_groups=2, blocks_per_group=2).plan(8)
    assert [s.describe() for s in plan.layers] == [
        "base(0)",
        "base(1)",
        "base(2)",
        "base(3)",
        "copy(2)+zero",
        "copy(3)+zero",
        "base(4)",
        "base(5)",
        "base(6)",
        "base(7)",
        "copy(6)+zero",
        "copy(7)+zero",
    ]


@pytest.mark.parametrize(
    "layers,groups,per_group,match",
    [
        (32, 5, 1, r"32 layers cannot be split into num_groups=5.*\[1, 2, 4, 8, 16, 32\]"),
        (8, 4, 3, r"blocks_per_group=3 exceeds the group size 2"),
    ],
)
def test_llama_pro_bad_arguments_have_clear_errors(layers, groups, per_group, match):
    with pytest.raises(ExpanderConfigError, match=match):
        LlamaPro(num_groups=groups, blocks_per_group=per_group).plan(layers)


def test_llama_pro_rejects_nonpositive_arguments():
    with pytest.raises(ExpanderConfigError, match="num_groups must be >= 1"):
        LlamaPro(num_groups=0)
    with pytest.raises(ExpanderConfigError, match="blocks_per_group must be >= 1"):
        LlamaPro(num_groups=2, blocks_per_group=0)


def test_plan_roundtrip_and_validation():
    plan = LlamaPro(num_groups=2).plan(4)
    assert Plan.from_dict(plan.to_dict()) == plan
    with pytest.raises(PlanError, match="base model has 2 layers"):
        Plan(2, (LayerSpec(0, (0,), "base"), LayerSpec(1, (5,), "copy")))
    with pytest.raises(PlanError, match="kept more than once"):
        Plan(2, (LayerSpec(0, (0,), "base"), LayerSpec(1, (0,), "base")))
    with pytest.raises(PlanError, match="exactly one source"):
        Plan(2, (LayerSpec(0, (0, 1), "copy"),))
