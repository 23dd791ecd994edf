"""Lightning callbacks."""

from .general import GeneralEval
from .summary import ExpansionSummary
from .timer import StepTimer
from .trace import TRACECallback

__all__ = ["ExpansionSummary", "GeneralEval", "StepTimer", "TRACECallback"]
