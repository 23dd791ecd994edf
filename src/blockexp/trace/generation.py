"""Batched, KV-cached generation of TRACE answers."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from blockexp.data.collate import pad_collate

__all__ = ["generate_answers"]


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float | None = None,
    seed: int = 0,
    autocast: contextlib.AbstractContextManager | None = None,
    pad_token_id: int | None = None,
) -> list[str]:
    """Generate a continuation of every prompt; return the decoded continuations.

    Prompts are left-padded into batches. Each continuation is cut at the first eos and decoded
    as TRACE decodes (``skip_special_tokens=True``, ``clean_up_tokenization_spaces=False``, no
    stripping). Sampling draws from a generator seeded with ``seed`` inside a forked RNG, so the
    training RNG stream is untouched and a run is reproducible.

    Args:
        model: a ``transformers`` causal LM (or a peft wrapper of one).
        tokenizer: its tokenizer (``pad_token_id`` and ``eos_token_id`` are used).
        prompts: token ids of each prompt.
        max_new_tokens: generation budget.
        batch_size: prompts per ``generate`` call.
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature (``do_sample`` only).
        seed: sampling seed.
        autocast: a context entered around generation (e.g. bf16 autocast for a model holding
            bf16 frozen and fp32 trainable weights).
        pad_token_id: the padding id (default the tokenizer's, else its eos).
    """
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = pad_token_id if pad_token_id is not None else tokenizer.pad_token_id
    if pad is None:
        pad = eos
    options: dict[str, Any] = {"do_sample": do_sample, "num_beams": 1}
    if do_sample:
        config = getattr(model, "generation_config", None)
        top_k = getattr(config, "top_k", None)
        top_p = getattr(config, "top_p", None)
        options.update(
            temperature=temperature,
            top_k=50 if top_k is None else top_k,
            top_p=1.0 if top_p is None else top_p,
        )
    answers: list[str] = []
    was_training = model.training
    model.eval()
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), autocast or contextlib.nullcontext():
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start : start + batch_size]
                batch = pad_collate(
                    [{"input_ids": torch.tensor(p, dtype=torch.long)} for p in chunk],
                    pad,
                    side="left",
                )
                out = model.generate(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    max_new_tokens=max_new_tokens,
                    use_cache=True,
                    pad_token_id=pad,
                    eos_token_id=eos,
                    **options,
                )
                for row in out[:, batch["input_ids"].shape[1] :].tolist():
                    if eos in row:
                        row = row[: row.index(eos)]
                    answers.append(
                        tokenizer.decode(
                            row, skip_special_tokens=True, clean_up_tokenization_spaces=False
                        )
                    )
    finally:
        model.train(was_training)
    return answers
