"""The released TRACE layout: task order, the ``<root>/<Task>/<split>.json`` files, their records.

::

    <root>/<Task>/train.json   JSON list of {"prompt": ..., "answer": ...}
    <root>/<Task>/eval.json    (optional; validation loss of the current task)
    <root>/<Task>/test.json    scored by generation after every task (``eval_split``)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blockexp.data.records import DataError, iter_json_records, json_kind

__all__ = [
    "SPLITS",
    "TRACE_ORDER",
    "check_task_files",
    "default_tasks",
    "read_trace_split",
    "sample_records",
    "trace_root",
]

#: TRACE's task order (its scripts' default; the order of the LLaMA Pro paper's Tables 11-13).
TRACE_ORDER: tuple[str, ...] = (
    "C-STANCE",
    "FOMC",
    "MeetingBank",
    "Py150",
    "ScienceQA",
    "NumGLUE-cm",
    "NumGLUE-ds",
    "20Minuten",
)
SPLITS = ("train", "eval", "test")


def read_trace_split(path: str | Path) -> list[dict[str, str]]:
    """Read one TRACE split file: a JSON list of records with string ``prompt`` and ``answer``.

    Raises:
        FileNotFoundError: if the file is missing.
        DataError: on malformed JSON or records, with file and line; on an empty file.
    """
    records = []
    for line, record in iter_json_records(path):
        where = f"{path}:{line}"
        if not isinstance(record, dict):
            raise DataError(
                f"{where}: expected a JSON object with 'prompt' and 'answer', got {json_kind(record)}"
            )
        for field in ("prompt", "answer"):
            if field not in record:
                keys = ", ".join(repr(k) for k in list(record)[:10]) or "none"
                raise DataError(f"{where}: record has no {field!r} field (fields: {keys})")
            if not isinstance(record[field], str):
                raise DataError(
                    f"{where}: {field!r} must be a string, got {type(record[field]).__name__}"
                )
        records.append({"prompt": record["prompt"], "answer": record["answer"]})
    if not records:
        raise DataError(f"{path}: no records")
    return records


def sample_records(records: list[dict[str, str]], cap: int | None, seed: int, tag: str) -> list:
    """A seeded subset of ``cap`` records, in file order (all records when ``cap`` is None)."""
    if cap is None or cap >= len(records):
        return records
    rng = np.random.default_rng([seed, *tag.encode()])
    keep = np.sort(rng.choice(len(records), size=cap, replace=False))
    return [records[i] for i in keep]


def default_tasks(root: Path) -> list[str]:
    """TRACE's order when ``root`` holds its eight task folders; otherwise a clear error."""
    missing = [t for t in TRACE_ORDER if not (root / t / "train.json").is_file()]
    if not missing:
        return list(TRACE_ORDER)
    found = sorted(p.name for p in root.iterdir() if (p / "train.json").is_file())
    raise DataError(
        f"{root} does not hold TRACE's eight task folders (missing: {', '.join(missing)}); "
        f"task folders found: {', '.join(found) or 'none'}. Point data.init_args.root at the "
        "released TRACE data, or list the tasks to learn, in order, in data.init_args.tasks."
    )


def trace_root(root: str) -> Path:
    """``root`` (``~`` expanded) if it is a directory, else an error saying where to get one."""
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise FileNotFoundError(
            f"TRACE root {root!r} is not a directory (resolved to {root_path.resolve()}). "
            "Download the released TRACE data (see docs/trace.md) and point "
            "data.init_args.root at the folder holding C-STANCE/, FOMC/, ...; or generate a "
            "synthetic one with `python scripts/make_trace_data.py DIR`."
        )
    return root_path


def check_task_files(root: Path, tasks: list[str], eval_split: str) -> None:
    """Raise :class:`FileNotFoundError` unless every task has ``train.json`` and ``eval_split``."""
    for task in tasks:
        for split in ("train", eval_split):
            path = root / task / f"{split}.json"
            if not path.is_file():
                raise FileNotFoundError(
                    f"TRACE task {task!r}: {path} is missing (expected "
                    f"<root>/<Task>/{{train,eval,test}}.json)"
                )
