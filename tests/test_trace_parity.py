"""Parity of blockexp's default TRACE scoring with TRACE's own evaluation code.

``tests/data/trace_parity_cases.json`` holds (task, prompt, prediction, answer) cases, hand-built
for TRACE's edge cases plus seeded perturbations, each with the score TRACE's ``metrics.py`` and
``evaluations/eval_*.py`` gave when run unmodified (its ``about`` field says how). Every sample
must agree within 0.005 (they agree to rounding error), and a case where TRACE's code raised
must score 0.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from blockexp.metrics import TRACE_TASK_METRICS, build_metric

CASES = json.loads((Path(__file__).parent / "data" / "trace_parity_cases.json").read_text())[
    "cases"
]


def _expected(case: dict) -> float:
    return 0.0 if case["trace_error"] is not None else case["trace_score"]


def test_fixture_covers_every_metric_kind_and_the_crash_cases():
    kinds = Counter(TRACE_TASK_METRICS[c["task"]] for c in CASES)
    # accuracy (C-STANCE, FOMC), first-char (ScienceQA), NumGLUE, ROUGE-L, fuzz, SARI
    assert set(kinds) == set(TRACE_TASK_METRICS.values()) and len(kinds) == 6
    assert min(kinds.values()) >= 60 and len(CASES) >= 500
    errors = Counter((c["task"], c["trace_error"].split(":")[0]) for c in CASES if c["trace_error"])
    assert errors[("ScienceQA", "IndexError")] >= 4  # empty prediction: pred[0]
    assert errors[("MeetingBank", "ValueError")] >= 10  # ROUGE of "..." / "."
    notes = {c["note"] for c in CASES}
    assert {"both placeholders", "exact .5 before rounding", "empty prediction"} <= notes


@pytest.mark.parametrize("task", sorted(TRACE_TASK_METRICS))
def test_every_sample_matches_trace(task):
    cases = [c for c in CASES if c["task"] == task]
    assert cases
    metric = build_metric(TRACE_TASK_METRICS[task])  # default scoring: TRACE's
    got = metric.scores(
        [c["prediction"] for c in cases], [c["answer"] for c in cases], [c["prompt"] for c in cases]
    )
    worst = max(abs(g - _expected(c)) for g, c in zip(got, cases, strict=True))
    assert worst <= 1e-9, worst  # the bar is 0.005; the scorers agree to rounding error
    # The aggregate is TRACE's too: the mean over all samples, skipped and crashed ones as 0.
    metric.update(
        [c["prediction"] for c in cases], [c["answer"] for c in cases], [c["prompt"] for c in cases]
    )
    mean = sum(_expected(c) for c in cases) / len(cases)
    assert float(metric.compute()) == pytest.approx(mean, abs=1e-6)


def test_lenient_scoring_differs_from_trace_on_the_fixture():
    """The lenient rule is a different number (so it must never be reported as TRACE's)."""
    by_task = defaultdict(list)
    for c in CASES:
        by_task[c["task"]].append(c)
    differing = 0
    for task, cases in by_task.items():
        args = (
            [c["prediction"] for c in cases],
            [c["answer"] for c in cases],
            [c["prompt"] for c in cases],
        )
        trace = build_metric(TRACE_TASK_METRICS[task], "trace").scores(*args)
        lenient = build_metric(TRACE_TASK_METRICS[task], "lenient").scores(*args)
        differing += sum(abs(a - b) > 0.005 for a, b in zip(trace, lenient, strict=True))
    assert differing == 182  # the count docs/trace.md states
