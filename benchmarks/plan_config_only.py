"""Benchmark: ``plan`` on a bare Llama-2-7B config.json, before and after a change, side by side.

    python benchmarks/plan_config_only.py --before d6a9cc2          # 3 alternated rounds
    python benchmarks/plan_config_only.py --before main --rounds 5

Writes Llama-2-7B's published config.json (meta-llama/Llama-2-7b-hf) into a temporary directory
(nothing else: the user has not downloaded the model), exports the package source of git
revision ``--before`` next to it (``git archive``), and runs

    python -m blockexp plan --base DIR --expander LlamaPro --expander.num_groups 8

as a whole child process with ``PYTHONPATH`` pointing at the ``--before`` source and at this
checkout's ``src`` in turn, alternated round by round (a busy machine slows both alike). For each
run it records the wall time and the child's peak resident memory (``ru_maxrss`` from
``os.wait4``); medians are reported, with the load average before and after. Both versions must
print the same table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 4096,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.31.0.dev0",
    "use_cache": True,
    "vocab_size": 32000,
}


def run(src: Path, base: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of one ``plan`` process importing ``src``."""
    cmd = [sys.executable, "-m", "blockexp", "plan", "--base", str(base)]
    cmd += ["--expander", "LlamaPro", "--expander.num_groups", "8"]
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "100"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=base)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} ({src}) failed:\n{err.read().decode()[-3000:]}")
        return seconds, usage.ru_maxrss / 1024, out.read().decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds (medians)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "llama2_7b"
        base.mkdir()
        (base / "config.json").write_text(json.dumps(LLAMA2_7B, indent=2) + "\n")
        before = tmp / "before"
        before.mkdir()
        archive = subprocess.run(
            ["git", "archive", args.before, "src"], cwd=REPO, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        sources = {f"before ({args.before})": before / "src", "after (this checkout)": REPO / "src"}
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in sources}
        outputs: dict[str, str] = {}
        load_before = os.getloadavg()
        for _ in range(args.rounds):
            for name, src in sources.items():
                seconds, rss, out = run(src, base)
                results[name].append((seconds, rss))
                outputs[name] = out
        load_after = os.getloadavg()
    first, second = outputs.values()
    if first != second:
        raise SystemExit(f"the two versions print different plans:\n{first}\n---\n{second}")
    print(
        f"{args.rounds} alternated round(s) on {os.cpu_count()} CPU(s); load average (1/5/15 min)"
    )
    print(f"  before the runs {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}")
    print(f"  after the runs  {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}")
    print(f"{'version':<28}  wall s (median, min-max)   peak RSS MB (median)")
    for name, values in results.items():
        walls = [v[0] for v in values]
        rss = statistics.median(v[1] for v in values)
        print(
            f"{name:<28}  {statistics.median(walls):6.2f} ({min(walls):.2f}-{max(walls):.2f})"
            f"{'':>12}{rss:7.0f}"
        )
    print("both print: " + first.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
