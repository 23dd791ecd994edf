"""The optimizer step inside the backward pass (``model.optim.optimizer_in_backward: true``).

A normal step keeps every trainable parameter's gradient until the optimizer runs after the whole
backward: 4 bytes per trainable parameter at the peak (LLaMA Pro 8.3B: 1.6B trainable, 6.4 GB).
:class:`OptimizerInBackward` gives each trainable parameter its own inner optimizer (AdamW, or
torchao's AdamW8bit) and steps it from a post-accumulate-grad hook as soon as that parameter's
gradient is complete, then frees the gradient, so at most one layer's gradients exist at a time.

The semantic change: there is no global gradient-norm clipping (no moment exists where all the
gradients are there to be measured), and no gradient accumulation over several batches. The
module refuses ``trainer.gradient_clip_val``, ``accumulate_grad_batches > 1``, ``16-mixed`` (its
loss scaler steps after the backward) and more than one process (DDP/FSDP reduce gradients after
the hook would have used them). Otherwise each parameter gets exactly the update of the same
AdamW (same hyper-parameters, same learning-rate schedule).

To Lightning it is one ordinary optimizer: ``step(closure)`` runs the closure (forward and
backward, during which the inner optimizers step), a learning-rate scheduler sets its groups'
``lr`` (copied into the inner optimizers at each step), and its state dict holds the inner
optimizers' states, so checkpoints resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["OptimizerInBackward"]


class OptimizerInBackward(torch.optim.Optimizer):
    """Step each parameter's own optimizer from its post-accumulate-grad hook.

    Args:
        groups: parameter groups as for ``torch.optim.AdamW`` (``params`` plus per-group options
            such as ``weight_decay``).
        make: builds the inner optimizer of one parameter from a one-group list.
        defaults: the options every group starts from (``lr``, ``betas``, ...).
    """

    def __init__(
        self,
        groups: Iterable[dict[str, Any]],
        make: Callable[[list[dict[str, Any]]], torch.optim.Optimizer],
        **defaults: Any,
    ) -> None:
        super().__init__(list(groups), defaults)
        self._inner: dict[torch.Tensor, tuple[torch.optim.Optimizer, dict[str, Any]]] = {}
        self._handles = []
        for group in self.param_groups:
            options = {k: v for k, v in group.items() if k != "params"}
            for param in group["params"]:
                self._inner[param] = (make([{**options, "params": [param]}]), group)
                self._handles.append(param.register_post_accumulate_grad_hook(self._step_one))
        self.inner_steps = 0

    def _step_one(self, param: torch.Tensor) -> None:
        inner, group = self._inner[param]
        inner_group = inner.param_groups[0]
        if isinstance(inner_group["lr"], torch.Tensor):  # torchao's optimizers keep lr a tensor
            inner_group["lr"].fill_(group["lr"])
        else:
            inner_group["lr"] = group["lr"]
        inner.step()
        param.grad = None
        self.inner_steps += 1

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Run ``closure`` (forward and backward): the parameters are updated during it."""
        if closure is None:
            raise RuntimeError(
                "OptimizerInBackward steps inside the backward pass: call step(closure) with the "
                "closure that runs the backward (as Lightning's automatic optimization does)."
            )
        with torch.enable_grad():
            return closure()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self._inner:
            param.grad = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "param_groups": [
                {k: v for k, v in group.items() if k != "params"} for group in self.param_groups
            ],
            "inner": [inner.state_dict() for inner, _ in self._inner.values()],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        inner_states = state_dict.get("inner")
        if inner_states is None or len(inner_states) != len(self._inner):
            raise ValueError(
                "This optimizer state was not written by OptimizerInBackward over the same "
                f"{len(self._inner)} parameters (resume with the same optimizer_in_backward "
                "setting it was trained with)."
            )
        for group, saved in zip(self.param_groups, state_dict["param_groups"], strict=True):
            group.update(saved)
        for (inner, _), saved in zip(self._inner.values(), inner_states, strict=True):
            inner.load_state_dict(saved)

    def remove_hooks(self) -> None:
        """Detach from the parameters (before building another optimizer over them)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
