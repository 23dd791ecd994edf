"""HeldoutLoss: next-token loss on named held-out corpora, before and after training.

Forgetting and gain in nats, measured in the run itself: the mean next-token cross-entropy
(:func:`blockexp.evaluation.importance.measure.text_loss`, token-weighted) of the model *as
exported* (the expander's :meth:`~blockexp.expanders.Expander.export_model`, in eval mode, under
the module's autocast) on the first ``max_blocks`` packed blocks of ``seq_len`` tokens of each
corpus (:func:`blockexp.evaluation.importance.inputs.load_text_blocks`: ``.jsonl`` records
``{"text": ...}`` or ``.txt`` documents separated by blank lines, joined with eos).

"before" is measured at fit start (for an identity expansion: the base's loss) and kept in the
callback's checkpoint state, so a resumed run does not measure it again; "after" at fit end.
Global rank 0 writes ``<default_root_dir>/heldout/heldout.json`` (or ``output_dir``) atomically,
after each measurement::

    {"corpora": {"<name>": {"path": str, "before": float, "after": float | null,
                            "tokens": int, "blocks": int}},
     "forgetting": "<name>" | null, "gain": "<name>" | null,
     "seq_len": int, "max_blocks": int, "step_before": int, "step_after": int | null}

``tokens`` counts the scored (predicted) tokens, ``blocks * (seq_len - 1)``. ``step_before`` is
0 unless the callback joined a run resumed from a checkpoint without its state (then "before"
is the resumed model's loss, and a warning says so). Losses are logged as ``heldout/<name>`` at
step ``step_before`` and at the last step.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from blockexp.data.records import check_data_file
from blockexp.errors import UsageError
from blockexp.io.outputs import atomic_write

__all__ = ["HeldoutLoss"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SUFFIXES = (".jsonl", ".json", ".txt")


class HeldoutLoss(L.Callback):
    """Mean next-token loss on named held-out corpora at fit start and fit end.

    Args:
        corpora: name -> path of a ``.jsonl``/``.json`` (``{"text": ...}`` records) or ``.txt`` file
            (documents separated by blank lines). Names: letters, digits, ``_ . -``.
        forgetting: the corpus whose loss increase is the run's forgetting (e.g. general text).
        gain: the corpus whose loss decrease is the run's gain (e.g. the domain corpus).
        seq_len: tokens per packed block.
        max_blocks: blocks measured per corpus (the first ones of the file).
        batch_size: blocks per forward pass.
        output_dir: where ``heldout.json`` goes (default ``<default_root_dir>/heldout``).
    """

    def __init__(
        self,
        corpora: dict[str, str],
        forgetting: str | None = None,
        gain: str | None = None,
        seq_len: int = 256,
        max_blocks: int = 64,
        batch_size: int = 8,
        output_dir: str | None = None,
    ) -> None:
        if not corpora:
            raise UsageError("HeldoutLoss: corpora is empty; give at least one name: path.")
        for name, path in corpora.items():
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise UsageError(
                    f"HeldoutLoss: corpus name {name!r} in corpora is not allowed; use letters, "
                    "digits and _ . - (it becomes the metric heldout/<name>)."
                )
            check_data_file(
                path,
                f"HeldoutLoss corpora[{name!r}]",
                _SUFFIXES,
                fix="give an existing .jsonl, .json or .txt file in the callback's corpora",
            )
            if Path(path).suffix.lower() not in _SUFFIXES:
                raise UsageError(
                    f"HeldoutLoss corpora[{name!r}] = {path!r}: expected a .jsonl, .json or .txt file."
                )
        for option, value in (("forgetting", forgetting), ("gain", gain)):
            if value is not None and value not in corpora:
                raise UsageError(
                    f"HeldoutLoss: {option}={value!r} names no corpus; choose one of "
                    f"{', '.join(corpora)} (the keys of corpora)."
                )
        for option, value, low in (("seq_len", seq_len, 2), ("max_blocks", max_blocks, 1)):
            if value < low:
                raise UsageError(f"HeldoutLoss: {option} must be >= {low}, got {value}.")
        if batch_size < 1:
            raise UsageError(f"HeldoutLoss: batch_size must be >= 1, got {batch_size}.")
        self.corpora = {name: str(path) for name, path in corpora.items()}
        self.forgetting = forgetting
        self.gain = gain
        self.seq_len = seq_len
        self.max_blocks = max_blocks
        self.batch_size = batch_size
        self.output_dir = output_dir
        self.before: dict[str, float] = {}
        self.after: dict[str, float] = {}
        self.tokens: dict[str, int] = {}
        self.blocks: dict[str, int] = {}
        self.step_before: int | None = None
        self.step_after: int | None = None
        self._default_dir = Path("heldout")
        self._data: dict[str, Any] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(corpora=sorted(self.corpora))

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else self._default_dir

    # ------------------------------------------------------------------------ measuring
    def _tokenizer(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Any:
        from blockexp.io.tokenization import load_tokenizer

        spec = pl_module.tokenizer_spec() if hasattr(pl_module, "tokenizer_spec") else None
        if spec:
            return load_tokenizer(spec)
        tokenizer = getattr(trainer.datamodule, "tokenizer", None) if trainer.datamodule else None
        if tokenizer is None:
            raise ValueError("HeldoutLoss: no tokenizer (the module has no tokenizer_spec()).")
        return tokenizer

    def _blocks(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        from blockexp.evaluation.importance.inputs import load_text_blocks

        if not self._data:
            tokenizer = self._tokenizer(trainer, pl_module)
            for name, path in self.corpora.items():
                blocks = load_text_blocks(path, tokenizer, self.seq_len, self.max_blocks)
                self._data[name] = blocks
                self.blocks[name] = int(blocks.shape[0])
                self.tokens[name] = int(blocks[:, 1:].numel())
        return self._data

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """The loss on every corpus of the model as exported (eval mode, module autocast)."""
        from blockexp.evaluation.importance.measure import text_loss
        from blockexp.evaluation.lmeval.command import eval_view

        data = self._blocks(trainer, pl_module)
        model = pl_module.model
        expander = getattr(pl_module, "expander", None)
        if expander is not None:
            model = eval_view(expander.export_model(model))
        modes = {m: m.training for m in model.modules()}
        autocast = getattr(pl_module, "_autocast", None)
        model.eval()
        try:
            with autocast() if autocast is not None else contextlib.nullcontext():
                return {n: text_loss(model, b, self.batch_size) for n, b in data.items()}
        finally:
            for module, training in modes.items():
                module.train(training)

    def _log(self, trainer: L.Trainer, losses: dict[str, float]) -> None:
        metrics = {f"heldout/{name}": value for name, value in losses.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    # -------------------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._default_dir = Path(trainer.default_root_dir) / "heldout"
        if self.before:  # restored from the checkpoint: measured at the run's start
            if trainer.is_global_zero:
                self.write()
            return
        if trainer.global_step:
            rank_zero_warn(
                f"HeldoutLoss: the checkpoint holds no 'before' losses, so they are measured "
                f"now, at step {trainer.global_step}, not at the start of training."
            )
        self.before = self.measure(trainer, pl_module)
        self.step_before = int(trainer.global_step)
        if trainer.is_global_zero:
            self._log(trainer, self.before)
            self.write()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.after = self.measure(trainer, pl_module)
        self.step_after = int(trainer.global_step)
        if trainer.is_global_zero:
            self._log(trainer, self.after)
            path = self.write()
            changes = ", ".join(
                f"{n} {self.before[n]:.4f} -> {self.after[n]:.4f}" for n in self.corpora
            )
            rank_zero_info(f"HeldoutLoss: {changes} (written to {path})")

    # ------------------------------------------------------------------------ outputs
    def results(self) -> dict[str, Any]:
        """The content of ``heldout.json`` (module docstring)."""
        corpora = {
            name: {
                "path": path,
                "before": self.before.get(name),
                "after": self.after.get(name),
                "tokens": self.tokens.get(name),
                "blocks": self.blocks.get(name),
            }
            for name, path in self.corpora.items()
        }
        return {
            "corpora": corpora,
            "forgetting": self.forgetting,
            "gain": self.gain,
            "seq_len": self.seq_len,
            "max_blocks": self.max_blocks,
            "step_before": self.step_before,
            "step_after": self.step_after,
        }

    def write(self) -> Path:
        """Write ``heldout.json`` atomically; return its path."""
        return atomic_write(self.out_dir / "heldout.json", json.dumps(self.results(), indent=2))

    # -------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "corpora": sorted(self.corpora),
            "seq_len": self.seq_len,
            "max_blocks": self.max_blocks,
            "before": dict(self.before),
            "tokens": dict(self.tokens),
            "blocks": dict(self.blocks),
            "step_before": self.step_before,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        now = {"corpora": sorted(self.corpora), "seq_len": self.seq_len}
        now["max_blocks"] = self.max_blocks
        for key, value in now.items():
            if state_dict.get(key, value) != value:
                raise ValueError(
                    f"HeldoutLoss: the checkpoint measured 'before' with {key}="
                    f"{state_dict[key]}, this run has {key}={value}; resume with the same "
                    "settings or start a new run."
                )
        self.before = {k: float(v) for k, v in state_dict.get("before", {}).items()}
        self.tokens = dict(state_dict.get("tokens", {}))
        self.blocks = dict(state_dict.get("blocks", {}))
        self.step_before = state_dict.get("step_before")
