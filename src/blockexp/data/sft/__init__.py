"""Supervised fine-tuning (SFT) data: chat / instruction records -> assistant-masked sequences.

One job per module: :mod:`~blockexp.data.sft.conversations` (record layouts -> conversations),
:mod:`~blockexp.data.sft.encode` (chat template, assistant-only labels, packing) and
:mod:`~blockexp.data.sft.module` (the DataModule). Configs name
``blockexp.data.sft.SFTDataModule``.
"""

from blockexp.data.sft.module import SFTDataModule

__all__ = ["SFTDataModule"]
