"""Lightning callbacks."""

from .summary import ExpansionSummary
from .trace import TRACECallback

__all__ = ["ExpansionSummary", "TRACECallback"]
