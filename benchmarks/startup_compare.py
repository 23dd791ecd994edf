"""Benchmark: start-up of ``python -m blockexp`` against another checkout, alternated rounds.

    git worktree add /tmp/old <rev>
    python benchmarks/startup_compare.py --other /tmp/old/src --base DIR [--rounds 15]

Runs ``--help`` and ``plan --json --base DIR --expander LlamaPro --expander.num_groups 2`` as
whole child processes with ``PYTHONPATH`` set to this checkout's ``src`` and to ``--other`` in
turn (every command of both trees once per round, so a busy machine slows both alike), plus the
floor ``python -c pass``, and prints the medians and the ratio this/other. ``DIR`` is a local
safetensors checkpoint with at least 2 layers (``benchmarks/startup.py --smoke`` makes one under
``outputs/benchmarks/startup/smoke/base``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def timed(args: list[str], pythonpath: str | None) -> float:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", required=True, help="the other checkout's src directory")
    parser.add_argument("--base", required=True, help="a local safetensors checkpoint")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    plan = ["plan", "--json", "--base", args.base, "--expander", "LlamaPro"]
    commands = {"--help": ["--help"], "plan": [*plan, "--expander.num_groups", "2"]}
    trees = {"this": str(SRC), "other": str(Path(args.other).resolve())}
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for tree, path in trees.items():
            for name, argv in commands.items():
                times.setdefault((name, tree), []).append(timed(["-m", "blockexp", *argv], path))
        times.setdefault(("python -c pass", "floor"), []).append(timed(["-c", "pass"], None))
    print(f"{args.rounds} alternated rounds; medians (min)")
    for name in commands:
        this, other = (statistics.median(times[(name, t)]) for t in trees)
        print(
            f"{name:8s} this {this:.3f} s ({min(times[(name, 'this')]):.3f})  "
            f"other {other:.3f} s ({min(times[(name, 'other')]):.3f})  this/other {this / other:.2f}"
        )
    print(f"floor    python -c pass {statistics.median(times[('python -c pass', 'floor')]):.3f} s")


if __name__ == "__main__":
    main()
