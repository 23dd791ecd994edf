"""LLaMA Pro block expansion.

Wu et al., "LLaMA Pro: Progressive LLaMA with Block Expansion" (ACL 2024), Sec. 3.2. The ``L``
base blocks are split into ``N`` groups of ``M = L/N``; after each group, identity copies of its
top ``P`` blocks are stacked. In a copy, ``o_proj`` and ``down_proj`` (and their biases, if any)
are zero, so attention and FFN add nothing to the residual stream and the expanded model computes
exactly the base function. Only the new blocks train.

LLaMA2-7B, N=8, P=1 (the paper's LLaMA Pro 8.3B, 32 -> 40 layers)::

    base:      [0 1 2 3] [4 5 6 7] ... [28 29 30 31]
    expanded:  [0 1 2 3 3'] [4 5 6 7 7'] ... [28 29 30 31 31']
                        ^ identity copy of layer 3 (o_proj = down_proj = 0), trainable

With P=2 each group ``[a b c d]`` becomes ``[a b c d c' d']``.
"""

from __future__ import annotations

from blockexp.expanders.base import Expander, ExpanderConfigError
from blockexp.expanders.registry import register_expander
from blockexp.layers.plan import LayerSpec, Plan

__all__ = ["LlamaPro"]


@register_expander
class LlamaPro(Expander):
    """Interleaved identity copies (LLaMA Pro).

    Args:
        num_groups: ``N``, the number of groups the base layers are split into; must divide the
            number of base layers.
        blocks_per_group: ``P``, how many of each group's top blocks are copied after it
            (``1 <= P <= L/N``).
        **kwargs: the ``train_*`` options of :class:`~blockexp.expanders.Expander`.
    """

    streamable = True
    preserves_function = True

    def __init__(self, num_groups: int = 8, blocks_per_group: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_groups < 1:
            raise ExpanderConfigError(f"LlamaPro: num_groups must be >= 1, got {num_groups}.")
        if blocks_per_group < 1:
            raise ExpanderConfigError(
                f"LlamaPro: blocks_per_group must be >= 1, got {blocks_per_group}."
            )
        self.num_groups = num_groups
        self.blocks_per_group = blocks_per_group

    def plan(self, num_layers: int) -> Plan:
        n, p = self.num_groups, self.blocks_per_group
        if num_layers % n != 0:
            divisors = [d for d in range(1, num_layers + 1) if num_layers % d == 0]
            raise ExpanderConfigError(
                f"LlamaPro: {num_layers} layers cannot be split into num_groups={n} equal groups. "
                f"Choose num_groups from {divisors}."
            )
        group_size = num_layers // n
        if p > group_size:
            raise ExpanderConfigError(
                f"LlamaPro: blocks_per_group={p} exceeds the group size {group_size} "
                f"({num_layers} layers / {n} groups). Use blocks_per_group <= {group_size} "
                "or fewer groups."
            )
        groups = []
        for g in range(n):
            members = list(range(g * group_size, (g + 1) * group_size))
            group = [LayerSpec(0, (i,), "base") for i in members]
            group += [
                LayerSpec(0, (i,), "copy", zero_out=True, trainable=True)
                for i in members[group_size - p :]
            ]
            groups.append(group)
        return Plan.from_groups(num_layers, groups, strategy=type(self).__name__)
