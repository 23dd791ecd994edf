"""Lightning callbacks."""

from .general import GeneralEval
from .summary import ExpansionSummary
from .trace import TRACECallback

__all__ = ["ExpansionSummary", "GeneralEval", "TRACECallback"]
