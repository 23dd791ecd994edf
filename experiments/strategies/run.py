"""Every knowledge-injection strategy from the same tiny base on the same small data.

    python experiments/strategies/run.py [--steps 200] [--base-steps 400] [--out DIR]

1. Pre-train a tiny random Llama ("the base") on the general corpus
   (data/quickstart/general.jsonl) so that forgetting it is measurable; export it once.
2. From that same base, train every registered strategy (LLaMA Pro, SLayer, prefix/suffix
   stacking, MoE expansion, LoRA, full fine-tuning) on the domain corpus
   (data/quickstart/domain.jsonl) with the same optimizer, schedule, steps and batches.
3. Measure, on held-out documents: general validation loss before/after (the increase is
   forgetting), domain validation loss before/after (the decrease is the gain); plus total and
   trainable parameters and the mean training step time.

Writes ``results.csv``, ``results.md`` and ``results.png`` to ``--out`` (atomically). Runs in a
few minutes on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from blockexp.data.cpt import CPTDataModule, DataSource
from blockexp.expanders import FullFineTune, expander_names, get_expander
from blockexp.io.outputs import atomic_write
from blockexp.training.module import BlockExpansionModule
from blockexp.training.settings import Optim
from blockexp.training.timer import StepTimer
from blockexp.training.trainer import make_trainer

REPO = Path(__file__).resolve().parents[2]
GENERAL = REPO / "data/quickstart/general.jsonl"
DOMAIN = REPO / "data/quickstart/domain.jsonl"

#: The tiny base: 8 layers so that every strategy (SLayer's pruning included) has room.
BASE_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 259,
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "bos_token_id": 257,
    "eos_token_id": 258,
    "pad_token_id": 256,
    "tie_word_embeddings": False,
}

#: Constructor arguments per strategy (about two blocks' worth of new capacity where that makes
#: sense). A registered strategy missing here runs with its defaults.
STRATEGY_ARGS: dict[str, dict[str, Any]] = {
    "LlamaPro": {"num_groups": 2},
    "SLayer": {},
    "PrefixStack": {"num_blocks": 2},
    "SuffixStack": {"num_blocks": 2},
    "MoEExpansion": {"num_experts": 1},
    "LoRA": {"r": 8, "alpha": 16},
    "FullFineTune": {},
}


def _data(path: Path, name: str, args: argparse.Namespace) -> CPTDataModule:
    return CPTDataModule(
        sources=[DataSource(name=name, path=str(path))],
        tokenizer="byte",
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        val_fraction=0.1,
        seed=0,
        cache_dir=str(Path(args.out) / "hf_cache"),
    )


def _trainer(args: argparse.Namespace, steps: int = 0, callbacks: list | None = None) -> L.Trainer:
    return make_trainer(
        max_steps=steps,
        # validation only through _val_loss (a separate trainer), never during fit
        limit_val_batches=0 if steps else args.val_batches,
        callbacks=callbacks or [],
        default_root_dir=str(Path(args.out) / "lightning"),
    )


def _val_loss(module: BlockExpansionModule, data: CPTDataModule, args) -> float:
    return float(_trainer(args).validate(module, datamodule=data, verbose=False)[0]["val_loss"])


def pretrain_base(args: argparse.Namespace, general: CPTDataModule) -> Path:
    """Train every weight of a random tiny Llama on the general corpus; export it."""
    out = Path(args.out) / "base"
    module = BlockExpansionModule(
        base=BASE_CONFIG,
        expander=FullFineTune(),
        tokenizer="byte",
        seed=0,
        optim=Optim(lr=args.base_lr),
    )
    trainer = _trainer(args, args.base_steps)
    trainer.fit(module, datamodule=general)
    module.export(out, overwrite=True)
    print(f"base: general val loss {_val_loss(module, general, args):.4f} -> {out}", flush=True)
    return out


def run_strategy(
    name: str,
    base: Path,
    args: argparse.Namespace,
    general: CPTDataModule,
    domain: CPTDataModule,
) -> dict[str, Any]:
    """Train one strategy from the base on the domain corpus and measure it."""
    L.seed_everything(0, workers=True)
    expander = get_expander(name)(**STRATEGY_ARGS.get(name, {}))
    module = BlockExpansionModule(
        base=str(base), expander=expander, tokenizer="byte", optim=Optim(lr=args.lr)
    )
    module.configure_model()
    row: dict[str, Any] = {"strategy": name, "args": repr(expander)}
    row["general_before"] = _val_loss(module, general, args)
    row["domain_before"] = _val_loss(module, domain, args)
    timer = StepTimer()
    _trainer(args, args.steps, [timer]).fit(module, datamodule=domain)
    row["general_after"] = _val_loss(module, general, args)
    row["domain_after"] = _val_loss(module, domain, args)
    total, trainable = module.expansion.parameter_counts()
    row.update(
        layers=int(module.model.config.num_hidden_layers),
        total_params=total,
        trainable_params=trainable,
        step_ms=timer.mean_ms,
        forgetting=row["general_after"] - row["general_before"],
        gain=row["domain_before"] - row["domain_after"],
    )
    print(
        f"{name}: general {row['general_before']:.4f} -> {row['general_after']:.4f}, "
        f"domain {row['domain_before']:.4f} -> {row['domain_after']:.4f}, "
        f"trainable {trainable:,}, {row['step_ms']:.1f} ms/step",
        flush=True,
    )
    return row


COLUMNS = [
    ("strategy", "strategy", "{}"),
    ("layers", "layers", "{}"),
    ("trainable_params", "trainable params", "{:,}"),
    ("total_params", "total params", "{:,}"),
    ("general_before", "general val loss before", "{:.4f}"),
    ("general_after", "general val loss after", "{:.4f}"),
    ("forgetting", "forgetting (general after - before)", "{:+.4f}"),
    ("domain_before", "domain val loss before", "{:.4f}"),
    ("domain_after", "domain val loss after", "{:.4f}"),
    ("gain", "gain (domain before - after)", "{:+.4f}"),
    ("step_ms", "step time (ms)", "{:.1f}"),
]


def write_results(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    out = Path(args.out)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[c[0] for c in COLUMNS] + ["args"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "results.csv", buf.getvalue())

    lines = [
        f"Tiny 8-layer Llama (hidden 64) pre-trained {args.base_steps} steps on the general "
        f"corpus, then {args.steps} steps per strategy on the domain corpus (seq_len "
        f"{args.seq_len}, batch {args.batch_size}, lr {args.lr}, AdamW 0.9/0.95, wd 0.1, "
        "6% warmup + cosine, CPU).",
        "",
        "| " + " | ".join(c[1] for c in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[key]) for key, _, fmt in COLUMNS) + " |")
    atomic_write(out / "results.md", "\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for row in rows:
        ax1.scatter(row["forgetting"], row["gain"], s=40)
        ax1.annotate(row["strategy"], (row["forgetting"], row["gain"]), fontsize=8)
    ax1.axvline(0.0, color="grey", lw=0.5)
    ax1.set_xlabel("forgetting: general val loss increase (lower is better)")
    ax1.set_ylabel("gain: domain val loss decrease (higher is better)")
    ax1.set_title("Knowledge injection vs forgetting")
    names = [r["strategy"] for r in rows]
    x = range(len(rows))
    ax2.bar([i - 0.2 for i in x], [r["general_after"] for r in rows], 0.4, label="general (after)")
    ax2.bar([i + 0.2 for i in x], [r["domain_after"] for r in rows], 0.4, label="domain (after)")
    ax2.axhline(rows[0]["general_before"], color="C0", ls="--", lw=0.8, label="general (base)")
    ax2.axhline(rows[0]["domain_before"], color="C1", ls="--", lw=0.8, label="domain (base)")
    ax2.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("validation loss")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    buf_png = io.BytesIO()
    fig.savefig(buf_png, format="png", dpi=120)
    plt.close(fig)
    atomic_write(out / "results.png", buf_png.getvalue())


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per strategy")
    parser.add_argument("--base-steps", type=int, default=400, help="base pre-training steps")
    parser.add_argument("--out", default="outputs/experiments/strategies", help="output dir")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak lr of every strategy")
    parser.add_argument("--base-lr", type=float, default=3e-3, help="peak lr of the base")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--val-batches", type=int, default=8, help="validation batches per set")
    parser.add_argument(
        "--strategies", nargs="*", default=None, help="subset of strategies (default: all)"
    )
    args = parser.parse_args(argv)
    for path in (GENERAL, DOMAIN):
        if not path.is_file():
            parser.error(f"{path} is missing; run from a blockexp checkout.")
    names = args.strategies or expander_names()
    unknown = sorted(set(names) - set(expander_names()))
    if unknown:
        parser.error(f"unknown strategies {unknown}; registered: {expander_names()}")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    L.seed_everything(0, workers=True)
    start = time.perf_counter()
    # One data module per corpus, set up once (tokenised, packed, split) and shared by all runs.
    general, domain = _data(GENERAL, "general", args), _data(DOMAIN, "domain", args)
    base = pretrain_base(args, general)
    rows = [run_strategy(name, base, args, general, domain) for name in names]
    write_results(rows, args)
    print(
        f"wrote {Path(args.out).resolve()}/results.{{csv,md,png}} in {time.perf_counter() - start:.0f}s"
    )
    print((Path(args.out) / "results.md").read_text())
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
