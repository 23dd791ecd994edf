"""The LightningModule that trains an expanded model.

What it is configured with comes from :mod:`blockexp.training.settings`, how the model is built from
:mod:`blockexp.training.build`, and how it is written out from :mod:`blockexp.io.save`.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch

from blockexp.data.collate import IGNORE_INDEX
from blockexp.expanders import Expander, build_expander
from blockexp.io.load import describe_spec
from blockexp.io.manifest import build_manifest
from blockexp.io.save import save_pretrained_atomic
from blockexp.training import loading, run_dirs
from blockexp.training.attention import uses_flash_attention
from blockexp.training.schedules import cosine_with_warmup
from blockexp.training.settings import Compute, Optim, Output, Settings

__all__ = ["BlockExpansionModule", "cosine_with_warmup"]


class BlockExpansionModule(L.LightningModule):
    """Continual pre-training of an expanded causal LM.

    Defaults follow the LLaMA Pro paper (Sec. 4.1, Table 14; see :class:`Optim`); gradient
    clipping at 1.0 is the CLI's trainer default. The settings are kept as :attr:`settings`
    (:class:`~blockexp.training.settings.Settings`) and, as plain data, in ``hparams``.

    Args:
        base: the base model: a local directory, a hub id, or an inline config dict with
            ``model_type`` (random weights, for tests and the quickstart).
        expander: the strategy (e.g. ``LlamaPro``) applied in :meth:`configure_model`.
        tokenizer: tokenizer spec (directory, hub id or ``byte``); default: the base's own
            (``byte`` for an inline config).
        seed: initialisation seed for inline (random) base models.
        trust_remote_code: allow custom modelling code from the hub (off by default).
        validate_before_fit: run validation once before training (the "before" in the summary).
        allow_unverified_checkpoint: resume from a checkpoint that records no checksums of its
            tensors and nothing of its base (one written by another tool). Off: such a
            checkpoint is refused. Its weights must be finite either way.
        optim: AdamW and its schedule (:class:`~blockexp.training.settings.Optim`).
        compute: dtype, precision policy, attention, checkpointing, compiling and the loss
            (:class:`~blockexp.training.settings.Compute`).
        output: the export at the end of ``fit`` and what checkpoints store
            (:class:`~blockexp.training.settings.Output`).
    """

    def __init__(
        self,
        base: str | dict[str, Any],
        expander: Expander,
        tokenizer: str | None = None,
        seed: int = 0,
        trust_remote_code: bool = False,
        validate_before_fit: bool = True,
        allow_unverified_checkpoint: bool = False,
        optim: Optim = Optim(),  # noqa: B008 - frozen dataclasses
        compute: Compute = Compute(),  # noqa: B008
        output: Output = Output(),  # noqa: B008
    ) -> None:
        super().__init__()
        settings = Settings(
            base=base,
            tokenizer=tokenizer,
            seed=seed,
            trust_remote_code=trust_remote_code,
            validate_before_fit=validate_before_fit,
            allow_unverified_checkpoint=allow_unverified_checkpoint,
            optim=optim,
            compute=compute,
            output=output,
        )
        settings.check_requirements()
        if isinstance(expander, dict | str):
            expander = build_expander(expander)
        loading.check_architecture(base, trust_remote_code)  # before data or weights load
        # The resolved tokenizer spec (the data module's copy is what loggers record).
        settings = replace(settings, tokenizer=loading.resolve_tokenizer_spec(tokenizer, base))
        self.settings = settings
        # Stored as plain data so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters({**settings.to_hparams(), "expander": expander.config()})
        self.expander = expander
        self.model: torch.nn.Module | None = None
        self.expansion = None
        self.base_info: dict[str, int] = {}
        self.base_config: dict[str, Any] = {}
        self._val_sums = torch.zeros(2, dtype=torch.float64)  # token-weighted loss sum, tokens
        self.val_history: list[dict[str, float]] = []
        self._run_locks: list[Path] = []
        # Trainable-only checkpoints lack the frozen weights (they come from `base`); which keys
        # must be present is checked in on_load_checkpoint.
        self.strict_loading = bool(settings.output.save_frozen)

    # -- model ----------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        from blockexp.training.build import build_training_model

        trainer = getattr(self, "_trainer", None)
        mesh = getattr(self, "_device_mesh", None)  # set by Lightning's ModelParallelStrategy
        built = build_training_model(self.settings, self.expander, trainer, mesh)
        self.expansion = built.expansion
        self.model = built.expansion.model
        self.base_info, self.base_config = built.base_info, built.base_config
        self._frozen_digest = built.frozen_digest
        self._base_record = built.base_record
        self.quant_summary = built.quant_summary

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
            if self.settings.compute.chunked_loss:
                from blockexp.training.loss import causal_lm_forward_loss

                budget = float(self.settings.compute.loss_chunk_mb)
                return causal_lm_forward_loss(self.model, labels, budget_mb=budget, **inputs)
            out = self.model(**inputs, labels=labels)
        n_tokens = (labels[:, 1:] != IGNORE_INDEX).sum()
        return out.loss, n_tokens

    def _autocast(self):
        """bf16 autocast under the ``lean`` precision policy; otherwise no context at all, so the
        trainer's own autocast (``bf16-mixed``) stays in force (``autocast(enabled=False)`` would
        switch it off)."""
        if not self.settings.compute.lean:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def setup(self, stage: str) -> None:
        from blockexp.training.precision import check_trainer_precision

        trainer = getattr(self, "_trainer", None)
        if trainer is None:
            return
        check_trainer_precision(self.settings.compute.precision_policy, trainer.precision)
        if stage == "fit" and self.settings.optim.optimizer_in_backward:
            from blockexp.training.adamw import check_in_backward

            check_in_backward(trainer)
        if stage == "fit":
            run_dirs.check_export_target(self.settings, trainer)  # (writes nothing)
            self._hold_run_dirs(trainer)

    def _hold_run_dirs(self, trainer) -> None:
        """Lock this fit's directories until teardown (:func:`run_dirs.hold_run_dirs`)."""
        self._run_locks = [*self._run_locks, *run_dirs.hold_run_dirs(self.settings, trainer)]

    def _release_run_dirs(self) -> None:
        from blockexp.io.locks import release

        for lock in reversed(self._run_locks):
            release(lock)
        self._run_locks = []

    def teardown(self, stage: str) -> None:
        if stage == "fit":
            self._release_run_dirs()

    def on_fit_start(self) -> None:
        # Strategies that restore the checkpoint after setup (FSDP2's ModelParallelStrategy) set
        # trainer.ckpt_path only after this hook: a resumed run would look like a fresh one
        # here, so they are checked at on_train_start instead.
        if not self.trainer.strategy.restore_checkpoint_after_setup:
            run_dirs.check_run_dirs(self.trainer)

    def on_train_start(self) -> None:
        if self.trainer.strategy.restore_checkpoint_after_setup:
            run_dirs.check_run_dirs(self.trainer)

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
        from blockexp.training.adamw import configure_adamw

        previous = getattr(self, "_in_backward", None)  # a second fit: one hook per parameter
        config = configure_adamw(self.model, self.settings.optim, self.trainer, previous)
        if self.settings.optim.optimizer_in_backward:
            self._in_backward = config["optimizer"]
        return config

    # -- checkpoints and export -----------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The expansion manifest (plan, new and trainable layers, parameter counts)."""
        return build_manifest(
            self.expansion,
            self.expander,
            self.settings.base,
            self.base_info.get("num_layers", 0),
            self.base_info.get("params", 0),
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from blockexp.training.checkpoint_hooks import record_checkpoint

        record_checkpoint(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from blockexp.training.checkpoint_hooks import check_checkpoint

        check_checkpoint(self, checkpoint)

    def tokenizer_spec(self) -> str:
        """The tokenizer spec, resolved in ``__init__`` (the base's own unless one was given)."""
        return self.settings.tokenizer

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
        settings = self.settings
        tokenizer = load_tokenizer(spec, settings.trust_remote_code)
        trainer = getattr(self, "_trainer", None)
        keep_away = run_dirs.run_dirs(trainer) if trainer is not None else []
        inputs = run_dirs.run_inputs(settings, trainer) if trainer is not None else [settings.base]
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
                dtype=loading.export_dtype(settings.compute.precision_policy),
                weights_format=weights_format,
                keep_away=keep_away,
                overwrite_hint="set --model.output.export_overwrite true",
                base=settings.base,
                tokenizer_from_base=same_source(spec, settings.base),
                state_dict=state_dict,
            )
        finally:
            self.model.config.use_cache = False

    def _unquantised_model(self) -> torch.nn.Module:
        """The model to export: ``self.model``, or under a quantised-base policy the same expanded
        model rebuilt with the base's own (bf16) frozen weights, checked against the fingerprint,
        with the current trainable parameters assigned."""
        if not self.settings.compute.quantised:
            return self.model
        from blockexp.training.rebuild import rebuild_trained, trained_state

        trained = getattr(self, "_gathered", None) or trained_state(
            self.model, self.expansion.trainable
        )
        self._gathered = None
        expander = build_expander(self.expander.config())
        return rebuild_trained(self.settings, expander, self._frozen_digest, trained).model

    def on_fit_end(self) -> None:
        output = self.settings.output
        if not output.export_dir:
            return
        from blockexp.io.save import full_state_dict
        from blockexp.training.rebuild import trained_state

        # Under FSDP2 every rank takes part in gathering the full weights (a collective); rank 0
        # writes them. (A strategy with an export hook exports its own model, as before.) With a
        # quantised base only the trainable parameters are gathered: the export rebuilds the
        # frozen ones from the base (_unquantised_model).
        state = None
        if self.settings.compute.quantised:
            self._gathered = trained_state(self.model, self.expansion.trainable)
        elif not self.expander.has_export_hook:
            state = full_state_dict(self.model)
        if self.trainer.is_global_zero:
            path = self.export(
                output.export_dir, overwrite=output.export_overwrite, state_dict=state
            )
            self.print(f"Exported the trained model to {path}")

    def describe(self) -> str:
        return f"{describe_spec(self.settings.base)} + {self.expander!r}"
