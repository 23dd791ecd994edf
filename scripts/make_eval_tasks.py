"""Regenerate the shipped local lm-eval tasks from the repository's own text.

    python scripts/make_eval_tasks.py [--out src/blockexp/evaluation/lmeval/tasks] [--n 100]

Writes ``blockexp_cloze`` (LAMBADA-style last word), ``blockexp_choice`` (4-way sentence
completion), ``blockexp_complete`` (generative sentence completion), all tagged
``blockexp_general``, from the prose of ``data/quickstart/general.jsonl``, and
``blockexp_code_line`` (next-line code completion) from the Python snippets of
``data/quickstart/domain.jsonl``. Deterministic: the same files and seed give the same tasks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from blockexp.evaluation.lmeval.build import build_tasks
from blockexp.evaluation.lmeval.tasks import TASKS_DIR

REPO = Path(__file__).resolve().parents[1]


def _texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(TASKS_DIR))
    parser.add_argument("--n", type=int, default=100, help="documents per task")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    prose = _texts(REPO / "data/quickstart/general.jsonl")
    code = [t for t in _texts(REPO / "data/quickstart/domain.jsonl") if t.startswith("def ")]
    relative = Path(args.out).resolve() == TASKS_DIR
    names = build_tasks(
        args.out, prose, prefix="blockexp", n=args.n, seed=args.seed, code=code, relative=relative
    )
    print(f"wrote {', '.join(names)} to {Path(args.out).resolve()}")


if __name__ == "__main__":
    main()
