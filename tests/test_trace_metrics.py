"""OP/BWT on hand-built matrices, LLaMA Pro's Tables 11-13 and TRACE's own Tables 7, 8 and 13 (one
BWT definition each); TRACE task metrics under both scoring rules (parity with TRACE's code
itself: test_trace_parity.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blockexp.trace import metrics as T
from blockexp.trace.matrix import backward_transfer, overall_performance
from blockexp.trace.text import (
    METRICS,
    SCORING,
    TRACE_TASK_METRICS,
    build_metric,
    edit_similarity,
    extract_choice,
    extract_number,
    sari_sentence,
    score_samples,
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
    assert backward_transfer(R, definition="llama_pro") == backward_transfer(R)
    # LLaMA Pro averages over all t tasks: the TRACE paper's average over the t - 1 earlier tasks
    # is 8/7 of it and does not reproduce these tables.
    trace_bwt = backward_transfer(R, definition="trace")
    assert trace_bwt == pytest.approx(backward_transfer(R) * 8 / 7)
    assert trace_bwt != pytest.approx(bwt, abs=6e-4)


# TRACE paper (Wang et al., 2023, arXiv:2310.06762v1), appendix: "Detailed results of continual
# learning of ..." (rows: task, columns: round), with the "average" (OP) and BWT it reports.
TRACE_TABLE_7_BAICHUAN_SEQFT = [
    [0.62, 0.629, 0.663, 0.621, 0.531, 0.55, 0.588, 0.579],
    [None, 0.681, 0.353, 0.318, 0.02, 0.363, 0.347, 0.335],
    [None, None, 0.442, 0.351, 0.371, 0.379, 0.389, 0.364],
    [None, None, None, 0.626, 0.562, 0.586, 0.589, 0.58],
    [None, None, None, None, 0.77, 0.68, 0.5, 0.44],
    [None, None, None, None, None, 0.358, 0.247, 0.284],
    [None, None, None, None, None, None, 0.64, 0.475],
    [None, None, None, None, None, None, None, 0.415],
]
TRACE_TABLE_8_LLAMA_CHAT_SEQFT = [
    [0.5, 0.456, 0.448, 0.453, 0.435, 0.442, 0.436, 0.454],
    [None, 0.735, 0.67, 0.658, 0, 0.595, 0.577, 0.609],
    [None, None, 0.523, 0.459, 0.433, 0.446, 0.442, 0.457],
    [None, None, None, 0.58, 0.459, 0.509, 0.508, 0.512],
    [None, None, None, None, 0.764, 0.636, 0.45, 0.637],
    [None, None, None, None, None, 0.383, 0.247, 0.272],
    [None, None, None, None, None, None, 0.582, 0.548],
    [None, None, None, None, None, None, None, 0.408],
]
TRACE_TABLE_13_LLAMA_CHAT_LORA = [
    [0.511, 0.45, 0.412, 0.373, 0.133, 0.391, 0.294, 0.277],
    [None, 0.713, 0.55, 0.452, 0, 0.421, 0.341, 0.24],
    [None, None, 0.51, 0.212, 0.151, 0.067, 0.037, 0.121],
    [None, None, None, 0.578, 0.004, 0.495, 0.452, 0.004],
    [None, None, None, None, 0.68, 0.645, 0.535, 0],
    [None, None, None, None, None, 0.37, 0.235, 0],
    [None, None, None, None, None, None, 0.486, 0],
    [None, None, None, None, None, None, None, 0.37],
]


@pytest.mark.parametrize(
    "table, op, bwt",
    [
        (TRACE_TABLE_7_BAICHUAN_SEQFT, 0.434, -0.154),
        (TRACE_TABLE_8_LLAMA_CHAT_SEQFT, 0.487, -0.083),
        (TRACE_TABLE_13_LLAMA_CHAT_LORA, 0.127, -0.457),
    ],
    ids=["trace-table7-seqft", "trace-table8-seqft", "trace-table13-lora"],
)
def test_trace_bwt_reproduces_trace_tables(table, op, bwt):
    R = [list(col) for col in zip(*table, strict=True)]
    # cells and results are rounded to 3 decimals: BWT sums 14 rounded cells over 7, so it can be
    # off by 14 * 0.0005 / 7 = 0.001 before the reported value's own 0.0005
    assert overall_performance(R) == pytest.approx(op, abs=1e-3)
    assert backward_transfer(R, definition="trace") == pytest.approx(bwt, abs=1.5e-3)
    # LLaMA Pro's definition (divide by t) does not reproduce TRACE's own tables
    assert backward_transfer(R) != pytest.approx(bwt, abs=5e-3)


def test_trace_bwt_of_llama_pro_table_13():
    """The TRACE paper's BWT of block expansion's matrix (Table 13): -0.163, not -0.143."""
    R = [list(col) for col in zip(*TABLE_13_BLOCK, strict=True)]
    assert backward_transfer(R, definition="trace") == pytest.approx(-0.163, abs=6e-4)


def test_op_bwt_hand_built():
    R = [[0.8, np.nan, np.nan], [0.6, 0.9, np.nan], [0.5, 0.7, 1.0]]
    assert overall_performance(R, 1) == pytest.approx(0.8)
    assert backward_transfer(R, 1) == 0.0
    assert overall_performance(R, 2) == pytest.approx(0.75)
    assert backward_transfer(R, 2) == pytest.approx((0.6 - 0.8) / 2)
    assert overall_performance(R) == pytest.approx(2.2 / 3)
    assert backward_transfer(R) == pytest.approx(((0.5 - 0.8) + (0.7 - 0.9) + 0.0) / 3)
    # The TRACE paper's BWT averages over the earlier tasks only; both are 0 after round 1.
    assert backward_transfer(R, 1, "trace") == 0.0
    assert backward_transfer(R, 2, "trace") == pytest.approx(0.6 - 0.8)
    assert backward_transfer(R, definition="trace") == pytest.approx(
        ((0.5 - 0.8) + (0.7 - 0.9)) / 2
    )
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
    with pytest.raises(ValueError, match="unknown BWT definition 'gem'.*llama_pro, trace"):
        backward_transfer([[0.1]], definition="gem")


def test_trace_scoring_compares_raw_strings():
    acc = build_metric("accuracy")  # TRACE's default scoring
    acc.update(["A", " A", "a", "A.", "", "B"], ["A", "A", "A", "A", "A", "B"])
    assert float(acc.compute()) == pytest.approx(2 / 6)  # only the two exact matches
    # NumGLUE: whole-string exact match, no number extraction.
    assert score_samples(
        "accuracy_number", ["12", " 12", "12.0", "The answer is 12"], ["12"] * 4
    ) == [
        1.0,
        0.0,
        0.0,
        0.0,
    ]
    # ScienceQA: the first character, unstripped; an empty prediction (TRACE crashes) scores 0.
    golds = ["B\nBecause ..."] * 5
    assert score_samples("first_char_accuracy", ["B", "Because", " B", "", "b"], golds) == [
        1.0,
        1.0,
        0.0,
        0.0,
        0.0,
    ]
    assert TRACE_TASK_METRICS["ScienceQA"] == "first_char_accuracy"


def test_trace_rouge_l_is_the_rouge_package_with_traces_argument_order():
    from rouge import Rouge

    pred, gold = "e c c", "e. d d c e. b d"
    expected = Rouge(metrics=["rouge-l"]).get_scores(gold, pred, avg=True)["rouge-l"]["f"]
    assert T.rouge_l(pred, gold) == pytest.approx(expected, abs=1e-12)
    swapped = Rouge(metrics=["rouge-l"]).get_scores(pred, gold, avg=True)["rouge-l"]["f"]
    assert expected == pytest.approx(2 / 3) and swapped == pytest.approx(1 / 3)  # order matters
    assert T.rouge_l("...", gold) == 0.0 and T.rouge_l(gold, "...") == 0.0  # TRACE raises here
    assert T.rouge_l("", gold) == 0.0
    # A single sentence longer than Python's default recursion limit still gets its score.
    long = " ".join(f"w{i % 50}" for i in range(1050))  # LCS recursion depth 1050
    assert 0.0 < T.rouge_l(long, long) <= 1.0


def test_trace_py150_similarity_is_an_integer_percent():
    assert T.py150_postprocess("x = <NUM_LIT> + <STR_LIT:a> + <STR_LIT>") == "x = 0 + a + "
    # Both sides empty after clean-up: TRACE skips the pair (0), although they are equal.
    assert T.py150_similarity("<STR_LIT>", "<STR_LIT>") == 0.0
    assert T.py150_similarity("<NUM_LIT>", "0") == 1.0
    # fuzz.ratio("kitten", "sitting") = round(100 * 8 / 13) = 62
    assert T.py150_similarity("kitten", "sitting") == 0.62
    assert edit_similarity("kitten", "sitting") == pytest.approx(8 / 13)  # lenient: unrounded
    # 200 * LCS / total = 12.5 and 37.5: Python rounds half to even, as fuzzywuzzy does.
    assert T.py150_similarity("a" + "x" * 7, "a" + "y" * 7) == 0.12
    assert T.py150_similarity("abc" + "x" * 5, "abc" + "y" * 5) == 0.38


def test_sari_matches_the_hugging_face_metric():
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
    assert score * 100 == pytest.approx(26.953601953601954, abs=1e-9)
    assert T.sari("a b c d", "a b c d", "a b c d") == 1.0
    # sacrebleu 13a tokenisation: punctuation split off, lower-cased, entities decoded.
    assert T.sari_normalize("Hallo, Welt! &amp; mehr") == "hallo , welt ! & mehr"
    # An empty prediction is one empty token: TRACE gives it keep/delete credit ...
    empty = build_metric("sari")
    empty.update([""], ["Der Hund schläft."], ["Der große Hund schläft tief."])
    assert 0.2 < float(empty.compute()) < 0.5
    # ... the lenient rule does not.
    lenient = build_metric("sari", "lenient")
    lenient.update([""], ["Der Hund schläft."], ["Der große Hund schläft tief."])
    assert float(lenient.compute()) == 0.0
    with pytest.raises(ValueError, match="source"):
        build_metric("sari").update(["a"], ["a"])


def test_lenient_scoring_extracts_answers():
    assert extract_choice("  (b) because ...") == "B"
    assert extract_number("about 1,250.5 km") == 1250.5
    assert extract_number("none") is None
    acc = build_metric("accuracy", "lenient")
    acc.update(["A", " B. oppose", "", "c"], ["A", "B", "A", "C"])
    assert float(acc.compute()) == pytest.approx(0.75)
    num = build_metric("accuracy_number", "lenient")
    num.update(["7", "The answer is 12.", "3", "x"], ["7", "12", "4", "5"])
    assert float(num.compute()) == pytest.approx(0.5)
    exact = build_metric("exact_match", "lenient")
    exact.update(["yes ", "no"], ["yes", "No"])
    assert float(exact.compute()) == pytest.approx(0.5)
    rouge = build_metric("rouge_l", "lenient")  # torchmetrics ROUGE-L
    rouge.update(["the cat sat", ""], ["the cat sat down", "something"])
    assert float(rouge.compute()) == pytest.approx((2 * 0.75 / 1.75) / 2, abs=1e-4)
    assert not math.isnan(float(rouge.compute()))
    edit = build_metric("edit_similarity", "lenient")
    edit.update(["x = <STR_LIT:hi>", ""], ["x = hi", "y"])
    assert float(edit.compute()) == pytest.approx(0.5)


def test_registry_errors_and_names():
    assert set(SCORING) == {"trace", "lenient"}
    assert set(TRACE_TASK_METRICS.values()) <= set(METRICS)
    with pytest.raises(ValueError, match="unknown metric"):
        build_metric("bleu")
    with pytest.raises(ValueError, match="unknown scoring"):
        build_metric("accuracy", "strict")
    with pytest.raises(ValueError, match="2 predictions but 1 targets"):
        build_metric("accuracy").update(["a", "b"], ["a"])
