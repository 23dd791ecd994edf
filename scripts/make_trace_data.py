"""A synthetic micro-TRACE: small deterministic tasks in exactly the TRACE file layout.

``python scripts/make_trace_data.py data/micro_trace`` writes, for each task,
``<out>/<Task>/{train,eval,test}.json`` (JSON lists of ``{"prompt", "answer"}``), so the whole
continual-learning loop (:class:`~blockexp.trace.data.TRACEDataModule` +
:class:`~blockexp.trace.callback.TRACECallback`) runs offline on a CPU in minutes. Each task mirrors
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

``python scripts/make_trace_data.py OUT --layout trace`` instead writes eight synthetic
stand-ins under TRACE's own task names (``C-STANCE``, ``FOMC``, ..., ``20Minuten``; see
:data:`TRACE_STANDINS`), with prompts and answers shaped like the released data (a choice
letter; ``"B\nBecause ..."`` for ScienceQA; a number; a summary; code with ``<NUM_LIT>``
placeholders; a German simplification). A directory written this way runs the TRACE configs
unchanged, with TRACE's order, epochs and metrics. It is not TRACE's data: use it to check a
set-up, never to report scores.

The output depends only on the seed and the sizes (Python's ``random.Random``), and files are
written atomically.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

from blockexp.io.outputs import atomic_write

__all__ = [
    "SYNTHETIC_TASKS",
    "SYNTHETIC_TASK_METRICS",
    "TRACE_STANDINS",
    "generate_micro_trace",
    "generate_trace_standins",
]

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


# ----------------------------------------------------- stand-ins under TRACE's task names

_FOMC = {
    "A": (
        "The Committee decided to lower the target range to support the recovery.",
        "Further easing may be appropriate if inflation stays low.",
    ),
    "B": (
        "The Committee decided to raise the target range to contain inflation.",
        "Further tightening may be needed to bring inflation down.",
    ),
    "C": (
        "The Committee reviewed the minutes of the previous meeting.",
        "Members discussed the outlook for the labor market.",
    ),
}
_CSTANCE = {"A": ("支持", "喜欢"), "B": ("反对", "讨厌"), "C": ("谈到", "提到")}
_CSTANCE_TOPICS = ("高铁", "咖啡", "机器人", "音乐", "冬天", "税收")
_SCIENCE = (
    ("a mammal", ("whale", "trout", "eagle"), "whales feed their young with milk"),
    ("a metal", ("copper", "glass", "wood"), "copper conducts electricity and can be bent"),
    ("a gas", ("steam", "ice", "sand"), "steam spreads out to fill its container"),
    ("a plant", ("fern", "coral", "snail"), "ferns make their own food from sunlight"),
)
_CODE_VARS = ("i", "x", "item", "name", "row", "value")
_DE = (
    (
        "Die Stadtverwaltung hat am Montag beschlossen, die Öffnungszeiten der Bibliothek zu "
        "verlängern.",
        "Die Bibliothek ist länger offen.",
    ),
    (
        "Nach starken Regenfällen musste die Feuerwehr mehrere Keller auspumpen.",
        "Es hat stark geregnet. Die Feuerwehr pumpte Keller aus.",
    ),
    (
        "Der Verein hat das entscheidende Spiel in der letzten Minute gewonnen.",
        "Der Verein hat das Spiel gewonnen.",
    ),
    (
        "Wegen Bauarbeiten fallen am Wochenende mehrere Zugverbindungen aus.",
        "Am Wochenende fahren weniger Züge.",
    ),
)


def _fomc(rng: random.Random) -> dict[str, str]:
    label = rng.choice("ABC")
    return {
        "prompt": "What is the monetary policy stance for the following text? A. dovish, B. "
        "hawkish, C. neutral. Choose one from A, B and C.\nText: "
        f"{rng.choice(_FOMC[label])}\nAnswer:",
        "answer": label,
    }


def _cstance(rng: random.Random) -> dict[str, str]:
    label, topic = rng.choice("ABC"), rng.choice(_CSTANCE_TOPICS)
    return {
        "prompt": "判断以下文本对指定对象的态度，选择一项：A.支持，B.反对，C.中立。输出A，B或者C。\n"
        f"文本：我{rng.choice(_CSTANCE[label])}{topic}。\n对象：{topic}\n答案：",
        "answer": label,
    }


def _meeting(rng: random.Random) -> dict[str, str]:
    adj, noun, verb, obj, place = (rng.choice(w) for w in (_ADJ, _NOUN, _VERB, _OBJ, _PLACE))
    talk = (
        f"Speaker 1: Item 4 is about the {adj} {noun}. Speaker 2: The {noun} {verb} a {obj} "
        f"near the {place}. Speaker 1: Motion carries."
    )
    return {
        "prompt": f"Write a summary of the following meeting transcripts.\nMeeting transcripts: "
        f"{talk}\nSummary:",
        "answer": f"The {adj} {noun} {verb} a {obj} near the {place}.",
    }


def _py150(rng: random.Random) -> dict[str, str]:
    var, n = rng.choice(_CODE_VARS), rng.randint(2, 9)
    return {
        "prompt": f"Continue writing the code.\n<s> def run ( ) : <EOL> for {var} in range ( "
        f"<NUM_LIT:{n}> ) : <EOL>",
        "answer": f"print ( {var} , <STR_LIT:done> )",
    }


def _scienceqa(rng: random.Random) -> dict[str, str]:
    category, options, reason = rng.choice(_SCIENCE)
    order = list(options)
    rng.shuffle(order)
    letter = "ABC"[order.index(options[0])]
    listed = " ".join(f"{'ABC'[i]}. {o}" for i, o in enumerate(order))
    return {
        "prompt": "Choose an answer for the following question and give your reasons.\n\n"
        f"Question: Which of these is {category}?\nOptions: {listed}\nAnswer:",
        "answer": f"{letter}\nBecause {reason}.",
    }


def _numglue(rng: random.Random) -> dict[str, str]:
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    return {
        "prompt": f"Solve the following math problem.\nQuestion: Tom has {a} apples and buys "
        f"{b} more. How many apples does he have now?\nAnswer:",
        "answer": str(a + b),
    }


def _numglue_ds(rng: random.Random) -> dict[str, str]:
    a, b = rng.randint(2, 12), rng.randint(2, 9)
    return {
        "prompt": f"Solve the following math problem.\nQuestion: A box holds {a} rows of {b} "
        "eggs. How many eggs are in the box?\nAnswer:",
        "answer": str(a * b),
    }


def _minuten(rng: random.Random) -> dict[str, str]:
    text, simple = rng.choice(_DE)
    return {
        "prompt": "Provide a simplified version of the following paragraph in German.\n\n"
        f"{text}\nSimplified version:",
        "answer": simple,
    }


#: Synthetic stand-ins named as TRACE's eight tasks (its metrics apply; see the module doc).
TRACE_STANDINS: dict[str, Callable[[random.Random], dict[str, str]]] = {
    "C-STANCE": _cstance,
    "FOMC": _fomc,
    "MeetingBank": _meeting,
    "Py150": _py150,
    "ScienceQA": _scienceqa,
    "NumGLUE-cm": _numglue,
    "NumGLUE-ds": _numglue_ds,
    "20Minuten": _minuten,
}


def _write_json_atomic(path: Path, data: list[dict[str, str]]) -> None:
    # A JSON list with one record per line: valid TRACE input, readable diffs.
    atomic_write(
        path, "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in data) + "\n]\n"
    )


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
    return _generate(out, SYNTHETIC_TASKS, names, train, eval, test, seed)


def generate_trace_standins(
    out: str | Path, train: int = 16, eval: int = 4, test: int = 8, seed: int = 0
) -> dict[str, dict[str, int]]:
    """Write the eight :data:`TRACE_STANDINS` tasks in the released TRACE layout under ``out``
    (arguments and result as :func:`generate_micro_trace`, smaller default sizes)."""
    return _generate(out, TRACE_STANDINS, list(TRACE_STANDINS), train, eval, test, seed)


def _generate(
    out: str | Path,
    makers: dict[str, Callable[[random.Random], dict[str, str]]],
    names: list[str],
    train: int,
    eval: int,
    test: int,
    seed: int,
) -> dict[str, dict[str, int]]:
    for name, n in (("train", train), ("eval", eval), ("test", test)):
        if n < 1:
            raise ValueError(f"{name} must be >= 1, got {n}")
    root = Path(out)
    summary: dict[str, dict[str, int]] = {}
    for index, task in enumerate(makers):
        if task not in names:
            continue
        rng = random.Random(f"{seed}/{index}/{task}")
        summary[task] = {}
        for split, n in (("train", train), ("eval", eval), ("test", test)):
            records = [makers[task](rng) for _ in range(n)]
            _write_json_atomic(root / task / f"{split}.json", records)
            summary[task][split] = n
    return summary


def main(argv: list[str] | None = None) -> None:
    """``python scripts/make_trace_data.py OUT [--layout micro|trace] [--train N] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output root directory")
    parser.add_argument(
        "--layout",
        choices=("micro", "trace"),
        default="micro",
        help="micro: the five micro tasks; trace: stand-ins under TRACE's eight task names",
    )
    parser.add_argument("--tasks", nargs="*", default=None, choices=list(SYNTHETIC_TASKS))
    parser.add_argument("--train", type=int, default=None, help="default 256 (micro), 16 (trace)")
    parser.add_argument("--eval", type=int, default=None, help="default 32 (micro), 4 (trace)")
    parser.add_argument("--test", type=int, default=None, help="default 32 (micro), 8 (trace)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    micro = args.layout == "micro"
    sizes = {
        name: getattr(args, name) if getattr(args, name) is not None else default
        for name, default in zip(
            ("train", "eval", "test"), (256, 32, 32) if micro else (16, 4, 8), strict=True
        )
    }
    if micro:
        summary = generate_micro_trace(args.out, args.tasks, **sizes, seed=args.seed)
    else:
        if args.tasks:
            parser.error("--tasks applies to --layout micro only")
        summary = generate_trace_standins(args.out, **sizes, seed=args.seed)
    for task, counts in summary.items():
        print(f"{args.out}/{task}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
