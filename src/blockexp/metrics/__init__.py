"""Metrics: TRACE task metrics (TRACE's own by default) and continual scores (OP, BWT)."""

from . import trace
from .continual import as_score_matrix, backward_transfer, overall_performance
from .text import (
    METRICS,
    SCORING,
    TRACE_TASK_METRICS,
    TaskMetric,
    build_metric,
    edit_similarity,
    extract_choice,
    extract_number,
    sari_sentence,
    score_samples,
)

__all__ = [
    "METRICS",
    "SCORING",
    "TRACE_TASK_METRICS",
    "TaskMetric",
    "as_score_matrix",
    "backward_transfer",
    "build_metric",
    "edit_similarity",
    "extract_choice",
    "extract_number",
    "overall_performance",
    "sari_sentence",
    "score_samples",
    "trace",
]
