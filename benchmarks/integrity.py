"""Cost of the integrity checks, as a ratio to loading the base: digests of every frozen tensor
and the record of the base's files.

``python benchmarks/integrity.py [--size-gb 1]``

Saves a random Llama of about ``--size-gb`` (bf16 safetensors), then times, in one process and
alternating over ``--repeats`` rounds: loading it (``blockexp.io.load.load_model``, what
training and ``export`` do), hashing every parameter
(:func:`blockexp.io.digests.frozen_fingerprint`) and recording the base whole
(:func:`blockexp.io.base_record.base_record`: config, every tensor of the weight files, tokenizer
files). Training does both once; resume and export do both to verify. Prints the median of each
and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from blockexp.io.base_record import base_record
    from blockexp.io.digests import frozen_fingerprint
    from blockexp.io.load import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    hidden, inter, vocab = 1024, 2816, 32000
    per_layer = 4 * hidden * hidden + 3 * hidden * inter
    layers = max(1, round((args.size_gb * 1e9 / 2 - 2 * vocab * hidden) / per_layer))
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=16,
    )
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(base)
        size = sum(p.stat().st_size for p in base.glob("*.safetensors"))
        loads, reads, hashes, records = [], [], [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            model = load_model(str(base), dtype="auto")
            loads.append(time.perf_counter() - started)
            started = time.perf_counter()
            with torch.no_grad():  # what the first forward pass costs in reading the weights
                for p in model.parameters():
                    p.float().sum()
            reads.append(time.perf_counter() - started)
            started = time.perf_counter()
            frozen_fingerprint(model, frozenset())
            hashes.append(time.perf_counter() - started)
            started = time.perf_counter()
            base_record(str(base), "byte")
            records.append(time.perf_counter() - started)
            del model
    load, read, digest, record = (statistics.median(x) for x in (loads, reads, hashes, records))
    print(f"base: {size / 1e9:.2f} GB ({layers} layers, bf16), page cache warm")
    print(f"load_model (lazy, mmap):          {load:.2f} s (median of {args.repeats})")
    print(f"load + read every weight once:    {load + read:.2f} s")
    print(
        f"digest every tensor (sha256):     {digest:.2f} s -> ratio {digest / (load + read):.2f} "
        f"of loading and reading the base ({digest / load:.1f}x the lazy load alone)"
    )
    print(
        f"record of the base files (sha256): {record:.2f} s -> ratio {record / (load + read):.2f}"
    )
    both = digest + record
    print(f"both checks:                      {both:.2f} s -> ratio {both / (load + read):.2f}")
    return {"size": size, "load": load, "read": read, "digest": digest, "record": record}


if __name__ == "__main__":
    main()
