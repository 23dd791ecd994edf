"""Continual-learning scores over a score matrix ``R`` (rounds x tasks).

``R[t][i]`` (0-based) is the score on task ``i`` after training through task ``t``. With 1-based
indices as in the LLaMA Pro paper (Wu et al., 2024, Sec. 4.4, eqs. 6-7), after learning task ``t``:

    OP_t  = 1/t * sum_{i=1..t} R_{t,i}
    BWT_t = 1/t * sum_{i=1..t} (R_{t,i} - R_{i,i})

BWT is averaged over all ``t`` tasks seen (the term ``i = t`` is zero), which reproduces the
paper's Tables 11-13 (e.g. block expansion: OP 0.465, BWT -0.143). Entries above the diagonal
(tasks not trained yet) are ignored by both scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["as_score_matrix", "backward_transfer", "overall_performance"]


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
    R: Sequence[Sequence[float | None]] | np.ndarray, t: int | None = None
) -> float:
    """Backward transfer BWT_t (eq. 7): mean change on tasks 1..t since each was learned.

    ``R`` and ``t`` as in :func:`overall_performance`. Returns BWT_t as a float (negative means
    forgetting); ``BWT_1 == 0``.
    """
    arr = as_score_matrix(R)
    t = _rounds(arr, t)
    return float((arr[t - 1, :t] - np.diag(arr)[:t]).sum() / t)
