"""Rewrite the ``model:`` section of YAML config files from flat keys to the nested settings.

    python scripts/rename_model_keys.py configs/**/*.yaml

``model: {lr: 2e-3, precision_policy: lean, export_dir: out}`` becomes
``model: {optim: {lr: 2e-3}, compute: {precision_policy: lean}, output: {export_dir: out}}``
(:mod:`blockexp.training.settings`). Only the top-level ``model:`` block is touched, comments and
the order of everything else are kept, and a file already in the new form is left as it is (the
script is idempotent). A key's comment lines just above it move with it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

GROUPS = {
    "optim": [
        "lr",
        "betas",
        "weight_decay",
        "eps",
        "warmup_ratio",
        "min_lr_ratio",
        "fused_adamw",
        "optimizer_state",
        "optimizer_in_backward",
    ],
    "compute": [
        "dtype",
        "precision_policy",
        "attn_implementation",
        "gradient_checkpointing",
        "compile_layers",
        "chunked_loss",
        "loss_chunk_mb",
    ],
    "output": ["export_dir", "export_overwrite", "save_frozen"],
}
GROUP_OF = {key: group for group, keys in GROUPS.items() for key in keys}
KEY = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*)\s*:")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _blank_or_comment(line: str) -> bool:
    return not line.strip() or line.lstrip().startswith("#")


def rewrite(text: str) -> str:
    """``text`` with its top-level ``model:`` block's flat setting keys nested in their groups."""
    lines = text.splitlines(keepends=True)
    start = next(
        (i for i, line in enumerate(lines) if re.match(r"^model\s*:\s*(#.*)?$", line)), None
    )
    if start is None:
        return text
    end = start + 1
    while end < len(lines) and (_blank_or_comment(lines[end]) or _indent(lines[end]) > 0):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():  # trailing blank lines stay outside
        end -= 1
    body = lines[start + 1 : end]
    child = min((_indent(line) for line in body if not _blank_or_comment(line)), default=2)
    # Split the block into entries: (key or None, lines), comments above a key going with it.
    entries: list[tuple[str | None, list[str]]] = []
    pending: list[str] = []
    for line in body:
        match = KEY.match(line)
        if match and _indent(line) == child and not _blank_or_comment(line):
            entries.append((match.group(2), [*pending, line]))
            pending = []
        elif _blank_or_comment(line) and _indent(line) <= child:
            pending.append(line)
        elif entries:
            entries[-1][1].extend([*pending, line])
            pending = []
        else:
            pending.append(line)
    moved: dict[str, list[str]] = {}
    kept: list[tuple[str | None, list[str]]] = []
    for key, chunk in entries:
        group = GROUP_OF.get(key or "")
        if group is None:
            kept.append((key, chunk))
        else:
            moved.setdefault(group, []).extend(
                " " * child + line if line.strip() else line for line in chunk
            )
    if not moved:
        return text
    out = [lines[start]]
    present = {key for key, _ in kept}
    for key, chunk in kept:
        out.extend(chunk)
        if key in moved:  # the group exists already: its new keys go at its end
            out.extend(moved.pop(key))
    for group in GROUPS:  # the remaining groups, in their order, after the other keys
        if group in moved and group not in present:
            out.append(" " * child + f"{group}:\n")
            out.extend(moved[group])
    out.extend(pending)
    return "".join([*lines[:start], *out, *lines[end:]])


def main(paths: list[str]) -> int:
    for name in paths:
        path = Path(name)
        text = path.read_text()
        new = rewrite(text)
        if new != text:
            path.write_text(new)
            print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
