"""Layer-importance measurements: angular distance per layer, text loss, multiple-choice accuracy.

The angular distance between a block's input and output hidden states is
``arccos(<x_i, x_{i+1}> / (|x_i| |x_{i+1}|)) / pi`` (0 = the block leaves the direction of the
residual stream unchanged, 1 = it reverses it), averaged over every token of the text data
(SLayer Eq. 1, with the block step ``n = 1``). A multiple-choice question is answered by the
choice with the highest summed log-likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "angular_distance",
    "choice_log_likelihoods",
    "evaluate",
    "layer_angular_distances",
    "text_loss",
]


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
