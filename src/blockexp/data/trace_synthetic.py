"""A synthetic micro-TRACE: small deterministic tasks in exactly the TRACE file layout.

``python -m blockexp.data.trace_synthetic data/micro_trace`` writes, for each task,
``<out>/<Task>/{train,eval,test}.json`` (JSON lists of ``{"prompt", "answer"}``), so the whole
continual-learning loop (:class:`~blockexp.data.TRACEDataModule` +
:class:`~blockexp.callbacks.TRACECallback`) runs offline on a CPU in minutes. Each task mirrors
one kind of TRACE task and its metric (:data:`SYNTHETIC_TASK_METRICS`):

==========  ===========================  ==================  ======================
task        what the answer is           metric              TRACE counterpart
==========  ===========================  ==================  ======================
Stance      A/B/C from a keyword         accuracy            C-STANCE, FOMC
Arithmetic  the sum/difference of two    accuracy_number     NumGLUE
            small numbers
Reverse     the word spelled backwards   edit_similarity     Py150
Headline    the content words of a       rouge_l             MeetingBank
            templated sentence
Simplify    the sentence with plain      sari                20Minuten
            words substituted
==========  ===========================  ==================  ======================

The output depends only on the seed and the sizes (Python's ``random.Random``), and files are
written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["SYNTHETIC_TASKS", "SYNTHETIC_TASK_METRICS", "generate_micro_trace"]

_STANCE_WORDS = {"A": ("love", "support", "like"), "B": ("hate", "oppose", "reject")}
_TOPICS = ("cats", "rain", "taxes", "trains", "music", "coffee", "winter", "robots")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_ADJ = ("red", "tall", "quiet", "young", "brave", "old")
_NOUN = ("team", "farmer", "pilot", "child", "doctor", "band")
_VERB = ("won", "found", "built", "painted", "sold", "fixed")
_OBJ = ("boat", "house", "prize", "bridge", "song", "car")
_PLACE = ("park", "market", "harbor", "school", "village", "station")
_HARD_ADV = {"rapidly": "quickly", "silently": "quietly", "eventually": "finally"}
_HARD_VERB = {"consumed": "ate", "purchased": "bought", "constructed": "built", "observed": "saw"}
_HARD_ADJ = {"enormous": "big", "minuscule": "small", "ancient": "old", "exquisite": "nice"}
_HARD_NOUN = {"residence": "home", "automobile": "car", "beverage": "drink", "canine": "dog"}
_SUBJ = ("The dog", "My aunt", "The teacher", "A neighbor", "The cat", "Our friend")


def _stance(rng: random.Random) -> dict[str, str]:
    label = rng.choice("ABC")
    topic = rng.choice(_TOPICS)
    if label == "C":
        text = f"I read about {topic} today."
    else:
        text = f"I {rng.choice(_STANCE_WORDS[label])} {topic}."
    prompt = (
        f"Stance of the text toward the target. Text: {text} Target: {topic}\n"
        "Options: A. support B. oppose C. neutral\nAnswer:"
    )
    return {"prompt": prompt, "answer": label}


def _arithmetic(rng: random.Random) -> dict[str, str]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if rng.random() < 0.5:
        return {"prompt": f"What is {a} plus {b}?\nAnswer:", "answer": str(a + b)}
    a, b = max(a, b), min(a, b)
    return {"prompt": f"What is {a} minus {b}?\nAnswer:", "answer": str(a - b)}


def _reverse(rng: random.Random) -> dict[str, str]:
    word = "".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 6)))
    return {"prompt": f"Reverse the letters: {word}\nAnswer:", "answer": word[::-1]}


def _headline(rng: random.Random) -> dict[str, str]:
    adj, noun, verb, obj, place = (rng.choice(w) for w in (_ADJ, _NOUN, _VERB, _OBJ, _PLACE))
    text = f"Yesterday the {adj} {noun} {verb} a {obj} near the {place}."
    return {"prompt": f"Summarize: {text}\nSummary:", "answer": f"{adj} {noun} {verb} {obj}"}


def _simplify(rng: random.Random) -> dict[str, str]:
    subj = rng.choice(_SUBJ)
    parts = [rng.choice(sorted(d.items())) for d in (_HARD_ADV, _HARD_VERB, _HARD_ADJ, _HARD_NOUN)]
    (adv, s_adv), (verb, s_verb), (adj, s_adj), (noun, s_noun) = parts
    return {
        "prompt": f"Simplify: {subj} {adv} {verb} the {adj} {noun}.\nSimple:",
        "answer": f"{subj} {s_adv} {s_verb} the {s_adj} {s_noun}.",
    }


SYNTHETIC_TASKS: dict[str, Callable[[random.Random], dict[str, str]]] = {
    "Stance": _stance,
    "Arithmetic": _arithmetic,
    "Reverse": _reverse,
    "Headline": _headline,
    "Simplify": _simplify,
}

SYNTHETIC_TASK_METRICS: dict[str, str] = {
    "Stance": "accuracy",
    "Arithmetic": "accuracy_number",
    "Reverse": "edit_similarity",
    "Headline": "rouge_l",
    "Simplify": "sari",
}


def _write_json_atomic(path: Path, data: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            # A JSON list with one record per line: valid TRACE input, readable diffs.
            f.write("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in data) + "\n]\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate_micro_trace(
    out: str | Path,
    tasks: list[str] | None = None,
    train: int = 256,
    eval: int = 32,
    test: int = 32,
    seed: int = 0,
) -> dict[str, dict[str, int]]:
    """Write the synthetic tasks in TRACE layout under ``out``.

    Args:
        out: output root (created if missing; existing task files are replaced).
        tasks: which of :data:`SYNTHETIC_TASKS` to write (default: all, in table order).
        train: records per task in ``train.json``.
        eval: records per task in ``eval.json``.
        test: records per task in ``test.json``.
        seed: generator seed.

    Returns:
        ``{task: {split: count}}``.
    """
    names = list(tasks) if tasks else list(SYNTHETIC_TASKS)
    unknown = [t for t in names if t not in SYNTHETIC_TASKS]
    if unknown:
        raise ValueError(f"unknown synthetic tasks {unknown}; choose from {list(SYNTHETIC_TASKS)}")
    for name, n in (("train", train), ("eval", eval), ("test", test)):
        if n < 1:
            raise ValueError(f"{name} must be >= 1, got {n}")
    root = Path(out)
    summary: dict[str, dict[str, int]] = {}
    for index, task in enumerate(SYNTHETIC_TASKS):
        if task not in names:
            continue
        rng = random.Random(f"{seed}/{index}/{task}")
        make = SYNTHETIC_TASKS[task]
        summary[task] = {}
        for split, n in (("train", train), ("eval", eval), ("test", test)):
            records = [make(rng) for _ in range(n)]
            _write_json_atomic(root / task / f"{split}.json", records)
            summary[task][split] = n
    return summary


def main(argv: list[str] | None = None) -> None:
    """``python -m blockexp.data.trace_synthetic OUT [--train N] [--eval N] [--test N]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output root directory")
    parser.add_argument("--tasks", nargs="*", default=None, choices=list(SYNTHETIC_TASKS))
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--eval", type=int, default=32)
    parser.add_argument("--test", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    summary = generate_micro_trace(
        args.out, args.tasks, args.train, args.eval, args.test, args.seed
    )
    for task, counts in summary.items():
        print(f"{args.out}/{task}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
