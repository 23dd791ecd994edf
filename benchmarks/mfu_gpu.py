"""GPU benchmark: tokens/s and MFU of LLaMA Pro 8.3B-shaped block-expansion training on one GPU.

    python benchmarks/mfu_gpu.py [--seq-len 4096] [--batch 1] [--steps 10] [--peak-tflops 989]

Random weights in the Llama-2-7B shape, ``LlamaPro(num_groups=8)`` (32 -> 40 layers, the paper's
8.3B), ``precision_policy=lean``, gradient checkpointing, flash-attn when installed (else SDPA),
AdamW on the 8 new blocks. Reference: the paper reports about 7,850 tokens/s per H800.
MFU = model FLOPs per step / step time / peak bf16 FLOP/s, where the model FLOPs count forward 2N
per token for every parameter, input-gradient backward 2N from the lowest trainable block up and
weight-gradient backward 2N for trainable parameters only (recomputation not counted), plus attention.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig
from transformers.initialization import no_init_weights

from blockexp.attention import select_attn_implementation
from blockexp.expanders import LlamaPro
from blockexp.precision import apply_precision_policy


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
    parameter. With everything trainable this is the familiar 6N + 12 * layers * hidden * seq_len.
    """
    attention = 4 * seq_len * hidden
    above = layers - lowest_trainable
    forward = 2 * n_matmul + attention * layers
    input_grads = 2 * n_head + 2 * per_layer * above + 2 * attention * above
    return forward + input_grads + 2 * n_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("This benchmark needs a CUDA GPU.")
    from transformers import AutoModelForCausalLM

    from blockexp.loss import causal_lm_forward_loss

    config = LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        vocab_size=32000, max_position_embeddings=args.seq_len, dtype="bfloat16",
    )  # fmt: skip
    attn = select_attn_implementation(None)
    with torch.device("cuda"), no_init_weights():
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    expansion = LlamaPro(num_groups=8).expand(model)
    expansion.freeze()
    apply_precision_policy(model, "lean")
    model.config.use_cache = False
    model.activation_checkpointing_enable({"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    n_all = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in params)
    flops_per_token = model_flops_per_token(
        n_matmul=n_all - model.get_input_embeddings().weight.numel(),  # a lookup, not a matmul
        n_head=model.get_output_embeddings().weight.numel(),
        per_layer=sum(p.numel() for p in model.model.layers[0].parameters()),
        layers=model.config.num_hidden_layers,
        lowest_trainable=expansion.plan.trainable_layers[0],
        n_train=n_train,
        seq_len=args.seq_len,
        hidden=config.hidden_size,
    )
    tokens = args.batch * args.seq_len
    flops = tokens * flops_per_token
    times = []
    for step in range(args.warmup + args.steps):
        ids = torch.randint(0, 32000, (args.batch, args.seq_len), device="cuda")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = causal_lm_forward_loss(model, ids, input_ids=ids)[0]  # as the module trains
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    step_t = sorted(times)[len(times) // 2]
    print(f"{torch.cuda.get_device_name()} attn={attn} params {n_all / 1e9:.2f}B "
          f"trainable {n_train / 1e9:.2f}B, batch {args.batch} x {args.seq_len}")  # fmt: skip
    print(f"step {step_t * 1e3:.0f} ms, {tokens / step_t:,.0f} tokens/s (paper: ~7,850 per H800), "
          f"MFU {flops / step_t / (args.peak_tflops * 1e12):.1%}, "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")  # fmt: skip


if __name__ == "__main__":
    main()
