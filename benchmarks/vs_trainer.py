"""Benchmark: blockexp's training path vs a Hugging Face ``transformers.Trainer`` peer.

    python benchmarks/vs_trainer.py --precision fp32            # 12-layer Llama, 70.7M params
    python benchmarks/vs_trainer.py --precision bf16 --rounds 3 --steps 30
    python benchmarks/vs_trainer.py --smoke                     # tiny shape, 2 steps, 1 round

Both sides train the same LLaMA Pro-expanded Llama (base ``--layers`` layers +
``LlamaPro(num_groups=--groups)``: 8 -> 12 layers by default, hidden 512, vocab 32000: 70.7M
parameters, 12.65M trainable) on the same batches (random token ids, item ``i`` seeded by ``i``,
read in order), with the same AdamW (lr 2e-4, betas 0.9/0.95, weight decay 0.1 on matrices only,
eps 1e-8, fused), warmup 6% + cosine, gradient clipping at 1.0, batch 2 x 256 tokens:

- **blockexp**: ``BlockExpansionModule`` loads the *base* checkpoint and expands it at load time,
  in a Lightning ``Trainer`` configured as ``python -m blockexp fit`` configures it
  (``configs/trainer/cpu.yaml``: cpu, 1 device, ``32-true``, ``gradient_clip_val`` 1.0; the
  module's defaults, chunked loss included). Logger, checkpointing, progress bar and model summary
  are off on both sides.
- **peer** (what LLaMA-Factory's ``finetuning_type: freeze`` + ``use_llama_pro`` runs): the
  *expanded* checkpoint (identity copies, written beforehand as LLaMA-Factory's
  ``scripts/llama_pro.py`` does) loaded with ``from_pretrained``, every parameter outside layers
  ``stride-1, 2*stride-1, ...`` frozen (LLaMA-Factory's rule, ``stride = layers / trainable``),
  trainable ones cast to fp32, trained by ``transformers.Trainer`` (model's own loss).

``--precision``:

- ``fp32``: fp32 checkpoints; blockexp ``precision_policy: full`` + ``32-true``; peer fp32 weights,
  no autocast.
- ``bf16``: bf16 checkpoints; blockexp ``precision_policy: lean`` + ``32-true`` (frozen weights
  bf16, trainable fp32, the module's bf16 autocast); peer loaded with ``dtype=bfloat16`` (frozen
  stay bf16), trainable upcast to fp32, ``TrainingArguments(bf16=True)`` (accelerate's bf16
  autocast): the same parameter layout and compute dtype.

Each round runs each side in a fresh child process (alternating which goes first); tokens/s is
over ``--steps`` timed steps after ``--warmup`` steps (wall time from the end of the last warm-up
step to the end of the last step: data loading, forward, backward, clipping, optimizer, scheduler
and the framework's own per-step work), peak RSS is the child's ``ru_maxrss`` (from ``wait4``).
Needs ``accelerate`` (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# -- child process --------------------------------------------------------------------------------


def _dataset(cfg: dict):
    import torch
    from torch.utils.data import Dataset

    class RandomTokens(Dataset):
        """Item ``i``: ``seq_len`` random token ids from a generator seeded with ``i``."""

        def __len__(self) -> int:
            return cfg["batch"] * (cfg["warmup"] + cfg["steps"])

        def __getitem__(self, i: int) -> dict:
            g = torch.Generator().manual_seed(i)
            ids = torch.randint(0, cfg["vocab"], (cfg["seq_len"],), generator=g)
            return {"input_ids": ids, "labels": ids.clone()}

    return RandomTokens()


def _run_blockexp(cfg: dict, marks: list[float]) -> dict:
    import lightning as L
    from torch.utils.data import DataLoader

    from blockexp.expanders import LlamaPro
    from blockexp.training.module import BlockExpansionModule
    from blockexp.training.settings import Compute

    lean = cfg["precision"] == "bf16"
    module = BlockExpansionModule(
        base=cfg["base_dir"],
        expander=LlamaPro(num_groups=cfg["groups"]),
        tokenizer="byte",  # no tokenizer runs; the CLI's data module is replaced by DataLoader
        validate_before_fit=False,
        compute=Compute(dtype="float32", precision_policy="lean" if lean else "full"),
    )

    class Marks(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            marks.append(time.perf_counter())

    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",  # configs/trainer/cpu.yaml; lean runs its own bf16 autocast
        gradient_clip_val=1.0,  # the CLI's default
        log_every_n_steps=10,
        max_steps=cfg["warmup"] + cfg["steps"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[Marks()],
    )
    loader = DataLoader(_dataset(cfg), batch_size=cfg["batch"], shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return _describe(module.model)


def _freeze_like_llama_factory(model, num_trainable_layers: int, upcast: bool) -> None:
    """LLaMA-Factory ``_setup_freeze_tuning`` with ``use_llama_pro`` and modules ``all``."""
    import torch

    num_layers = model.config.num_hidden_layers
    stride = num_layers // num_trainable_layers
    ids = range(stride - 1, num_layers + stride - 1, stride)
    marks = [f".{i:d}." for i in ids]
    for name, param in model.named_parameters():
        if any(m in name for m in marks):
            if upcast:
                param.data = param.data.to(torch.float32)
        else:
            param.requires_grad_(False)


def _run_peer(cfg: dict, marks: list[float]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    bf16 = cfg["precision"] == "bf16"
    model = AutoModelForCausalLM.from_pretrained(
        cfg["expanded_dir"], dtype=torch.bfloat16 if bf16 else torch.float32
    )
    model.config.use_cache = False
    _freeze_like_llama_factory(model, cfg["groups"], upcast=True)

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    args = TrainingArguments(
        output_dir=cfg["out_dir"],
        per_device_train_batch_size=cfg["batch"],
        max_steps=cfg["warmup"] + cfg["steps"],
        learning_rate=2e-4,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-8,
        weight_decay=0.1,  # Trainer: not on biases and norms, i.e. matrices only for Llama
        optim="adamw_torch_fused",
        lr_scheduler_type="cosine",
        warmup_steps=0.06,
        max_grad_norm=1.0,
        bf16=bf16,
        use_cpu=True,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(cfg), callbacks=[Marks()])
    trainer.train()
    return _describe(model)


def _describe(model) -> dict:
    params = dict(model.named_parameters())
    trainable = sorted(n for n, p in params.items() if p.requires_grad)
    dtypes = sorted(
        {
            f"{'trainable' if p.requires_grad else 'frozen'} {p.dtype}".replace("torch.", "")
            for p in params.values()
        }
    )
    return {
        "params": sum(p.numel() for p in params.values()),
        "trainable": sum(params[n].numel() for n in trainable),
        "trainable_names": trainable,
        "dtypes": dtypes,
        "attn": getattr(model.config, "_attn_implementation", None),
    }


def child(cfg: dict) -> None:
    import torch

    torch.manual_seed(0)
    marks: list[float] = []
    run = _run_blockexp if cfg["side"] == "blockexp" else _run_peer
    info = run(cfg, marks)
    n = cfg["warmup"] + cfg["steps"]
    if len(marks) != n:
        raise RuntimeError(f"{cfg['side']}: {len(marks)} steps ran, expected {n}")
    elapsed = marks[-1] - marks[cfg["warmup"] - 1]
    info["tokens_per_s"] = cfg["steps"] * cfg["batch"] * cfg["seq_len"] / elapsed
    print("RESULT " + json.dumps(info))


# -- parent ---------------------------------------------------------------------------------------


def write_checkpoints(cfg: dict, work: Path) -> None:
    """The base (for blockexp, which expands at load) and its expansion (for the peer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from blockexp.expanders import LlamaPro

    dtype = torch.bfloat16 if cfg["precision"] == "bf16" else torch.float32
    config = LlamaConfig(
        vocab_size=cfg["vocab"],
        hidden_size=cfg["hidden"],
        intermediate_size=cfg["inter"],
        num_hidden_layers=cfg["layers"],
        num_attention_heads=cfg["heads"],
        num_key_value_heads=cfg["heads"],
        max_position_embeddings=cfg["seq_len"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(work / "base")
    LlamaPro(num_groups=cfg["groups"]).expand(model)
    model.save_pretrained(work / "expanded")


def run_side(cfg: dict, side: str) -> dict:
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps({**cfg, "side": side})],
            stdout=out,
            stderr=err,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{side} failed (exit {proc.returncode}):\n{stderr[-4000:]}")
    line = [x for x in stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    result["peak_rss"] = usage.ru_maxrss * 1024  # kB on Linux
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--inter", type=int, default=1376)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--layers", type=int, default=8, help="base layers")
    parser.add_argument("--groups", type=int, default=4, help="LlamaPro num_groups (new layers)")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", help="directory for the checkpoints (default: a temporary one)")
    parser.add_argument("--smoke", action="store_true", help="tiny shape, 2 steps, 1 round")
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.smoke:
        args.hidden, args.inter, args.heads, args.layers, args.groups = 64, 128, 4, 4, 2
        args.vocab, args.seq_len, args.steps, args.warmup, args.rounds = 256, 32, 2, 1, 1
    if args.layers % args.groups:
        parser.error("--layers must be a multiple of --groups")
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (timing starts at the end of a warm-up step)")
    try:
        import accelerate  # noqa: F401  (transformers.Trainer needs it)
    except ImportError:
        sys.exit("transformers.Trainer needs accelerate: pip install -e .[bench]")
    cfg = {k: v for k, v in vars(args).items() if k not in ("child", "smoke", "work")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cfg.update(base_dir=str(work / "base"), expanded_dir=str(work / "expanded"))
        cfg["out_dir"] = str(work / "trainer_out")
        write_checkpoints(cfg, work)
        expanded = args.layers + args.groups
        print(
            f"model: Llama h={args.hidden} ffn={args.inter} heads={args.heads} vocab={args.vocab}, "
            f"{args.layers} -> {expanded} layers (LlamaPro num_groups={args.groups}); batch "
            f"{args.batch} x {args.seq_len}; precision {args.precision}; {args.steps} timed steps "
            f"after {args.warmup}; {os.cpu_count()} CPUs, torch threads default"
        )
        rows = []
        for r in range(args.rounds):
            order = ("blockexp", "peer") if r % 2 == 0 else ("peer", "blockexp")
            got = {side: run_side(cfg, side) for side in order}
            be, peer = got["blockexp"], got["peer"]
            if r == 0:
                if be["trainable_names"] != peer["trainable_names"]:
                    diff = set(be["trainable_names"]) ^ set(peer["trainable_names"])
                    sys.exit(f"trainable parameter names differ: {sorted(diff)[:10]}")
                if (be["params"], be["trainable"]) != (peer["params"], peer["trainable"]):
                    sys.exit(
                        f"parameter counts differ: {be['params'], be['trainable']} vs "
                        f"{peer['params'], peer['trainable']}"
                    )
                print(
                    f"params {be['params'] / 1e6:.2f}M, trainable {be['trainable'] / 1e6:.2f}M "
                    f"({len(be['trainable_names'])} tensors): names and counts equal on both sides"
                )
                print(f"  blockexp: {', '.join(be['dtypes'])}; attention {be['attn']}")
                print(f"  peer:     {', '.join(peer['dtypes'])}; attention {peer['attn']}")
                print("round | blockexp tok/s | peer tok/s | blockexp RSS | peer RSS")
            rows.append((be, peer))
            print(
                f"{r + 1:5d} | {be['tokens_per_s']:14.0f} | {peer['tokens_per_s']:10.0f} | "
                f"{be['peak_rss'] / 1e9:9.3f} GB | {peer['peak_rss'] / 1e9:5.3f} GB",
                flush=True,
            )
        tps = statistics.median(b["tokens_per_s"] / p["tokens_per_s"] for b, p in rows)
        rss = statistics.median(b["peak_rss"] / p["peak_rss"] for b, p in rows)
        print(
            f"median blockexp/peer over {len(rows)} rounds: tokens/s {tps:.3f}, peak RSS {rss:.3f}"
        )


if __name__ == "__main__":
    main()
