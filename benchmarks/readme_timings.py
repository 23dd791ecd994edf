"""The README's timing table: each documented command's wall time and peak memory, measured here.

    python benchmarks/readme_timings.py                 # every command, markdown table on stdout
    python benchmarks/readme_timings.py --only plan,help

Every command runs as a whole child process from the repository root (a fresh interpreter, as a
user types it), with its outputs in a temporary run directory (``--trainer.default_root_dir``,
which moves every output built on it), so nothing under ``outputs/`` is touched. For each run the
wall time and the child's peak resident memory (``ru_maxrss`` from ``os.wait4``) are recorded, with
the machine (CPU model, cores) and the load average before and after: a number taken on busy cores
says so. The README states these figures once; other docs link to that table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_config_only import LLAMA2_7B  # noqa: E402

PY = "python -m blockexp"


def commands(tmp: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (the command as the docs show it, the argv run here)."""
    config = tmp / "llama2-7b"
    config.mkdir()
    (config / "config.json").write_text(json.dumps(LLAMA2_7B))
    m = [sys.executable, "-m", "blockexp"]
    return {
        "quickstart": (
            f"{PY} fit --config configs/quickstart.yaml",
            [*m, "fit", "--config", "configs/quickstart.yaml",
             "--trainer.default_root_dir", str(tmp / "quickstart")],
        ),
        "micro_trace": (
            f"{PY} fit --config configs/trace/micro.yaml",
            [*m, "fit", "--config", "configs/trace/micro.yaml",
             "--trainer.default_root_dir", str(tmp / "micro")],
        ),
        "plan": (
            f"{PY} plan --base llama2-7b/config.json --expander LlamaPro "
            "--expander.num_groups 8",
            [*m, "plan", "--base", str(config / "config.json"), "--expander", "LlamaPro",
             "--expander.num_groups", "8"],
        ),
        "help": (f"{PY} fit --help", [*m, "fit", "--help"]),
    }  # fmt: skip


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run(argv: list[str], log: Path) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MB) and exit code of one child process."""
    start = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    return wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated command names")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="blockexp-timings-") as tmp:
        table = commands(Path(tmp))
        names = [n for n in table if not args.only or n in args.only.split(",")]
        print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.python_version()}")
        print("\n| command | wall time | peak RSS | load before/after |")
        print("|---|---|---|---|")
        for name in names:
            shown, argv = table[name]
            before = os.getloadavg()[0]
            wall, rss, code = run(argv, Path(tmp) / f"{name}.log")
            after = os.getloadavg()[0]
            if code != 0:
                tail = (Path(tmp) / f"{name}.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"{name} failed (exit {code}):\n{tail}")
            print(f"| `{shown}` | {wall:.1f} s | {rss:.0f} MB | {before:.1f} / {after:.1f} |")


if __name__ == "__main__":
    main()
