"""Local lm-evaluation-harness tasks: the shipped ones, their data loader and scorers.

The YAML files in this directory are plain lm-eval task configs. They name two importable
functions, so they also work with ``lm_eval --include_path <this dir>`` when blockexp is
installed:

* :func:`load_jsonl` (``custom_dataset``) reads the task's JSONL file, given as ``data_file`` in
  ``dataset_kwargs``; a relative name is looked up in this directory, so the shipped tasks need
  no download and no absolute path.
* :func:`process_completion` (``process_results``) scores a generated completion: exact match
  of the stripped strings and an edit similarity (rapidfuzz's InDel ratio, in [0, 1]);
  :func:`process_next_line` does the same for the line after the generation's first newline.

:mod:`blockexp.evaluation.lmeval.build` writes new task directories of the same four kinds from any text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TASKS_DIR = Path(__file__).resolve().parent

__all__ = ["TASKS_DIR", "load_jsonl", "process_completion", "process_next_line", "shipped_tasks"]


def shipped_tasks() -> list[str]:
    """Names of the task YAMLs shipped in this directory (sorted)."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def load_jsonl(data_file: str, split: str = "test", **_: Any):
    """``custom_dataset`` loader: ``{split: Dataset}`` from a JSONL file of task documents.

    A relative ``data_file`` is resolved against the shipped tasks directory. A malformed line
    raises :class:`~blockexp.data.records.DataError` (a ``ValueError``) naming file and line.
    """
    import datasets

    from blockexp.data.records import DataError, iter_json_records

    path = Path(data_file)
    if not path.is_absolute():
        path = TASKS_DIR / path
    rows = []
    for number, row in iter_json_records(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no documents")
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})


def process_completion(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Scores of one generated completion against ``doc["target"]``.

    ``exact_match``: 1.0 when the completion equals the target after stripping surrounding
    whitespace. ``edit_sim``: rapidfuzz ``fuzz.ratio`` of the stripped strings / 100 (the
    normalised InDel similarity that TRACE's Py150 and code-completion benchmarks use).
    """
    from rapidfuzz import fuzz

    prediction = (results[0] if results else "").strip()
    target = str(doc["target"]).strip()
    return {
        "exact_match": float(prediction == target),
        "edit_sim": fuzz.ratio(prediction, target) / 100.0,
    }


def process_next_line(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """:func:`process_completion` of the line the model writes after ending the context's last
    line: the generation's text between its first and second newline (empty when the model
    never ends the line). Indentation is stripped from both sides before scoring."""
    generation = results[0] if results else ""
    lines = generation.split("\n")
    return process_completion(doc, [lines[1] if len(lines) > 1 else ""])
