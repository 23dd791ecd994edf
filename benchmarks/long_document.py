"""Peak memory of continual pre-training on one very long document vs a normal corpus.

``python benchmarks/long_document.py [--size-mb 50] [--format jsonl|txt]``

Writes the same number of characters twice: as ONE document on a single line (a 50 MB ``.jsonl``
record or ``.txt`` paragraph) and as many 2 KB documents. For each, a fresh process tokenises it
with :class:`blockexp.data.cpt.CPTDataModule` (the byte tokenizer, the cache in a temp dir) and trains
a tiny LLaMA Pro model for 2 steps. Reported: peak RSS (``VmHWM``) and wall time of each, and
their ratio (goal: the long document within 2x the normal corpus); with ``--rounds N`` the two
alternate N times (which goes first alternates too) and every round's ratio is printed with
their median.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import json, sys, time
    import lightning as L
    from blockexp.data.cpt import CPTDataModule, DataSource
    from blockexp.expanders import LlamaPro
    from blockexp.training.module import BlockExpansionModule
    from blockexp.io.tokenization import (
    BYTE_BOS_ID,
    BYTE_EOS_ID,
    BYTE_PAD_ID,
    BYTE_VOCAB_SIZE,
)
    path, cache = sys.argv[1], sys.argv[2]
    started = time.perf_counter()
    data = CPTDataModule(sources=[DataSource(name="d", path=path)], tokenizer="byte",
                         seq_len=128, batch_size=4, val_fraction=0.0, cache_dir=cache)
    base = dict(model_type="llama", vocab_size=BYTE_VOCAB_SIZE, hidden_size=32,
                intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, bos_token_id=BYTE_BOS_ID, eos_token_id=BYTE_EOS_ID,
                pad_token_id=BYTE_PAD_ID)
    module = BlockExpansionModule(base=base, expander=LlamaPro(num_groups=1),
                                  validate_before_fit=False)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({"peak_kb": peak, "seconds": time.perf_counter() - started,
                      "blocks": len(data.train_dataset)}))
    """
)


def _words(rng: random.Random, chars: int) -> str:
    out, size = [], 0
    while size < chars:
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:chars]


def write_corpora(folder: Path, size_mb: float, fmt: str) -> tuple[Path, Path]:
    """One ``size_mb`` document, and the same characters as 2 KB documents."""
    rng = random.Random(0)
    total = int(size_mb * 1_000_000)
    text = _words(rng, total)
    long_path, normal_path = folder / f"long.{fmt}", folder / f"normal.{fmt}"
    docs = [text[i : i + 2000] for i in range(0, len(text), 2000)]
    if fmt == "jsonl":
        long_path.write_text(json.dumps({"text": text}) + "\n")
        normal_path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    else:  # .txt: documents are blank-line separated paragraphs
        long_path.write_text(text + "\n")
        normal_path.write_text("\n\n".join(docs) + "\n")
    return long_path, normal_path


def measure(path: Path, cache: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(cache)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=50.0)
    parser.add_argument("--format", choices=("jsonl", "txt"), default="jsonl")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        long_path, normal_path = write_corpora(folder, args.size_mb, args.format)
        print(
            f"corpora: {args.size_mb:g} MB as one document and as 2 KB documents "
            f"({args.format}, written in {time.perf_counter() - started:.1f}s)"
        )
        for i in range(args.rounds):
            order = [("normal", normal_path), ("long", long_path)]
            result = {
                name: measure(path, folder / f"cache_{name}_{i}")
                for name, path in (order if i % 2 == 0 else order[::-1])
            }
            normal, long = result["normal"], result["long"]
            ratio = long["peak_kb"] / normal["peak_kb"]
            rounds.append(ratio)
            print(
                f"round {i + 1}: normal corpus peak RSS {normal['peak_kb'] / 1e6:.2f} GB, "
                f"{normal['seconds']:.1f}s ({normal['blocks']} blocks); one document "
                f"{long['peak_kb'] / 1e6:.2f} GB, {long['seconds']:.1f}s ({long['blocks']} "
                f"blocks); ratio {ratio:.2f}, time {long['seconds'] / normal['seconds']:.2f}"
            )
    median = statistics.median(rounds)
    print(
        f"peak RSS ratio, one document / normal corpus: median {median:.2f} "
        f"(rounds {', '.join(f'{r:.2f}' for r in rounds)}; goal <= 2)"
    )
    return {"normal": normal, "long": long, "ratio": median, "rounds": rounds}


if __name__ == "__main__":
    main()
