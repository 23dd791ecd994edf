"""The ``importance`` command: measure every decoder layer and write a CSV, a PNG and a summary.

``python -m blockexp importance --base DIR --data TEXT [--choices MC.jsonl] --out DIR`` writes
``importance.csv`` (one row per layer), ``importance.png`` (the three panels of SLayer's Figure 2)
and ``importance.json`` (baseline scores and settings), each atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from blockexp.evaluation.importance.inputs import (
    encode_multiple_choice,
    load_multiple_choice,
    load_text_blocks,
)
from blockexp.evaluation.importance.measure import evaluate, layer_angular_distances
from blockexp.evaluation.importance.report import plot_importance, write_csv
from blockexp.evaluation.importance.surgery import insertion_plan, removal_plan, temporary_plan
from blockexp.io.outputs import atomic_write

__all__ = ["importance"]


def importance(
    base: str,
    data: str,
    choices: str | None = None,
    out: str = "outputs/importance",
    tokenizer: str | None = None,
    max_samples: int = 32,
    max_questions: int | None = None,
    seq_len: int = 256,
    batch_size: int = 4,
    removal: bool = True,
    insertion: bool = True,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
) -> Path:
    """Measure the importance of every decoder layer and write a CSV and a PNG (SLayer Fig. 2).

    Args:
        base: model directory or hub id.
        data: text file (``.txt``: documents separated by blank lines; ``.jsonl``: ``{"text"}``)
            for the angular distance and the validation loss.
        choices: optional multiple-choice JSONL (``{"question", "choices", "answer"}``); adds
            accuracy (choice by summed log-likelihood) to every measurement.
        out: output directory for ``importance.csv``, ``importance.png`` and ``importance.json``.
        tokenizer: tokenizer spec (directory, hub id or ``byte``); default: the base's own.
        max_samples: number of ``seq_len``-token blocks of text used.
        max_questions: use at most this many questions (default: all).
        seq_len: tokens per text block (also the longest multiple-choice prompt).
        batch_size: text blocks per forward pass.
        removal: measure the drop when each layer is removed.
        insertion: measure the drop when a block is inserted after each layer (copy and mean).
        dtype: ``auto`` keeps the checkpoint's dtype; or ``float32``, ``bfloat16``, ...
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
        trust_remote_code: allow custom modelling code from the hub.

    Returns:
        The path of the CSV.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from blockexp.io.inputs import check_outside_inputs
    from blockexp.io.load import load_model
    from blockexp.io.tokenization import load_tokenizer
    from blockexp.layers.arch import get_arch

    written = ("importance.csv", "importance.png", "importance.json")
    out_dir = check_outside_inputs(out, [base, data, choices, tokenizer], written)
    tok = load_tokenizer(tokenizer or base, trust_remote_code)
    blocks = load_text_blocks(data, tok, seq_len, max_samples)
    items = load_multiple_choice(choices, max_questions) if choices else None
    mc = encode_multiple_choice(items, tok, seq_len) if items else None
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(base, dtype=dtype, trust_remote_code=trust_remote_code).to(device).eval()
    num_layers = len(get_arch(model.config).layers(model))
    total = 1 + num_layers * (int(removal) + 2 * int(insertion))
    console = Console()
    rows: list[dict[str, float]] = [{"layer": i} for i in range(num_layers)]

    def record(row: dict[str, float], prefix: str, scores: dict[str, float] | None) -> None:
        for name in ("loss", "acc"):
            if name in baseline:
                value = scores[name] if scores else float("nan")
                row[f"{prefix}_{name}"] = value
                drop = value - baseline[name] if name == "loss" else baseline[name] - value
                row[f"{prefix}_{name}_{'increase' if name == 'loss' else 'drop'}"] = drop

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("baseline + angular distance", total=total)
        distances = layer_angular_distances(model, blocks, batch_size)
        baseline = evaluate(model, blocks, mc, pad_id, batch_size)
        progress.advance(task)
        for i, row in enumerate(rows):
            row["angular_distance"] = distances[i]
        if removal:
            for i, row in enumerate(rows):
                progress.update(task, description=f"removing layer {i}")
                with temporary_plan(model, removal_plan(num_layers, i)):
                    record(row, "removal", evaluate(model, blocks, mc, pad_id, batch_size))
                progress.advance(task)
        if insertion:
            for init in ("copy", "mean"):
                for i, row in enumerate(rows):
                    progress.update(task, description=f"inserting a {init} block after layer {i}")
                    scores = None
                    if init == "copy" or i + 1 < num_layers:
                        with temporary_plan(model, insertion_plan(num_layers, i, init)):
                            scores = evaluate(model, blocks, mc, pad_id, batch_size)
                    record(row, f"insert_{init}", scores)
                    progress.advance(task)

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "importance.csv"
    write_csv(rows, csv_path)
    plot_importance(rows, out_dir / "importance.png", title=f"layer importance: {base}")
    summary = {
        "base": str(base),
        "data": str(data),
        "choices": str(choices) if choices else None,
        "num_layers": num_layers,
        "text_blocks": int(blocks.shape[0]),
        "seq_len": seq_len,
        "questions": len(items) if items else 0,
        "baseline": baseline,
        "columns": list(rows[0]),
    }
    atomic_write(out_dir / "importance.json", json.dumps(summary, indent=2) + "\n")
    base_text = ", ".join(f"{k} {v:.4f}" for k, v in baseline.items())
    console.print(f"Baseline: {base_text}. Wrote {csv_path}, importance.png, importance.json")
    return csv_path
