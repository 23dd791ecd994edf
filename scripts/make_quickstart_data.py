"""Deterministic synthetic corpora for the quickstart and for tests.

Writes two JSON Lines files of ``{"text": ...}`` records:

* ``general.jsonl``: English-like prose built from sentence templates (the
  "general" data the base model is assumed to know);
* ``domain.jsonl``: a "domain" corpus of small Python functions and arithmetic
  word problems with worked answers (what the expanded blocks should learn).

Output depends only on ``seed`` and ``num_docs`` (``random.Random`` seeded with
strings, no numpy), so the files are byte-identical on every run.

Usage::

    python scripts/make_quickstart_data.py data/quickstart [--seed 0] [--num-docs 600]
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_quickstart_data", "general_document", "domain_document"]

# ----------------------------------------------------------------------------- general prose

_NAMES = [
    "Ada",
    "Ben",
    "Clara",
    "David",
    "Elena",
    "Farid",
    "Grace",
    "Hugo",
    "Iris",
    "Jonas",
    "Kira",
    "Liam",
    "Maya",
    "Noah",
    "Olga",
    "Pablo",
    "Quinn",
    "Rosa",
    "Sam",
    "Tara",
]
_PLACES = [
    "the old harbour",
    "a quiet village",
    "the city library",
    "the mountain road",
    "the market square",
    "a small farm",
    "the river bank",
    "the train station",
    "the school garden",
    "a busy bakery",
    "the museum",
    "the forest trail",
]
_TIMES = [
    "In the morning",
    "Late in the evening",
    "On a rainy afternoon",
    "Every spring",
    "Last winter",
    "At dawn",
    "Just after lunch",
    "During the long summer",
    "One cold night",
    "Early on Sunday",
]
_ADJS = [
    "bright",
    "quiet",
    "heavy",
    "gentle",
    "curious",
    "ancient",
    "narrow",
    "warm",
    "careful",
    "busy",
    "patient",
    "simple",
    "strange",
    "friendly",
    "tired",
    "clever",
]
_NOUNS = [
    "lantern",
    "letter",
    "garden",
    "bridge",
    "notebook",
    "window",
    "boat",
    "song",
    "map",
    "kettle",
    "bicycle",
    "painting",
    "clock",
    "basket",
    "story",
    "recipe",
]
_VERBS_PAST = [
    "found",
    "repaired",
    "painted",
    "carried",
    "shared",
    "described",
    "noticed",
    "built",
    "opened",
    "cleaned",
    "borrowed",
    "remembered",
]
_TOPICS = [
    "weather",
    "history of the town",
    "price of bread",
    "new bridge",
    "coming festival",
    "old stories",
    "best way to grow tomatoes",
    "stars",
    "sea",
    "next harvest",
]
_CONNECTORS = [
    "Afterwards,",
    "Meanwhile,",
    "Later,",
    "Of course,",
    "Still,",
    "Before long,",
    "By then,",
    "For a while,",
]
_ENDINGS = [
    "and everyone agreed it had been a good day.",
    "and the evening grew calm again.",
    "so they decided to meet again the following week.",
    "although nobody could say exactly why.",
    "and the news travelled quickly through the neighbourhood.",
]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _sentence(rng: random.Random) -> str:
    a, b = rng.sample(_NAMES, 2)
    adj, noun = rng.choice(_ADJS), rng.choice(_NOUNS)
    templates = [
        lambda: (
            f"{rng.choice(_TIMES)}, {a} walked to {rng.choice(_PLACES)} with {_article(adj)} {adj} {noun}."
        ),
        lambda: (
            f"{a} {rng.choice(_VERBS_PAST)} the {adj} {noun} that {b} had left near {rng.choice(_PLACES)}."
        ),
        lambda: f"{a} and {b} talked for a long time about the {rng.choice(_TOPICS)}.",
        lambda: (
            f"{rng.choice(_CONNECTORS)} {a} said that the {noun} was more {adj} than it looked."
        ),
        lambda: f"The {noun} in {rng.choice(_PLACES)} was {adj}, {rng.choice(_ENDINGS)}",
        lambda: f'"Have you seen the {noun}?" asked {a}. {b} shook their head and smiled.',
        lambda: (
            f"People in {rng.choice(_PLACES)} often said that {_article(adj)} {adj} {noun} brings luck."
        ),
        lambda: (
            f"{b} wrote {rng.randint(2, 9)} pages about the {rng.choice(_TOPICS)} before going to sleep."
        ),
    ]
    return rng.choice(templates)()


def general_document(rng: random.Random) -> str:
    """Generate one English-like prose document.

    Args:
        rng: Source of randomness.

    Returns:
        One to three short paragraphs of plain prose.
    """
    paragraphs = []
    for _ in range(rng.randint(1, 3)):
        paragraphs.append(" ".join(_sentence(rng) for _ in range(rng.randint(2, 4))))
    return "\n\n".join(paragraphs)


# ----------------------------------------------------------------------------- domain corpus

_VARS = ["values", "items", "numbers", "data", "scores", "xs", "prices", "counts"]
_ITEMS = ["apples", "pencils", "books", "marbles", "cookies", "stickers", "tickets", "shells"]


def _py_sum_if(rng: random.Random) -> str:
    var, k = rng.choice(_VARS), rng.randint(2, 9)
    name = rng.choice(["sum_multiples", "total_divisible", "add_multiples_of"])
    return (
        f"def {name}({var}, k={k}):\n"
        f'    """Return the sum of the elements of {var} divisible by k."""\n'
        f"    total = 0\n"
        f"    for x in {var}:\n"
        f"        if x % k == 0:\n"
        f"            total += x\n"
        f"    return total\n"
    )


def _py_factorial(rng: random.Random) -> str:
    n = rng.randint(3, 9)
    result = 1
    for i in range(2, n + 1):
        result *= i
    return (
        "def factorial(n):\n"
        '    """Return n! computed iteratively."""\n'
        "    result = 1\n"
        "    for i in range(2, n + 1):\n"
        "        result *= i\n"
        "    return result\n"
        "\n"
        f"assert factorial({n}) == {result}\n"
    )


def _py_clamp(rng: random.Random) -> str:
    lo, hi = sorted(rng.sample(range(-20, 50), 2))
    x = rng.randint(-40, 80)
    return (
        f"def clamp(x, lo={lo}, hi={hi}):\n"
        '    """Limit x to the closed interval [lo, hi]."""\n'
        "    return max(lo, min(hi, x))\n"
        "\n"
        f"print(clamp({x}))  # {max(lo, min(hi, x))}\n"
    )


def _py_gcd(rng: random.Random) -> str:
    a, b = rng.randint(10, 300), rng.randint(10, 300)
    x, y = a, b
    while y:
        x, y = y, x % y
    return (
        "def gcd(a, b):\n"
        '    """Greatest common divisor by Euclid\'s algorithm."""\n'
        "    while b:\n"
        "        a, b = b, a % b\n"
        "    return a\n"
        "\n"
        f"assert gcd({a}, {b}) == {x}\n"
    )


def _py_mean(rng: random.Random) -> str:
    var = rng.choice(_VARS)
    nums = [rng.randint(1, 50) for _ in range(rng.randint(3, 6))]
    return (
        f"def mean({var}):\n"
        f'    """Arithmetic mean of a non-empty list."""\n'
        f"    if not {var}:\n"
        f'        raise ValueError("mean() of an empty list")\n'
        f"    return sum({var}) / len({var})\n"
        "\n"
        f"print(mean({nums}))  # {sum(nums) / len(nums)!r}\n"
    )


def _py_count_words(rng: random.Random) -> str:
    word = rng.choice(_NOUNS)
    return (
        "def count_words(text):\n"
        '    """Count how often each lowercase word occurs in text."""\n'
        "    counts = {}\n"
        "    for word in text.lower().split():\n"
        "        counts[word] = counts.get(word, 0) + 1\n"
        "    return counts\n"
        "\n"
        f"print(count_words(\"the {word} and the {word}\"))  # {{'the': 2, '{word}': 2, 'and': 1}}\n"
    )


def _word_problem(rng: random.Random) -> str:
    name, other = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        a, b, c = rng.randint(5, 60), rng.randint(2, 30), rng.randint(1, 20)
        c = min(c, a + b)
        return (
            f"Question: {name} has {a} {item}. {other} gives {name} {b} more, and then {name} gives away {c}. "
            f"How many {item} does {name} have now?\n"
            f"Answer: {name} starts with {a}. After receiving {b}: {a} + {b} = {a + b}. "
            f"After giving away {c}: {a + b} - {c} = {a + b - c}. The answer is {a + b - c}."
        )
    if kind == 1:
        boxes, per_box = rng.randint(2, 12), rng.randint(3, 15)
        return (
            f"Question: A shop packs {item} into {boxes} boxes with {per_box} {item} in each box. "
            f"How many {item} are there in total?\n"
            f"Answer: Multiply the number of boxes by the {item} per box: {boxes} x {per_box} = {boxes * per_box}. "
            f"The answer is {boxes * per_box}."
        )
    if kind == 2:
        people = rng.randint(2, 9)
        each = rng.randint(2, 12)
        extra = rng.randint(0, people - 1)
        total = people * each + extra
        return (
            f"Question: {name} shares {total} {item} equally among {people} friends. "
            f"How many does each friend get, and how many are left over?\n"
            f"Answer: {total} / {people} = {each} with remainder {extra}, because {people} x {each} = "
            f"{people * each} and {total} - {people * each} = {extra}. "
            f"Each friend gets {each} and {extra} are left over."
        )
    price, qty = rng.randint(2, 9), rng.randint(2, 8)
    cost = price * qty
    paid = ((cost // 10) + 1) * 10
    return (
        f"Question: {name} buys {qty} {item} at {price} dollars each and pays with {paid} dollars. "
        f"How much change does {name} get?\n"
        f"Answer: The cost is {qty} x {price} = {cost} dollars. The change is {paid} - {cost} = {paid - cost} dollars. "
        f"The answer is {paid - cost}."
    )


_CODE_GENERATORS: list[Callable[[random.Random], str]] = [
    _py_sum_if,
    _py_factorial,
    _py_clamp,
    _py_gcd,
    _py_mean,
    _py_count_words,
]


def domain_document(rng: random.Random) -> str:
    """Generate one domain document: a Python snippet or a worked word problem.

    Args:
        rng: Source of randomness.

    Returns:
        The document text.
    """
    if rng.random() < 0.5:
        return rng.choice(_CODE_GENERATORS)(rng)
    return "\n\n".join(_word_problem(rng) for _ in range(rng.randint(1, 2)))


# ----------------------------------------------------------------------------- writer


def _write_jsonl(path: Path, texts: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for text in texts:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


def write_quickstart_data(
    out_dir: str | Path, seed: int = 0, num_docs: int = 600
) -> dict[str, Path]:
    """Write the deterministic quickstart corpora.

    Args:
        out_dir: Output directory (created if needed).
        seed: Random seed; the same seed always gives the same bytes.
        num_docs: Documents per file (600 gives roughly 200-250 KB per file).

    Returns:
        ``{"general": path_to_general_jsonl, "domain": path_to_domain_jsonl}``.
    """
    if num_docs < 1:
        raise ValueError(f"num_docs must be >= 1, got {num_docs}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    general_rng = random.Random(f"blockexp-general-{seed}")
    domain_rng = random.Random(f"blockexp-domain-{seed}")
    paths = {"general": out / "general.jsonl", "domain": out / "domain.jsonl"}
    _write_jsonl(paths["general"], [general_document(general_rng) for _ in range(num_docs)])
    _write_jsonl(paths["domain"], [domain_document(domain_rng) for _ in range(num_docs)])
    return paths


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: ``python scripts/make_quickstart_data.py OUT_DIR``.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description="Write the deterministic quickstart corpora.")
    parser.add_argument("out_dir", nargs="?", default="data/quickstart")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-docs", type=int, default=600)
    args = parser.parse_args(argv)
    for name, path in write_quickstart_data(
        args.out_dir, seed=args.seed, num_docs=args.num_docs
    ).items():
        print(f"{name}: {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
