"""Benchmark: training memory and step time of block expansion, each against a reference run.

    python benchmarks/train_step.py                 # CPU, a ~200M-parameter Llama, LlamaPro +25%
    python benchmarks/train_step.py --device cuda --hidden 4096 --layers 32 --seq-len 4096

Every configuration runs in a fresh child process (so peak memory is its own) on the same
expanded model (base ``--layers`` layers, ``LlamaPro(num_groups=layers/4)``: +25% layers, the
LLaMA Pro 8.3B ratio) and prints:

1. **Precision policy** (memory): ``precision_policy=lean`` (frozen bf16, trainable fp32, bf16
   autocast) vs Lightning ``bf16-mixed`` with every parameter in fp32 (goal <= 0.65x). Peak memory
   is ``torch.cuda.max_memory_allocated`` on GPU; on CPU it is the peak of live tensor bytes over
   the last step, from ``torch.profiler``'s memory timeline (the same quantity), with the peak RSS
   (``VmHWM``, which also counts the allocator's free lists and the interpreter) printed beside it.
   Both sides use the module's chunked loss unless ``--no-chunked-loss``.
2. **Block expansion vs full fine-tuning** (time): the same expanded model with only the new
   blocks trainable vs everything trainable, next to the theoretical FLOP ratio: the forward costs
   ``2N`` per token for every layer; the backward costs ``2N`` (input gradients) for layers at or
   above the lowest trainable block and ``+2N`` (weight gradients) for trainable layers only.
3. **Lightning vs bare PyTorch** (time): the same lean block-expansion step in a Lightning
   ``Trainer`` vs a hand-written loop (forward, backward, clip, AdamW, scheduler; goal <= 1.03x),
   in one process that alternates rounds of each on the same model; then the same on a tiny
   model, where compute is negligible, which isolates Lightning's fixed cost per step.

Step times are medians over ``--steps`` steps (``--loop-steps`` for part 3, whose few-% difference
needs more) after ``--warmup`` steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time, statistics
import torch
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
torch.set_num_threads(cfg["threads"])
import lightning as L
from torch.utils.data import DataLoader, Dataset
from blockexp.expanders import LlamaPro
from blockexp.module import BlockExpansionModule

device = cfg["device"]
base = dict(model_type="llama", vocab_size=cfg["vocab"], hidden_size=cfg["hidden"],
            intermediate_size=cfg["inter"], num_hidden_layers=cfg["layers"],
            num_attention_heads=cfg["heads"], num_key_value_heads=cfg["heads"],
            max_position_embeddings=cfg["seq_len"], tie_word_embeddings=False)
expander = LlamaPro(num_groups=cfg["layers"] // 4)

class Blocks(Dataset):
    def __len__(self):
        return 10**6
    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(0, cfg["vocab"], (cfg["seq_len"],), generator=g)
        return {"input_ids": ids, "labels": ids.clone()}

def peak():
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

# CPU: the peak bytes of live tensors during the last step, from torch.profiler's memory timeline
# (the counterpart of torch.cuda.max_memory_allocated; RSS also counts the allocator's free lists).
tensor_peak = {}
def profiler():
    from torch.profiler import ProfilerActivity, profile
    return profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                   with_stack=True)
def record_tensor_peak(prof):
    from torch.profiler._memory_profiler import Action, MemoryProfileTimeline
    live = top = 0
    events = sorted(MemoryProfileTimeline(prof._memory_profile()).timeline, key=lambda e: e[0])
    for _, action, _, size in events:
        if action in (Action.PREEXISTING, Action.CREATE):
            live += size
        elif action == Action.DESTROY:
            live -= size
        top = max(top, live)
    tensor_peak["bytes"] = top
profile_step = cfg["device"] == "cpu" and cfg.get("tensor_peak", False)

# What the process holds before any model exists (interpreter, torch, Lightning, transformers):
# on CPU the peak RSS includes it; on GPU max_memory_allocated does not.
import transformers.models.llama.modeling_llama  # noqa: F401,E402  (imported before, not during)
baseline = 0 if device == "cuda" else peak()

module = BlockExpansionModule(base=base, expander=expander, tokenizer="byte", dtype="float32",
                              precision_policy=cfg["policy"], validate_before_fit=False,
                              gradient_checkpointing=cfg["ckpt"], chunked_loss=cfg["chunked"])
if cfg["full_ft"]:
    # Same expanded model, every parameter trainable (full fine-tuning).
    module.configure_model()
    for p in module.model.parameters():
        p.requires_grad_(True)
    module.expansion.trainable = frozenset(n for n, _ in module.model.named_parameters())

times = []
class Timer(L.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if profile_step and batch_idx == steps - 1:
            self.prof = profiler().__enter__()
        if device == "cuda": torch.cuda.synchronize()
        self.t = time.perf_counter()
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if device == "cuda": torch.cuda.synchronize()
        times.append(time.perf_counter() - self.t)
        if profile_step and batch_idx == steps - 1:
            self.prof.__exit__(None, None, None)
            record_tensor_peak(self.prof)

loader = DataLoader(Blocks(), batch_size=cfg["batch"])
steps = cfg["warmup"] + cfg["steps"]

def lightning_steps():
    trainer = L.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1,
                        precision=cfg["precision"], max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=1.0,
                        limit_val_batches=0, callbacks=[Timer()])
    trainer.fit(module, train_dataloaders=loader)

def bare_steps():  # bare PyTorch: the same module's model, optimizer and schedule, no Trainer
    module.configure_model()
    module.to(device)
    hp = module.hparams
    params = [p for p in module.model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]; no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
    from blockexp.module import cosine_with_warmup
    warm = int(round(hp.warmup_ratio * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, steps, warm))
    module.model.train()
    it = iter(loader)
    autocast = cfg["precision"] == "bf16-mixed" or cfg["policy"] == "lean"
    for step in range(steps):
        batch = {k: v.to(device) for k, v in next(it).items()}
        prof = profiler().__enter__() if profile_step and step == steps - 1 else None
        if device == "cuda": torch.cuda.synchronize()
        t = time.perf_counter()
        # The module's loss (its own autocast under lean; the trainer's, here this one, otherwise).
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = module._loss(batch)[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
        if device == "cuda": torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        if prof is not None:
            prof.__exit__(None, None, None)
            record_tensor_peak(prof)

def median_after_warmup():
    return statistics.median(times[cfg["warmup"]:])

rounds = []
if cfg["runner"] == "lightning":
    lightning_steps()
elif cfg["runner"] == "bare":
    bare_steps()
else:  # "alternate": bare and Lightning rounds on the same model in this one process
    for _ in range(cfg["rounds"]):
        times.clear(); bare_steps(); bare_t = median_after_warmup()
        times.clear(); lightning_steps(); rounds.append((bare_t, median_after_warmup()))
n_params = sum(p.numel() for p in module.model.parameters())
n_train = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
print(json.dumps({"step": median_after_warmup(), "peak": peak(), "rounds": rounds,
                  "baseline": baseline, "tensor_peak": tensor_peak.get("bytes"),
                  "params": n_params, "trainable": n_train}))
"""


# The two sides of the memory comparison: Lightning bf16-mixed with every parameter in fp32, and
# the lean policy (the module runs its own bf16 autocast, so the trainer stays at 32-true).
REFERENCE = dict(policy="full", precision="bf16-mixed")
LEAN = dict(policy="lean", precision="32-true")


def run(cfg: dict, **overrides) -> dict:
    cfg = {**cfg, **overrides}
    env = dict(os.environ)
    if cfg.get("rss"):
        # Large blocks straight from mmap and back to the OS on free, so RSS follows live memory
        # instead of glibc's free lists. Only for memory runs: the page faults slow steps down.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        raise RuntimeError(f"{overrides} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory_bound(frozen: int, trainable: int) -> float:
    """Lean / reference memory for parameters, gradients and AdamW state, activations left out.

    Reference (bf16-mixed, all fp32): 4 bytes per parameter, plus 4 (gradient) + 8 (AdamW moments)
    per trainable one; lean: 2 per frozen, 4 + 4 + 8 per trainable. Activations are about the same
    under both (bf16 autocast), except that the reference also saves a bf16 copy of every frozen
    weight the backward passes through, which pushes the measured ratio below this bound.
    """
    return (2 * frozen + 16 * trainable) / (4 * frozen + 16 * trainable)


def flop_ratio(layers: int, groups: int) -> float:
    """Theoretical step cost of block expansion / full fine-tuning (decoder layers only).

    Expanded depth ``E = layers + groups``; new blocks sit at the top of each group, so the lowest
    trainable block is ``layers/groups`` (0-based, in the expanded model). Per layer and token:
    forward 2N, input-gradient backward 2N (only from the lowest trainable block up), weight
    gradient 2N (trainable layers only). Full fine-tuning: 6N per layer.
    """
    expanded = layers + groups
    lowest = layers // groups
    cost = 2 * expanded + 2 * (expanded - lowest) + 2 * groups
    return cost / (6 * expanded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--inter", type=int, default=2816)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--loop-steps", type=int, default=10, help="timed steps for the few-%% Lightning overhead"
    )
    parser.add_argument("--loop-rounds", type=int, default=4, help="bare/Lightning rounds")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--no-chunked-loss", action="store_true", help="use the model's own (full-logits) loss"
    )
    parser.add_argument("--skip", default="", help="comma list of parts to skip: memory,flops,loop")
    args = parser.parse_args()
    if args.layers % 4:
        parser.error("--layers must be a multiple of 4")
    cfg = dict(
        device=args.device,
        hidden=args.hidden,
        inter=args.inter,
        heads=args.heads,
        layers=args.layers,
        vocab=args.vocab,
        seq_len=args.seq_len,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        threads=args.threads,
        **REFERENCE,
        full_ft=False,
        runner="lightning",
        ckpt=args.gradient_checkpointing,
        chunked=not args.no_chunked_loss,
    )
    skip = set(filter(None, args.skip.split(",")))
    groups = args.layers // 4
    print(
        f"model: Llama h={args.hidden} ffn={args.inter} {args.layers} -> {args.layers + groups} "
        f"layers (LlamaPro num_groups={groups}), batch {args.batch} x {args.seq_len} tokens, "
        f"{args.device}"
    )
    if "memory" not in skip:
        ref = run(cfg, **REFERENCE, rss=True)
        lean = run(cfg, **LEAN, rss=True)
        if args.device == "cpu":  # profiled runs of their own (the profiler's records cost RSS)
            ref["tensor_peak"] = run(cfg, **REFERENCE, tensor_peak=True)["tensor_peak"]
            lean["tensor_peak"] = run(cfg, **LEAN, tensor_peak=True)["tensor_peak"]
        print(
            f"[1] peak memory, Lightning bf16-mixed all-fp32 (reference) vs precision_policy=lean "
            f"({ref['params'] / 1e6:.0f}M params, {ref['trainable'] / 1e6:.0f}M trainable)"
        )
        if args.device == "cuda":
            print(
                f"    max_memory_allocated: {ref['peak'] / 1e9:.2f} vs {lean['peak'] / 1e9:.2f} GB "
                f"-> ratio {lean['peak'] / ref['peak']:.3f} (goal <= 0.65)"
            )
        else:
            print(
                f"    peak live tensors (last step): {ref['tensor_peak'] / 1e9:.3f} vs "
                f"{lean['tensor_peak'] / 1e9:.3f} GB -> ratio "
                f"{lean['tensor_peak'] / ref['tensor_peak']:.3f} (goal <= 0.65)"
            )
            ref_train = ref["peak"] - ref["baseline"]
            lean_train = lean["peak"] - lean["baseline"]
            print(
                f"    peak RSS: {ref['peak'] / 1e9:.2f} vs {lean['peak'] / 1e9:.2f} GB -> ratio "
                f"{lean['peak'] / ref['peak']:.3f}; above the {ref['baseline'] / 1e9:.2f} GB the "
                f"process holds before any model: {ref_train / 1e9:.2f} vs {lean_train / 1e9:.2f} "
                f"GB -> ratio {lean_train / ref_train:.3f}"
            )
        bound = memory_bound(ref["params"] - ref["trainable"], ref["trainable"])
        print(
            f"    weights + gradients + AdamW state alone: (2F + 16T) / (4F + 16T) = {bound:.3f} "
            f"for F={(ref['params'] - ref['trainable']) / 1e6:.0f}M frozen, "
            f"T={ref['trainable'] / 1e6:.0f}M trainable"
        )
    if "flops" not in skip:
        # Same precision on both sides (all fp32 weights, bf16-mixed), so the ratio isolates what
        # freezing saves; the lean policy is shown beside it.
        ft = run(cfg, **REFERENCE, full_ft=True)
        be = run(cfg, **REFERENCE)
        be_lean = run(cfg, **LEAN)
        print(
            f"[2] step time, full fine-tuning (reference): {ft['step'] * 1e3:.0f} ms; block "
            f"expansion: {be['step'] * 1e3:.0f} ms -> ratio {be['step'] / ft['step']:.3f} "
            f"(theoretical FLOP ratio {flop_ratio(args.layers, groups):.3f}, forward+backward "
            f"only); with precision_policy=lean: {be_lean['step'] * 1e3:.0f} ms -> ratio "
            f"{be_lean['step'] / ft['step']:.3f}"
        )
    if "loop" not in skip:
        # One process, alternating rounds of bare and Lightning steps on the same model: separate
        # processes differ by several % on this machine whatever they run.
        rounds = run(
            cfg, **LEAN, steps=args.loop_steps, runner="alternate", rounds=args.loop_rounds
        )["rounds"]
        ratios = sorted(light / bare for bare, light in rounds)
        bare_t = statistics.median(b for b, _ in rounds)
        print(
            f"[3] step time, bare PyTorch loop (reference): {bare_t * 1e3:.1f} ms; Lightning: "
            f"{statistics.median(li for _, li in rounds) * 1e3:.1f} ms -> ratio "
            f"{statistics.median(ratios):.3f} (median over {len(rounds)} alternating rounds: "
            f"{', '.join(f'{r:.3f}' for r in ratios)}; goal <= 1.03)"
        )
        # Lightning's cost is per step, not per FLOP: measure it where compute is negligible.
        tiny = dict(cfg, hidden=64, inter=128, heads=4, layers=4, vocab=1000, seq_len=64)
        tiny_rounds = run(tiny, **LEAN, steps=40, runner="alternate", rounds=args.loop_rounds)[
            "rounds"
        ]
        overhead = statistics.median(li - b for b, li in tiny_rounds)
        print(
            f"    Lightning's fixed cost per step, on a tiny model (h=64, 4 layers): "
            f"{overhead * 1e3:.2f} ms = {overhead / bare_t:.4f} of the step above -> ratio "
            f"{1 + overhead / bare_t:.4f} once the machine's run-to-run noise is taken out"
        )


if __name__ == "__main__":
    main()
