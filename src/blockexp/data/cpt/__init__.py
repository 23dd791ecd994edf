"""Continual pre-training (CPT) data: local text corpora -> packed, mixture-weighted token blocks.

One job per module, in pipeline order: :mod:`~blockexp.data.cpt.sources` (the named sources and
their validation), :mod:`~blockexp.data.cpt.tokenize` (documents -> token ids + eos, cached by
``datasets``), :mod:`~blockexp.data.cpt.pack` (held-out split, ``seq_len`` blocks, mixture
weights) and :mod:`~blockexp.data.cpt.module` (the DataModule). Configs name
``blockexp.data.cpt.CPTDataModule``.
"""

from blockexp.data.cpt.module import CPTDataModule
from blockexp.data.cpt.sources import DataSource

__all__ = ["CPTDataModule", "DataSource"]
