"""Per-sample scores exactly as TRACE's evaluation code computes them.

TRACE (Wang et al., 2023, arXiv:2310.06762; code at github.com/BeyonderXX/TRACE) scores each
task in ``evaluations/eval_<task>.py`` with the helpers of its ``metrics.py``. Every helper
skips a sample whose prediction or gold answer is the empty string (it adds nothing but still
counts in the average), then compares the *raw* decoded strings: no stripping, no case folding.
The functions below return one sample's score in ``[0, 1]`` under those rules:

=========================  ===================================================================
function                   TRACE's definition
=========================  ===================================================================
:func:`exact_match`        ``caculate_accuracy``: ``prediction == target`` (C-STANCE, FOMC,
                           NumGLUE-cm, NumGLUE-ds)
:func:`first_char_match`   ``eval_ScienceQA``: ``prediction[0] == target[0]`` (the answer letter;
                           no strip, so ``" B"`` is wrong)
:func:`rouge_l`            ``caculate_rouge``: ROUGE-L F of the ``rouge`` package (1.0.1), called
                           as ``Rouge(metrics=["rouge-l"]).get_scores(target, prediction,
                           avg=True)`` (gold as hypothesis: TRACE's argument order)
:func:`py150_similarity`   ``eval_Py150``: literal placeholders replaced, then ``fuzz.ratio``
                           (fuzzywuzzy with python-Levenshtein: ``round(100 * InDel ratio)``, an
                           integer percent), divided by 100 here
:func:`sari`               ``caculate_sari``: the Hugging Face ``sari`` metric (one reference;
                           lower-cased, sacrebleu ``13a`` tokens split on single spaces), divided
                           by 100 here
=========================  ===================================================================

Where TRACE's own code raises instead of scoring, these functions return 0 (the sample still
counts): an empty ScienceQA prediction or gold (``IndexError`` on ``pred[0]``), and ROUGE-L of a
text made only of periods such as ``"..."`` (the ``rouge`` package splits sentences on ``.``
and raises ``ValueError: Collections must contain at least 1 sentence``).

The per-sample values agree with TRACE's code run unmodified (``tests/test_trace_parity.py``,
cases in ``tests/data/trace_parity_cases.json``).
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import lru_cache

__all__ = [
    "exact_match",
    "first_char_match",
    "py150_postprocess",
    "py150_similarity",
    "rouge_l",
    "sari",
    "sari_normalize",
]


def exact_match(prediction: str, target: str) -> float:
    """1.0 if the raw strings are equal (TRACE's ``caculate_accuracy``); 0.0 if either is empty."""
    if prediction == "" or target == "":
        return 0.0
    return float(prediction == target)


def first_char_match(prediction: str, target: str) -> float:
    """1.0 if the first characters are equal (TRACE's ScienceQA accuracy, no stripping).

    TRACE's ``eval_ScienceQA.resolve`` indexes ``[0]`` and crashes on an empty string; that
    sample scores 0 here.
    """
    if prediction == "" or target == "":
        return 0.0
    return float(prediction[0] == target[0])


# ----------------------------------------------------------------------------------- ROUGE-L


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge import Rouge

    return Rouge(metrics=["rouge-l"])


@contextlib.contextmanager
def _recursion_room(depth: int) -> Iterator[None]:
    """Raise Python's recursion limit for the ``rouge`` package's recursive LCS back-tracking
    (its depth grows with the words in a sentence pair)."""
    old = sys.getrecursionlimit()
    if depth + 200 > old:
        sys.setrecursionlimit(depth + old)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def rouge_l(prediction: str, target: str) -> float:
    """TRACE's MeetingBank score: ROUGE-L F of the ``rouge`` package, gold as hypothesis.

    The package splits each text into sentences on ``.``, collapses whitespace and computes the
    summary-level union LCS over *sets* of words, with F = 2PR / (P + R + 1e-8). An empty string
    scores 0 (TRACE skips it); a text with no sentence left after splitting (``"..."``) scores 0
    (TRACE's code raises there). The recursion limit is raised as needed, so a very long
    single-sentence text gets its score where the package would hit Python's default limit.
    """
    if prediction == "" or target == "":
        return 0.0
    words = len(prediction.split()) + len(target.split())
    try:
        with _recursion_room(words):
            scores = _rouge_scorer().get_scores(target, prediction, avg=True)
    except ValueError:  # "Collections must contain at least 1 sentence."
        return 0.0
    return float(scores["rouge-l"]["f"])


# ------------------------------------------------------------------------------------- Py150

_LITERAL_RE = re.compile(r"<(STR|NUM|CHAR)_LIT:(.*?)>", re.S)


def py150_postprocess(code: str) -> str:
    """Py150's literal placeholders replaced as TRACE's ``eval_Py150.postprocess`` does.

    ``<NUM_LIT>`` becomes ``0``, ``<STR_LIT>`` and ``<CHAR_LIT>`` disappear, and each
    ``<KIND_LIT:value>`` found in the text is replaced, one after the other and everywhere it
    occurs, by its value.
    """
    code = code.replace("<NUM_LIT>", "0").replace("<STR_LIT>", "").replace("<CHAR_LIT>", "")
    for kind, value in _LITERAL_RE.findall(code):
        code = code.replace(f"<{kind}_LIT:{value}>", value)
    return code


def py150_similarity(prediction: str, target: str) -> float:
    """TRACE's Py150 score: ``fuzz.ratio`` of the post-processed strings, divided by 100.

    After :func:`py150_postprocess`, an empty side scores 0 (so two bare ``<STR_LIT>`` score 0),
    equal strings score 1, and otherwise the score is the InDel similarity
    ``1 - indel_distance / (len(a) + len(b))`` rounded to a whole percent with Python's
    ``round`` (half to even), which is what fuzzywuzzy with python-Levenshtein returns.
    """
    from rapidfuzz import fuzz

    prediction, target = py150_postprocess(prediction), py150_postprocess(target)
    if prediction == "" or target == "":
        return 0.0
    if prediction == target:
        return 1.0
    return int(round(fuzz.ratio(prediction, target))) / 100


# -------------------------------------------------------------------------------------- SARI


@lru_cache(maxsize=1)
def _tokenizer_13a():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def sari_normalize(text: str) -> str:
    """Lower-case and tokenise with sacrebleu's ``13a`` tokenizer (the ``sari`` metric's
    normalisation)."""
    return _tokenizer_13a()(text.lower())


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _f1(precision: float, recall: float) -> float:
    if precision > 0 or recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def _sari_ngram(
    source: list[tuple], prediction: list[tuple], references: list[list[tuple]]
) -> tuple[float, float, float]:
    """(keep F1, deletion precision, addition F1) for one n-gram order.

    Source and prediction counts are multiplied by the number of references; 0/0 counts as 1;
    keep recall divides by the total (not distinct) count of source n-grams in the references.
    """
    numref = len(references)
    ref = Counter(g for r in references for g in r)
    src = Counter({g: c * numref for g, c in Counter(source).items()})
    pred = Counter({g: c * numref for g, c in Counter(prediction).items()})

    keep = src & pred
    keep_good = keep & ref
    keep_all = src & ref
    keep_p = sum(keep_good[g] / keep[g] for g in keep) / len(keep) if keep else 1.0
    keep_r = sum(keep_good.values()) / sum(keep_all.values()) if keep_all else 1.0

    deleted = src - pred
    del_good = deleted - ref
    del_p = sum(del_good[g] / deleted[g] for g in deleted) / len(deleted) if deleted else 1.0

    added = set(pred) - set(src)
    add_good = added & set(ref)
    add_all = set(ref) - set(src)
    add_p = len(add_good) / len(added) if added else 1.0
    add_r = len(add_good) / len(add_all) if add_all else 1.0
    return _f1(keep_p, keep_r), del_p, _f1(add_p, add_r)


def sari(source: str, prediction: str, references: str | Sequence[str]) -> float:
    """Sentence SARI in ``[0, 1]`` as the Hugging Face ``sari`` metric computes it (TRACE's
    20Minuten score, which TRACE reports x100).

    Each text is :func:`sari_normalize`-d and split on single spaces, so an empty text is one
    empty token: an empty prediction still earns keep/delete credit (about 0.27 on typical
    20Minuten pairs). The score is the mean over n = 1..4 of keep F1, deletion precision and
    addition F1, averaged.

    Args:
        source: the input text (TRACE passes the whole prompt).
        prediction: the model's output.
        references: one gold text or several.
    """
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("SARI needs at least one reference")
    s = sari_normalize(source).split(" ")
    p = sari_normalize(prediction).split(" ")
    rs = [sari_normalize(r).split(" ") for r in refs]
    total = 0.0
    for n in range(1, 5):
        total += sum(_sari_ngram(_ngrams(s, n), _ngrams(p, n), [_ngrams(r, n) for r in rs]))
    return total / 12.0
