"""Evaluation presets (``configs/eval/*.yaml``): tasks with their shots and headline metrics, and
how a published evaluation ran them.

Keys (only ``tasks`` is required)::

    name: llama_pro_general
    tasks:                          # each a name or {task, num_fewshot, metric}
      - {task: mmlu, num_fewshot: 5, metric: acc}
    confirm_run_unsafe_code: false  # let HumanEval/MBPP execute generated code
    dtype: float16                  # the model's dtype for `blockexp eval` (--dtype overrides)
    batch_size: auto                # an integer or "auto" (--batch_size overrides)
    max_batch_size: 8               # the largest batch "auto" tries
    aggregate: {mmlu: unweighted}   # a group's headline: unweighted | size_weighted mean
    reference: "lm-eval 0.4.1 ..."  # where the published numbers came from (a label)
    reference_versions:             # task versions there; `blockexp eval` lists the ones
      "mmlu_*": 0.0                 #   that differ now (fnmatch patterns of leaf tasks)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from blockexp.evaluation.lmeval.harness import EvalError
from blockexp.evaluation.lmeval.scores import AGGREGATES, leaf_tasks

__all__ = ["DTYPES", "Preset", "check_batch_size", "load_preset", "version_differences"]

#: Model dtypes a preset or ``--dtype`` may name.
DTYPES = ("float32", "float16", "bfloat16")

_KEYS = {
    "name",
    "tasks",
    "confirm_run_unsafe_code",
    "dtype",
    "batch_size",
    "max_batch_size",
    "aggregate",
    "reference",
    "reference_versions",
}


class Preset(NamedTuple):
    """A named evaluation list (``configs/eval/*.yaml``); see the module docstring."""

    name: str
    tasks: list[str]
    num_fewshot: dict[str, int | None]
    metrics: dict[str, str]
    confirm_run_unsafe_code: bool
    dtype: str | None = None
    batch_size: int | str | None = None
    max_batch_size: int | None = None
    aggregate: dict[str, str] = {}
    reference: str | None = None
    reference_versions: dict[str, str] = {}


def check_batch_size(value: Any, where: str) -> int | str:
    """``value`` as lm-eval takes it: an integer >= 1 or ``"auto"``; else an ``EvalError``."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise EvalError(f"{where}: batch_size must be an integer >= 1 or 'auto', got {value!r}.")


def _tasks(path: Path, items: Any) -> tuple[list[str], dict, dict]:
    if not isinstance(items, list) or not items:
        raise EvalError(
            f"{path}: 'tasks' must be a non-empty list of {{task, num_fewshot, metric}}."
        )
    tasks, shots, metrics = [], {}, {}
    for number, item in enumerate(items, start=1):
        if isinstance(item, str):
            item = {"task": item}
        if not isinstance(item, dict) or not isinstance(item.get("task"), str):
            raise EvalError(f"{path}: tasks entry {number} needs a 'task' name, got {item!r}.")
        extra = set(item) - {"task", "num_fewshot", "metric"}
        if extra:
            raise EvalError(f"{path}: tasks entry {number} has unknown keys {sorted(extra)}.")
        name = item["task"]
        tasks.append(name)
        if item.get("num_fewshot") is not None:
            n = item["num_fewshot"]
            if not isinstance(n, int) or n < 0:
                raise EvalError(f"{path}: {name}: num_fewshot must be an integer >= 0, got {n!r}.")
            shots[name] = n
        if item.get("metric"):
            metrics[name] = str(item["metric"])
    return tasks, shots, metrics


def load_preset(path: str | Path) -> Preset:
    """Read and check an evaluation preset (an :class:`EvalError` names the file and the key)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise EvalError(f"preset {path} does not exist (see configs/eval/ for the shipped ones).")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise EvalError(f"{path}: a preset is a mapping with a 'tasks' list.")
    unknown = set(data) - _KEYS
    if unknown:
        raise EvalError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}.")
    tasks, shots, metrics = _tasks(path, data.get("tasks"))
    dtype = data.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise EvalError(f"{path}: dtype must be one of {list(DTYPES)}, got {dtype!r}.")
    batch = data.get("batch_size")
    batch = None if batch is None else check_batch_size(batch, str(path))
    most = data.get("max_batch_size")
    if most is not None and (not isinstance(most, int) or most < 1):
        raise EvalError(f"{path}: max_batch_size must be an integer >= 1, got {most!r}.")
    aggregate = data.get("aggregate") or {}
    if not isinstance(aggregate, dict) or any(v not in AGGREGATES for v in aggregate.values()):
        raise EvalError(
            f"{path}: aggregate must map group names to one of {list(AGGREGATES)}, "
            f"got {aggregate!r}."
        )
    stray = sorted(set(aggregate) - set(tasks))
    if stray:
        raise EvalError(f"{path}: aggregate names groups that are not in tasks: {stray}.")
    versions = data.get("reference_versions") or {}
    if not isinstance(versions, dict):
        raise EvalError(f"{path}: reference_versions must map task names to versions.")
    return Preset(
        str(data.get("name", path.stem)),
        tasks,
        shots,
        metrics,
        bool(data.get("confirm_run_unsafe_code", False)),
        dtype,
        batch,
        most,
        {str(k): str(v) for k, v in aggregate.items()},
        None if data.get("reference") is None else str(data["reference"]),
        {str(k): str(v) for k, v in versions.items()},
    )


def _same(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def version_differences(
    results: Mapping[str, Any], reference_versions: Mapping[str, str]
) -> dict[str, dict[str, str]]:
    """``{leaf task: {"now", "reference"}}`` for each evaluated leaf task whose lm-eval version
    differs from the first ``reference_versions`` pattern (fnmatch) that names it."""
    versions = results.get("versions", {})
    subtasks = results.get("group_subtasks", {})
    tops = [t for t in results.get("results", {}) if not any(t in c for c in subtasks.values())]
    leaves = [leaf for top in tops for leaf in leaf_tasks(subtasks, top)]
    out = {}
    for leaf in leaves:
        pattern = next((p for p in reference_versions if fnmatch.fnmatchcase(leaf, p)), None)
        if pattern is None or leaf not in versions:
            continue
        if not _same(versions[leaf], reference_versions[pattern]):
            out[leaf] = {"now": str(versions[leaf]), "reference": reference_versions[pattern]}
    return out
