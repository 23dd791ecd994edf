"""Data loading for continual pre-training."""

from blockexp.data.cpt import CPTDataModule, DataError, DataSource

__all__ = ["CPTDataModule", "DataError", "DataSource"]
