"""Continual-learning scores over a score matrix ``R`` (rounds x tasks).

``R[t][i]`` (0-based) is the score on task ``i`` after training through task ``t``. With 1-based
indices, after learning task ``t``:

    OP_t                 = 1/t     * sum_{i=1..t}   R_{t,i}                 (both papers)
    BWT_t  (llama_pro)   = 1/t     * sum_{i=1..t}   (R_{t,i} - R_{i,i})     LLaMA Pro eq. 7
    BWT_t  (trace)       = 1/(t-1) * sum_{i=1..t-1} (R_{t,i} - R_{i,i})     TRACE paper

The LLaMA Pro paper (Wu et al., 2024, Sec. 4.4, eqs. 6-7) averages BWT over all ``t`` tasks seen
(the term ``i = t`` is zero), which reproduces its Tables 11-13 (e.g. block expansion: OP 0.465,
BWT -0.143); that is the default. The TRACE paper (Wang et al., 2023, arXiv:2310.06762v1, Sec. 3)
introduces OP and BWT with the same sentence, but the BWT of each of its detailed tables (appendix
Tables 7-16: SeqFT and LoRA on five models) is the average over the ``t - 1`` earlier tasks, so
TRACE's BWT is ``t / (t - 1)`` times LLaMA Pro's (-0.163 for LLaMA Pro's Table 13). Both are 0
after the first round. Entries above the diagonal (tasks not trained yet) are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "BWT_DEFINITIONS",
    "as_score_matrix",
    "backward_transfer",
    "overall_performance",
]

#: The published BWT definitions, by source: name -> (formula, where it is defined).
BWT_DEFINITIONS: dict[str, tuple[str, str]] = {
    "llama_pro": (
        "1/t * sum_{i<=t} (R_{t,i} - R_{i,i})",
        "LLaMA Pro (Wu et al., 2024), eq. 7; reproduces its Tables 11-13",
    ),
    "trace": (
        "1/(t-1) * sum_{i<t} (R_{t,i} - R_{i,i})",
        "TRACE (Wang et al., 2023), Sec. 3; reproduces its appendix Tables 7-16",
    ),
}


def as_score_matrix(R: Sequence[Sequence[float | None]] | np.ndarray) -> np.ndarray:
    """Convert a score matrix to a float array (``None`` -> NaN) and check its shape.

    Args:
        R: rows are rounds (after training task t), columns are tasks; at least as many columns
            as rows.

    Returns:
        A 2-D float64 array.

    Raises:
        ValueError: if ``R`` is not 2-D, is empty, or has fewer columns than rows.
    """
    arr = np.array(
        [[np.nan if v is None else float(v) for v in row] for row in R]
        if not isinstance(R, np.ndarray)
        else R,
        dtype=np.float64,
    )
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(
            f"R must be a non-empty 2-D matrix (rounds x tasks), got shape {arr.shape}"
        )
    if arr.shape[1] < arr.shape[0]:
        raise ValueError(
            f"R has {arr.shape[0]} rounds but only {arr.shape[1]} tasks; round t trains task t, "
            "so there are at most as many rounds as tasks"
        )
    return arr


def _rounds(arr: np.ndarray, t: int | None) -> int:
    t = arr.shape[0] if t is None else int(t)
    if not 1 <= t <= arr.shape[0]:
        raise ValueError(f"t must be in [1, {arr.shape[0]}] (the rounds in R), got {t}")
    needed = arr[:t, :t][np.tril_indices(t)]
    if np.isnan(needed).any():
        raise ValueError(f"R has missing entries on or below the diagonal of the first {t} rounds")
    return t


def overall_performance(
    R: Sequence[Sequence[float | None]] | np.ndarray, t: int | None = None
) -> float:
    """Overall performance OP_t (eq. 6): the mean score over tasks 1..t after round t.

    Args:
        R: score matrix, ``R[t-1][i-1]`` = score on task i after training through task t.
        t: the round (1-based); default the last row of ``R``.

    Returns:
        OP_t as a float.
    """
    arr = as_score_matrix(R)
    t = _rounds(arr, t)
    return float(arr[t - 1, :t].mean())


def backward_transfer(
    R: Sequence[Sequence[float | None]] | np.ndarray,
    t: int | None = None,
    definition: str = "llama_pro",
) -> float:
    """Backward transfer BWT_t: mean change on the tasks learned before round ``t``.

    Args:
        R, t: as in :func:`overall_performance`.
        definition: ``llama_pro`` (default; LLaMA Pro eq. 7, divides by ``t``) or ``trace``
            (the TRACE paper's, divides by the ``t - 1`` earlier tasks): see
            :data:`BWT_DEFINITIONS`.

    Returns:
        BWT_t as a float (negative means forgetting); 0.0 after the first round under both.
    """
    if definition not in BWT_DEFINITIONS:
        raise ValueError(
            f"unknown BWT definition {definition!r}: use one of {', '.join(BWT_DEFINITIONS)}"
        )
    arr = as_score_matrix(R)
    t = _rounds(arr, t)
    change = float((arr[t - 1, :t] - np.diag(arr)[:t]).sum())
    if definition == "llama_pro":
        return change / t
    return change / (t - 1) if t > 1 else 0.0
