"""Causal-LM loss without materialising the full ``[tokens, vocab]`` logits.

A causal LM's own loss computes ``lm_head`` over every position, upcasts the logits to float32 and
runs cross-entropy, so for a moment it holds several ``tokens x vocab`` tensors (bf16 logits,
their float32 copy, the log-softmax and, in the backward, its gradient). With a 32k vocabulary and
4,096 tokens each float32 copy is 0.5 GB, the largest activation in a block-expansion step, whose
decoder activations are otherwise small.

:func:`chunked_causal_lm_loss` takes the final hidden states instead and computes the loss over
chunks of tokens sized by a memory budget (:func:`loss_chunk_tokens`: MiB of float32 logits per
chunk, 256 by default). When the batch's logits fit the budget there is one chunk and no
checkpointing, so the loss costs nothing extra; otherwise each chunk runs under non-reentrant
activation checkpointing: only one chunk's logits exist at a time, in the forward and in the
backward (which recomputes that chunk's ``lm_head``, about ``2 * hidden * vocab`` FLOPs per
token). In every case only the positions with a label reach ``lm_head``. The result is the same mean over non-ignored tokens as
transformers' ``ForCausalLMLoss`` (up to float summation order), and gradients reach the hidden
states and, when it is trainable, ``lm_head``.

:func:`causal_lm_forward_loss` runs a Hugging Face causal LM through its own ``forward`` (so FSDP
and PEFT wrappers see the call they expect) with logits for one position only, captures the decoder's last
hidden state with a forward hook and applies the chunked loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from blockexp.data.collate import IGNORE_INDEX

__all__ = [
    "DEFAULT_LOSS_CHUNK_MB",
    "IGNORE_INDEX",
    "causal_lm_forward_loss",
    "chunked_causal_lm_loss",
    "loss_chunk_tokens",
]


DEFAULT_LOSS_CHUNK_MB = 256.0


def loss_chunk_tokens(
    num_tokens: int, vocab_size: int, budget_mb: float = DEFAULT_LOSS_CHUNK_MB
) -> int:
    """Tokens per chunk so that one chunk's float32 logits take at most ``budget_mb`` MiB.

    ``budget_mb * 2**20 // (4 * vocab)`` tokens (at least one), capped at ``num_tokens``: when the
    whole batch's float32 logits fit the budget there is a single chunk, computed without
    activation checkpointing, so the loss costs no recomputation. With the default 256 MiB and a
    32k vocabulary a chunk holds 2,097 tokens (4,096 tokens of Llama-2-7B: 2 chunks); with
    Llama-3's 128,256 it holds 523 (8 chunks).
    """
    if budget_mb <= 0:
        raise ValueError(f"loss_chunk_mb must be > 0, got {budget_mb}.")
    per_token = 4 * max(1, vocab_size)
    return max(1, min(num_tokens, int(budget_mb * 2**20) // per_token))


def _chunk_loss_sum(
    hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, softcap: float | None = None
) -> torch.Tensor:
    logits = head(hidden)
    if softcap:  # Gemma 2's final logit soft-capping, in the head's dtype as the model does it
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def chunked_causal_lm_loss(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: nn.Module,
    chunk_tokens: int | None = None,
    softcap: float | None = None,
    budget_mb: float = DEFAULT_LOSS_CHUNK_MB,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy of ``head(hidden)`` against ``labels``, chunk by chunk.

    Args:
        hidden: final hidden states ``[batch, seq, hidden]`` (after the model's last norm).
        labels: ``[batch, seq]`` token ids aligned with the inputs (shifted here, as transformers
            does); ``-100`` marks positions without a loss.
        head: the output projection (``model.get_output_embeddings()``).
        chunk_tokens: tokens per chunk; default :func:`loss_chunk_tokens` of ``budget_mb``.
        softcap: final logit soft-capping ``cap * tanh(logits / cap)`` (Gemma 2's
            ``config.final_logit_softcapping``); ``None`` for none.
        budget_mb: MiB of float32 logits allowed per chunk (when ``chunk_tokens`` is unset).

    Returns:
        ``(loss, n_tokens)``: the mean over predicted tokens (0 with a zero gradient when every
        label is ignored, where transformers returns NaN) and their count.
    """
    if hidden.shape[:2] != labels.shape:
        raise ValueError(
            f"hidden states {tuple(hidden.shape)} and labels {tuple(labels.shape)} disagree on "
            "[batch, seq]."
        )
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = labels[:, 1:].reshape(-1)
    keep = targets != IGNORE_INDEX
    n_tokens = keep.sum()
    # Gathering the predicted positions once skips prompt/padding tokens in the lm_head too.
    index = keep.nonzero().squeeze(1)
    hidden = hidden.index_select(0, index)
    targets = targets.index_select(0, index)
    count = hidden.shape[0]
    if count == 0:
        return hidden.sum() * 0.0 + sum(p.sum() * 0.0 for p in head.parameters()), n_tokens
    weight = getattr(head, "weight", None)
    vocab = weight.shape[0] if weight is not None else head(hidden[:1]).shape[-1]
    size = chunk_tokens or loss_chunk_tokens(count, vocab, budget_mb)
    # Checkpoint only when there is a backward to save for (not in validation) and more than one
    # chunk: a single chunk holds the logits anyway, and recomputing it would only cost time.
    recompute = (
        size < count
        and torch.is_grad_enabled()
        and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    )
    total = None
    for start in range(0, count, size):
        h, t = hidden[start : start + size], targets[start : start + size]
        if recompute:
            part = checkpoint(_chunk_loss_sum, h, t, head, softcap, use_reentrant=False)
        else:
            part = _chunk_loss_sum(h, t, head, softcap)
        total = part if total is None else total + part
    return total / count, n_tokens


def causal_lm_forward_loss(
    model: nn.Module,
    labels: torch.Tensor,
    chunk_tokens: int | None = None,
    budget_mb: float = DEFAULT_LOSS_CHUNK_MB,
    **inputs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model(**inputs)`` and return the chunked loss on its final hidden states.

    The model's own forward runs with ``logits_to_keep`` set to one position, so
    wrappers that hook the top-level call (FSDP2's unshard/reshard, PEFT) behave as usual; the
    decoder's output (``model.get_decoder()``, the hidden states ``lm_head`` reads) is captured by
    a forward hook.
    """
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    if decoder is None or head is None:
        raise TypeError(
            f"{type(model).__name__} exposes no decoder/output embeddings; set "
            "model.compute.chunked_loss: false to use the model's own loss."
        )
    captured: dict[str, torch.Tensor] = {}

    def grab(module, args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = decoder.register_forward_hook(grab)
    # Logits for one position only. An index tensor rather than ``1``: the slice ``[:, -1:]`` is
    # not contiguous, and matmul then broadcasts lm_head's weight over the batch and copies it
    # (batch x vocab x hidden, 131 MB for 2 x 32k x 1024 in bf16), while the gathered row folds.
    first = torch.zeros(1, dtype=torch.long, device=labels.device)
    try:
        model(**inputs, logits_to_keep=first)
    finally:
        handle.remove()
    if "hidden" not in captured:
        raise RuntimeError(
            f"{type(model).__name__}.forward did not call its decoder; set "
            "model.compute.chunked_loss: false to use the model's own loss."
        )
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return chunked_causal_lm_loss(
        captured["hidden"], labels, head, chunk_tokens, softcap, budget_mb
    )
