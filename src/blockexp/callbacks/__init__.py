"""Lightning callbacks."""

from .summary import ExpansionSummary

__all__ = ["ExpansionSummary"]
