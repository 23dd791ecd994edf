"""TRACE task metrics as torchmetrics ``Metric`` objects, with two scoring rules.

``scoring="trace"`` (the default) reproduces TRACE's evaluation code sample by sample
(:mod:`blockexp.trace.metrics`); its numbers are comparable with published TRACE tables.
``scoring="lenient"`` strips predictions and extracts answers (a choice letter, the first
number); it is **not comparable with TRACE** and is meant for looking at small or untrained
models, whose answers are right but badly formatted.

=====================  ==========================  ===========================================
metric                 ``trace`` (TRACE's code)    ``lenient``
=====================  ==========================  ===========================================
``accuracy``           whole string ==             first letter after stripping spaces and
                       (C-STANCE, FOMC)            brackets, case-insensitive
``first_char_accuracy``  ``pred[0] == gold[0]``    as ``accuracy``
                       (ScienceQA)
``accuracy_number``    whole string ==             first number in the text == gold number
                       (NumGLUE-cm, NumGLUE-ds)
``exact_match``        whole string ==             stripped strings ==
``rouge_l``            ``rouge`` package ROUGE-L   torchmetrics ROUGE-L F (tokens, no stemming)
                       F (MeetingBank)
``edit_similarity``    ``fuzz.ratio`` integer      unrounded InDel similarity after the same
                       percent / 100 (Py150)       placeholder clean-up
``sari``               HF ``sari`` / 100           as ``trace``, but an empty prediction
                       (20Minuten)                 scores 0
=====================  ==========================  ===========================================

In both, an empty prediction counts in the average. Every metric takes
``update(preds, targets, sources=None)`` (``sources`` are the prompts; only SARI uses them) and
``compute()`` returns the mean per-sample score, a scalar tensor in ``[0, 1]``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
from torchmetrics import Metric

from blockexp.trace import metrics as _trace

__all__ = [
    "METRICS",
    "SCORING",
    "TRACE_TASK_METRICS",
    "TaskMetric",
    "build_metric",
    "edit_similarity",
    "extract_choice",
    "extract_number",
    "sari_sentence",
    "score_samples",
]

#: The scoring rules: ``trace`` (TRACE's code, the default) and ``lenient`` (answer extraction,
#: not comparable with TRACE).
SCORING: tuple[str, ...] = ("trace", "lenient")

#: The metric of each TRACE task (TRACE's ``evaluations/eval_<task>.py``).
TRACE_TASK_METRICS: dict[str, str] = {
    "C-STANCE": "accuracy",
    "FOMC": "accuracy",
    "MeetingBank": "rouge_l",
    "Py150": "edit_similarity",
    "ScienceQA": "first_char_accuracy",
    "NumGLUE-cm": "accuracy_number",
    "NumGLUE-ds": "accuracy_number",
    "20Minuten": "sari",
}

# ---------------------------------------------------------------------------- lenient helpers

_NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:,\d{3})*(?:\.\d*)?|\.\d+)")


def extract_choice(text: str) -> str:
    """The answer choice of a generation: its first character after stripping spaces and
    opening brackets/quotes, upper-cased (``" (b) because"`` -> ``"B"``; ``""`` if none)."""
    text = text.strip().lstrip("([{'\"").strip()
    return text[:1].upper()


def extract_number(text: str) -> float | None:
    """The first number in ``text`` (``"about 1,250.5 km"`` -> ``1250.5``), or None."""
    match = _NUMBER_RE.search(text)
    if match is None:
        return None
    try:
        return float(match.group(0).replace(",", ""))
    except ValueError:
        return None


def edit_similarity(prediction: str, target: str) -> float:
    """``1 - indel_distance / (len(a) + len(b))`` in [0, 1], unrounded (rapidfuzz's InDel
    normalized similarity; two empty strings score 1). ``fuzz.ratio`` is this x100."""
    from rapidfuzz.distance import Indel

    return float(Indel.normalized_similarity(prediction, target))


def sari_sentence(source: str, prediction: str, references: str | Sequence[str]) -> float:
    """Sentence SARI in [0, 1] as the Hugging Face ``sari`` metric (see
    :func:`blockexp.trace.metrics.sari`)."""
    return _trace.sari(source, prediction, references)


def _lenient_choice(prediction: str, target: str) -> float:
    prediction, target = prediction.strip(), target.strip()
    if not prediction or not target:
        return 0.0
    return float(extract_choice(prediction) == extract_choice(target))


def _lenient_number(prediction: str, target: str) -> float:
    prediction, target = prediction.strip(), target.strip()
    if not prediction or not target:
        return 0.0
    gold = extract_number(target)
    if gold is None:
        return float(prediction == target)
    guess = extract_number(prediction)
    return float(guess is not None and abs(guess - gold) <= 1e-6 * max(1.0, abs(gold)))


def _lenient_exact(prediction: str, target: str) -> float:
    prediction, target = prediction.strip(), target.strip()
    return float(bool(prediction) and prediction == target)


def _lenient_rouge_l(prediction: str, target: str) -> float:
    from torchmetrics.functional.text import rouge_score

    scores = rouge_score(prediction.strip(), target, rouge_keys="rougeL", use_stemmer=False)
    return float(scores["rougeL_fmeasure"])


def _lenient_edit_similarity(prediction: str, target: str) -> float:
    prediction = prediction.strip()
    if not prediction or not target:
        return 0.0
    return edit_similarity(_trace.py150_postprocess(prediction), _trace.py150_postprocess(target))


def _lenient_sari(prediction: str, target: str, source: str) -> float:
    if not prediction.strip():
        return 0.0
    return _trace.sari(source, prediction.strip(), target)


# ---------------------------------------------------------------------------------- registry

#: Metric names with a one-line description of each (``trace`` scoring).
METRICS: dict[str, str] = {
    "accuracy": "exact match of the whole answer (TRACE: C-STANCE, FOMC)",
    "first_char_accuracy": "first character equal (TRACE: ScienceQA)",
    "accuracy_number": "exact match of the whole answer (TRACE: NumGLUE)",
    "exact_match": "exact match of the whole answer",
    "rouge_l": "ROUGE-L F of the rouge package (TRACE: MeetingBank)",
    "edit_similarity": "fuzz.ratio / 100 after Py150 clean-up (TRACE: Py150)",
    "sari": "SARI / 100, Hugging Face sari metric (TRACE: 20Minuten)",
}

_Scorer = Callable[[str, str, str | None], float]


def _pair(fn: Callable[[str, str], float]) -> _Scorer:
    return lambda prediction, target, source: fn(prediction, target)


def _needs_source(fn: Callable[[str, str, str], float]) -> _Scorer:
    def scorer(prediction: str, target: str, source: str | None) -> float:
        if source is None:
            raise ValueError("SARI needs the source texts: update(preds, targets, sources)")
        return fn(prediction, target, source)

    return scorer


_SCORERS: dict[str, dict[str, _Scorer]] = {
    "trace": {
        "accuracy": _pair(_trace.exact_match),
        "first_char_accuracy": _pair(_trace.first_char_match),
        "accuracy_number": _pair(_trace.exact_match),
        "exact_match": _pair(_trace.exact_match),
        "rouge_l": _pair(_trace.rouge_l),
        "edit_similarity": _pair(_trace.py150_similarity),
        "sari": _needs_source(lambda p, t, s: _trace.sari(s, p, t)),
    },
    "lenient": {
        "accuracy": _pair(_lenient_choice),
        "first_char_accuracy": _pair(_lenient_choice),
        "accuracy_number": _pair(_lenient_number),
        "exact_match": _pair(_lenient_exact),
        "rouge_l": _pair(_lenient_rouge_l),
        "edit_similarity": _pair(_lenient_edit_similarity),
        "sari": _needs_source(_lenient_sari),
    },
}


def _check(name: str, scoring: str) -> None:
    if scoring not in SCORING:
        raise ValueError(f"unknown scoring {scoring!r}; choose one of {list(SCORING)}")
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {sorted(METRICS)}")


class TaskMetric(Metric):
    """The mean per-sample score of one task metric (sum and count states, summed across
    processes).

    Args:
        name: a key of :data:`METRICS`.
        scoring: ``trace`` (TRACE's code, default) or ``lenient`` (not comparable with TRACE).
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, name: str, scoring: str = "trace") -> None:
        _check(name, scoring)
        super().__init__()
        self.name = name
        self.scoring = scoring
        self.add_state(
            "total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def score(self, prediction: str, target: str, source: str | None = None) -> float:
        """One sample's score in [0, 1]."""
        return _SCORERS[self.scoring][self.name](prediction, target, source)

    def scores(
        self, preds: Sequence[str], targets: Sequence[str], sources: Sequence[str] | None = None
    ) -> list[float]:
        """Per-sample scores of a batch (does not change the metric's state)."""
        preds, targets = list(preds), list(targets)
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions but {len(targets)} targets")
        if sources is not None and len(sources) != len(preds):
            raise ValueError(f"{len(preds)} predictions but {len(sources)} sources")
        srcs = list(sources) if sources is not None else [None] * len(preds)
        return [self.score(p, t, s) for p, t, s in zip(preds, targets, srcs, strict=True)]

    def update(
        self, preds: Sequence[str], targets: Sequence[str], sources: Sequence[str] | None = None
    ) -> None:
        """Add a batch of predictions, gold answers and (for SARI) the prompts."""
        batch = self.scores(preds, targets, sources)
        self.total += float(sum(batch))
        self.count += len(batch)

    def compute(self) -> torch.Tensor:
        """The mean score (0 when nothing was added)."""
        return (self.total / self.count.clamp(min=1)).float()


def build_metric(name: str, scoring: str = "trace") -> TaskMetric:
    """A fresh metric by name (a key of :data:`METRICS`) under a scoring rule (:data:`SCORING`)."""
    return TaskMetric(name, scoring)


def score_samples(
    name: str,
    preds: Sequence[str],
    targets: Sequence[str],
    sources: Sequence[str] | None = None,
    scoring: str = "trace",
) -> list[float]:
    """Per-sample scores of ``preds`` against ``targets`` with metric ``name``."""
    return build_metric(name, scoring).scores(preds, targets, sources)
