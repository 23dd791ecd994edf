"""The LightningCLI behind the training commands (``fit``, ``validate``, ``test``, ``predict``).

Kept apart from :mod:`blockexp.cli` so that the offline commands (``plan``, ``expand``, ...) and
``--help`` start without importing Lightning; :mod:`blockexp.cli` imports this module only for a
training command. Config files compose (``defaults:`` lists, ``group=option`` overrides) in
:mod:`blockexp.training.compose` before the parser reads them.
"""

from __future__ import annotations

import sys
from argparse import ArgumentError
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningCLI

from blockexp.errors import PARSER_KWARGS, UsageError, explain_usage
from blockexp.training.compose import compose_args

__all__ = ["BlockexpCLI", "with_atomic_checkpoints"]


def with_atomic_checkpoints(plugins: Any) -> list[Any]:
    """The trainer's plugins with :class:`~blockexp.training.checkpoint_io.AtomicCheckpointIO`
    added, unless one of them already is a checkpoint writer (the user's own is kept)."""
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

    from blockexp.training.checkpoint_io import AtomicCheckpointIO

    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


class BlockexpCLI(LightningCLI):
    """LightningCLI with blockexp defaults: gradient clipping 1.0, the tokenizer given once (in
    ``model``) and linked to the data module, validation before training, rich progress bar and
    an end-of-fit summary table; TensorBoard logs under ``<default_root_dir>/tb`` unless the config
    names a logger. Config files compose through ``defaults:`` lists and ``group=option``
    overrides (:func:`blockexp.training.compose.compose_args`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from blockexp.training.module import BlockExpansionModule
        from blockexp.training.progress import StepProgressBar
        from blockexp.training.summary import ExpansionSummary

        kwargs.setdefault("model_class", BlockExpansionModule)
        kwargs.setdefault("subclass_mode_data", True)
        # Atomic checkpoint writing is added when the trainer is built (_instantiate_trainer), not
        # as a default plugin: a plugin instance is not a config value, so `--print_config` could
        # not write it and its output could not be read back.
        kwargs.setdefault(
            "trainer_defaults", {"callbacks": [StepProgressBar(), ExpansionSummary()]}
        )
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # Parse errors raise (one line, blockexp.errors.explain_usage) instead of printing usage.
        kwargs["parser_kwargs"] = {**PARSER_KWARGS, **(kwargs.get("parser_kwargs") or {})}
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        if args is not None and not isinstance(args, list | tuple):  # a dict or Namespace
            return super().parse_arguments(parser, args)
        # The command line (sys.argv stays as given: a DDP launcher re-runs it) or an in-process
        # list, each composed config file given to the parser as its merged YAML text.
        argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        composed, sources = compose_args(argv)
        try:
            self.config = parser.parse_args(composed)
        except ArgumentError as err:
            raise UsageError(explain_usage(err, parser, sources)) from err

    def _parse_ckpt_path(self) -> None:
        """Resume from ``--ckpt_path`` without taking settings from the checkpoint.

        LightningCLI would merge the checkpoint's hyper-parameters over the user's config, so a
        checkpoint could switch on ``trust_remote_code`` or point ``base`` elsewhere. Here the
        config alone decides; the file is checked to be a readable checkpoint (a clear error
        otherwise), and its frozen weights are verified against the configured base when training
        resumes.
        """
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path:
            return
        from blockexp.training.export import load_checkpoint_file

        # Only the stored base is read here (Lightning loads the weights when fitting starts).
        state = load_checkpoint_file(ckpt_path, mmap=True)
        stored = state.get("hyper_parameters", {}).get("base")
        configured = self.config[self.config.subcommand].get("model", {}).get("base")
        if stored is not None and stored != configured:
            from blockexp.io.load import describe_spec

            print(
                f"Note: {ckpt_path} was trained on base {describe_spec(stored)!r}; resuming with "
                f"the configured base {describe_spec(configured)!r} (its frozen weights are "
                "checked against the checkpoint).",
                file=sys.stderr,
            )

    def before_instantiate_classes(self) -> None:
        # a logger whose package is missing (W&B without the extra), an accelerator this machine
        # lacks: one line, before building
        from blockexp.training.preflight import check_accelerator, check_data
        from blockexp.training.tracking import check_logger_installed

        config = self.config[self.subcommand] if self.subcommand else self.config
        check_logger_installed(config.get("trainer", {}).get("logger"))
        check_accelerator(config.get("trainer", {}))
        check_data(config)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        # The rich progress bar is a default: leave it out when the user turns the bar off or
        # brings another one. No logger configured: TensorBoard under <default_root_dir>/tb.
        from lightning.pytorch.callbacks import ProgressBar

        own = [c for c in (config.get("callbacks") or []) if isinstance(c, ProgressBar)]
        if config.get("enable_progress_bar") is False or own:
            defaults = self.trainer_defaults.get("callbacks", [])
            self.trainer_defaults = {
                **self.trainer_defaults,
                "callbacks": [c for c in defaults if not isinstance(c, RichProgressBar)],
            }
        if config.get("logger") is None or config.get("logger") is True:  # none configured
            from blockexp.training.tracking import default_logger

            config["logger"] = default_logger(config.get("default_root_dir"))
        config["plugins"] = with_atomic_checkpoints(config.get("plugins"))
        return super()._instantiate_trainer(config, callbacks)

    def add_arguments_to_parser(self, parser) -> None:
        from blockexp.training.loading import resolve_tokenizer_spec

        parser.add_argument(
            "--defaults",
            type=list[str] | None,
            default=None,
            help="what a config file builds on: `group: option` entries (configs/<group>/"
            "<option>.yaml) or paths relative to it, applied first; `group=option` on the command "
            "line swaps one (blockexp.training.compose)",
        )
        parser.set_defaults({"trainer.gradient_clip_val": 1.0})
        parser.link_arguments(
            ("model.tokenizer", "model.base"),
            "data.init_args.tokenizer",
            compute_fn=resolve_tokenizer_spec,
        )

    def before_fit(self) -> None:
        from blockexp.training import run_dirs

        cfg = self.config[self.subcommand]
        # outputs over inputs, before the data module or validation writes anything
        run_dirs.check_export_target(self.model.settings, self.trainer, self.datamodule)
        # Lock the run's directories before anything is written (a second run into them ends
        # here, naming this one's pid); released at the end of fit, or if this start fails.
        self.model._hold_run_dirs(self.trainer)
        try:
            if not cfg.get("ckpt_path"):  # refuse a used run directory before anything runs
                run_dirs.check_run_dirs(self.trainer, resuming=False)
            if self.model.settings.validate_before_fit and not cfg.get("ckpt_path"):
                # Under torch.no_grad, not inference mode: tensors this validation creates and
                # training reuses (FSDP2's unsharded parameter buffers) must not be inference
                # tensors, or the first training step fails ("Inference tensors do not track
                # version counter"). Lightning does the same for validation inside fit.
                loop = self.trainer.validate_loop
                inference_mode, loop.inference_mode = loop.inference_mode, False
                try:
                    self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
                finally:
                    loop.inference_mode = inference_mode
        except BaseException:
            self.model._release_run_dirs()
            raise
