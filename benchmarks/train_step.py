"""Benchmark: training memory and step time of block expansion, each against a reference run.

    python benchmarks/train_step.py                      # CPU, a ~255M-parameter Llama, LlamaPro +25%
    python benchmarks/train_step.py --parts memory --rounds 3
    python benchmarks/train_step.py --sweep              # step time / memory vs depth and seq_len
    python benchmarks/train_step.py --device cuda --hidden 4096 --layers 32 --seq-len 4096

Every configuration trains the same expanded model (base ``--layers`` layers,
``LlamaPro(num_groups=layers/4)``: +25% layers, the LLaMA Pro 8.3B ratio) with the settings
``python -m blockexp fit`` gives (``configs/trainer/cpu.yaml``: ``32-true``,
``gradient_clip_val`` 1.0; the module's defaults: chunked loss with the 256 MiB budget, fused
AdamW) on random token batches. Nothing tunes the allocator. Each run is a fresh child process;
runs of the configurations being compared alternate, round after round, in this one command, and
every ratio is the median over the rounds.

Parts (``--parts``, default all but ``sweep``):

``memory``
    The reference is the **peer's layout**, which is ``precision_policy: lean``: frozen weights
    in bf16 (the checkpoint's dtype), trainable fp32 masters, fp32 AdamW, bf16 autocast. Against
    it: each memory opt-in alone (``lean-int8``, ``lean-nf4``: quantised frozen base;
    ``optimizer_state: int8``; ``optimizer_in_backward``) and combined. Printed per configuration:
    peak RSS of the whole child (its ``ru_maxrss``: interpreter, torch, Lightning included), the peak
    of live tensor bytes (``torch.profiler``'s memory timeline over the last step, the CPU
    counterpart of ``torch.cuda.max_memory_allocated``; on CUDA that counter itself), and the
    median step time; each as a ratio to the reference. Lightning ``bf16-mixed`` with every
    weight in fp32 (``precision_policy: full``) is shown for context.
``flops``
    Block expansion vs full fine-tuning of the same expanded model, same precision (the peer
    layout for block expansion; full fine-tuning has no frozen weights, so all fp32 under the
    same bf16 autocast), next to the theoretical FLOP ratio.
``loop``
    Lightning vs a bare PyTorch loop on the same model in one process (alternating rounds), and
    Lightning's fixed per-step cost on a tiny model.
``loss``
    The semantic price of the opt-ins: ``--loss-steps`` (200) steps of a small Llama on the
    quickstart corpus (``data/quickstart``) for ``lean`` and each opt-in, same data order and
    seed; the mean training loss of the last 20 steps and the validation loss, as a ratio to
    ``lean``'s (goal: within 1%).
``sweep`` (``--sweep``)
    Step time and memory against depth (base 4/8/16/32 layers) and against ``seq_len``
    (128-2048), each fitted to the model the arithmetic expects (linear in depth; time
    ``a + b*s + c*s^2`` and memory ``a + b*s`` in ``seq_len``) with its residuals.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, statistics
import torch
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
torch.set_num_threads(cfg["threads"])
import lightning as L
from torch.utils.data import DataLoader, Dataset
from blockexp.expanders import LlamaPro
from blockexp.training.module import BlockExpansionModule

device = cfg["device"]
base = dict(model_type="llama", vocab_size=cfg["vocab"], hidden_size=cfg["hidden"],
            intermediate_size=cfg["inter"], num_hidden_layers=cfg["layers"],
            num_attention_heads=cfg["heads"], num_key_value_heads=cfg["heads"],
            max_position_embeddings=max(2048, cfg["seq_len"]), tie_word_embeddings=False)

class Blocks(Dataset):
    def __len__(self):
        return 10**6
    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(0, cfg["vocab"], (cfg["seq_len"],), generator=g)
        return {"input_ids": ids, "labels": ids.clone()}

def rss_now():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

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
profile_last = device == "cpu" and cfg.get("tensor_peak", False)

import transformers.models.llama.modeling_llama  # noqa: F401,E402  (imported before, not during)
baseline = rss_now()

module = BlockExpansionModule(base=base, expander=LlamaPro(num_groups=cfg["layers"] // 4),
                              tokenizer="byte", validate_before_fit=False, **cfg["module"])
if cfg.get("full_ft"):  # the same expanded model, every parameter trainable
    module.configure_model()
    for p in module.model.parameters():
        p.requires_grad_(True)
    module.expansion.trainable = frozenset(n for n, _ in module.model.named_parameters())

times = []
steps = cfg["warmup"] + cfg["steps"]
class Timer(L.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if profile_last and batch_idx == steps - 1:
            self.prof = profiler().__enter__()
        if device == "cuda": torch.cuda.synchronize()
        self.t = time.perf_counter()
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if device == "cuda": torch.cuda.synchronize()
        times.append(time.perf_counter() - self.t)
        if profile_last and batch_idx == steps - 1:
            self.prof.__exit__(None, None, None)
            record_tensor_peak(self.prof)
            del self.prof  # its records hold weak references that block NF4's .cpu() at teardown
            import gc; gc.collect()

loader = DataLoader(Blocks(), batch_size=cfg["batch"])

def lightning_steps():
    trainer = L.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1,
                        precision=cfg["precision"], max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=cfg["clip"],
                        limit_val_batches=0, callbacks=[Timer()])
    trainer.fit(module, train_dataloaders=loader)

def bare_steps():  # bare PyTorch: the same module's model, optimizer and schedule, no Trainer
    module.configure_model()
    module.to(device)
    hp = module.settings.optim
    params = [p for p in module.model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]; no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, fused=True)
    from blockexp.training.module import cosine_with_warmup
    warm = int(round(hp.warmup_ratio * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, steps, warm))
    module.model.train()
    it = iter(loader)
    for step in range(steps):
        batch = {k: v.to(device) for k, v in next(it).items()}
        if device == "cuda": torch.cuda.synchronize()
        t = time.perf_counter()
        loss = module._loss(batch)[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
        if device == "cuda": torch.cuda.synchronize()
        times.append(time.perf_counter() - t)

def median_after_warmup():
    return statistics.median(times[cfg["warmup"]:])

rounds = []
if cfg["runner"] == "lightning":
    lightning_steps()
else:  # "alternate": bare and Lightning rounds on the same model in this one process
    for _ in range(cfg["rounds"]):
        times.clear(); bare_steps(); bare_t = median_after_warmup()
        times.clear(); lightning_steps(); rounds.append((bare_t, median_after_warmup()))
n_params = sum(p.numel() for p in module.model.parameters())
n_train = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
import resource
peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
print(json.dumps({"step": median_after_warmup(), "rounds": rounds, "baseline": baseline,
                  "peak_rss": peak_rss,
                  "tensor_peak": tensor_peak.get("bytes"), "params": n_params,
                  "trainable": n_train,
                  "cuda_peak": torch.cuda.max_memory_allocated() if device == "cuda" else None}))
"""


# -- the configurations ---------------------------------------------------------------------------
# ``module``: BlockExpansionModule arguments (``compute``, ``optim``: their settings); ``precision``/``clip``: the trainer's. The reference is
# the peer's layout; ``optimizer_in_backward`` cannot clip by global norm (refused), so its runs
# have no clipping.
PEER_LAYOUT = dict(
    module=dict(compute=dict(precision_policy="lean")), precision="32-true", clip=1.0
)
ALL_FP32 = dict(
    module=dict(compute=dict(precision_policy="full")), precision="bf16-mixed", clip=1.0
)
INT8_STATE = dict(optimizer_state="int8")
IN_BACKWARD = dict(optimizer_state="int8", optimizer_in_backward=True)


def _opt_in(clip: float | None = 1.0, optim: dict | None = None, **compute) -> dict:
    module = {"compute": {"precision_policy": "lean", **compute}, "optim": optim or {}}
    return dict(module=module, precision="32-true", clip=clip)


OPT_INS = {
    "lean-int8 (quantised base)": _opt_in(precision_policy="lean-int8"),
    "lean-nf4 (quantised base)": _opt_in(precision_policy="lean-nf4"),
    "optimizer_state int8": _opt_in(optim=INT8_STATE),
    "optimizer_in_backward": _opt_in(clip=None, optim=dict(optimizer_in_backward=True)),
    "lean-int8 + int8 state": _opt_in(precision_policy="lean-int8", optim=INT8_STATE),
    "lean-nf4 + int8 state": _opt_in(precision_policy="lean-nf4", optim=INT8_STATE),
    "gradient_checkpointing": _opt_in(gradient_checkpointing=True),
    "lean-int8 + int8 + in-bwd + checkpointing": _opt_in(
        clip=None, precision_policy="lean-int8", optim=IN_BACKWARD, gradient_checkpointing=True
    ),
    "lean-nf4 + int8 + in-bwd + checkpointing": _opt_in(
        clip=None, precision_policy="lean-nf4", optim=IN_BACKWARD, gradient_checkpointing=True
    ),
}


def run(cfg: dict, **overrides) -> dict:
    """One child process (this checkout's ``src`` first on its path)."""
    cfg = {**cfg, **overrides}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        raise RuntimeError(f"{overrides} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def alternate(cfg: dict, variants: dict[str, dict], rounds: int) -> dict[str, list[dict]]:
    """Run every variant once per round, the order rotating each round."""
    names = list(variants)
    results: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            results[name].append(run(cfg, **variants[name]))
            print(
                f"      round {r + 1}: {name}: {results[name][-1]['step'] * 1e3:.0f} ms", flush=True
            )
    return results


def memory_bound(frozen: int, trainable: int) -> float:
    """Lean / all-fp32 memory for parameters, gradients and AdamW state, activations left out."""
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


def _med(values):
    return statistics.median(values)


def _chosen(names: list[str], args) -> list[str]:
    """``--variants`` (comma-separated substrings) narrows the opt-ins compared."""
    if not args.variants:
        return names
    wanted = [w.strip() for w in args.variants.split(",") if w.strip()]
    return [n for n in names if any(w == n or w in n for w in wanted)]


def part_memory(cfg: dict, args) -> None:
    variants = {
        "peer layout (lean, fp32 AdamW)": PEER_LAYOUT,
        **{n: OPT_INS[n] for n in _chosen(list(OPT_INS), args)},
    }
    if not args.no_context:
        variants["Lightning bf16-mixed, all fp32"] = ALL_FP32
    print(f"[1] memory opt-ins vs the peer layout, {args.rounds} alternated rounds")
    results = alternate(cfg, variants, args.rounds)
    peaks = {}
    if cfg["device"] == "cpu":  # profiled runs of their own (the profiler's records cost RSS)
        for name, variant in variants.items():
            peaks[name] = run(cfg, **variant, tensor_peak=True)["tensor_peak"]
    else:
        peaks = {n: _med(r["cuda_peak"] for r in rs) for n, rs in results.items()}
    ref_name = next(iter(variants))
    ref = results[ref_name]
    ref_rss = _med(r["peak_rss"] for r in ref)
    ref_step = _med(r["step"] for r in ref)
    base = _med(r["baseline"] for r in ref)
    first = ref[0]
    print(
        f"    {first['params'] / 1e6:.0f}M parameters, {first['trainable'] / 1e6:.1f}M trainable; "
        f"the process holds {base / 2**30:.2f} GiB before any model exists (counted in RSS)"
    )
    label = "peak live tensors" if cfg["device"] == "cpu" else "max_memory_allocated"
    print(
        f"    {'configuration':<40} {'peak RSS':>10} {'ratio':>6} {label:>20} {'ratio':>6} "
        f"{'step':>8} {'ratio':>6}"
    )
    for name, rs in results.items():
        rss = _med(r["peak_rss"] for r in rs)
        step = _med(r["step"] for r in rs)
        print(
            f"    {name:<40} {rss / 2**30:>8.2f}Gi {rss / ref_rss:>6.3f} "
            f"{peaks[name] / 2**30:>18.3f}Gi {peaks[name] / peaks[ref_name]:>6.3f} "
            f"{step * 1e3:>6.0f}ms {step / ref_step:>6.3f}"
        )
    frozen, trainable = first["params"] - first["trainable"], first["trainable"]
    print(
        f"    parameter state alone (weights + gradients + AdamW): all-fp32 {(4 * frozen + 16 * trainable) / 2**30:.2f} "
        f"GiB, peer layout {(2 * frozen + 16 * trainable) / 2**30:.2f} GiB (bound "
        f"{memory_bound(frozen, trainable):.3f} of all-fp32)"
    )


def part_flops(cfg: dict, args, groups: int) -> None:
    variants = {
        "full fine-tuning": dict(PEER_LAYOUT, full_ft=True),
        "block expansion": PEER_LAYOUT,
    }
    print(f"[2] block expansion vs full fine-tuning, {args.rounds} alternated rounds")
    results = alternate(cfg, variants, args.rounds)
    ratios = sorted(
        be["step"] / ft["step"]
        for ft, be in zip(results["full fine-tuning"], results["block expansion"], strict=True)
    )
    ft_t = _med(r["step"] for r in results["full fine-tuning"])
    be_t = _med(r["step"] for r in results["block expansion"])
    print(
        f"    full fine-tuning (reference) {ft_t * 1e3:.0f} ms, block expansion {be_t * 1e3:.0f} ms "
        f"-> ratio {_med(ratios):.3f} (per round: {', '.join(f'{r:.3f}' for r in ratios)}; "
        f"theoretical FLOP ratio {flop_ratio(args.layers, groups):.3f}, decoder forward+backward "
        "only: the LM head, optimizer and framework are outside it)"
    )


def part_loop(cfg: dict, args) -> None:
    rounds = run(
        cfg, **PEER_LAYOUT, steps=args.loop_steps, runner="alternate", rounds=args.loop_rounds
    )["rounds"]
    ratios = sorted(light / bare for bare, light in rounds)
    bare_t = _med(b for b, _ in rounds)
    print(
        f"[3] step time, bare PyTorch loop (reference): {bare_t * 1e3:.1f} ms; Lightning: "
        f"{_med(li for _, li in rounds) * 1e3:.1f} ms -> ratio {_med(ratios):.3f} (median over "
        f"{len(rounds)} alternating rounds in one process: {', '.join(f'{r:.3f}' for r in ratios)}"
        "; goal <= 1.03)"
    )
    tiny = dict(cfg, hidden=64, inter=128, heads=4, layers=4, vocab=1000, seq_len=64)
    tiny_rounds = run(tiny, **PEER_LAYOUT, steps=40, runner="alternate", rounds=args.loop_rounds)[
        "rounds"
    ]
    overhead = _med(li - b for b, li in tiny_rounds)
    print(
        f"    Lightning's fixed cost per step, on a tiny model (h=64, 4 layers): "
        f"{overhead * 1e3:.2f} ms = {overhead / bare_t:.4f} of the step above"
    )


LOSS_CHILD = r"""
import json, sys
import torch
import lightning as L
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
L.seed_everything(0, verbose=False)
from blockexp.data.cpt import CPTDataModule
from blockexp.expanders import LlamaPro
from blockexp.training.module import BlockExpansionModule
repo = cfg["repo"]
data = CPTDataModule(sources=[
    {"name": "general", "path": repo + "/data/quickstart/general.jsonl", "weight": 1.0},
    {"name": "domain", "path": repo + "/data/quickstart/domain.jsonl", "weight": 1.5}],
    seq_len=128, batch_size=8, val_fraction=0.05, tokenizer="byte")
base = dict(model_type="llama", vocab_size=259, hidden_size=256, intermediate_size=768,
            num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=4,
            max_position_embeddings=2048, bos_token_id=257, eos_token_id=258, pad_token_id=256,
            tie_word_embeddings=False)
module_args = dict(cfg["module"])
module_args["optim"] = {"lr": 2e-3, **module_args.get("optim", {})}
module = BlockExpansionModule(base=base, expander=LlamaPro(num_groups=2), tokenizer="byte",
                              validate_before_fit=False, **module_args)
losses = []
class Record(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        losses.append(float(outputs["loss"]))
trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=cfg["steps"],
                    gradient_clip_val=cfg["clip"], logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False,
                    limit_val_batches=16, val_check_interval=cfg["steps"],
                    check_val_every_n_epoch=None, callbacks=[Record()])
trainer.fit(module, datamodule=data)
print(json.dumps({"train": sum(losses[-20:]) / len(losses[-20:]),
                  "val": float(trainer.callback_metrics["val_loss"])}))
"""


# Gradient checkpointing recomputes the same values: its loss is lean's (not re-run here).
LOSS_VARIANTS = [
    "lean-int8 (quantised base)",
    "lean-nf4 (quantised base)",
    "optimizer_state int8",
    "optimizer_in_backward",
    "lean-int8 + int8 state",
    "lean-nf4 + int8 state",
]


def part_loss(cfg: dict, args) -> None:
    variants = {
        "lean (reference)": PEER_LAYOUT,
        **{n: OPT_INS[n] for n in _chosen(LOSS_VARIANTS, args)},
    }
    print(
        f"[4] loss after {args.loss_steps} steps on the quickstart corpus (Llama h=256, 8 -> 10 "
        "layers, batch 8 x 128, lr 2e-3), ratio to lean's (goal: within 1%)"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    out = {}
    for name, variant in variants.items():
        child = dict(
            threads=cfg["threads"],
            repo=str(REPO),
            steps=args.loss_steps,
            module=variant["module"],
            clip=variant["clip"],
        )
        result = subprocess.run(
            [sys.executable, "-c", LOSS_CHILD, json.dumps(child)],
            capture_output=True,
            text=True,
            env=env,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{result.stderr[-4000:]}")
        out[name] = json.loads(result.stdout.strip().splitlines()[-1])
    ref = out["lean (reference)"]
    for name, r in out.items():
        print(
            f"    {name:<40} train {r['train']:.4f} ({r['train'] / ref['train']:.4f})  "
            f"val {r['val']:.4f} ({r['val'] / ref['val']:.4f})"
        )


def _fit(xs: list[float], ys: list[float], powers: list[int]) -> tuple[list[float], list[float]]:
    import numpy as np

    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    design = np.stack([x**p for p in powers], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = (y - design @ coef) / y
    return coef.tolist(), residual.tolist()


def part_sweep(cfg: dict, args) -> None:
    sweep_cfg = dict(cfg, steps=args.sweep_steps, warmup=1)
    print("[5] sweep: one child per point (peer layout), step time and peak live tensors")
    rows = []
    for layers in (4, 8, 16, 32):
        r = run(dict(sweep_cfg, layers=layers), **PEER_LAYOUT, tensor_peak=cfg["device"] == "cpu")
        rows.append(("depth", layers + layers // 4, r))
        print(
            f"      depth {layers} -> {layers + layers // 4}: {r['step'] * 1e3:.0f} ms", flush=True
        )
    for seq in (128, 256, 512, 1024, 2048):
        r = run(dict(sweep_cfg, seq_len=seq), **PEER_LAYOUT, tensor_peak=cfg["device"] == "cpu")
        rows.append(("seq_len", seq, r))
        print(f"      seq_len {seq}: {r['step'] * 1e3:.0f} ms", flush=True)

    def mem(r):
        return r["tensor_peak"] if r["tensor_peak"] is not None else r["cuda_peak"]

    for kind, time_powers, mem_powers, what in (
        ("depth", [0, 1], [0, 1], "expanded layers L"),
        ("seq_len", [0, 1, 2], [0, 1], "seq_len s"),
    ):
        pts = [(x, r) for k, x, r in rows if k == kind]
        xs = [x for x, _ in pts]
        t_coef, t_res = _fit(xs, [r["step"] for _, r in pts], time_powers)
        m_coef, m_res = _fit(xs, [mem(r) for _, r in pts], mem_powers)
        print(
            f"    against {what} (batch {cfg['batch']}, "
            + (f"seq_len {cfg['seq_len']})" if kind == "depth" else f"{cfg['layers']} base layers)")
        )
        print(
            f"    {'x':>6} {'step ms':>9} {'fit resid':>9} {'tensors MiB':>12} {'fit resid':>9} "
            f"{'RSS MiB':>9}"
        )
        for (x, r), tr, mr in zip(pts, t_res, m_res, strict=True):
            print(
                f"    {x:>6} {r['step'] * 1e3:>9.0f} {tr:>+9.3f} {mem(r) / 2**20:>12.0f} "
                f"{mr:>+9.3f} {r['peak_rss'] / 2**20:>9.0f}"
            )
        names = "abc"
        print(
            "    time fit: "
            + " + ".join(f"{names[i]}*x^{p}" for i, p in enumerate(time_powers))
            + ": "
            + ", ".join(f"{names[i]}={c:.4g}" for i, c in enumerate(t_coef))
            + f" s; max |residual| {max(abs(v) for v in t_res):.3f}"
        )
        print(
            "    memory fit: "
            + " + ".join(f"{names[i]}*x^{p}" for i, p in enumerate(mem_powers))
            + ": "
            + ", ".join(f"{names[i]}={c / 2**20:.4g}" for i, c in enumerate(m_coef))
            + f" MiB; max |residual| {max(abs(v) for v in m_res):.3f}"
        )


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
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds per comparison")
    parser.add_argument("--parts", default="memory,flops,loop,loss")
    parser.add_argument("--sweep", action="store_true", help="also run the depth/seq_len sweep")
    parser.add_argument("--sweep-steps", type=int, default=2)
    parser.add_argument("--loss-steps", type=int, default=200)
    parser.add_argument("--loop-steps", type=int, default=10)
    parser.add_argument("--loop-rounds", type=int, default=4)
    parser.add_argument(
        "--no-context", action="store_true", help="skip the all-fp32 bf16-mixed context row"
    )
    parser.add_argument(
        "--variants", default="", help="comma list: compare only opt-ins whose name contains one"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny shape, one step each (tests the script)"
    )
    args = parser.parse_args()
    if args.smoke:
        args.hidden, args.inter, args.heads, args.layers, args.vocab = 64, 128, 4, 4, 300
        args.seq_len, args.steps, args.warmup, args.rounds, args.loss_steps = 32, 1, 1, 1, 3
        args.no_context = True
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
        runner="lightning",
    )
    parts = set(filter(None, args.parts.split(",")))
    if args.sweep:
        parts.add("sweep")
    groups = args.layers // 4
    print(
        f"model: Llama h={args.hidden} ffn={args.inter} vocab={args.vocab} {args.layers} -> "
        f"{args.layers + groups} layers (LlamaPro num_groups={groups}), batch {args.batch} x "
        f"{args.seq_len} tokens, {args.device}, {args.threads} threads"
    )
    if "memory" in parts:
        part_memory(cfg, args)
    if "flops" in parts:
        part_flops(cfg, args, groups)
    if "loop" in parts:
        part_loop(cfg, args)
    if "loss" in parts:
        part_loss(cfg, args)
    if "sweep" in parts:
        part_sweep(cfg, args)


if __name__ == "__main__":
    main()
