"""GPU benchmark: tokens/s, MFU and peak memory of block-expansion training on one GPU.

    python benchmarks/mfu_gpu.py [--shape 8.3b|1b] [--mode expand|full] [--attn auto|sdpa|flash_attention_2]
        [--layers N] [--seq-len 4096] [--batch 1] [--steps 8] [--no-grad-ckpt] [--profile FILE]
        [--json FILE]

Random weights. ``--shape 8.3b``: the Llama-2-7B shape (hidden 4096, FFN 11008, 32 heads, vocab
32000) with ``LlamaPro(num_groups=8)``, 32 -> 40 layers, the paper's 8.3B; ``--layers N`` builds N
base layers instead (N divisible by 8; per-layer figures scale to 32). ``--shape 1b``: hidden 2048,
FFN 8192, 32 heads / 8 KV heads (head dim 64), 16 layers -> 20 with ``LlamaPro(num_groups=4)``
(1.31B parameters expanded). ``--mode expand`` trains the new blocks only (frozen bf16, trainable
fp32: ``precision_policy=lean``); ``--mode full`` trains every parameter of the same expanded model
(fp32 master weights under bf16 autocast, i.e. ``bf16-mixed``). AdamW (fused) with clipping at 1.0
and the module's chunked loss, as ``BlockExpansionModule`` trains. Reference: the LLaMA Pro paper
trained its new blocks on 80B tokens in 2,830 H800 GPU-hours, about 7,850 tokens/s per GPU.

MFU = model FLOPs per step / step time / peak bf16 FLOP/s, where the model FLOPs count forward 2N
per token for every matmul parameter, input-gradient backward 2N from the lowest trainable block up
and weight-gradient backward 2N for trainable matmul parameters only, plus attention (recomputation
not counted); HFU adds the forward that gradient checkpointing recomputes.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

SHAPES = {
    # Llama-2-7B; LLaMA Pro 8.3B adds one block after every 4 layers.
    "8.3b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, groups=8),
    # A 1B Llama (Llama-3.2-1B's body with a 32k vocabulary): 16 -> 20 layers.
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, groups=4),
}  # fmt: skip


def model_flops_per_token(
    n_matmul: int,
    n_head: int,
    per_layer: int,
    layers: int,
    lowest_trainable: int,
    n_train: int,
    seq_len: int,
    hidden: int,
) -> int:
    """Training FLOPs per token of a partly frozen decoder (recomputation not counted).

    Forward: 2 per matmul parameter, plus attention scores and values 4 * seq_len * hidden per
    layer (the usual non-causal count, as in PaLM's MFU). Backward, input gradients: the LM head
    and every layer from the lowest trainable one up (2 per parameter, attention 8 * seq_len *
    hidden); below it nothing needs a gradient. Backward, weight gradients: 2 per trainable
    matmul parameter. With everything trainable this is the familiar 6N + 12 * layers * hidden *
    seq_len.
    """
    attention = 4 * seq_len * hidden
    above = layers - lowest_trainable
    forward = 2 * n_matmul + attention * layers
    input_grads = 2 * n_head + 2 * per_layer * above + 2 * attention * above
    return forward + input_grads + 2 * n_train


def recompute_flops_per_token(
    per_layer: int, layers: int, lowest_trainable: int, seq_len: int, hidden: int
) -> int:
    """The forward that non-reentrant gradient checkpointing repeats in the backward: every layer
    the backward passes through (from the lowest trainable one up)."""
    return (layers - lowest_trainable) * (2 * per_layer + 4 * seq_len * hidden)


def peak_bf16_tflops(name: str) -> float:
    """Dense bf16 peak of the GPU by name (H100/H200 SXM: 989 TFLOP/s; H800 likewise)."""
    for key, value in (("H100", 989.0), ("H200", 989.0), ("H800", 989.0), ("A100", 312.0)):
        if key in name:
            return value
    raise SystemExit(f"Unknown GPU {name!r}: pass --peak-tflops.")


def build(args):
    """The expanded model on the GPU, its trainable parameters and the FLOP counts per token."""
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.initialization import no_init_weights

    from blockexp.expanders import LlamaPro
    from blockexp.training.attention import select_attn_implementation
    from blockexp.training.precision import apply_precision_policy

    shape = dict(SHAPES[args.shape])
    groups = shape.pop("groups")
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    config = LlamaConfig(
        **shape, vocab_size=32000, max_position_embeddings=max(4096, args.seq_len),
        dtype="bfloat16",
    )  # fmt: skip
    attn = select_attn_implementation(args.attn)
    with torch.device("cuda"), no_init_weights():
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02) if p.ndim > 1 else p.fill_(1.0)
    expansion = LlamaPro(num_groups=groups).expand(model)
    expansion.freeze()
    lowest = expansion.plan.trainable_layers[0]
    if args.mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        lowest = 0
    apply_precision_policy(model, "lean")  # frozen bf16 (none under full), trainable fp32
    model.config.use_cache = False
    if args.grad_ckpt:
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:  # older transformers
            model.gradient_checkpointing_enable({"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    embed = model.get_input_embeddings().weight
    layers = model.config.num_hidden_layers
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    n_all = sum(p.numel() for p in model.parameters())
    n_train_matmul = sum(p.numel() for p in params if p.ndim > 1 and p is not embed)
    hidden = config.hidden_size
    flops = model_flops_per_token(
        n_matmul=n_all - embed.numel(),  # the embedding is a lookup, not a matmul
        n_head=model.get_output_embeddings().weight.numel(),
        per_layer=per_layer,
        layers=layers,
        lowest_trainable=lowest,
        n_train=n_train_matmul,
        seq_len=args.seq_len,
        hidden=hidden,
    )
    recompute = (
        recompute_flops_per_token(per_layer, layers, lowest, args.seq_len, hidden)
        if args.grad_ckpt
        else 0
    )
    info = dict(attn=attn, params=n_all, trainable=sum(p.numel() for p in params), layers=layers,
                base_layers=shape["num_hidden_layers"], per_layer=per_layer,
                flops_per_token=flops, recompute_per_token=recompute)  # fmt: skip
    return model, params, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8.3b")
    parser.add_argument("--mode", choices=["expand", "full"], default="expand")
    parser.add_argument("--attn", default="auto", help="auto, sdpa or flash_attention_2")
    parser.add_argument("--layers", type=int, default=None, help="base layers (default: shape's)")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-grad-ckpt", dest="grad_ckpt", action="store_false")
    parser.add_argument(
        "--docs",
        type=int,
        default=1,
        help="documents packed per row (EOS between them, position ids restarting as with "
        "document_masking; flash-attn gets the batch flattened to one varlen row, as the module "
        "does); MFU still counts full causal attention",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile each decoder layer (experiment)"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="default: by GPU name")
    parser.add_argument("--profile", default=None, help="write a torch.profiler summary here")
    parser.add_argument("--json", default=None, help="append the result as a JSON line here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("This benchmark needs a CUDA GPU.")
    from blockexp.training.loss import causal_lm_forward_loss

    name = torch.cuda.get_device_name()
    peak = (args.peak_tflops or peak_bf16_tflops(name)) * 1e12
    model, params, info = build(args)
    if args.compile:  # as BlockExpansionModule(compute=Compute(compile_layers=True)) does
        from blockexp.training.build import compile_layers

        compile_layers(model)
    from blockexp.data.packing import flatten_packed_batch, packed_position_ids
    from blockexp.training.attention import uses_flash_attention

    flat = uses_flash_attention(model)
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    tokens = args.batch * args.seq_len
    gen = torch.Generator(device="cuda").manual_seed(0)

    def step(timed: list | None = None) -> None:
        ids = torch.randint(3, 32000, (args.batch, args.seq_len), device="cuda", generator=gen)
        batch = {"input_ids": ids, "labels": ids}
        if args.docs > 1:  # EOS (id 2) at docs - 1 random places per row
            for row in ids:
                cuts = torch.randperm(args.seq_len - 2, device="cuda", generator=gen)
                row[cuts[: args.docs - 1] + 1] = 2
            batch["position_ids"] = packed_position_ids(ids, 2)
            if flat:
                batch = flatten_packed_batch(batch)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):  # as the module trains
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            loss = causal_lm_forward_loss(model, batch["labels"], **inputs)[0]
        loss.backward()
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if timed is not None:
            timed.append((t1 - t0, time.perf_counter() - t1))

    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    warmup_s = time.perf_counter() - start  # with --compile: mostly compilation
    torch.cuda.reset_peak_memory_stats()
    times: list[tuple[float, float]] = []
    for _ in range(args.steps):
        step(times)
    fwd_bwd = sorted(t[0] for t in times)[len(times) // 2]
    optim = sorted(t[1] for t in times)[len(times) // 2]
    step_t = sorted(t[0] + t[1] for t in times)[len(times) // 2]
    peak_mem = torch.cuda.max_memory_allocated() / 2**30
    model_flops = tokens * info["flops_per_token"]
    hw_flops = tokens * (info["flops_per_token"] + info["recompute_per_token"])
    result = dict(
        device=name, shape=args.shape, mode=args.mode, batch=args.batch, seq_len=args.seq_len,
        grad_ckpt=args.grad_ckpt, docs=args.docs, compile=args.compile, **info, step_s=step_t, fwd_bwd_s=fwd_bwd, optim_s=optim,
        tokens_per_s=tokens / step_t, tokens_per_s_fwd_bwd=tokens / fwd_bwd,
        mfu=model_flops / step_t / peak, mfu_fwd_bwd=model_flops / fwd_bwd / peak,
        hfu=hw_flops / step_t / peak, peak_mem_gib=peak_mem, warmup_s=warmup_s,
        torch=torch.__version__,
    )  # fmt: skip
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step()
        events = prof.key_averages()
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.self_device_time_total for e in kernels) / 1e6  # kernel seconds
        with open(args.profile, "w") as f:
            f.write(f"{name} {json.dumps(result)}\n")
            f.write(f"GPU kernel time in the profiled step: {busy:.3f} s\n")
            f.write(
                events.table(
                    sort_by="self_device_time_total", row_limit=30, max_name_column_width=70
                )
            )
        result["profiled_kernel_s"] = busy
    print(f"{name} attn={info['attn']} {args.shape} {args.mode}: {info['params'] / 1e9:.2f}B "
          f"({info['layers']} layers) trainable {info['trainable'] / 1e9:.2f}B, batch {args.batch} x "
          f"{args.seq_len}, ckpt {args.grad_ckpt}, docs/row {args.docs}, compile {args.compile}")  # fmt: skip
    print(f"step {step_t * 1e3:.0f} ms (fwd+bwd {fwd_bwd * 1e3:.0f}, optimizer {optim * 1e3:.0f}), "
          f"{tokens / step_t:,.0f} tokens/s (paper: ~7,850 per H800), MFU {result['mfu']:.1%} "
          f"(fwd+bwd only {result['mfu_fwd_bwd']:.1%}), HFU {result['hfu']:.1%}, "
          f"peak memory {peak_mem:.1f} GiB")  # fmt: skip
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
