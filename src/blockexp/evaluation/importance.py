"""Layer importance: which decoder layers matter for the user's data (SLayer, Sec. 3.1-3.2).

Three measurements per base layer ``i``:

(a) **angular distance** between the block's input and output hidden states,
    ``arccos(<x_i, x_{i+1}> / (|x_i| |x_{i+1}|)) / pi`` (0 = the block leaves the direction of
    the residual stream unchanged, 1 = it reverses it), averaged over every token of the text data
    (SLayer Eq. 1, with the block step ``n = 1``);
(b) the **drop when the layer is removed**: the model without layer ``i`` is scored;
(c) the **drop when a block is inserted after it**, initialised by identity copy of layer ``i``
    (not zeroed) and by the mean of layers ``i`` and ``i+1`` (undefined for the last layer).

Scores: validation loss (and perplexity) on a text file, and accuracy on a local multiple-choice
file (the choice with the highest summed log-likelihood wins). Removal and insertion are applied
with the same plan machinery as the expanders (:func:`blockexp.expanders.apply_plan`), and the
model is restored exactly afterwards.

``python -m blockexp importance --base DIR --data TEXT [--choices MC.jsonl] --out DIR`` writes
``importance.csv`` (one row per layer), ``importance.png`` (the three panels of SLayer's Figure 2)
and ``importance.json`` (baseline scores and settings), each atomically.

Multiple-choice file: JSON Lines, one object per question,
``{"question": str, "choices": [str, ...], "answer": int}`` (``answer`` indexes ``choices``).
Each choice is scored as the continuation ``" " + choice`` of the prompt
``question + "\\nAnswer:"``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blockexp.io.outputs import atomic_write

__all__ = [
    "MultipleChoiceItem",
    "angular_distance",
    "choice_log_likelihoods",
    "encode_multiple_choice",
    "evaluate",
    "importance",
    "insertion_plan",
    "layer_angular_distances",
    "load_multiple_choice",
    "load_text_blocks",
    "plot_importance",
    "removal_plan",
    "temporary_plan",
]


# -- metrics ----------------------------------------------------------------------------------
def angular_distance(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Angular distance ``arccos(cos(x, y)) / pi`` along the last dimension, in ``[0, 1]``.

    Args:
        x: tensor ``(..., hidden)``.
        y: tensor of the same shape.
        eps: guards against zero vectors.

    Returns:
        Tensor of shape ``x.shape[:-1]``.
    """
    x, y = x.to(torch.float32), y.to(torch.float32)
    cos = (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)).clamp_min(eps)
    return torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi


# -- data -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MultipleChoiceItem:
    """One multiple-choice question."""

    question: str
    choices: tuple[str, ...]
    answer: int


def load_multiple_choice(
    path: str | Path, max_items: int | None = None
) -> list[MultipleChoiceItem]:
    """Read a multiple-choice JSONL file (see the module docstring), checking every line.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file and line of a malformed record.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Multiple-choice file {path} does not exist.")
    items: list[MultipleChoiceItem] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg}).") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected an object with question, choices, answer.")
        question, choices, answer = (record.get(k) for k in ("question", "choices", "answer"))
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: 'question' must be a non-empty string.")
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c.strip() for c in choices)
        ):
            raise ValueError(f"{where}: 'choices' must be a list of at least 2 non-empty strings.")
        if (
            not isinstance(answer, int)
            or isinstance(answer, bool)
            or not 0 <= answer < len(choices)
        ):
            raise ValueError(
                f"{where}: 'answer' must be an integer index into choices (0..{len(choices) - 1})."
            )
        items.append(MultipleChoiceItem(question, tuple(choices), answer))
        if max_items is not None and len(items) >= max_items:
            break
    if not items:
        raise ValueError(f"{path} has no questions.")
    return items


def _read_documents(path: Path) -> list[str]:
    if path.suffix.lower() in (".jsonl", ".json"):
        docs = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg}).") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{path}, line {number}: expected an object with a 'text' string.")
            docs.append(record["text"])
        return docs
    # Plain text: documents are separated by blank lines.
    return [d.strip("\n") for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()]


def load_text_blocks(
    path: str | Path, tokenizer: Any, seq_len: int, max_samples: int
) -> torch.Tensor:
    """Tokenise a text file and pack it into at most ``max_samples`` blocks of ``seq_len`` tokens.

    ``.txt`` files hold documents separated by blank lines; ``.jsonl`` files hold ``{"text": ...}``
    records. Documents are joined with the eos token; the trailing remainder is dropped.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is too short for one block.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Text data {path} does not exist (a .txt or .jsonl file).")
    if seq_len < 2 or max_samples < 1:
        raise ValueError(
            f"seq_len must be >= 2 and max_samples >= 1 (got {seq_len}, {max_samples})."
        )
    ids: list[int] = []
    need = seq_len * max_samples
    for doc in _read_documents(path):
        ids += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= need:
            break
    n = min(len(ids) // seq_len, max_samples)
    if n == 0:
        raise ValueError(
            f"{path} has {len(ids)} tokens, fewer than one block of seq_len={seq_len}; "
            "give more text or a smaller --seq_len."
        )
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


# -- temporary surgery ------------------------------------------------------------------------
def removal_plan(num_layers: int, layer: int):
    """The plan of the base model without ``layer``."""
    from blockexp.layers.plan import LayerSpec, Plan

    keep = [LayerSpec(0, (i,), "base") for i in range(num_layers) if i != layer]
    return Plan.from_groups(num_layers, [keep], strategy=f"remove({layer})")


def insertion_plan(num_layers: int, layer: int, init: str):
    """The plan with one block inserted after ``layer``: ``copy`` of it or ``mean`` of it and
    ``layer + 1``; the block is not zeroed (it changes the function)."""
    from blockexp.layers.plan import LayerSpec, Plan

    if init == "mean" and layer + 1 >= num_layers:
        raise ValueError(f"Layer {layer} is the last one: no upper neighbour to average with.")
    source = (layer,) if init == "copy" else (layer, layer + 1)
    specs = []
    for i in range(num_layers):
        specs.append(LayerSpec(0, (i,), "base"))
        if i == layer:
            specs.append(LayerSpec(0, source, init))
    return Plan.from_groups(num_layers, [specs], strategy=f"insert_{init}({layer})")


@contextlib.contextmanager
def temporary_plan(model: nn.Module, plan) -> Iterator[nn.Module]:
    """Apply ``plan`` to ``model`` for the duration of the ``with`` block, then restore it.

    The original layer modules, their ``layer_idx`` and the depth-dependent config fields
    (``num_hidden_layers``, ``layer_types``, ...) are put back even if the block raises.
    """
    from blockexp.layers.arch import get_arch
    from blockexp.layers.surgery import apply_plan

    arch = get_arch(model.config)
    original = arch.layers(model)
    snapshot = arch.config_snapshot(model.config)
    try:
        yield apply_plan(model, plan, arch)
    finally:
        arch.set_layers(model, original)
        for name, value in snapshot.items():
            setattr(model.config, name, value)
        for index, layer in enumerate(original):
            arch.renumber(layer, index)


# -- scoring ----------------------------------------------------------------------------------
def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def layer_angular_distances(
    model: nn.Module, blocks: torch.Tensor, batch_size: int = 4
) -> list[float]:
    """Mean angular distance between each decoder layer's input and output over all tokens."""
    from blockexp.layers.arch import get_arch

    layers = get_arch(model.config).layers(model)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    count = 0

    def hook(index: int) -> Callable:
        def fn(module, args, kwargs, output):
            inp = args[0] if args else kwargs["hidden_states"]
            out = output[0] if isinstance(output, tuple) else output
            sums[index] += angular_distance(inp, out).sum().double().cpu()

        return fn

    handles = [
        layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)
    ]
    try:
        device = _device_of(model)
        for batch in blocks.split(batch_size):
            model(input_ids=batch.to(device), use_cache=False)
            count += batch.numel()
    finally:
        for handle in handles:
            handle.remove()
    return (sums / count).tolist()


@torch.no_grad()
def text_loss(model: nn.Module, blocks: torch.Tensor, batch_size: int) -> float:
    """Mean next-token cross-entropy over ``blocks`` (``[n, seq_len]``), token-weighted."""
    device = _device_of(model)
    total, tokens = 0.0, 0
    for batch in blocks.split(batch_size):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        nll = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(nll)
        tokens += batch[:, 1:].numel()
    return total / tokens


@torch.no_grad()
def choice_log_likelihoods(
    model: nn.Module, context: list[int], continuations: list[list[int]], pad_id: int = 0
) -> list[float]:
    """Summed log-likelihood of each continuation after ``context`` (one right-padded batch)."""
    device = _device_of(model)
    rows = [context + c for c in continuations]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for j, row in enumerate(rows):
        ids[j, : len(row)] = torch.tensor(row)
        mask[j, : len(row)] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
    logprobs = logits.float().log_softmax(-1)
    start = len(context)
    scores = []
    for j, cont in enumerate(continuations):
        positions = torch.arange(start - 1, start - 1 + len(cont), device=device)
        targets = torch.tensor(cont, device=device)
        scores.append(float(logprobs[j, positions, targets].sum()))
    return scores


def _mc_accuracy(
    model: nn.Module, encoded: list[tuple[list[int], list[list[int]], int]], pad_id: int
) -> float:
    correct = 0
    for context, continuations, answer in encoded:
        scores = choice_log_likelihoods(model, context, continuations, pad_id)
        correct += int(max(range(len(scores)), key=scores.__getitem__) == answer)
    return correct / len(encoded)


def encode_multiple_choice(
    items: list[MultipleChoiceItem], tokenizer: Any, max_len: int
) -> list[tuple[list[int], list[list[int]], int]]:
    """Token ids ``(context, continuations, answer)`` per item; the context is cut from the left
    so that the longest row fits in ``max_len`` tokens."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    out = []
    for item in items:
        context = tokenizer(item.question + "\nAnswer:", add_special_tokens=False)["input_ids"]
        conts = [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in item.choices]
        room = max(1, max_len - len(bos) - max(len(c) for c in conts))
        out.append((bos + context[-room:], conts, item.answer))
    return out


def evaluate(
    model: nn.Module,
    blocks: torch.Tensor,
    mc: list[tuple[list[int], list[list[int]], int]] | None = None,
    pad_id: int = 0,
    batch_size: int = 4,
) -> dict[str, float]:
    """Score the model: ``loss`` and ``ppl`` on the text blocks, ``acc`` on encoded MC items."""
    loss = text_loss(model, blocks, batch_size)
    scores = {"loss": loss, "ppl": math.exp(min(loss, 50.0))}
    if mc:
        scores["acc"] = _mc_accuracy(model, mc, pad_id)
    return scores


# -- outputs ----------------------------------------------------------------------------------
def plot_importance(rows: list[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Draw the three panels of SLayer's Figure 2 into a PNG (written atomically).

    Panel (a): angular distance per layer; (b): score drop when the layer is removed; (c): score
    drop when a block is inserted after it (identity copy vs neighbour mean). The score is the
    multiple-choice accuracy drop when the rows have it, otherwise the validation-loss increase.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    layers = [int(r["layer"]) for r in rows]
    use_acc = "removal_acc_drop" in rows[0] or "insert_copy_acc_drop" in rows[0]
    key, label = ("acc_drop", "accuracy drop") if use_acc else ("loss_increase", "loss increase")
    fig = Figure(figsize=(15, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].bar(layers, [r["angular_distance"] for r in rows], color="tab:blue")
    axes[0].set(title="(a) angular distance (input vs output)", xlabel="layer", ylabel="distance")
    if f"removal_{key}" in rows[0]:
        axes[1].plot(layers, [r[f"removal_{key}"] for r in rows], "o-", color="tab:red")
    axes[1].set(title=f"(b) {label} after removing the layer", xlabel="layer", ylabel=label)
    for init, color in (("copy", "tab:orange"), ("mean", "tab:green")):
        col = f"insert_{init}_{key}"
        if col in rows[0]:
            name = "identity copy" if init == "copy" else "neighbour mean"
            axes[2].plot(layers, [r[col] for r in rows], "o-", color=color, label=name)
    axes[2].set(title=f"(c) {label} after inserting a block", xlabel="layer", ylabel=label)
    if axes[2].lines:
        axes[2].legend()
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[1:]:
        ax.axhline(0.0, color="grey", linewidth=0.8)
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write(path, buffer.getvalue())
    return path


def _write_csv(rows: list[dict[str, float]], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(path, buffer.getvalue())


# -- the command ------------------------------------------------------------------------------
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
    _write_csv(rows, csv_path)
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
