"""Benchmark: streaming expansion of a >= 1 GB checkpoint vs ``cp -r`` of the same checkpoint.

    python benchmarks/expand_streaming.py                    # 1.1 GB bf16 Llama, +25% layers
    python benchmarks/expand_streaming.py --size-gb 4 --in-memory

Generates a random bf16 Llama checkpoint (sharded safetensors + index + config + byte tokenizer)
in a temporary directory, then alternates, round after round, in this one command:

* ``cp -r base copy`` (the reference: the same bytes read, fewer written),
* the real command a user runs, timed end to end as a child process, interpreter start and
  imports included: ``python -m blockexp expand --base B --out O --expander LlamaPro
  --expander.num_groups G --max_shard_size S``; its peak RSS is the child's ``ru_maxrss``
  (from ``wait4``),
* the library call alone, :func:`blockexp.io.streaming.stream_expand` timed around the call after
  the imports (what the command spends beyond its start-up),
* optionally the in-memory path (``load_model`` + ``expand`` + ``save_pretrained``).

Prints the median time ratio against ``cp -r`` over the rounds and the peak RSS against the
checkpoint size. Goals (issue #6): time ratio <= 1.5, peak RSS <= 0.3x checkpoint size. Everything
is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
mode, base, out = sys.argv[1:4]
import torch  # noqa: F401
from blockexp.expanders import LlamaPro

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

expander = LlamaPro(num_groups=int(sys.argv[4]))
if mode == "stream":
    from blockexp.io.streaming import stream_expand
    before = status("VmRSS:")
    t0 = time.perf_counter()
    stream_expand(base, out, expander, max_shard_size=sys.argv[5])
else:
    from blockexp.io.load import load_model
    before = status("VmRSS:")
    t0 = time.perf_counter()
    model = load_model(base)
    expander.expand(model)
    model.save_pretrained(out, max_shard_size=sys.argv[5])
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "before": before, "peak": status("VmHWM:")}))
"""


def make_checkpoint(
    path: Path,
    size_gb: float,
    shard: str,
    hidden: int = 1536,
    intermediate: int = 4096,
    vocab: int = 32000,
) -> tuple[int, int]:
    """Write a random bf16 Llama of about ``size_gb`` GB (at least 8 layers of the given
    widths); returns (bytes, layers)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from blockexp.io.safetensors import parse_size
    from blockexp.io.tokenization import load_tokenizer

    h, inter = hidden, intermediate
    per_layer = (4 * h * h + 3 * h * inter + 2 * h) * 2
    fixed = (2 * vocab * h + h) * 2
    layers = max(8, 8 * math.ceil((size_gb * 1e9 - fixed) / per_layer / 8))
    config = LlamaConfig(
        hidden_size=h,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=max(1, h // 128),
        num_key_value_heads=max(1, h // 128),
        vocab_size=vocab,
        dtype="bfloat16",
        tie_word_embeddings=False,
    )
    path.mkdir(parents=True)
    config.save_pretrained(path)
    load_tokenizer("byte").save_pretrained(path)
    shapes = {"model.embed_tokens.weight": (vocab, h), "lm_head.weight": (vocab, h)}
    shapes["model.norm.weight"] = (h,)
    for i in range(layers):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{name}.weight"] = (h, h)
        shapes[p + "mlp.gate_proj.weight"] = (inter, h)
        shapes[p + "mlp.up_proj.weight"] = (inter, h)
        shapes[p + "mlp.down_proj.weight"] = (h, inter)
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
    limit = parse_size(shard)
    groups: list[dict[str, tuple[int, ...]]] = [{}]
    size = 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * 2
        if groups[-1] and size + nbytes > limit:
            groups.append({})
            size = 0
        groups[-1][name] = shape
        size += nbytes
    weight_map, total = {}, 0
    gen = torch.Generator().manual_seed(0)
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {
            n: (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16) for n, s in group.items()
        }
        save_file(tensors, str(path / fname), metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in tensors.values())
        weight_map.update(dict.fromkeys(group, fname))
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return sum(f.stat().st_size for f in path.iterdir()), layers


REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    """This checkout's ``src`` first on the children's path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def run_child(mode: str, base: Path, out: Path, groups: int, shard: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(base), str(out), str(groups), shard],
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# Linux keeps a process's peak RSS across exec (``ru_maxrss`` takes the replaced image's
# high-water mark), so a command spawned from this process, which holds the generated checkpoint's
# tensors and torch, would report this process's RSS as its own. Commands are therefore started by
# a small spawner process that is started before anything large is imported or allocated.
SPAWNER = r"""
import json, os, subprocess, sys, time
for line in sys.stdin:
    cmd, env = json.loads(line)
    with open(os.devnull, "wb") as sink:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.PIPE, env=env)
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak": usage.ru_maxrss * 1024,
                      "code": os.waitstatus_to_exitcode(status),
                      "stderr": err.decode(errors="replace")[-3000:]}), flush=True)
"""


class Spawner:
    """A small long-lived process that runs commands and reports wall time and peak RSS."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SPAWNER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, cmd: list[str]) -> dict:
        self.proc.stdin.write(json.dumps([cmd, _env()]) + "\n")
        self.proc.stdin.flush()
        result = json.loads(self.proc.stdout.readline())
        if result["code"] != 0:
            raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{result['stderr']}")
        return result

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def timed_command(spawner: Spawner, base: Path, out: Path, groups: int, shard: str) -> dict:
    """``python -m blockexp expand ...`` end to end: wall seconds and the child's peak RSS."""
    cmd = [sys.executable, "-m", "blockexp", "expand", "--base", str(base), "--out", str(out),
           "--expander", "LlamaPro", "--expander.num_groups", str(groups),
           "--max_shard_size", shard]  # fmt: skip
    return spawner.run(cmd)


def timed_cp(src: Path, dst: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="checkpoint size (>= 1)")
    parser.add_argument("--shard", default="500MB", help="shard size of base and output")
    parser.add_argument("--workdir", default=None, help="where to write (default: /tmp)")
    parser.add_argument("--repeats", type=int, default=3, help="alternated rounds (median)")
    parser.add_argument("--in-memory", action="store_true", help="also time in-memory expansion")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    args = parser.parse_args()

    spawner = Spawner()  # before this process grows (see SPAWNER)
    work = Path(tempfile.mkdtemp(prefix="blockexp-bench-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        size, layers = make_checkpoint(work / "base", args.size_gb, args.shard)
        groups = layers // 4  # +25% layers, as LLaMA Pro 8.3B (32 -> 40)
        print(
            f"checkpoint: {size / 1e9:.2f} GB, {layers} layers bf16 -> LlamaPro(num_groups={groups}) "
            f"{layers + groups} layers (generated in {time.perf_counter() - t0:.1f}s)"
        )
        cp_times, command, stream, memory = [], [], [], []
        for r in range(args.repeats):
            cp_times.append(timed_cp(work / "base", work / f"cp{r}"))
            shutil.rmtree(work / f"cp{r}")
            command.append(
                timed_command(spawner, work / "base", work / f"c{r}", groups, args.shard)
            )
            out_size = sum(f.stat().st_size for f in (work / f"c{r}").iterdir())
            shutil.rmtree(work / f"c{r}")
            stream.append(run_child("stream", work / "base", work / f"s{r}", groups, args.shard))
            shutil.rmtree(work / f"s{r}")
            if args.in_memory and r == 0:
                memory.append(run_child("memory", work / "base", work / "m", groups, args.shard))
                shutil.rmtree(work / "m")
        cp_t = statistics.median(cp_times)
        cmd_ratios = sorted(c["seconds"] / t for c, t in zip(command, cp_times, strict=True))
        cmd_t = statistics.median(c["seconds"] for c in command)
        call_t = statistics.median(d["seconds"] for d in stream)
        peak = max(c["peak"] for c in command)
        print(f"output: {out_size / 1e9:.2f} GB ({out_size / size:.2f}x the bytes cp writes)")
        print(f"cp -r:                   {cp_t:7.2f} s   (reference; median of {args.repeats})")
        print(
            f"python -m blockexp expand {cmd_t:6.2f} s   time ratio {statistics.median(cmd_ratios):.2f}"
            f" (rounds: {', '.join(f'{r:.2f}' for r in cmd_ratios)}; goal <= 1.5), end to end"
        )
        print(
            f"  of which the library call stream_expand: {call_t:.2f} s ({call_t / cp_t:.2f}x cp); "
            f"the rest is interpreter start, imports and argument parsing"
        )
        print(f"  peak RSS {peak / 1e6:.0f} MB = {peak / size:.3f}x checkpoint (goal <= 0.3)")
        if memory:
            m = memory[0]
            print(
                f"in-memory expand:    {m['seconds']:7.2f} s   time ratio {m['seconds'] / cp_t:.2f}"
                f"   peak RSS {m['peak'] / 1e6:.0f} MB = {m['peak'] / size:.3f}x checkpoint"
            )
    finally:
        spawner.close()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
