"""Data preparation of the strategies experiment: train / held-out splits of the quickstart corpora.

    python experiments/strategies/prepare.py [--out outputs/experiments/strategies/data]

Every 10th document of ``data/quickstart/general.jsonl`` and ``domain.jsonl`` goes to the held-out
file (``<name>_val.jsonl``), the others to ``<name>_train.jsonl``; training never sees the
held-out documents, on which the sweep measures forgetting and gain.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from blockexp.io.outputs import atomic_write

REPO = Path(__file__).resolve().parents[2]
CORPORA = {
    "general": REPO / "data/quickstart/general.jsonl",
    "domain": REPO / "data/quickstart/domain.jsonl",
}
EVERY = 10


def split(out: Path) -> dict[str, int]:
    counts = {}
    for name, path in CORPORA.items():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        val = [line for i, line in enumerate(lines) if i % EVERY == EVERY - 1]
        train = [line for i, line in enumerate(lines) if i % EVERY != EVERY - 1]
        atomic_write(out / f"{name}_train.jsonl", "\n".join(train) + "\n")
        atomic_write(out / f"{name}_val.jsonl", "\n".join(val) + "\n")
        counts[name] = len(val)
    return counts


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/experiments/strategies/data"))
    counts = split(parser.parse_args(argv).out)
    print(f"held-out documents: {counts}")
    return counts


if __name__ == "__main__":
    main()
