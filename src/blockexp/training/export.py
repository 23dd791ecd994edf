"""Writing models out: checkpoint export to Hugging Face, and in-memory ``blockexp expand``."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from blockexp.expanders import Expander
from blockexp.io.portable import copy_tokenizer_files

__all__ = [
    "CheckpointError",
    "expand_in_memory",
    "export_checkpoint",
    "load_checkpoint_file",
    "rebuild_from_checkpoint",
]


class CheckpointError(ValueError):
    """A training checkpoint that cannot be used (unreadable, corrupted, not blockexp's)."""


def _copy_tokenizer(base: str, dest: Path) -> list[str]:
    """Copy tokenizer files from a local base directory (or fetch them for a hub id)."""
    local = Path(base).expanduser()
    if local.is_dir():
        return copy_tokenizer_files(local, dest)
    copied = []
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(base).save_pretrained(dest)
        copied.append("tokenizer")
    except (OSError, ValueError):
        pass
    return copied


def expand_in_memory(
    base: str,
    out: str,
    expander: Expander,
    dtype: str = "auto",
    overwrite: bool = False,
    trust_remote_code: bool = False,
    max_shard_size: str = "5GB",
    step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Load ``base``, expand it in memory and write it to ``out`` atomically (safetensors,
    config, tokenizer files, manifest and the base directory's other non-weight files, with
    configs transformers 4.x reads too: :mod:`blockexp.io.portable`); the base directory is never
    written to.

    Args:
        base: base model directory or hub id.
        out: output directory (must not exist or be empty unless ``overwrite``).
        expander: the strategy.
        dtype: ``auto`` keeps the checkpoint's dtype.
        overwrite: replace an existing output directory.
        trust_remote_code: allow custom modelling code from the hub.
        max_shard_size: safetensors shard size.
        step: called with a description when each of the three steps starts.

    Returns:
        The manifest, plus ``tokenizer_files`` (the tokenizer files written) and ``base_files``
        (the local base's files carried over).
    """
    from blockexp.io.load import load_config, load_model
    from blockexp.io.manifest import build_manifest, write_manifest
    from blockexp.io.outputs import atomic_output_dir
    from blockexp.layers import get_arch

    step = step or (lambda description: None)
    # An unsupported architecture is refused from its config, before any weight is read.
    get_arch(load_config(base, trust_remote_code=trust_remote_code))
    with atomic_output_dir(out, protect=[base], overwrite=overwrite) as tmp:
        step("loading base model")
        model = load_model(base, dtype=dtype, trust_remote_code=trust_remote_code)
        base_layers = int(model.config.num_hidden_layers)
        base_params = sum(p.numel() for p in model.parameters())
        step(f"expanding with {expander!r}")
        expansion = expander.expand(model)
        step(f"writing {out}")
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
        copied = _copy_tokenizer(base, tmp)
        from blockexp.io.portable import finish_output

        carried = finish_output(tmp, base)  # the base's other files; 4.x-readable configs
        manifest = build_manifest(expansion, expander, base, base_layers, base_params)
        write_manifest(tmp, manifest)
    return {**manifest, "tokenizer_files": copied, "base_files": carried}


def load_checkpoint_file(
    path: str | os.PathLike, mmap: bool = False, crc: bool = True
) -> dict[str, Any]:
    """Read a training checkpoint safely: tensors and plain data only (``weights_only``; no pickled
    code runs), after checking the archive's own CRCs, so a truncated or corrupted file is named.
    ``mmap=True`` maps the tensors instead of reading them, and ``crc=False`` skips the CRC pass
    (for a caller that needs only the plain data, before any expensive work).

    Raises:
        FileNotFoundError: if the file does not exist.
        IsADirectoryError: for a directory (naming the .ckpt files in it).
        CheckpointError: if it is not a readable checkpoint.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        from blockexp.errors import files_in

        found = files_in(path, [".ckpt"], prefer="last.ckpt")
        raise IsADirectoryError(
            f"Checkpoint {path} is a directory; pass a .ckpt file "
            + (f"in it: {found}" if found else "(none found in it)")
        )
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    try:
        if crc:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                raise CheckpointError(f"{path} is corrupted: {bad} fails its CRC check.")
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupted?): {reason}"
        ) from err
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain data; blockexp does not unpickle "
            f"them (weights_only): {str(err).splitlines()[0]}"
        ) from err


UNVERIFIED_FLAG = "--allow_unverified true"


def checkpoint_sources(
    state: dict[str, Any], base: str | None = None, tokenizer: str | None = None
) -> tuple[Any, Any, bool]:
    """``(base, tokenizer, tokenizer_is_recorded)`` an export of ``state`` uses: the given ones,
    else those the checkpoint records (a recorded tokenizer that was the recorded base follows an
    explicit ``base``)."""
    from blockexp.io.portable import same_source

    info = state.get("blockexp") or {}
    stored = state.get("hyper_parameters", {}).get("base")
    used = base if base is not None else stored
    if tokenizer:
        return used, tokenizer, False
    recorded = info.get("tokenizer")
    if recorded is not None and base is not None and same_source(recorded, stored):
        recorded = base
    return used, recorded, True


def rebuild_from_checkpoint(
    state: dict[str, Any],
    name: str | Path = "checkpoint",
    base: str | None = None,
    trust_remote_code: bool = False,
    tokenizer: str | None = None,
    allow_unverified: bool = False,
):
    """Rebuild the plain ``transformers`` model of a ``blockexp fit`` checkpoint.

    Nothing in the checkpoint can raise privileges: ``trust_remote_code`` comes only from the
    caller (off by default), and the stored base is a default: ``base`` states it explicitly.
    Before any weight is used, every stored tensor is checked against its recorded checksum
    (a checkpoint without checksums only with ``allow_unverified``) and to be finite; the base is
    checked against the checkpoint's record of it (:mod:`blockexp.io.base_record`: config, every
    tensor of its weight files, the tokenizer files unless ``tokenizer`` overrides the recorded
    one), cheapest part first, and its frozen weights against the stored fingerprint.

    Self-contained checkpoints (``save_frozen=true``): the base architecture is built from the
    stored base config without initialising its weights (untouched allocations cost no resident
    memory), the stored expander is applied (so the module tree matches training exactly) and all
    weights are assigned. Trainable-only checkpoints (the default): the base is loaded from its
    spec as in training, checked, expanded, and the trained parameters are assigned. The
    expander's :meth:`~blockexp.expanders.Expander.export_model` then gives the model to save.
    """
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from blockexp.expanders import build_expander
    from blockexp.io.base_record import (
        check_base_record,
        config_record,
        snapshot_dir,
        tensor_record,
        tokenizer_record,
    )
    from blockexp.io.digests import IntegrityError, verify_checkpoint
    from blockexp.io.load import config_from_dict, describe_spec
    from blockexp.training.rebuild import assign_weights, rebuild_trained
    from blockexp.training.settings import Settings

    info = state["blockexp"]
    verify_checkpoint(state, str(name), allow_unverified, UNVERIFIED_FLAG)
    expander = build_expander(info["manifest"]["expander"])
    prefix = "model."
    weights = {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    fingerprint = info.get("frozen_fingerprint")
    record = info.get("base_record")
    used, spec, recorded = checkpoint_sources(state, base, tokenizer)
    if record is not None and recorded and spec is not None:
        current = {"tokenizer": tokenizer_record(spec)}
        check_base_record(record, current, describe_spec(used), str(spec), str(name))
    if fingerprint is None:
        config = config_from_dict(info["base_config"])
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config)
        expansion = expander.expand(model)
        assign_weights(expansion.model, weights, str(name), strict=True)
    else:
        if record is None and not allow_unverified:
            raise IntegrityError(
                f"{name} records nothing of its base's config, files and tokenizer, so the base "
                f"cannot be checked whole; pass {UNVERIFIED_FLAG} to export it unchecked."
            )
        # The checkpoint's hyper-parameters say how training loaded the base; never whether
        # remote code may run, and where the base is only as a default the caller can replace.
        stored = state.get("hyper_parameters", {})
        settings = Settings.from_hparams(
            {**stored, "base": used, "trust_remote_code": bool(trust_remote_code)}
        )
        try:
            if record is not None:  # cheapest first: config and tokenizer, then every tensor
                directory = None if isinstance(used, dict) else snapshot_dir(used)
                current = {
                    "config": config_record(used, trust_remote_code),
                    "base_tokenizer": tokenizer_record(directory) if directory else None,
                }
                check_base_record(record, current, describe_spec(used), where=str(name))
                current = {"tensors": tensor_record(directory) if directory else None}
                check_base_record(record, current, describe_spec(used), where=str(name))
            expansion = rebuild_trained(settings, expander, fingerprint, weights, str(name))
        except OSError as err:
            raise FileNotFoundError(
                f"{name}: the base it was trained on, {describe_spec(used)!r}"
                f"{' (stored in the checkpoint)' if base is None else ''}, cannot be loaded here "
                f"({str(err).splitlines()[0]}). Pass the base with --base DIR_OR_HUB_ID; it is "
                f"checked against the checkpoint's record (recorded: "
                f"{describe_spec(stored.get('base'))!r})."
            ) from err
    model = expander.export_model(expansion.model)
    model.config.use_cache = True
    return model


def export_checkpoint(
    ckpt: str,
    out: str,
    tokenizer: str | None = None,
    overwrite: bool = False,
    base: str | None = None,
    trust_remote_code: bool = False,
    allow_unverified: bool = False,
) -> Path:
    """Export a Lightning training checkpoint as a Hugging Face directory (atomically).

    The output is checked first, before anything large is read or hashed: it may not equal,
    contain or lie inside any input (the checkpoint, the base, the tokenizer, the command's config
    files), resolved through symlinks. The checkpoint's tensors are checked against their recorded
    checksums and to be finite, and the base (recorded in the checkpoint, or stated with
    ``--base``) against the checkpoint's record of its config, weight files, tokenizer and frozen
    weights. (``blockexp export`` shows this text as its help.)

    Args:
        ckpt: a ``.ckpt`` file written by ``blockexp fit``.
        out: output directory.
        tokenizer: tokenizer spec to save beside the model (default: the one used in training).
        overwrite: replace an existing output directory (only an earlier blockexp output).
        base: the base model, when it is not where the checkpoint says it was (default: the one
            stored in the checkpoint); its frozen weights are checked against the checkpoint.
        trust_remote_code: allow the base's custom modelling code (never taken from the
            checkpoint).
        allow_unverified: accept a checkpoint without recorded checksums or base record (one
            written by another tool); its weights must still be finite.
    """
    from blockexp.io.locks import clean_beside, writing_output
    from blockexp.io.outputs import check_output_dir

    clean_beside(out)  # what dead writers left beside the output goes first, whatever follows
    path = Path(ckpt).expanduser()
    head = load_checkpoint_file(path, mmap=True, crc=False)  # the plain data, no tensor read
    if head.get("blockexp") is None:
        raise CheckpointError(f"{ckpt} was not written by blockexp fit (no 'blockexp' entry).")
    used, spec, _ = checkpoint_sources(head, base, tokenizer)
    protect = [path, used, spec]  # the command line's own inputs are added by the guard
    check_output_dir(out, protect=protect, overwrite=overwrite)
    del head
    # Locked (and dead writers' temporaries beside it cleaned) before the checkpoint is read,
    # and after the guard, so that no lock file is ever written inside an input.
    with writing_output(out):
        state = load_checkpoint_file(path)
        model = rebuild_from_checkpoint(
            state, path, base, trust_remote_code, tokenizer, allow_unverified
        )
        return _save_export(state, model, out, protect, spec, used, overwrite)


def _save_export(state, model, out, protect, spec, used, overwrite) -> Path:
    """Write the rebuilt model of an export with its tokenizer, manifest and the base's files."""
    from blockexp.io.portable import same_source
    from blockexp.io.save import save_pretrained_atomic
    from blockexp.io.tokenization import load_tokenizer
    from blockexp.training.loading import export_dtype
    from blockexp.training.settings import Settings

    tok = load_tokenizer(spec) if spec else None
    hp = state.get("hyper_parameters", {})
    compute = Settings.from_hparams({**hp, "base": used}).compute
    # The base lends its other files (generation config, README, ...; its tokenizer files when
    # the tokenizer is its own) to the export.
    stored = hp.get("base")
    return save_pretrained_atomic(
        model,
        out,
        tok,
        state["blockexp"]["manifest"],
        protect=protect,
        overwrite=overwrite,
        dtype=export_dtype(compute.precision_policy),
        base=used,
        tokenizer_from_base=not spec or any(same_source(spec, b) for b in (used, stored)),
    )
