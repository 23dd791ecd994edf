"""LoRA through peft: low-rank adapters on the linear maps of the decoder blocks.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (ICLR 2022); the LoRA baseline of
LLaMA Pro's TRACE comparison (Wu et al., ACL 2024, Sec. 5, Table 6). Each targeted frozen linear
map ``W`` gets a trainable bypass ``(alpha / r) * B A`` with ``A`` random and ``B`` zero, so the
adapted model computes the base function at initialisation. No block is added; only ``A`` and
``B`` train::

    one decoder block:      x --+--> W  (frozen) --+--> y
                                |                  |
                                +--> A --> B ------+      A: r x d_in, B: d_out x r (B = 0)

Export merges the adapters into the base weights (``W + (alpha / r) B A``) on a copy of the
model, so the exported directory is a plain Hugging Face checkpoint with no peft dependency.

Targets are found by structure: the default is every ``nn.Linear`` inside the decoder blocks
(found with :mod:`blockexp.layers`); ``target_modules`` names them by their attribute path inside a
block (``q_proj`` or ``self_attn.q_proj``), and each name must match at least one linear map.
"""

from __future__ import annotations

import copy

from blockexp.expanders.base import (
    Expander,
    ExpanderConfigError,
    Expansion,
)
from blockexp.expanders.registry import register_expander
from blockexp.layers.arch import Module, get_arch

__all__ = ["LoRA"]


@register_expander
class LoRA(Expander):
    """Low-rank adapters (peft) on the decoder blocks' linear maps; only the adapters train.

    Args:
        r: adapter rank.
        alpha: scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapter input.
        target_modules: linear maps to adapt, by attribute path inside a decoder block (e.g.
            ``["q_proj", "v_proj"]`` or ``["self_attn.o_proj"]``); default: every linear map of
            every decoder block.
        **kwargs: the ``train_*`` options of :class:`~blockexp.expanders.Expander` (embedding,
            LM head and norms then train fully, not through an adapter).
    """

    preserves_function = True
    has_export_hook = True

    def __init__(
        self,
        r: int = 8,
        alpha: int = 16,
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if r < 1:
            raise ExpanderConfigError(f"LoRA: r must be >= 1, got {r}.")
        if alpha <= 0:
            raise ExpanderConfigError(f"LoRA: alpha must be > 0, got {alpha}.")
        if not 0.0 <= dropout < 1.0:
            raise ExpanderConfigError(f"LoRA: dropout must be in [0, 1), got {dropout}.")
        if target_modules is not None and not target_modules:
            raise ExpanderConfigError(
                "LoRA: target_modules is empty; give names like ['q_proj', 'v_proj'] or leave "
                "it unset to adapt every linear map of the decoder blocks."
            )
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = list(target_modules) if target_modules is not None else None

    def resolve_targets(self, model: Module) -> list[str]:
        """Full module names (as in ``model.named_modules()``) of the linear maps to adapt."""
        from torch import nn  # noqa: F811

        arch = get_arch(model.config)
        full_name = {id(m): n for n, m in model.named_modules()}
        found: list[str] = []
        used: set[str] = set()
        available: set[str] = set()
        for layer in arch.layers(model):
            for rel, module in layer.named_modules():
                if not isinstance(module, nn.Linear):
                    continue
                available.add(rel)
                if self.target_modules is None:
                    found.append(full_name[id(module)])
                    continue
                for target in self.target_modules:
                    if rel == target or rel.endswith("." + target):
                        found.append(full_name[id(module)])
                        used.add(target)
                        break
        if self.target_modules is not None:
            missing = [t for t in self.target_modules if t not in used]
            if missing:
                raise ExpanderConfigError(
                    f"LoRA: target_modules {missing} match no nn.Linear inside the decoder "
                    f"blocks. Available (path inside a block): {', '.join(sorted(available))}."
                )
        if not found:
            raise ExpanderConfigError("LoRA: the decoder blocks hold no nn.Linear to adapt.")
        return found

    def expand(self, model: Module) -> Expansion:
        from peft import LoraConfig, get_peft_model

        arch = get_arch(model.config)
        targets = self.resolve_targets(model)
        # The train_* options select base parameters by name before peft renames them.
        extra = self.select_trainable(model, None, arch)
        extra_ids = {id(p) for n, p in model.named_parameters() if n in extra}
        config = LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, config)
        # peft marks exactly the adapter weights trainable; the train_* options add base modules.
        trainable = frozenset(
            n for n, p in peft_model.named_parameters() if p.requires_grad or id(p) in extra_ids
        )
        return Expansion(
            peft_model,
            None,
            trainable,
            extra={"lora_targets": len(targets), "r": self.r, "alpha": self.alpha},
        )

    def export_model(self, model: Module) -> Module:
        """A merged copy (adapters folded into the base weights); ``model`` is not modified."""
        if not hasattr(model, "merge_and_unload"):
            return model
        return copy.deepcopy(model).merge_and_unload()
