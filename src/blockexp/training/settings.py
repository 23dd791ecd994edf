"""The typed settings of a training run (optimiser, compute, output) and their value checks.

:class:`~blockexp.training.module.BlockExpansionModule` takes :class:`Optim`, :class:`Compute` and
:class:`Output` (``--model.optim.lr``, ``model: {compute: {precision_policy: lean}}``) and keeps
them as plain dicts in its hyper-parameters, so that checkpoints load with
``torch.load(weights_only=True)``. :meth:`Settings.from_hparams` is the one place that turns
hyper-parameters (the module's, or a checkpoint's) back into these objects, with every default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

__all__ = ["GROUPS", "Compute", "Optim", "Output", "Settings"]


@dataclass(frozen=True)
class Optim:
    """AdamW and its learning-rate schedule.

    Defaults follow the LLaMA Pro paper (Sec. 4.1, Table 14): AdamW with betas (0.9, 0.95), weight
    decay 0.1 (not applied to norms and biases), peak learning rate 2e-4, linear warmup over 6% of
    the steps then cosine decay.

    Args:
        lr: peak learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay on matrices (norm weights and biases get none).
        eps: AdamW epsilon.
        warmup_ratio: fraction of the total optimizer steps used for linear warmup.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
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
            :mod:`blockexp.training.optim`): the gradients of all trainable parameters never
            exist at once (4 bytes per trainable parameter less at the peak). A semantic change:
            no global gradient-norm clipping (set ``trainer.gradient_clip_val`` to null) and no
            gradient accumulation; one process only.
    """

    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    eps: float = 1e-8
    warmup_ratio: float = 0.06
    min_lr_ratio: float = 0.0
    fused_adamw: bool | None = None
    optimizer_state: Literal["fp32", "int8"] = "fp32"
    optimizer_in_backward: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        if self.optimizer_state not in ("fp32", "int8"):
            raise ValueError(
                "model.optim.optimizer_state must be 'fp32' or 'int8', got "
                f"{self.optimizer_state!r}."
            )
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}.")


@dataclass(frozen=True)
class Compute:
    """How the model is loaded and computes.

    Args:
        dtype: dtype the base model is loaded in (``float32`` keeps fp32 master weights for
            mixed-precision training; ``auto`` keeps the checkpoint's dtype).
        precision_policy: ``full`` keeps every parameter in ``dtype``; ``lean`` stores frozen
            parameters in bf16 and trainable ones in fp32 and runs the model under bf16 autocast
            (see :mod:`blockexp.training.precision`; use with trainer precision ``32-true`` or
            ``bf16-mixed``). With ``lean`` the base is loaded directly in bf16. ``lean-int8`` and
            ``lean-nf4`` (opt-in, extra ``lowmem``) also store the frozen linear weights quantised
            with torchao (int8 per-row, or QLoRA's 4-bit NormalFloat): about 1 or 0.5 bytes per
            frozen weight instead of 2. A semantic change: the frozen layers compute with the
            dequantised weights (see :mod:`blockexp.training.quantize` and docs/performance.md).
            Checkpoints, the frozen fingerprint and exports still use the base's own weights.
        attn_implementation: ``auto`` (default when None: ``flash_attention_2`` when flash-attn is
            installed and CUDA is available, else ``sdpa``, or ``eager`` for a model class
            without an SDPA path such as Gemma 2), ``sdpa``, ``eager`` or ``flash_attention_2``.
        gradient_checkpointing: recompute decoder-layer activations in the backward pass
            (non-reentrant, so it also works when the layers below are frozen).
        compile_layers: ``torch.compile`` each decoder layer (regional compilation; opt-in). It
            fuses the modelling code's elementwise work (norms, rotary embedding, SwiGLU,
            casts), which takes about a third of a block-expansion step on an H100 (see
            docs/performance.md); the first steps pay the compilation.
        chunked_loss: compute the loss from the final hidden states chunk by chunk
            (:mod:`blockexp.training.loss`) instead of through the model's full ``[tokens, vocab]``
            logits; same value and gradients, far less activation memory (the float32 logits
            are the largest activation of a block-expansion step). ``false`` uses the model's own
            loss.
        loss_chunk_mb: the chunked loss's memory budget: MiB of float32 logits per chunk. A batch
            whose logits fit is one chunk without recomputation (as fast as the model's own
            loss, minus the unlabelled positions); a larger one is split into chunks of at most
            this size, each recomputed in the backward.
    """

    dtype: str = "float32"
    precision_policy: Literal["full", "lean", "lean-int8", "lean-nf4"] = "full"
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False
    compile_layers: bool = False
    chunked_loss: bool = True
    loss_chunk_mb: float = 256.0

    def __post_init__(self) -> None:
        from blockexp.training.precision import POLICIES

        policy = self.precision_policy
        if policy not in POLICIES:
            raise ValueError(
                f"model.compute.precision_policy must be one of {', '.join(POLICIES)}, got "
                f"{policy!r}."
            )
        if not self.loss_chunk_mb > 0:
            raise ValueError(
                "model.compute.loss_chunk_mb must be > 0 (MiB of float32 logits per loss chunk), "
                f"got {self.loss_chunk_mb}."
            )

    @property
    def quantised(self) -> bool:
        """Whether the frozen linear weights are stored quantised (``lean-int8``, ``lean-nf4``)."""
        from blockexp.training.quantize import is_quantised_policy

        return is_quantised_policy(self.precision_policy)

    @property
    def lean(self) -> bool:
        """``lean`` or a quantised variant: frozen bf16, trainable fp32, bf16 autocast."""
        from blockexp.training.precision import is_lean

        return is_lean(self.precision_policy)


@dataclass(frozen=True)
class Output:
    """What a run writes besides its Lightning checkpoints and logs.

    Args:
        export_dir: if set, the trained model is written there as a Hugging Face directory at the
            end of ``fit`` (atomically; never into the base directory).
        export_overwrite: replace an existing ``export_dir``.
        save_frozen: also store the frozen parameters in training checkpoints. By default a
            checkpoint holds only what resuming needs (trainable parameters, optimizer and loop
            state) plus a fingerprint of the frozen weights; resuming and ``blockexp export``
            reload the frozen weights from ``base`` and refuse a base whose weights changed.
            Set it when the base may move or disappear.
    """

    export_dir: str | None = None
    export_overwrite: bool = False
    save_frozen: bool = False


GROUPS: dict[str, type] = {"optim": Optim, "compute": Compute, "output": Output}
"""The nested settings of ``model``: group name -> dataclass."""


def _group(kind: type, value: Any) -> Any:
    return kind(**value) if isinstance(value, Mapping) else value


@dataclass(frozen=True)
class Settings:
    """Every setting of a :class:`~blockexp.training.module.BlockExpansionModule` but the
    expander: the top-level ones and the three groups (mappings are turned into their
    dataclasses). Checks what no single group can: ``save_frozen`` under a quantised policy."""

    base: str | dict[str, Any]
    tokenizer: str | None = None
    seed: int = 0
    trust_remote_code: bool = False
    validate_before_fit: bool = True
    allow_unverified_checkpoint: bool = False
    optim: Optim = field(default_factory=Optim)
    compute: Compute = field(default_factory=Compute)
    output: Output = field(default_factory=Output)

    def __post_init__(self) -> None:
        for name, kind in GROUPS.items():
            object.__setattr__(self, name, _group(kind, getattr(self, name)))
        policy = self.compute.precision_policy
        if self.compute.quantised and self.output.save_frozen:
            raise ValueError(
                f"precision_policy {policy} keeps the frozen weights quantised in "
                "memory, so checkpoints cannot store them as the base has them: leave "
                "save_frozen false (checkpoints then hold the trainable parameters, and the "
                "frozen weights come from the base, checked by fingerprint), or use "
                "precision_policy lean."
            )

    def check_requirements(self) -> None:
        """Refuse settings this environment cannot train with: torchao (extra ``lowmem``) for a
        quantised-base policy or int8 optimizer state. Not a check of the values: a checkpoint
        trained with them still exports where torchao is missing."""
        from blockexp.training.quantize import require_torchao

        if self.compute.quantised:
            require_torchao(f"model.compute.precision_policy: {self.compute.precision_policy}")
        if self.optim.optimizer_state == "int8":
            require_torchao("model.optim.optimizer_state: int8")

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> Settings:
        """The settings that hyper-parameters describe (the module's own, or those a checkpoint
        stored); what they lack takes its default. Checkpoints of releases before the groups
        stored every setting at the top level (``lr``, ``precision_policy``...): those keys are
        read into their group."""
        top = {f.name for f in fields(cls)} - set(GROUPS)
        values = {k: v for k, v in hparams.items() if k in top}
        for name, kind in GROUPS.items():
            group = dict(hparams.get(name) or {})
            for key in (f.name for f in fields(kind)):
                if key in hparams and key not in group:  # the flat layout of earlier checkpoints
                    group[key] = hparams[key]
            values[name] = kind(**group)
        return cls(**values)

    def to_hparams(self) -> dict[str, Any]:
        """Plain data (dicts, tuples, numbers, strings): what checkpoints store."""
        return asdict(self)
