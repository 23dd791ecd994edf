"""Benchmark: streaming expansion of a >= 1 GB checkpoint vs ``cp -r`` of the same checkpoint.

    python benchmarks/expand_streaming.py                    # 1.1 GB bf16 Llama, +25% layers
    python benchmarks/expand_streaming.py --size-gb 4 --in-memory

Generates a random bf16 Llama checkpoint (sharded safetensors + index + config + byte tokenizer)
in a temporary directory, then, in fresh child processes:

* ``cp -r base copy`` (the reference: the same bytes read, fewer written),
* :func:`blockexp.streaming.stream_expand` (timed around the call, after imports),
* optionally the in-memory path (``load_model`` + ``expand`` + ``save_pretrained``).

Prints time ratios against ``cp -r`` and peak resident memory (``VmHWM``) against the checkpoint
size, both absolute and above the child's baseline after ``import`` (torch + transformers alone
take a few hundred MB, whatever the model). Goals (issue #6): time ratio <= 1.5, peak RSS <= 0.3x
checkpoint size. Everything is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
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
    from blockexp.streaming import stream_expand
    before = status("VmRSS:")
    t0 = time.perf_counter()
    stream_expand(base, out, expander, max_shard_size=sys.argv[5])
else:
    from blockexp.checkpoint import load_model
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

    from blockexp.streaming import parse_size
    from blockexp.tokenization import load_tokenizer

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


def run_child(mode: str, base: Path, out: Path, groups: int, shard: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(base), str(out), str(groups), shard],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def timed_cp(src: Path, dst: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="checkpoint size (>= 1)")
    parser.add_argument("--shard", default="500MB", help="shard size of base and output")
    parser.add_argument("--workdir", default=None, help="where to write (default: /tmp)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each; the best is kept")
    parser.add_argument("--in-memory", action="store_true", help="also time in-memory expansion")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="blockexp-bench-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        size, layers = make_checkpoint(work / "base", args.size_gb, args.shard)
        groups = layers // 4  # +25% layers, as LLaMA Pro 8.3B (32 -> 40)
        print(
            f"checkpoint: {size / 1e9:.2f} GB, {layers} layers bf16 -> LlamaPro(num_groups={groups}) "
            f"{layers + groups} layers (generated in {time.perf_counter() - t0:.1f}s)"
        )
        cp_times, stream, memory = [], [], []
        for r in range(args.repeats):
            cp_times.append(timed_cp(work / "base", work / f"cp{r}"))
            shutil.rmtree(work / f"cp{r}")
            stream.append(run_child("stream", work / "base", work / f"s{r}", groups, args.shard))
            out_size = sum(f.stat().st_size for f in (work / f"s{r}").iterdir())
            shutil.rmtree(work / f"s{r}")
            if args.in_memory and r == 0:
                memory.append(run_child("memory", work / "base", work / "m", groups, args.shard))
                shutil.rmtree(work / "m")
        cp_t = min(cp_times)
        best = min(stream, key=lambda d: d["seconds"])
        peak = max(d["peak"] for d in stream)
        before = min(d["before"] for d in stream)
        print(f"output: {out_size / 1e9:.2f} GB ({out_size / size:.2f}x the bytes cp writes)")
        print(f"cp -r:               {cp_t:7.2f} s   (reference)")
        print(
            f"streaming expand:    {best['seconds']:7.2f} s   time ratio {best['seconds'] / cp_t:.2f}"
            f"   (goal <= 1.5; per byte written {best['seconds'] / cp_t * size / out_size:.2f})"
        )
        print(
            f"  peak RSS {peak / 1e6:.0f} MB = {peak / size:.3f}x checkpoint (goal <= 0.3); "
            f"above the import baseline of {before / 1e6:.0f} MB: {(peak - before) / 1e6:.0f} MB "
            f"= {(peak - before) / size:.3f}x"
        )
        if memory:
            m = memory[0]
            print(
                f"in-memory expand:    {m['seconds']:7.2f} s   time ratio {m['seconds'] / cp_t:.2f}"
                f"   peak RSS {m['peak'] / 1e6:.0f} MB = {m['peak'] / size:.3f}x checkpoint"
            )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
