"""Prefix and suffix stacking: identity blocks added at the bottom or the top of the model.

The position ablation of Wu et al., "LLaMA Pro: Progressive LLaMA with Block Expansion"
(ACL 2024), Sec. 5 and Table 7 ("Prefix Stacking (8 Block)", "Suffix Stacking (8 Block)"); suffix
stacking is the depth growth of Gong et al., "Efficient Training of BERT by Progressively
Stacking" (ICML 2019). The new blocks are initialised exactly as in LLaMA Pro: a copy of a base
block with its residual-stream writers (``o_proj``, ``down_proj`` and their biases) zeroed, so the
expanded model computes the base function at initialisation. Only the new blocks train.

Which base blocks are copied: ``PrefixStack`` copies the bottom ``P`` base blocks (``0..P-1``, in
order) and puts the copies below the whole stack; ``SuffixStack`` copies the top ``P`` base
blocks (``L-P..L-1``, in order) and puts the copies above the whole stack. A new block thus
starts from the weights of the base block it sits next to (its attention and FFN input
projections and norms), as in LLaMA Pro where a copy sits right above its source.

A 4-layer base, ``num_blocks=2``::

    base:            [0 1 2 3]
    PrefixStack:     [0' 1'] [0 1 2 3]        0', 1': zeroed copies of 0 and 1, trainable
    SuffixStack:     [0 1 2 3] [2' 3']        2', 3': zeroed copies of 2 and 3, trainable
    (LlamaPro N=2:   [0 1 1'] [2 3 3']        for comparison: interleaved)

The paper finds prefix stacking harmful (the new bottom blocks change the input of every base
block once they train) and suffix stacking safe for general ability but weaker than interleaving
on the new domain.
"""

from __future__ import annotations

from blockexp.expanders.base import Expander, ExpanderConfigError
from blockexp.expanders.registry import register_expander
from blockexp.layers.plan import LayerSpec, Plan

__all__ = ["PrefixStack", "SuffixStack"]


def _check_num_blocks(name: str, num_blocks: int, num_layers: int | None = None) -> None:
    if num_blocks < 1:
        raise ExpanderConfigError(f"{name}: num_blocks must be >= 1, got {num_blocks}.")
    if num_layers is not None and num_blocks > num_layers:
        raise ExpanderConfigError(
            f"{name}: num_blocks={num_blocks} exceeds the {num_layers} base layers (each new "
            f"block copies a distinct base block). Use num_blocks <= {num_layers}."
        )


class _Stack(Expander):
    """Shared argument handling of :class:`PrefixStack` and :class:`SuffixStack`."""

    streamable = True
    preserves_function = True

    def __init__(self, num_blocks: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        _check_num_blocks(type(self).__name__, num_blocks)
        self.num_blocks = num_blocks


@register_expander
class PrefixStack(_Stack):
    """Identity blocks stacked at the bottom: zeroed copies of the bottom ``num_blocks`` blocks.

    Args:
        num_blocks: how many blocks to add (``1 <= num_blocks <= L``).
        **kwargs: the ``train_*`` options of :class:`~blockexp.expanders.Expander`.
    """

    def plan(self, num_layers: int) -> Plan:
        _check_num_blocks(type(self).__name__, self.num_blocks, num_layers)
        new = [
            LayerSpec(0, (i,), "copy", zero_out=True, trainable=True)
            for i in range(self.num_blocks)
        ]
        base = [LayerSpec(0, (i,), "base") for i in range(num_layers)]
        return Plan.from_groups(num_layers, [new, base], strategy=type(self).__name__)


@register_expander
class SuffixStack(_Stack):
    """Identity blocks stacked at the top: zeroed copies of the top ``num_blocks`` blocks.

    Args:
        num_blocks: how many blocks to add (``1 <= num_blocks <= L``).
        **kwargs: the ``train_*`` options of :class:`~blockexp.expanders.Expander`.
    """

    def plan(self, num_layers: int) -> Plan:
        _check_num_blocks(type(self).__name__, self.num_blocks, num_layers)
        base = [LayerSpec(0, (i,), "base") for i in range(num_layers)]
        new = [
            LayerSpec(0, (i,), "copy", zero_out=True, trainable=True)
            for i in range(num_layers - self.num_blocks, num_layers)
        ]
        return Plan.from_groups(num_layers, [base, new], strategy=type(self).__name__)
