"""The LightningModule that trains an expanded model.

What to load comes from :mod:`blockexp.training.loading`; how to write it out from
:mod:`blockexp.io.save`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch

from blockexp.data.collate import IGNORE_INDEX
from blockexp.expanders import Expander, build_expander
from blockexp.io import digests
from blockexp.io.load import describe_spec
from blockexp.io.manifest import build_manifest
from blockexp.io.save import save_pretrained_atomic
from blockexp.training import loading
from blockexp.training.attention import uses_flash_attention
from blockexp.training.schedules import cosine_schedule, cosine_with_warmup

__all__ = ["BlockExpansionModule", "cosine_with_warmup"]


class BlockExpansionModule(L.LightningModule):
    """Continual pre-training of an expanded causal LM.

    Defaults follow the LLaMA Pro paper (Sec. 4.1, Table 14): AdamW with betas (0.9, 0.95),
    weight decay 0.1 (not applied to norms and biases), peak learning rate 2e-4, linear warmup over
    6% of the steps then cosine decay; gradient clipping at 1.0 is the CLI's trainer default.

    Args:
        base: the base model: a local directory, a hub id, or an inline config dict with
            ``model_type`` (random weights, for tests and the quickstart).
        expander: the strategy (e.g. ``LlamaPro``) applied in :meth:`configure_model`.
        tokenizer: tokenizer spec (directory, hub id or ``byte``); default: the base's own
            (``byte`` for an inline config).
        dtype: dtype the base model is loaded in (``float32`` keeps fp32 master weights for
            mixed-precision training; ``auto`` keeps the checkpoint's dtype).
        lr: peak learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay on matrices (norm weights and biases get none).
        eps: AdamW epsilon.
        warmup_ratio: fraction of the total optimizer steps used for linear warmup.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        export_dir: if set, the trained model is written there as a Hugging Face directory at the
            end of ``fit`` (atomically; never into the base directory).
        export_overwrite: replace an existing ``export_dir``.
        seed: initialisation seed for inline (random) base models.
        trust_remote_code: allow custom modelling code from the hub (off by default).
        attn_implementation: ``auto`` (default when None: ``flash_attention_2`` when flash-attn is
            installed and CUDA is available, else ``sdpa``, or ``eager`` for a model class
            without an SDPA path such as Gemma 2), ``sdpa``, ``eager`` or ``flash_attention_2``.
        validate_before_fit: run validation once before training (the "before" in the summary).
        precision_policy: ``full`` keeps every parameter in ``dtype``; ``lean`` stores frozen
            parameters in bf16 and trainable ones in fp32 and runs the model under bf16 autocast
            (see :mod:`blockexp.training.precision`; use with trainer precision ``32-true`` or
            ``bf16-mixed``). With ``lean`` the base is loaded directly in bf16. ``lean-int8`` and
            ``lean-nf4`` (opt-in, extra ``lowmem``) also store the frozen linear weights quantised
            with torchao (int8 per-row, or QLoRA's 4-bit NormalFloat): about 1 or 0.5 bytes per
            frozen weight instead of 2. A semantic change: the frozen layers compute with the
            dequantised weights (see :mod:`blockexp.training.quantize` and docs/performance.md).
            Checkpoints, the frozen fingerprint and exports still use the base's own weights.
        gradient_checkpointing: recompute decoder-layer activations in the backward pass
            (non-reentrant, so it also works when the layers below are frozen).
        compile_layers: ``torch.compile`` each decoder layer (regional compilation; opt-in). It
            fuses the modelling code's elementwise work (norms, rotary embedding, SwiGLU,
            casts), which takes about a third of a block-expansion step on an H100 (see
            docs/performance.md); the first steps pay the compilation.
        save_frozen: also store the frozen parameters in training checkpoints. By default a
            checkpoint holds only what resuming needs (trainable parameters, optimizer and loop
            state) plus a fingerprint of the frozen weights; resuming and ``blockexp export``
            reload the frozen weights from ``base`` and refuse a base whose weights changed.
            Set it when the base may move or disappear.
        chunked_loss: compute the loss from the final hidden states chunk by chunk
            (:mod:`blockexp.training.loss`) instead of through the model's full ``[tokens, vocab]``
            logits; same value and gradients, far less activation memory (the float32 logits
            are the largest activation of a block-expansion step). ``false`` uses the model's own
            loss.
        loss_chunk_mb: the chunked loss's memory budget: MiB of float32 logits per chunk. A batch
            whose logits fit is one chunk without recomputation (as fast as the model's own
            loss, minus the unlabelled positions); a larger one is split into chunks of at most
            this size, each recomputed in the backward.
        fused_adamw: use PyTorch's fused AdamW kernel (one kernel over all trainable tensors;
            same update rule, float rounding may differ in the last bits from the per-tensor
            loop). ``None`` (default): fused where supported (every trainable parameter a plain
            CPU or CUDA float tensor on one device type; not FSDP's DTensors; not under
            ``16-mixed``, whose gradient scaler Lightning cannot combine with clipping a fused
            optimizer), else PyTorch's default implementation.
        optimizer_state: ``fp32`` (default): AdamW moments in float32, 8 bytes per trainable
            parameter. ``int8`` (opt-in, extra ``lowmem``): torchao's ``AdamW8bit``, moments
            block-wise quantised to 8 bits (2 bytes per parameter; tensors under 4,096
            elements stay float32). A semantic change: the update uses the dequantised moments,
            so the loss curve differs slightly from fp32 AdamW (see docs/performance.md).
        optimizer_in_backward: step each trainable parameter's optimizer inside the backward pass,
            as soon as its gradient is complete, and free the gradient (opt-in; see
            :mod:`blockexp.training.optim`): the gradients of all trainable parameters never exist at once
            (4 bytes per trainable parameter less at the peak). A semantic change: no global
            gradient-norm clipping (set ``trainer.gradient_clip_val`` to null) and no gradient
            accumulation; one process only.
        allow_unverified_checkpoint: resume from a checkpoint that records no checksums of its
            tensors and nothing of its base (one written by another tool). Off: such a
            checkpoint is refused. Its weights must be finite either way.
    """

    def __init__(
        self,
        base: str | dict[str, Any],
        expander: Expander,
        tokenizer: str | None = None,
        dtype: str = "float32",
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.1,
        eps: float = 1e-8,
        warmup_ratio: float = 0.06,
        min_lr_ratio: float = 0.0,
        export_dir: str | None = None,
        export_overwrite: bool = False,
        seed: int = 0,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        validate_before_fit: bool = True,
        precision_policy: Literal["full", "lean", "lean-int8", "lean-nf4"] = "full",
        gradient_checkpointing: bool = False,
        compile_layers: bool = False,
        save_frozen: bool = False,
        chunked_loss: bool = True,
        loss_chunk_mb: float = 256.0,
        fused_adamw: bool | None = None,
        optimizer_state: Literal["fp32", "int8"] = "fp32",
        optimizer_in_backward: bool = False,
        allow_unverified_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        from blockexp.training.precision import POLICIES

        if precision_policy not in POLICIES:
            raise ValueError(
                f"model.precision_policy must be one of {', '.join(POLICIES)}, got "
                f"{precision_policy!r}."
            )
        from blockexp.training.quantize import is_quantised_policy, require_torchao

        if is_quantised_policy(precision_policy):
            require_torchao(f"model.precision_policy: {precision_policy}")
            if save_frozen:
                raise ValueError(
                    f"precision_policy {precision_policy} keeps the frozen weights quantised in "
                    "memory, so checkpoints cannot store them as the base has them: leave "
                    "save_frozen false (checkpoints then hold the trainable parameters, and the "
                    "frozen weights come from the base, checked by fingerprint), or use "
                    "precision_policy lean."
                )
        if optimizer_state not in ("fp32", "int8"):
            raise ValueError(
                f"model.optimizer_state must be 'fp32' or 'int8', got {optimizer_state!r}."
            )
        if optimizer_state == "int8":
            require_torchao("model.optimizer_state: int8")
        if not loss_chunk_mb > 0:
            raise ValueError(
                f"model.loss_chunk_mb must be > 0 (MiB of float32 logits per loss chunk), got "
                f"{loss_chunk_mb}."
            )
        if isinstance(expander, dict | str):
            expander = build_expander(expander)
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}.")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}.")
        loading.check_architecture(base, trust_remote_code)  # before data or weights load
        self.save_hyperparameters(ignore=["expander", "tokenizer"])
        # Stored as plain data so checkpoints load with torch.load(weights_only=True).
        self.hparams["expander"] = expander.config()
        # The resolved spec (the data module's copy is what loggers record).
        self.hparams["tokenizer"] = loading.resolve_tokenizer_spec(tokenizer, base)
        self.expander = expander
        self.model: torch.nn.Module | None = None
        self.expansion = None
        self.base_info: dict[str, int] = {}
        self.base_config: dict[str, Any] = {}
        self._val_sums = torch.zeros(2, dtype=torch.float64)  # token-weighted loss sum, tokens
        self.val_history: list[dict[str, float]] = []
        # Trainable-only checkpoints lack the frozen weights (they come from `base`); which keys
        # must be present is checked in on_load_checkpoint.
        self.strict_loading = bool(save_frozen)

    # -- model ----------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        from blockexp.io.load import load_config
        from blockexp.training.attention import select_attn_implementation

        attn = hp.attn_implementation
        half = self._computes_in_half_precision()
        if attn in (None, "auto"):  # the model class decides between sdpa and eager
            config = load_config(hp.base, trust_remote_code=hp.get("trust_remote_code", False))
            attn = select_attn_implementation(attn, config, half_precision=half)
        else:
            attn = select_attn_implementation(attn, half_precision=half)
        expansion, self.base_info, self.base_config = loading.load_expanded(hp, self.expander, attn)
        model = expansion.model
        if hp.get("gradient_checkpointing", False):
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable({"use_reentrant": False})
            else:  # older transformers
                model.gradient_checkpointing_enable({"use_reentrant": False})
        self._check_vocab(model)
        model.config.use_cache = False  # no KV cache while training
        model.train()  # from_pretrained returns eval mode; Lightning keeps module modes as found
        self.expansion = expansion
        self.model = expansion.model
        if not hp.get("save_frozen", False):  # before sharding: plain tensors, no collectives
            self._frozen_digest = digests.frozen_fingerprint(model, expansion.trainable)
        from blockexp.io.base_record import base_record

        # The base whole (config, weight files, tokenizer files): recorded in every checkpoint,
        # checked on resume and export. A self-contained checkpoint needs no base tensors.
        self._base_record = base_record(
            hp.base,
            hp.tokenizer,
            tensors=not hp.get("save_frozen", False),
            trust_remote_code=hp.get("trust_remote_code", False),
        )
        from blockexp.training.quantize import QUANTISED_POLICIES, quantise_frozen_linears

        scheme = QUANTISED_POLICIES.get(hp.get("precision_policy", "full"))
        if scheme is not None:  # after the fingerprint, which vouches for the base's own weights
            self.quant_summary = quantise_frozen_linears(model, scheme)
            from lightning.pytorch.utilities import rank_zero_info

            rank_zero_info(f"precision_policy {hp.precision_policy}: {self.quant_summary}")
        mesh = getattr(self, "_device_mesh", None)  # set by Lightning's ModelParallelStrategy
        if mesh is not None:
            from blockexp.training.distributed import shard_fsdp2

            shard_fsdp2(model, mesh["data_parallel"])
        if hp.get("compile_layers", False):
            self._compile_layers(model)

    @staticmethod
    def _compile_layers(model: torch.nn.Module) -> None:
        """``torch.compile`` every decoder layer in place (one graph per layer kind; layers differ
        in index and in being frozen, so dynamo's per-function cache must hold them all)."""
        from torch import _dynamo

        from blockexp.layers import get_arch

        layers = list(get_arch(model.config).layers(model))
        limit = 2 * len(layers) + 8
        _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, limit)
        for layer in layers:
            layer.compile()

    def _computes_in_half_precision(self) -> bool:
        """Whether the model computes in 16 bits on a CUDA device (so ``auto`` may pick
        flash-attn, which has no float32 kernels): the ``lean`` policy (bf16 autocast), a 16-bit
        base ``dtype`` or a 16-bit trainer precision; never when the trainer runs on the CPU."""
        hp = self.hparams
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.strategy.root_device.type != "cuda":
            return False
        from blockexp.training.precision import is_lean

        if is_lean(hp.get("precision_policy", "full")):
            return True
        if str(hp.get("dtype", "float32")) in ("bfloat16", "float16"):
            return True
        precision = str(getattr(trainer, "precision", "") or "")
        return precision.startswith(("bf16", "16"))

    def _check_vocab(self, model: torch.nn.Module) -> None:
        """Refuse a tokenizer with more ids than the model's embedding has rows."""
        trainer = getattr(self, "_trainer", None)
        tokenizer = getattr(getattr(trainer, "datamodule", None), "tokenizer", None)
        if tokenizer is None:
            return
        rows = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} ids but the model's embedding has {rows} rows: "
                "they do not belong together. Use the base model's own tokenizer (leave "
                "model.tokenizer unset) or a base with a matching vocabulary."
            )

    def forward(self, input_ids: torch.Tensor, **kwargs: Any):
        return self.model(input_ids=input_ids, **kwargs)

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if "position_ids" in batch and uses_flash_attention(self.model):
            from blockexp.data.packing import flatten_packed_batch

            batch = flatten_packed_batch(batch)
        labels = batch["labels"]
        inputs = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch.get("attention_mask"),
            "position_ids": batch.get("position_ids"),
        }
        with self._autocast():
            if self.hparams.get("chunked_loss", True):
                from blockexp.training.loss import causal_lm_forward_loss

                budget = float(self.hparams.get("loss_chunk_mb", 256.0))
                return causal_lm_forward_loss(self.model, labels, budget_mb=budget, **inputs)
            out = self.model(**inputs, labels=labels)
        n_tokens = (labels[:, 1:] != IGNORE_INDEX).sum()
        return out.loss, n_tokens

    def _autocast(self):
        """bf16 autocast under the ``lean`` precision policy; otherwise no context at all, so the
        trainer's own autocast (``bf16-mixed``) stays in force (``autocast(enabled=False)`` would
        switch it off)."""
        from blockexp.training.precision import is_lean

        if not is_lean(self.hparams.get("precision_policy", "full")):
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def setup(self, stage: str) -> None:
        from blockexp.training.precision import check_trainer_precision

        trainer = getattr(self, "_trainer", None)
        if trainer is None:
            return
        check_trainer_precision(self.hparams.get("precision_policy", "full"), trainer.precision)
        if stage == "fit" and self.hparams.get("optimizer_in_backward", False):
            self._check_in_backward(trainer)
        if stage == "fit":
            self._check_export_target(trainer)  # (writes nothing)
            self._hold_run_dirs(trainer)

    def _hold_run_dirs(self, trainer) -> None:
        """Lock this fit's directories against other processes until teardown (global rank 0;
        taking a lock this process holds is a no-op) and drop temporaries dead runs left in its
        checkpoint directories (:func:`blockexp.io.locks.hold_run_dirs`)."""
        from blockexp.io.locks import hold_run_dirs

        locks = hold_run_dirs(trainer, self.hparams.get("export_dir"))
        self._run_locks = [*getattr(self, "_run_locks", []), *locks]

    def _release_run_dirs(self) -> None:
        from blockexp.io.locks import release

        for lock in reversed(getattr(self, "_run_locks", [])):
            release(lock)
        self._run_locks = []

    def teardown(self, stage: str) -> None:
        if stage == "fit":
            self._release_run_dirs()

    @staticmethod
    def _check_in_backward(trainer) -> None:
        """Refuse trainer settings that need every gradient after the backward."""
        problems = []
        if trainer.gradient_clip_val:
            problems.append(
                f"trainer.gradient_clip_val is {trainer.gradient_clip_val}: global-norm clipping "
                "needs all gradients at once (set --trainer.gradient_clip_val null)"
            )
        if trainer.accumulate_grad_batches != 1:
            problems.append(
                f"trainer.accumulate_grad_batches is {trainer.accumulate_grad_batches}: there is no "
                "accumulation, each backward steps (set it to 1 and raise the batch size)"
            )
        if str(trainer.precision) in ("16-mixed", "16"):
            problems.append("trainer.precision 16-mixed scales the loss after the backward")
        if trainer.world_size > 1:
            problems.append(
                f"{trainer.world_size} processes: DDP/FSDP reduce gradients after the step would "
                "have used them (use one process)"
            )
        if problems:
            raise ValueError(
                "model.optimizer_in_backward steps each parameter inside the backward pass, "
                "which rules out: " + "; ".join(problems) + "."
            )

    def on_fit_start(self) -> None:
        # Strategies that restore the checkpoint after setup (FSDP2's ModelParallelStrategy) set
        # trainer.ckpt_path only after this hook: a resumed run would look like a fresh one
        # here, so they are checked at on_train_start instead.
        if not self.trainer.strategy.restore_checkpoint_after_setup:
            self._check_run_dirs(self.trainer)

    def on_train_start(self) -> None:
        if self.trainer.strategy.restore_checkpoint_after_setup:
            self._check_run_dirs(self.trainer)

    def _run_dirs(self, trainer) -> list[Path]:
        """This run's directories: what an export must never replace."""
        dirs = [Path(trainer.default_root_dir)]
        dirs += [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if cb.dirpath]
        dirs += [Path(lg.log_dir) for lg in trainer.loggers if getattr(lg, "log_dir", None)]
        return dirs

    def _inputs(self, trainer, datamodule=None) -> list[Any]:
        """What this run reads: the base, the tokenizer, the checkpoint it resumes from, and every
        path the data module's hyper-parameters name (no output may replace them)."""
        from blockexp.io.inputs import paths_in

        datamodule = datamodule or getattr(trainer, "datamodule", None)
        data = paths_in(dict(getattr(datamodule, "hparams", {}) or {}))
        return [self.hparams.base, self.hparams.tokenizer, trainer.ckpt_path, *data]

    def _check_export_target(self, trainer, datamodule=None) -> None:
        """Refuse, before anything runs, an export target that the end of the run may not write,
        and a run directory inside (or equal to) an input."""
        from blockexp.io.inputs import check_outside_inputs
        from blockexp.io.outputs import check_output_dir

        inputs = [p for p in self._inputs(trainer, datamodule) if isinstance(p, str | Path)]
        for folder in self._run_dirs(trainer):
            check_outside_inputs(folder, inputs, flag="--trainer.default_root_dir (and dirpath)")
        if self.hparams.export_dir:
            check_output_dir(
                self.hparams.export_dir,
                protect=inputs,
                keep_away=self._run_dirs(trainer),
                overwrite=self.hparams.export_overwrite,
                overwrite_hint="set --model.export_overwrite true",
            )

    def _check_run_dirs(self, trainer, resuming: bool | None = None) -> None:
        """Refuse a fresh run into checkpoint directories of an earlier one (resuming needs
        ``--ckpt_path``; a fresh run there would write ``last-v1.ckpt`` beside the old
        ``last.ckpt``, which resume commands would then pick)."""
        resuming = trainer.ckpt_path is not None if resuming is None else resuming
        if resuming or trainer.fast_dev_run:
            return
        for callback in trainer.checkpoint_callbacks:
            folder = Path(callback.dirpath) if callback.dirpath else None
            found = (
                sorted(p.name for p in folder.glob("*.ckpt")) if folder and folder.is_dir() else []
            )
            if found:
                from blockexp.io.inputs import OutputExistsError

                raise OutputExistsError(
                    f"{folder} already holds checkpoints of an earlier run ({', '.join(found[:3])}). "
                    f"Resume it with --ckpt_path {folder / 'last.ckpt'}, or start a new run in "
                    "another directory (--trainer.default_root_dir and the checkpoint dirpath), "
                    "or remove the old checkpoints."
                )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, n_tokens = self._loss(batch)
        self._val_sums += torch.stack([loss.detach().float() * n_tokens, n_tokens.float()]).cpu()

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(2, dtype=torch.float64)

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._val_sums.to(self.device), reduce_op="sum")
        value = (sums[0] / sums[1].clamp(min=1)).float()
        self.log("val_loss", value, prog_bar=True, sync_dist=False)
        self.log("val_ppl", torch.exp(value.clamp(max=50)), sync_dist=False)
        if not self.trainer.sanity_checking:
            self.val_history.append({"step": int(self.global_step), "val_loss": float(value)})

    # -- optimisation ---------------------------------------------------------------------------
    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        optimizer.step(closure=optimizer_closure)
        # Lightning zeroes gradients inside the next closure, after the next forward, so the
        # gradients of this step would stay allocated through that forward (4 bytes per trainable
        # parameter on top of its activations). Nothing reads them after the step: free them now.
        optimizer.zero_grad(set_to_none=True)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip as Lightning does, also for fused AdamW under ``bf16-mixed``.

        Lightning's mixed-precision plugin refuses to clip for an optimizer that unscales
        gradients itself (fused AdamW), which is right with fp16's GradScaler but not with bf16,
        which has no scaler: the gradients are already unscaled. Without this, ``bf16-mixed``
        with the CLI's default clipping (1.0) failed at the first step wherever fused AdamW was
        picked (CUDA and CPU alike).
        """
        from lightning.pytorch.plugins.precision import MixedPrecision

        plugin = self.trainer.precision_plugin
        if (
            gradient_clip_val
            and isinstance(plugin, MixedPrecision)
            and plugin.scaler is None
            and getattr(optimizer, "_step_supports_amp_scaling", False)
        ):
            if gradient_clip_algorithm == "value":
                plugin.clip_grad_by_value(optimizer, float(gradient_clip_val))
            else:  # Lightning's default algorithm: the global norm
                plugin.clip_grad_by_norm(optimizer, float(gradient_clip_val))
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for param in self.model.parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 else no_decay).append(param)
        if not decay and not no_decay:
            raise RuntimeError("The expander marked no parameter trainable; nothing to optimise.")
        groups = [{"params": decay, "weight_decay": hp.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        options = dict(lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
        if hp.get("optimizer_state", "fp32") == "int8":
            from torchao.optim import AdamW8bit

            def make(param_groups):
                return AdamW8bit(param_groups, **options)
        else:
            fused = hp.get("fused_adamw", None)
            if fused is None:
                # not with fp16's GradScaler: Lightning cannot clip for an optimizer that
                # unscales gradients itself
                scaler = getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None)
                fused = fused_adamw_supported(decay + no_decay) and scaler is None

            def make(param_groups):
                return torch.optim.AdamW(
                    param_groups, **options, **({"fused": True} if fused else {})
                )

        if hp.get("optimizer_in_backward", False):
            from blockexp.training.optim import OptimizerInBackward

            previous = getattr(self, "_in_backward", None)
            if previous is not None:  # a second fit on this module: one hook per parameter
                previous.remove_hooks()
            optimizer = self._in_backward = OptimizerInBackward(groups, make, **options)
        else:
            optimizer = make(groups)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = cosine_schedule(optimizer, total, hp.warmup_ratio, hp.min_lr_ratio)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # -- checkpoints and export -----------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The expansion manifest (plan, new and trainable layers, parameter counts)."""
        return build_manifest(
            self.expansion,
            self.expander,
            self.hparams.base,
            self.base_info.get("num_layers", 0),
            self.base_info.get("params", 0),
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = {
            "base_config": self.base_config,
            "base_record": self._base_record,
            "manifest": self.manifest(),
            "tokenizer": self.tokenizer_spec(),
        }
        state = checkpoint["state_dict"]
        if not self.hparams.get("save_frozen", False):
            keep = {"model." + name for name in self.expansion.trainable}
            for key in [k for k in state if k.startswith("model.") and k not in keep]:
                del state[key]
            info["frozen_fingerprint"] = self._frozen_digest
        # A checksum of every stored tensor: resume and export refuse a corrupted file.
        info["stored_digest"] = digests.tensor_digests(
            {k: v for k, v in state.items() if k.startswith("model.")}
        )
        checkpoint["blockexp"] = info

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("blockexp", {})
        state = checkpoint.get("state_dict")
        allow = bool(self.hparams.get("allow_unverified_checkpoint", False))
        flag = "--model.allow_unverified_checkpoint true"
        if state is not None:
            digests.verify_checkpoint(checkpoint, "the checkpoint", allow, flag)
        record = info.get("base_record")
        if record is not None:
            from blockexp.io.base_record import check_base_record

            check_base_record(
                record, self._base_record, describe_spec(self.hparams.base), self.hparams.tokenizer
            )
        elif not allow:
            raise digests.IntegrityError(
                "the checkpoint records nothing of its base's config, files and tokenizer, so the "
                f"base cannot be checked whole; pass {flag} to resume from it unchecked."
            )
        expected = info.get("frozen_fingerprint")
        if expected is None:
            return
        # Trainable-only checkpoint: the frozen weights come from `base` (configure_model).
        # Some strategies (ModelParallelStrategy) load the weights before this hook and pop them.
        missing = sorted(
            name
            for name in self.expansion.trainable
            if state is not None and "model." + name not in state
        )
        if missing:
            raise ValueError(
                f"The checkpoint lacks {len(missing)} trainable parameters (e.g. {missing[:3]}); "
                "was it written with another expander?"
            )
        digests.check_fingerprint(
            self.model,
            expected,
            describe_spec(self.hparams.base),
            current=getattr(self, "_frozen_digest", None),
        )

    def tokenizer_spec(self) -> str:
        """The tokenizer spec, resolved in ``__init__`` (the base's own unless one was given)."""
        return self.hparams.tokenizer

    def export(
        self,
        out: str | Path,
        overwrite: bool = False,
        weights_format: str = "safetensors",
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write the current model as a Hugging Face directory with tokenizer and manifest.

        ``weights_format``: ``safetensors`` or ``pytorch_bin`` (one ``pytorch_model.bin``, as
        TRACE's inference scripts read). ``state_dict``: the full weights, already gathered
        from an FSDP2-sharded model (:func:`blockexp.io.save.full_state_dict`).
        """
        from blockexp.io.portable import same_source
        from blockexp.io.tokenization import load_tokenizer

        spec = self.tokenizer_spec()
        tokenizer = load_tokenizer(spec, self.hparams.trust_remote_code)
        trainer = getattr(self, "_trainer", None)
        keep_away = self._run_dirs(trainer) if trainer is not None else []
        inputs = self._inputs(trainer) if trainer is not None else [self.hparams.base]
        source = self._unquantised_model()
        model = self.expander.export_model(source)
        model.config.use_cache = True
        try:
            return save_pretrained_atomic(
                model,
                out,
                tokenizer,
                self.manifest(),
                protect=inputs,
                overwrite=overwrite,
                dtype=loading.export_dtype(self.hparams.get("precision_policy", "full")),
                weights_format=weights_format,
                keep_away=keep_away,
                overwrite_hint="set --model.export_overwrite true",
                base=self.hparams.base,
                tokenizer_from_base=same_source(spec, self.hparams.base),
                state_dict=state_dict,
            )
        finally:
            self.model.config.use_cache = False

    def _unquantised_model(self) -> torch.nn.Module:
        """The model to export: ``self.model``, or under a quantised-base policy the same expanded
        model rebuilt with the base's own (bf16) frozen weights, checked against the fingerprint,
        with the current trainable parameters assigned."""
        from blockexp.training.quantize import is_quantised_policy

        if not is_quantised_policy(self.hparams.get("precision_policy", "full")):
            return self.model
        from blockexp.expanders import build_expander

        trained = getattr(self, "_gathered", None) or self._trained_state()
        self._gathered = None
        hp = dict(self.hparams)
        expansion, _, _ = loading.load_expanded(hp, build_expander(self.expander.config()))
        digests.check_fingerprint(
            expansion.model, self._frozen_digest, describe_spec(self.hparams.base)
        )
        unexpected = expansion.model.load_state_dict(trained, strict=False).unexpected_keys
        if unexpected:
            raise RuntimeError(f"Trained parameters not in the rebuilt model: {unexpected[:3]}")
        expansion.model.tie_weights()
        return expansion.model

    def _trained_state(self) -> dict[str, torch.Tensor]:
        """The trainable parameters as whole CPU tensors (a collective under FSDP2: every rank
        must call it)."""
        trained = {}
        for name, param in self.model.named_parameters():
            if name in self.expansion.trainable:
                tensor = param.detach()
                if hasattr(tensor, "full_tensor"):  # DTensor under FSDP2
                    tensor = tensor.full_tensor()
                trained[name] = tensor.cpu()
        return trained

    def on_fit_end(self) -> None:
        if not self.hparams.export_dir:
            return
        from blockexp.io.save import full_state_dict
        from blockexp.training.quantize import is_quantised_policy

        # Under FSDP2 every rank takes part in gathering the full weights (a collective); rank 0
        # writes them. (A strategy with an export hook exports its own model, as before.) With a
        # quantised base only the trainable parameters are gathered: the export rebuilds the
        # frozen ones from the base (_unquantised_model).
        state = None
        if is_quantised_policy(self.hparams.get("precision_policy", "full")):
            self._gathered = self._trained_state()
        elif not self.expander.has_export_hook:
            state = full_state_dict(self.model)
        if self.trainer.is_global_zero:
            path = self.export(
                self.hparams.export_dir,
                overwrite=self.hparams.export_overwrite,
                state_dict=state,
            )
            self.print(f"Exported the trained model to {path}")

    def describe(self) -> str:
        return f"{describe_spec(self.hparams.base)} + {self.expander!r}"


def fused_adamw_supported(params: list[torch.Tensor]) -> bool:
    """Whether ``torch.optim.AdamW(fused=True)`` takes these parameters: plain (not DTensor)
    float32/bf16/fp16 tensors, all on CPU or all on CUDA."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        DTensor = ()  # noqa: N806
    devices = {p.device.type for p in params}
    return (
        bool(params)
        and len(devices) == 1
        and devices <= {"cpu", "cuda"}
        and not any(isinstance(p, DTensor) for p in params)
        and all(p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params)
    )
