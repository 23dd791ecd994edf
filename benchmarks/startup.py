"""Benchmark: start-up of ``python -m blockexp`` -- plan, streaming expand and --help, end to end.

    python benchmarks/startup.py                     # ~1.1 GB bf16 Llama, 3 alternated rounds
    python benchmarks/startup.py --rounds 5 --work /tmp/startup
    python benchmarks/startup.py --smoke             # tiny checkpoint, one round, no torch runs

Creates (or reuses, in ``--work``) a random bf16 Llama checkpoint in safetensors shards with
``benchmarks/expand_streaming.make_checkpoint`` (no download), then times whole child processes,
interpreter start and imports included, in alternated rounds (every command once per round, so
a busy machine slows all of them alike); medians are reported:

* ``cp -r base dst``: the reference (the same bytes read, fewer written),
* ``python -m blockexp expand`` with LlamaPro (+25% layers), which streams,
* ``python -m blockexp plan --json --config plan.yaml`` on the checkpoint (safetensors headers),
* the same plan on a directory holding only config.json (tensor shapes from config.json;
  before issue 27 the model was built on the meta device, importing torch and transformers),
* ``python -m blockexp --help``,
* the floors: ``python -c pass`` and ``python -c "import torch"``.

Neither ``cp`` nor ``expand`` fsyncs; both write into the page cache under the same conditions.
Before every timed command the previous output is deleted and ``sync`` is run (not timed), so
no command pays for flushing another's dirty pages. The base is read once before the rounds, so
every timed read comes from the page cache. Goals (issue 14): plan <= 1.5 s, expand <= 1.5x cp.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PLAN_GOAL_S = 1.5
EXPAND_GOAL_RATIO = 1.5
TORCH = 'python -c "import torch"'
META = "plan --json, config.json only"
EXPAND = "expand (streaming)"
STARTUP = "expand, 1 MB checkpoint"


TINY = {"hidden": 64, "intermediate": 128, "vocab": 512}  # 8 layers, about 1 MB


def ensure_checkpoint(work: Path, name: str, size_gb: float, shard: str, tiny: bool) -> dict:
    """The cached checkpoint ``work/name`` (rebuilt when the cached one has other settings);
    returns its description (bytes, layers)."""
    sys.path.insert(0, str(BENCH))
    from expand_streaming import make_checkpoint

    wanted = {"size_gb": size_gb, "shard": shard, "tiny": tiny}
    marker = work / f"{name}.json"
    base = work / name
    if marker.is_file() and base.is_dir():
        info = json.loads(marker.read_text())
        if info.get("settings") == wanted:
            return info
    shutil.rmtree(base, ignore_errors=True)
    marker.unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    size, layers = make_checkpoint(base, size_gb, shard, **(TINY if tiny else {}))
    info = {"settings": wanted, "bytes": size, "layers": layers}
    info["generated_s"] = round(time.perf_counter() - t0, 1)
    marker.write_text(json.dumps(info, indent=2) + "\n")
    return info


def timed(cmd: list[str], cwd: Path) -> float:
    """Wall seconds of one child process (it must succeed)."""
    t0 = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return seconds


def clear(path: Path) -> None:
    """Remove ``path`` and flush dirty pages (neither is timed)."""
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["sync"], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--work",
        default=None,
        help="cache directory for the checkpoint (kept between runs) and the outputs "
        "(default: outputs/benchmarks/startup, or its smoke/ subdirectory with --smoke)",
    )
    parser.add_argument("--size-gb", type=float, default=1.0, help="checkpoint size")
    parser.add_argument("--shard", default="500MB", help="shard size of base and output")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds (medians)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny checkpoint, one round, and not `import torch` (for tests)",
    )
    args = parser.parse_args()
    default_work = REPO / "outputs" / "benchmarks" / "startup"
    if args.smoke:
        args.size_gb, args.rounds = 0.0, 1
        default_work = default_work / "smoke"
    work = Path(args.work or default_work).expanduser().resolve()
    info = ensure_checkpoint(work, "base", args.size_gb, args.shard, args.smoke)
    base, layers = work / "base", info["layers"]
    groups = max(1, layers // 4)  # +25% layers, as LLaMA Pro 8.3B (32 -> 40)
    config_only = work / "config_only"
    config_only.mkdir(exist_ok=True)
    shutil.copy2(base / "config.json", config_only / "config.json")
    expander = {"class_path": "LlamaPro", "init_args": {"num_groups": groups}}
    plan_yaml = work / "plan.yaml"
    plan_yaml.write_text(json.dumps({"base": str(base), "expander": expander}) + "\n")
    meta_yaml = work / "plan_config_only.yaml"
    meta_yaml.write_text(json.dumps({"base": str(config_only), "expander": expander}) + "\n")
    cp_out, expand_out, tiny_out = work / "cp_out", work / "expand_out", work / "tiny_out"
    py = sys.executable
    blockexp = [py, "-m", "blockexp"]

    def expand(src: Path, out: Path, num_groups: int) -> list[str]:
        return [
            *blockexp,
            "expand",
            "--base",
            str(src),
            "--out",
            str(out),
            "--expander",
            "LlamaPro",
            "--expander.num_groups",
            str(num_groups),
            "--max_shard_size",
            args.shard,
        ]

    commands = {
        "cp -r": (["cp", "-r", str(base), str(cp_out)], cp_out),
        EXPAND: (expand(base, expand_out, groups), expand_out),
        "plan --json": ([*blockexp, "plan", "--json", "--config", str(plan_yaml)], None),
        META: ([*blockexp, "plan", "--json", "--config", str(meta_yaml)], None),
        "--help": ([*blockexp, "--help"], None),
        "python -c pass": ([py, "-c", "pass"], None),
        TORCH: ([py, "-c", "import torch"], None),
    }
    if args.smoke:  # the run that takes seconds whatever the checkpoint
        del commands[TORCH]
    else:  # the same command on a 1 MB checkpoint: its start-up alone
        tiny = ensure_checkpoint(work, "tiny", 0.0, args.shard, True)
        commands[STARTUP] = (expand(work / "tiny", tiny_out, tiny["layers"] // 4), tiny_out)
    print(
        f"checkpoint: {base} ({info['bytes'] / 1e9:.3f} GB, {layers} layers bf16) -> "
        f"LlamaPro(num_groups={groups}) {layers + groups} layers; {args.rounds} alternated "
        f"round(s) on {os.cpu_count()} CPU(s)"
    )
    # Warm the page cache (the base is read from memory in every timed run) and check the CLI.
    clear(cp_out)
    timed(commands["cp -r"][0], REPO)
    clear(expand_out)
    timed(commands[EXPAND][0], REPO)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, (cmd, out) in commands.items():
            if out is not None:
                clear(out)
            times[name].append(timed(cmd, REPO))
    for out in (cp_out, expand_out, tiny_out):
        clear(out)

    med = {name: statistics.median(values) for name, values in times.items()}
    width = max(map(len, commands))
    print(f"{'command':<{width}}  median s   min s    max s")
    for name, values in times.items():
        print(f"{name:<{width}}  {med[name]:7.3f}  {min(values):7.3f}  {max(values):7.3f}")
    ratio = med[EXPAND] / med["cp -r"]
    print(f"expand / cp:  {ratio:.2f}x   (goal <= {EXPAND_GOAL_RATIO})")
    if STARTUP in med:
        data = med[EXPAND] - med[STARTUP]
        print(
            f"  expand = {med[STARTUP]:.3f} s start-up (1 MB checkpoint) + {data:.3f} s for the "
            f"data: without any start-up the ratio would be {data / med['cp -r']:.2f}x"
        )
    plan = med["plan --json"]
    print(
        f"plan --json:  {plan:.3f} s   (goal <= {PLAN_GOAL_S} s: "
        f"{'met' if plan <= PLAN_GOAL_S else 'missed'}); config.json only: "
        + (f"{med[META]:.3f} s" if META in med else "not run")
    )
    print(
        f"floors: python {med['python -c pass']:.3f} s, import torch "
        + (f"{med[TORCH]:.3f} s" if TORCH in med else "not run")
        + f"; --help {med['--help']:.3f} s"
    )


if __name__ == "__main__":
    main()
