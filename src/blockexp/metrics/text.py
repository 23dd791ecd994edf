"""TRACE task metrics as torchmetrics ``Metric`` objects.

TRACE (Wang et al., 2023, arXiv:2310.06762) scores each task with one metric; its evaluation
scripts define them as:

==============================  ===================  ==========================================
tasks                           name here            definition (TRACE's evaluation code)
==============================  ===================  ==========================================
C-STANCE, FOMC, ScienceQA       ``accuracy``         exact match of the answer choice: the first
                                                     character of the stripped prediction vs. the
                                                     first character of the gold answer
NumGLUE-cm, NumGLUE-ds          ``accuracy_number``  exact match of the answer; here the first
                                                     number in the prediction vs. the gold number
MeetingBank                     ``rouge_l``          ROUGE-L F-measure, averaged over samples
Py150                           ``edit_similarity``  ``fuzz.ratio(pred, gold) / 100`` after
                                                     replacing ``<STR_LIT>``-style placeholders:
                                                     1 - InDel distance / (len(pred) + len(gold))
20Minuten                       ``sari``             SARI (Xu et al., 2016), Hugging Face
                                                     ``sari`` semantics, one reference, in [0, 1]
==============================  ===================  ==========================================

Every metric takes ``update(preds, targets, sources=None)`` (``sources`` are the prompts; only
SARI uses them) and returns a scalar tensor in ``[0, 1]`` from ``compute()``. As in TRACE, an
empty prediction scores 0 and still counts in the average.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.text import ROUGEScore

__all__ = [
    "METRICS",
    "TRACE_TASK_METRICS",
    "AnswerAccuracy",
    "EditSimilarity",
    "RougeL",
    "SARI",
    "build_metric",
    "edit_similarity",
    "extract_choice",
    "extract_number",
    "sari_sentence",
]


class _MeanScore(Metric):
    """Base: the mean of per-sample scores (sum and count states, summed across processes)."""

    higher_is_better = True
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state(
            "total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def score(self, pred: str, target: str, source: str | None) -> float:  # pragma: no cover
        raise NotImplementedError

    def update(
        self, preds: Sequence[str], targets: Sequence[str], sources: Sequence[str] | None = None
    ) -> None:
        """Add a batch of predictions, gold answers and (optionally) prompts."""
        preds, targets = list(preds), list(targets)
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions but {len(targets)} targets")
        if sources is not None and len(sources) != len(preds):
            raise ValueError(f"{len(preds)} predictions but {len(sources)} sources")
        srcs = list(sources) if sources is not None else [None] * len(preds)
        batch = sum(self.score(p, t, s) for p, t, s in zip(preds, targets, srcs, strict=True))
        self.total += float(batch)
        self.count += len(preds)

    def compute(self) -> torch.Tensor:
        """The mean score (0 when nothing was added)."""
        return (self.total / self.count.clamp(min=1)).float()


# ------------------------------------------------------------------------------------- accuracy

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


class AnswerAccuracy(_MeanScore):
    """Accuracy with answer extraction.

    Args:
        mode: ``"choice"`` compares :func:`extract_choice` of prediction and gold (TRACE's
            classification and multiple-choice tasks, answers like ``"B"``); ``"number"`` compares
            the first number of each (NumGLUE; falls back to exact match when the gold answer
            holds no number); ``"exact"`` compares the stripped strings.
    """

    def __init__(self, mode: str = "choice") -> None:
        if mode not in ("choice", "number", "exact"):
            raise ValueError(f"mode must be 'choice', 'number' or 'exact', got {mode!r}")
        super().__init__()
        self.mode = mode

    def score(self, pred: str, target: str, source: str | None) -> float:
        pred, target = pred.strip(), target.strip()
        if not pred or not target:
            return 0.0
        if self.mode == "choice":
            return float(extract_choice(pred) == extract_choice(target))
        if self.mode == "number":
            gold = extract_number(target)
            if gold is not None:
                guess = extract_number(pred)
                return float(guess is not None and abs(guess - gold) <= 1e-6 * max(1.0, abs(gold)))
        return float(pred == target)


# ------------------------------------------------------------------------------ edit similarity

_LITERAL_RE = re.compile(r"<(STR|NUM|CHAR)_LIT:(.*?)>", re.S)


def _py150_postprocess(code: str) -> str:
    """Replace Py150's literal placeholders as TRACE does before scoring."""
    code = code.replace("<NUM_LIT>", "0").replace("<STR_LIT>", "").replace("<CHAR_LIT>", "")
    return _LITERAL_RE.sub(lambda m: m.group(2), code)


def _lcs_length(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if ca == cb else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def edit_similarity(pred: str, target: str) -> float:
    """``1 - indel_distance / (len(pred) + len(target))`` in [0, 1].

    The InDel distance counts insertions and deletions (a substitution costs 2); this is the
    ratio ``fuzzywuzzy.fuzz.ratio`` returns (x100, rounded) with python-Levenshtein, which TRACE
    uses for Py150. Two empty strings score 1.
    """
    total = len(pred) + len(target)
    if total == 0:
        return 1.0
    indel = total - 2 * _lcs_length(pred, target)
    return 1.0 - indel / total


class EditSimilarity(_MeanScore):
    """Mean :func:`edit_similarity` (TRACE's Py150 metric).

    Args:
        py150_literals: replace ``<NUM_LIT>``, ``<STR_LIT:x>`` ... placeholders first, as TRACE.
    """

    def __init__(self, py150_literals: bool = True) -> None:
        super().__init__()
        self.py150_literals = py150_literals

    def score(self, pred: str, target: str, source: str | None) -> float:
        if not pred or not target:
            return 0.0
        if self.py150_literals:
            pred, target = _py150_postprocess(pred), _py150_postprocess(target)
        return edit_similarity(pred, target)


# ------------------------------------------------------------------------------------------ SARI

_TOKEN_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def _normalize(text: str) -> list[str]:
    """Lower-case and split words from punctuation (close to sacrebleu's 13a tokenizer)."""
    return _TOKEN_RE.findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _sari_ngram(
    src: list[tuple], pred: list[tuple], refs: list[list[tuple]]
) -> tuple[float, float, float]:
    """Keep F1, deletion precision and addition F1 for one n-gram order.

    Follows the tensor2tensor / Hugging Face ``sari`` definition: source and prediction counts
    are scaled by the number of references, and 0/0 counts as a perfect score.
    """
    numref = len(refs)
    ref_counts = Counter(g for ref in refs for g in ref)
    src_counts = Counter({g: c * numref for g, c in Counter(src).items()})
    pred_counts = Counter({g: c * numref for g, c in Counter(pred).items()})

    keep = src_counts & pred_counts
    keep_good = keep & ref_counts
    keep_all = src_counts & ref_counts
    keep_p = sum(keep_good[g] / keep[g] for g in keep) / len(keep) if keep else 1.0
    keep_r = sum(keep_good[g] for g in keep) / sum(keep_all.values()) if keep_all else 1.0
    keep_f = 2 * keep_p * keep_r / (keep_p + keep_r) if keep_p + keep_r > 0 else 0.0

    deleted = src_counts - pred_counts
    del_good = deleted - ref_counts
    del_p = sum(del_good[g] / deleted[g] for g in deleted) / len(deleted) if deleted else 1.0

    added = set(pred_counts) - set(src_counts)
    add_good = added & set(ref_counts)
    add_all = set(ref_counts) - set(src_counts)
    add_p = len(add_good) / len(added) if added else 1.0
    add_r = len(add_good) / len(add_all) if add_all else 1.0
    add_f = 2 * add_p * add_r / (add_p + add_r) if add_p + add_r > 0 else 0.0
    return keep_f, del_p, add_f


def sari_sentence(source: str, pred: str, references: Sequence[str]) -> float:
    """SARI of one prediction in [0, 1]: mean of keep, delete and add scores over 1-4-grams."""
    if not references:
        raise ValueError("SARI needs at least one reference")
    s, p = _normalize(source), _normalize(pred)
    rs = [_normalize(r) for r in references]
    keep = dele = add = 0.0
    for n in range(1, 5):
        k, d, a = _sari_ngram(_ngrams(s, n), _ngrams(p, n), [_ngrams(r, n) for r in rs])
        keep, dele, add = keep + k, dele + d, add + a
    return (keep + dele + add) / 12.0


class SARI(_MeanScore):
    """Mean sentence SARI against one reference per sample (TRACE's 20Minuten metric).

    ``sources`` (the inputs to simplify) are required in :meth:`update`. For TRACE the prompt is
    used as the source, as in TRACE's evaluation.
    """

    def score(self, pred: str, target: str, source: str | None) -> float:
        if source is None:
            raise ValueError("SARI needs the source sentences: update(preds, targets, sources)")
        if not pred.strip():
            return 0.0
        return sari_sentence(source, pred, [target])


# --------------------------------------------------------------------------------------- ROUGE-L


class RougeL(ROUGEScore):
    """Mean sentence ROUGE-L F-measure (torchmetrics' ``ROUGEScore``; TRACE's MeetingBank metric).

    No stemming, so it needs no ``nltk``.
    """

    def __init__(self) -> None:
        super().__init__(rouge_keys="rougeL", use_stemmer=False)

    def update(
        self, preds: Sequence[str], targets: Sequence[str], sources: Sequence[str] | None = None
    ) -> None:
        """Add a batch (``sources`` is ignored)."""
        super().update(list(preds), list(targets))

    def compute(self) -> torch.Tensor:
        """The mean ROUGE-L F-measure."""
        return super().compute()["rougeL_fmeasure"]


# ------------------------------------------------------------------------------------- registry

METRICS: dict[str, tuple[type[Metric], dict]] = {
    "accuracy": (AnswerAccuracy, {"mode": "choice"}),
    "accuracy_number": (AnswerAccuracy, {"mode": "number"}),
    "exact_match": (AnswerAccuracy, {"mode": "exact"}),
    "rouge_l": (RougeL, {}),
    "edit_similarity": (EditSimilarity, {}),
    "sari": (SARI, {}),
}

TRACE_TASK_METRICS: dict[str, str] = {
    "C-STANCE": "accuracy",
    "FOMC": "accuracy",
    "MeetingBank": "rouge_l",
    "Py150": "edit_similarity",
    "ScienceQA": "accuracy",
    "NumGLUE-cm": "accuracy_number",
    "NumGLUE-ds": "accuracy_number",
    "20Minuten": "sari",
}


def build_metric(name: str) -> Metric:
    """A fresh metric by name (one of :data:`METRICS`)."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {sorted(METRICS)}")
    cls, kwargs = METRICS[name]
    return cls(**kwargs)
