"""Real-text reproduction: does block expansion gain a domain without forgetting?

    python experiments/reproduce/run.py [--out outputs/experiments/reproduce]

1. **Corpora** (``corpus.py``): English prose from the Python documentation that Debian ships
   (``python3.X-doc``) as the general corpus, the CPython standard library's source as the
   domain corpus; files split into train / validation / task pools.
2. **Tokenizer**: a 4,096-entry byte-level BPE trained on both training pools.
3. **Local tasks** (:mod:`blockexp.evaluation.lmeval.build`) from the task pools: three general tasks
   (LAMBADA-style cloze, 4-way sentence completion, generative sentence completion) and a
   next-line code-completion task.
4. **Base**: a random 8-layer Llama (hidden 256, ~8M parameters) pre-trained on the prose.
5. **Strategies**: from that base, every strategy trains on the code for the same steps, with
   the same optimizer, schedule and batches, at about the same budget of new trainable
   parameters (two decoder blocks' worth; full fine-tuning trains everything).
6. **Measures** on every exported model: held-out general and domain loss, the lm-eval scores
   of the local tasks (``python -m blockexp eval``'s code path), trainable parameters and the
   mean training step time.

Every step is cached in ``--out`` (delete a file or directory to redo it); the report is
``results.{csv,md,json,png}``. ``--smoke`` shrinks every size for a quick end-to-end check.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus as corpus_mod  # noqa: E402

from blockexp.data.cpt import CPTDataModule, DataSource  # noqa: E402
from blockexp.evaluation.importance.inputs import load_text_blocks  # noqa: E402
from blockexp.evaluation.importance.measure import text_loss  # noqa: E402
from blockexp.evaluation.lmeval.build import build_tasks  # noqa: E402
from blockexp.evaluation.lmeval.harness import evaluate_model, headline_scores  # noqa: E402
from blockexp.expanders import get_expander  # noqa: E402
from blockexp.io.outputs import atomic_write  # noqa: E402
from blockexp.training.module import BlockExpansionModule  # noqa: E402
from blockexp.training.settings import Optim
from blockexp.training.timer import StepTimer
from blockexp.training.trainer import make_trainer

#: The base: 8 layers (room for SLayer's shallow half and for pruning), ~8.4M parameters.
BASE_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}

#: Strategy rows: (label, expander class, arguments). ``None`` arguments are filled in to meet
#: the budget (LoRA's rank). SLayer runs twice: without pruning (same depth and budget as the
#: others) and with the paper's deep-layer pruning scaled to 8 layers (d=1).
STRATEGIES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("LlamaPro", "LlamaPro", {"num_groups": 2}),
    ("SLayer (d=0)", "SLayer", {"num_deleted": 0}),
    ("SLayer (d=1)", "SLayer", {"num_deleted": 1}),
    ("PrefixStack", "PrefixStack", {"num_blocks": 2}),
    ("SuffixStack", "SuffixStack", {"num_blocks": 2}),
    ("MoEExpansion", "MoEExpansion", {"num_experts": 1, "layers": [1, 4, 7]}),
    ("LoRA", "LoRA", None),
    ("FullFineTune", "FullFineTune", {}),
]


def _trainer(args, steps: int, callbacks=()) -> L.Trainer:
    return make_trainer(
        max_steps=steps,
        limit_val_batches=0,
        callbacks=list(callbacks),
        default_root_dir=str(args.out / "lightning"),
    )


def _data(path: Path, tokenizer: Path, args) -> CPTDataModule:
    return CPTDataModule(
        sources=[DataSource(name=path.stem, path=str(path))],
        tokenizer=str(tokenizer),
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        val_fraction=0.0,
        seed=0,
        cache_dir=str(args.out / "hf_cache"),
    )


# -- steps --------------------------------------------------------------------------------------
def make_tokenizer(args) -> Path:
    out = args.out / "tokenizer"
    if (out / "tokenizer.json").is_file():
        return out
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = corpus_mod.read_texts(args.corpus / "general_train.jsonl") + corpus_mod.read_texts(
        args.corpus / "code_train.jsonl"
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(out)
    return out


def make_tasks(args) -> list[str]:
    marker = args.out / "tasks" / "tasks.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    prose = corpus_mod.read_texts(args.corpus / "general_task.jsonl")
    code = corpus_mod.read_texts(args.corpus / "code_task.jsonl")
    names = build_tasks(args.out / "tasks", prose, prefix="repro", n=args.task_docs, code=code)
    atomic_write(marker, json.dumps(names))
    return names


def pretrain_base(args, tokenizer: Path) -> Path:
    out = args.out / "base"
    if (out / "config.json").is_file():
        return out
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer)
    init = args.out / "base_init"
    config = LlamaConfig(
        **{**BASE_CONFIG, **args.base_overrides},
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(init)
    tok.save_pretrained(init)
    module = BlockExpansionModule(
        base=str(init),
        expander=get_expander("FullFineTune")(),
        seed=0,
        optim=Optim(lr=args.base_lr),
    )
    data = _data(args.corpus / "general_train.jsonl", tokenizer, args)
    start = time.perf_counter()
    _trainer(args, args.base_steps).fit(module, datamodule=data)
    info = {"seconds": time.perf_counter() - start, "steps": args.base_steps}
    module.export(out, overwrite=True)
    atomic_write(out / "pretrain.json", json.dumps(info))
    return out


def budget_and_lora_rank(base: Path) -> tuple[int, int]:
    """LLaMA Pro's trainable count (the budget) and the LoRA rank that comes closest to it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base)
    model = AutoModelForCausalLM.from_config(config)
    budget = _trainable(get_expander("LlamaPro")(num_groups=2), model)
    per_rank = _trainable(get_expander("LoRA")(r=1, alpha=2), model)
    return budget, max(1, round(budget / per_rank))


def _trainable(expander, model) -> int:
    expansion = expander.expand(copy.deepcopy(model))
    return expansion.parameter_counts()[1]


def train_strategy(args, label: str, cls: str, kwargs: dict, base: Path, tokenizer: Path) -> Path:
    slug = label.replace(" ", "").replace("(", "_").replace(")", "").replace("=", "")
    out = args.out / "models" / slug
    if (out / "train.json").is_file():
        return out
    L.seed_everything(0, workers=True)
    expander = get_expander(cls)(**kwargs)
    module = BlockExpansionModule(
        base=str(base), expander=expander, seed=0, optim=Optim(lr=args.lr)
    )
    module.configure_model()
    timer = StepTimer()
    data = _data(args.corpus / "code_train.jsonl", tokenizer, args)
    start = time.perf_counter()
    _trainer(args, args.steps, [timer]).fit(module, datamodule=data)
    total, trainable = module.expansion.parameter_counts()
    module.export(out / "model", overwrite=True)
    info = {
        "strategy": label,
        "expander": repr(expander),
        "class": cls,
        "layers": int(module.model.config.num_hidden_layers),
        "total_params": total,
        "trainable_params": trainable,
        "step_ms": timer.mean_ms,
        "train_seconds": time.perf_counter() - start,
    }
    atomic_write(out / "train.json", json.dumps(info, indent=2))
    return out


@torch.no_grad()
def heldout_loss(model, tokenizer, path: Path, seq_len: int, max_blocks: int) -> float:
    """Mean next-token loss over the first ``max_blocks`` packed blocks of a JSONL corpus
    (documents joined with eos:
    :func:`blockexp.evaluation.importance.inputs.load_text_blocks`)."""
    blocks = load_text_blocks(path, tokenizer, seq_len, max_blocks)
    return text_loss(model.eval(), blocks, batch_size=8)


def measure(args, name: str, directory: Path, loader, tasks: list[str]) -> dict[str, Any]:
    out = directory / "eval.json"
    if out.is_file():
        return json.loads(out.read_text())
    from transformers import AutoTokenizer

    model = loader(directory)
    tok = AutoTokenizer.from_pretrained(args.out / "tokenizer")
    row: dict[str, Any] = {"model": name}
    for kind in ("general", "code"):
        path = args.corpus / f"{kind}_val.jsonl"
        row[f"{kind}_loss"] = heldout_loss(model, tok, path, args.seq_len, args.val_blocks)
    if name == "base":  # the same measure on training documents: the generalisation gap
        path = args.corpus / "general_train.jsonl"
        row["general_train_loss"] = heldout_loss(model, tok, path, args.seq_len, args.val_blocks)
    results = evaluate_model(
        model,
        tok,
        tasks,
        include_paths=[args.out / "tasks"],
        batch_size=16,
        limit=args.task_limit,
    )
    row["tasks"] = results["results"]
    row["scores"] = headline_scores(results)
    atomic_write(out, json.dumps(row, indent=2, default=float))
    print(f"{name}: {json.dumps({k: v for k, v in row.items() if k != 'tasks'}, default=float)}")
    return row


def time_steps(args, strategies, base: Path, tokenizer: Path) -> dict[str, float]:
    """Median ms per training step of every strategy, in alternated rounds in this process (the
    training runs above may have shared the CPU with other work; this pass should not)."""
    out = args.out / "step_times.json"
    if out.is_file():
        return json.loads(out.read_text())
    data = _data(args.corpus / "code_train.jsonl", tokenizer, args)
    samples: dict[str, list[float]] = {label: [] for label, _, _ in strategies}
    for _ in range(args.timing_rounds):
        for label, cls, kwargs in strategies:
            module = BlockExpansionModule(
                base=str(base),
                expander=get_expander(cls)(**kwargs),
                seed=0,
                optim=Optim(lr=args.lr),
            )
            module.configure_model()
            timer = StepTimer(skip=3)
            _trainer(args, 3 + args.timing_steps, [timer]).fit(module, datamodule=data)
            samples[label].append(timer.mean_ms)
    medians = {label: statistics.median(v) for label, v in samples.items()}
    atomic_write(out, json.dumps({"median_ms": medians, "samples_ms": samples}, indent=2))
    return {"median_ms": medians, "samples_ms": samples}


# -- report -------------------------------------------------------------------------------------
def collect(args, base_row: dict, rows: list[dict]) -> list[dict]:
    table = []
    for row in rows:
        keys = ("strategy", "layers", "trainable_params", "step_ms", "train_step_ms")
        entry = {k: row[k] for k in keys}
        entry["general_loss"] = row["general_loss"]
        entry["forgetting"] = row["general_loss"] - base_row["general_loss"]
        entry["domain_loss"] = row["code_loss"]
        entry["gain"] = base_row["code_loss"] - row["code_loss"]
        for task, score in row["scores"].items():
            entry[task] = score
        entry["general_score"] = statistics.fmean(
            v for k, v in row["scores"].items() if not k.endswith("code_line")
        )
        entry["general_score_change"] = entry["general_score"] - base_row["general_score"]
        table.append(entry)
    return table


def write_report(args, base_row: dict, table: list[dict]) -> None:
    keys = list(table[0])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(table)
    atomic_write(args.out / "results.csv", buf.getvalue())
    atomic_write(
        args.out / "results.json",
        json.dumps({"base": base_row, "rows": table, "args": vars(args)}, indent=2, default=str),
    )
    score_keys = [k for k in keys if k.startswith("repro_")]
    head = [
        "strategy",
        "layers",
        "trainable",
        "step ms",
        "general loss (Δ)",
        "code loss (Δ)",
        *[k.removeprefix("repro_") for k in score_keys],
        "general score (Δ)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base_cells = [
        "base",
        str(BASE_CONFIG["num_hidden_layers"]),
        "-",
        "-",
        f"{base_row['general_loss']:.3f}",
        f"{base_row['code_loss']:.3f}",
        *[f"{base_row['scores'][k]:.3f}" for k in score_keys],
        f"{base_row['general_score']:.3f}",
    ]
    lines.append("| " + " | ".join(base_cells) + " |")
    for r in table:
        cells = [
            r["strategy"],
            str(r["layers"]),
            f"{r['trainable_params']:,}",
            f"{r['step_ms']:.0f}",
            f"{r['general_loss']:.3f} ({r['forgetting']:+.3f})",
            f"{r['domain_loss']:.3f} ({-r['gain']:+.3f})",
            *[f"{r[k]:.3f}" for k in score_keys],
            f"{r['general_score']:.3f} ({r['general_score_change']:+.3f})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write(args.out / "results.md", "\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for r in table:
        ax1.scatter(r["forgetting"], r["gain"], s=40)
        ax1.annotate(r["strategy"], (r["forgetting"], r["gain"]), fontsize=8)
        ax2.scatter(-r["general_score_change"], r.get("repro_code_line", 0.0), s=40)
        ax2.annotate(r["strategy"], (-r["general_score_change"], r.get("repro_code_line", 0.0)),
                     fontsize=8)  # fmt: skip
    ax1.axvline(0.0, color="grey", lw=0.5)
    ax1.set_xlabel("forgetting: held-out prose loss increase (nats, lower is better)")
    ax1.set_ylabel("gain: held-out code loss decrease (nats, higher is better)")
    ax1.set_title("Loss: gain vs forgetting")
    ax2.axvline(0.0, color="grey", lw=0.5)
    ax2.axhline(base_row["scores"].get("repro_code_line", 0.0), color="grey", lw=0.5, ls="--")
    ax2.set_xlabel("general task score drop vs base (lower is better)")
    ax2.set_ylabel("code completion edit similarity (higher is better; dashed: base)")
    ax2.set_title("Local lm-eval tasks")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    atomic_write(args.out / "results.png", png.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/experiments/reproduce"))
    parser.add_argument("--base-steps", type=int, default=1200)
    parser.add_argument("--steps", type=int, default=300, help="training steps per strategy")
    parser.add_argument("--base-lr", type=float, default=2e-3)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak lr of every strategy")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--val-blocks", type=int, default=96, help="held-out blocks per corpus")
    parser.add_argument("--task-docs", type=int, default=200, help="documents per local task")
    parser.add_argument("--task-limit", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="subset of strategy labels")
    parser.add_argument("--timing-rounds", type=int, default=2, help="alternated timing rounds")
    parser.add_argument("--timing-steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, end-to-end check")
    args = parser.parse_args(argv)
    args.base_overrides = {}
    if args.smoke:
        args.base_steps, args.steps, args.val_blocks, args.task_limit = 20, 10, 4, 8
        args.timing_rounds, args.timing_steps, args.seq_len = 1, 2, 64
        args.base_overrides = {"hidden_size": 64, "intermediate_size": 128}
    args.out = args.out.resolve()
    args.corpus = args.out / "corpus"
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.perf_counter()
    if not (args.corpus / "corpus.json").is_file():
        corpus_mod.write_corpora(args.corpus, args.out / "downloads")
    print(json.loads((args.corpus / "corpus.json").read_text()), flush=True)
    tokenizer = make_tokenizer(args)
    tasks = make_tasks(args)
    base = pretrain_base(args, tokenizer)
    budget, rank = budget_and_lora_rank(base)
    print(f"budget {budget:,} trainable parameters; LoRA rank {rank}", flush=True)

    from transformers import AutoModelForCausalLM

    base_row = measure(
        args, "base", base, lambda d: AutoModelForCausalLM.from_pretrained(d).eval(), tasks
    )
    base_row["general_score"] = statistics.fmean(
        v for k, v in base_row["scores"].items() if not k.endswith("code_line")
    )
    rows, chosen = [], []
    for label, cls, kwargs in STRATEGIES:
        if args.only and label not in args.only:
            continue
        kwargs = {"r": rank, "alpha": 2 * rank} if kwargs is None else kwargs
        chosen.append((label, cls, kwargs))
        run = train_strategy(args, label, cls, kwargs, base, tokenizer)
        loader = get_expander(cls).load_exported
        row = measure(args, label, run / "model", loader, tasks)
        rows.append({**json.loads((run / "train.json").read_text()), **row})
    timing = time_steps(args, chosen, base, tokenizer)
    for row in rows:
        row["train_step_ms"] = row["step_ms"]  # during the training run (CPU maybe shared)
        row["step_ms"] = timing["median_ms"][row["strategy"]]
    table = collect(args, base_row, rows)
    write_report(args, base_row, table)
    pre = json.loads((base / "pretrain.json").read_text())
    print(f"base pre-training: {pre['steps']} steps in {pre['seconds']:.0f}s")
    print(f"done in {time.perf_counter() - start:.0f}s (this invocation; cached steps skipped)")
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
