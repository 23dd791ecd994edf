"""Metrics: TRACE task metrics (torchmetrics) and continual-learning scores (OP, BWT)."""

from .continual import as_score_matrix, backward_transfer, overall_performance
from .text import (
    METRICS,
    SARI,
    TRACE_TASK_METRICS,
    AnswerAccuracy,
    EditSimilarity,
    RougeL,
    build_metric,
    edit_similarity,
    extract_choice,
    extract_number,
    sari_sentence,
)

__all__ = [
    "METRICS",
    "SARI",
    "TRACE_TASK_METRICS",
    "AnswerAccuracy",
    "EditSimilarity",
    "RougeL",
    "as_score_matrix",
    "backward_transfer",
    "build_metric",
    "edit_similarity",
    "extract_choice",
    "extract_number",
    "overall_performance",
    "sari_sentence",
]
