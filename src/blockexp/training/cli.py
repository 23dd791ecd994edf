"""The LightningCLI behind the training commands (``fit``, ``validate``, ``test``, ``predict``).

Kept apart from :mod:`blockexp.cli` so that the offline commands (``plan``, ``expand``, ...) and
``--help`` start without importing Lightning; :mod:`blockexp.cli` imports this module only for a
training command (``blockexp.cli.BlockexpCLI`` and ``blockexp.cli.expand_config_defaults`` still
work).
"""

from __future__ import annotations

import os
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningCLI

from blockexp.errors import PARSER_KWARGS, UsageError, explain_usage

__all__ = ["BlockexpCLI", "expand_config_defaults"]


def expand_config_defaults(argv: list[str]) -> list[str]:
    """Compose configs: every ``--config FILE`` whose YAML has a ``defaults:`` list (paths
    relative to FILE) becomes ``--config`` of each default (recursively, in order) followed by
    ``--config FILE``, so FILE holds only its delta over the pieces it names. The merged result
    gets ``defaults: null`` (a saved config is complete and names no pieces).

    Raises:
        FileNotFoundError: a default that does not exist, naming the config that lists it.
        ValueError: a cycle, or a ``defaults`` entry that is not a list of paths.
    """
    import yaml

    def chain(path: Path, stack: tuple[Path, ...]) -> list[str]:
        resolved = path.expanduser().resolve()
        if resolved in stack:
            cycle = " -> ".join(str(p) for p in (*stack, resolved))
            raise ValueError(f"config defaults form a cycle: {cycle}")
        try:
            data = yaml.safe_load(resolved.read_text()) if resolved.is_file() else None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"{where}: invalid YAML: {problem}") from err
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
        defaults = data.get("defaults") if isinstance(data, dict) else None
        out: list[str] = []
        if defaults is not None:
            if not isinstance(defaults, list) or not all(isinstance(d, str) for d in defaults):
                raise ValueError(f"{path}: `defaults` must be a list of config file paths")
            for entry in defaults:
                piece = Path(os.path.normpath(resolved.parent / entry))
                if not piece.is_file():
                    raise FileNotFoundError(
                        f"{path} lists the default config {entry!r}, which does not exist "
                        f"(resolved to {piece})"
                    )
                out += chain(piece, (*stack, resolved))
        return [*out, "--config", str(path)]

    out: list[str] = []
    composed = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        pieces = chain(Path(value), ())
        composed = composed or len(pieces) > 2
        out += pieces
    if composed:
        out += ["--defaults", "null"]
    return out


class BlockexpCLI(LightningCLI):
    """LightningCLI with blockexp defaults: gradient clipping 1.0, the tokenizer given once (in
    ``model``) and linked to the data module, validation before training, rich progress bar and
    an end-of-fit summary table. Config files compose through ``defaults:`` lists
    (:func:`expand_config_defaults`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from blockexp.training.module import BlockExpansionModule
        from blockexp.training.summary import ExpansionSummary

        if isinstance(kwargs.get("args"), list):
            kwargs["args"] = expand_config_defaults(kwargs["args"])
        elif kwargs.get("args") is None:  # the command line: LightningCLI reads sys.argv
            sys.argv[1:] = expand_config_defaults(sys.argv[1:])

        kwargs.setdefault("model_class", BlockExpansionModule)
        kwargs.setdefault("subclass_mode_data", True)
        from blockexp.training.checkpoint_io import AtomicCheckpointIO

        kwargs.setdefault(
            "trainer_defaults",
            {
                "callbacks": [RichProgressBar(), ExpansionSummary()],
                "plugins": [AtomicCheckpointIO()],
            },
        )
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # Parse errors raise (one line, blockexp.errors.explain_usage) instead of printing usage.
        kwargs["parser_kwargs"] = {**PARSER_KWARGS, **(kwargs.get("parser_kwargs") or {})}
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            argv = args if isinstance(args, list) else sys.argv[1:] if args is None else []
            raise UsageError(explain_usage(err, parser, [str(a) for a in argv])) from err

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
            from blockexp.io.checkpoint import describe_spec

            print(
                f"Note: {ckpt_path} was trained on base {describe_spec(stored)!r}; resuming with "
                f"the configured base {describe_spec(configured)!r} (its frozen weights are "
                "checked against the checkpoint).",
                file=sys.stderr,
            )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        # The rich progress bar is a default: leave it out when the user turns the bar off or
        # brings another one.
        from lightning.pytorch.callbacks import ProgressBar

        own = [c for c in (config.get("callbacks") or []) if isinstance(c, ProgressBar)]
        if config.get("enable_progress_bar") is False or own:
            defaults = self.trainer_defaults.get("callbacks", [])
            self.trainer_defaults = {
                **self.trainer_defaults,
                "callbacks": [c for c in defaults if not isinstance(c, RichProgressBar)],
            }
        return super()._instantiate_trainer(config, callbacks)

    def add_arguments_to_parser(self, parser) -> None:
        from blockexp.training.loading import resolve_tokenizer_spec

        parser.add_argument(
            "--defaults",
            type=list[str] | None,
            default=None,
            help="config files this one builds on (paths relative to it), applied first",
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
