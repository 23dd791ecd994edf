"""OP/BWT on hand-built matrices and the paper's Tables 11-13; TRACE task metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blockexp.metrics import (
    SARI,
    AnswerAccuracy,
    EditSimilarity,
    RougeL,
    backward_transfer,
    build_metric,
    edit_similarity,
    extract_choice,
    extract_number,
    overall_performance,
    sari_sentence,
)

# LLaMA Pro paper, Tables 11-13 (rows: task, columns: round), LLaMA2-7B on TRACE.
TABLE_11_LORA = [
    [0.5, 0.27, 0.28, 0.31, 0.01, 0.51, 0.44, 0.27],
    [None, 0.69, 0.61, 0.57, 0.0, 0.44, 0.51, 0.46],
    [None, None, 0.472, 0.287, 0.159, 0.111, 0.14, 0.139],
    [None, None, None, 0.61, 0.294, 0.551, 0.547, 0.364],
    [None, None, None, None, 0.68, 0.6, 0.59, 0.54],
    [None, None, None, None, None, 0.395, 0.309, 0.272],
    [None, None, None, None, None, None, 0.59, 0.51],
    [None, None, None, None, None, None, None, 0.414],
]
TABLE_12_SEQFT = [
    [0.6, 0.43, 0.49, 0.49, 0.5, 0.49, 0.48, 0.53],
    [None, 0.8, 0.46, 0.47, 0.0, 0.47, 0.5, 0.51],
    [None, None, 0.523, 0.338, 0.344, 0.392, 0.396, 0.371],
    [None, None, None, 0.594, 0.265, 0.561, 0.566, 0.575],
    [None, None, None, None, 0.87, 0.83, 0.58, 0.55],
    [None, None, None, None, None, 0.383, 0.198, 0.210],
    [None, None, None, None, None, None, 0.64, 0.49],
    [None, None, None, None, None, None, None, 0.407],
]
TABLE_13_BLOCK = [
    [0.65, 0.52, 0.52, 0.52, 0.28, 0.52, 0.5, 0.57],
    [None, 0.8, 0.49, 0.45, 0.0, 0.44, 0.46, 0.45],
    [None, None, 0.512, 0.363, 0.338, 0.383, 0.393, 0.38],
    [None, None, None, 0.593, 0.366, 0.531, 0.53, 0.548],
    [None, None, None, None, 0.89, 0.8, 0.6, 0.63],
    [None, None, None, None, None, 0.333, 0.185, 0.198],
    [None, None, None, None, None, None, 0.68, 0.54],
    [None, None, None, None, None, None, None, 0.408],
]


@pytest.mark.parametrize(
    "table, op, bwt",
    [
        (TABLE_11_LORA, 0.371, -0.173),
        (TABLE_12_SEQFT, 0.455, -0.147),
        (TABLE_13_BLOCK, 0.465, -0.143),
    ],
    ids=["table11-lora", "table12-seqft", "table13-block-expansion"],
)
def test_op_bwt_reproduce_llama_pro_tables(table, op, bwt):
    R = [list(col) for col in zip(*table, strict=True)]  # tasks x rounds -> rounds x tasks
    assert overall_performance(R) == pytest.approx(op, abs=6e-4)
    assert backward_transfer(R) == pytest.approx(bwt, abs=6e-4)
    # BWT is averaged over all t tasks (dividing by t - 1 would give a different number).
    assert backward_transfer(R) * 8 / 7 != pytest.approx(bwt, abs=6e-4)


def test_op_bwt_hand_built():
    R = [[0.8, np.nan, np.nan], [0.6, 0.9, np.nan], [0.5, 0.7, 1.0]]
    assert overall_performance(R, 1) == pytest.approx(0.8)
    assert backward_transfer(R, 1) == 0.0
    assert overall_performance(R, 2) == pytest.approx(0.75)
    assert backward_transfer(R, 2) == pytest.approx((0.6 - 0.8) / 2)
    assert overall_performance(R) == pytest.approx(2.2 / 3)
    assert backward_transfer(R) == pytest.approx(((0.5 - 0.8) + (0.7 - 0.9) + 0.0) / 3)
    # Entries above the diagonal (scores of tasks not trained yet) do not count.
    R_full = [[0.8, 0.1, 0.1], [0.6, 0.9, 0.2], [0.5, 0.7, 1.0]]
    assert overall_performance(R_full, 2) == overall_performance(R, 2)
    assert backward_transfer(R_full) == backward_transfer(R)


def test_op_bwt_errors():
    with pytest.raises(ValueError, match="rounds"):
        overall_performance([[0.1], [0.2]])
    with pytest.raises(ValueError, match="missing"):
        backward_transfer([[0.1, None], [None, 0.3]])
    with pytest.raises(ValueError, match="t must be"):
        overall_performance([[0.1]], t=2)


def test_answer_extraction_and_accuracy():
    assert extract_choice("  (b) because ...") == "B"
    assert extract_number("about 1,250.5 km") == 1250.5
    assert extract_number("none") is None
    acc = AnswerAccuracy("choice")
    acc.update(["A", " B. oppose", "", "c"], ["A", "B", "A", "C"])
    assert float(acc.compute()) == pytest.approx(0.75)
    num = build_metric("accuracy_number")
    num.update(["7", "The answer is 12.", "3", "x"], ["7", "12", "4", "5"])
    assert float(num.compute()) == pytest.approx(0.5)
    exact = build_metric("exact_match")
    exact.update(["yes ", "no"], ["yes", "No"])
    assert float(exact.compute()) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown metric"):
        build_metric("bleu")


def test_edit_similarity_matches_fuzz_ratio_definition():
    # fuzz.ratio("kitten", "sitting") with python-Levenshtein is 62 (InDel distance 5 over 13).
    assert edit_similarity("kitten", "sitting") == pytest.approx(8 / 13)
    assert edit_similarity("abc", "abc") == 1.0
    assert edit_similarity("abc", "xyz") == 0.0
    metric = EditSimilarity()
    # Py150 placeholders are replaced before scoring, as in TRACE.
    metric.update(["x = <STR_LIT:hi>", ""], ["x = hi", "y"])
    assert float(metric.compute()) == pytest.approx(0.5)


def test_sari_matches_reference_example():
    # The example of the Hugging Face `sari` metric card (which TRACE loads): SARI 26.953.
    score = sari_sentence(
        "About 95 species are currently accepted .",
        "About 95 you now get in .",
        [
            "About 95 species are currently known .",
            "About 95 species are now accepted .",
            "95 species are now accepted .",
        ],
    )
    assert score * 100 == pytest.approx(26.953, abs=1e-3)
    assert sari_sentence("a b c d", "a b c d", ["a b c d"]) == 1.0
    metric = SARI()
    metric.update(["the big dog ate ."], ["the big dog ate ."], ["the enormous dog consumed ."])
    assert float(metric.compute()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="source"):
        SARI().update(["a"], ["a"])


def test_rouge_l_offline():
    metric = RougeL()
    metric.update(["the cat sat", ""], ["the cat sat down", "something"])
    # LCS 3 of 3 and 4 tokens: F = 2 * 1 * 0.75 / 1.75; the empty prediction scores 0.
    assert float(metric.compute()) == pytest.approx((2 * 0.75 / 1.75) / 2, abs=1e-4)
    assert not math.isnan(float(metric.compute()))
