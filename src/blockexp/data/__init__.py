"""Data loading for continual pre-training."""

from blockexp.data.cpt import CPTDataModule, DataError, DataSource
from blockexp.data.sft import SFTDataModule
from blockexp.data.trace import TRACEDataModule

__all__ = ["CPTDataModule", "DataError", "DataSource", "SFTDataModule", "TRACEDataModule"]
