"""Full fine-tuning: every parameter trains, the architecture is unchanged.

"Sequential fine-tuning" (SeqFT) in the terms of TRACE (Wang et al., "TRACE: A Comprehensive
Benchmark for Continual Learning in Large Language Models", 2023), the baseline that LLaMA Pro
compares block expansion against in its Table 6 (Wu et al., ACL 2024, Sec. 5): the same base
model is trained on each new task or corpus in turn with all weights free, which is what makes
it forget. No block is added::

    base:      [0 1 2 3]
    trained:   [0 1 2 3]      every block, the final norm, embeddings and LM head train
"""

from __future__ import annotations

from blockexp.expanders.base import Expander
from blockexp.expanders.registry import register_expander
from blockexp.layers import TrainOptions

__all__ = ["FullFineTune"]


@register_expander
class FullFineTune(Expander):
    """Train every decoder block (and by default the embeddings, LM head and final norm).

    Args:
        train_embeddings: train the token embedding (default True).
        train_lm_head: train the LM head (default True; with tied embeddings it is the same
            tensor as the embedding).
        train_norms: train the final norm (default True). Norms inside the decoder blocks always
            train, as part of their block.
    """

    preserves_function = True

    def __init__(
        self,
        train_embeddings: bool = True,
        train_lm_head: bool = True,
        train_norms: bool = True,
    ) -> None:
        super().__init__(train_embeddings, train_lm_head, train_norms)

    @property
    def train_options(self) -> TrainOptions:
        """Every decoder block, plus what the ``train_*`` options add."""
        return TrainOptions(
            embeddings=self.train_embeddings,
            lm_head=self.train_lm_head,
            norms=self.train_norms,
            all_layers=True,
        )
