"""The module's checkpoint hooks: what a training checkpoint stores, and its checks on resume."""

from __future__ import annotations

from typing import Any

from blockexp.io import digests
from blockexp.io.load import describe_spec

__all__ = ["check_checkpoint", "record_checkpoint"]


def record_checkpoint(module: Any, checkpoint: dict[str, Any]) -> None:
    """``on_save_checkpoint``: keep only the trainable weights (unless ``save_frozen``) and add
    the ``blockexp`` entry (base config and record, manifest, tokenizer, frozen fingerprint, a
    checksum of every stored tensor)."""
    info = {
        "base_config": module.base_config,
        "base_record": module._base_record,
        "manifest": module.manifest(),
        "tokenizer": module.tokenizer_spec(),
    }
    state = checkpoint["state_dict"]
    if not module.settings.output.save_frozen:
        keep = {"model." + name for name in module.expansion.trainable}
        for key in [k for k in state if k.startswith("model.") and k not in keep]:
            del state[key]
        info["frozen_fingerprint"] = module._frozen_digest
    # A checksum of every stored tensor: resume and export refuse a corrupted file.
    info["stored_digest"] = digests.tensor_digests(
        {k: v for k, v in state.items() if k.startswith("model.")}
    )
    checkpoint["blockexp"] = info


def check_checkpoint(module: Any, checkpoint: dict[str, Any]) -> None:
    """``on_load_checkpoint``: refuse a checkpoint whose tensors, base or frozen weights do not
    check out against what it recorded (:mod:`blockexp.io.digests`,
    :mod:`blockexp.io.base_record`)."""
    info = checkpoint.get("blockexp", {})
    state = checkpoint.get("state_dict")
    allow = module.settings.allow_unverified_checkpoint
    flag = "--model.allow_unverified_checkpoint true"
    if state is not None:
        digests.verify_checkpoint(checkpoint, "the checkpoint", allow, flag)
    record = info.get("base_record")
    if record is not None:
        from blockexp.io.base_record import check_base_record

        check_base_record(
            record,
            module._base_record,
            describe_spec(module.settings.base),
            module.settings.tokenizer,
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
        for name in module.expansion.trainable
        if state is not None and "model." + name not in state
    )
    if missing:
        raise ValueError(
            f"The checkpoint lacks {len(missing)} trainable parameters (e.g. {missing[:3]}); "
            "was it written with another expander?"
        )
    digests.check_fingerprint(
        module.model,
        expected,
        describe_spec(module.settings.base),
        current=getattr(module, "_frozen_digest", None),
    )
