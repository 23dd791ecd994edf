"""Headline scores of lm-eval results: which metric a task is judged by, and group aggregates.

* A task's *headline* metric is the one it declares first: the preset's ``metric:``, else the
  first entry of the task's lm-eval ``metric_list`` (a group's: of its
  ``aggregate_metric_list``), found by :func:`declared_metrics` on the loaded task objects.
  :func:`headline_keys` turns it into the one ``metric,filter`` key of the results that is the
  headline (``none`` filter preferred), so a table stars exactly one row per task.
* A group's value in lm-eval 0.4.13 (MMLU's included) is the mean of its leaf tasks weighted
  by their sizes. :func:`group_aggregate` gives that and the unweighted mean of the leaves (how
  the Open LLM Leaderboard v1 averaged MMLU's 57 subjects); :func:`apply_aggregates` makes the
  chosen one a group's headline score and records both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "AGGREGATES",
    "HEADLINE_ORDER",
    "apply_aggregates",
    "declared_metrics",
    "group_aggregate",
    "headline_keys",
    "headline_scores",
    "leaf_tasks",
    "mean_score",
]

#: Metrics tried, in order, for a task whose declared metric is not known (results read back
#: without their task configs): the first one the task reports is its headline.
HEADLINE_ORDER = ("acc_norm", "acc", "edit_sim", "exact_match", "pass@1", "f1", "bleu")

#: How a group's headline may be aggregated from its leaf tasks (a preset's ``aggregate:``).
AGGREGATES = ("unweighted", "size_weighted")


def _first_metric(entries: Any) -> str | None:
    for entry in entries or ():
        name = entry.get("metric") if isinstance(entry, Mapping) else getattr(entry, "metric", None)
        if isinstance(name, str):
            return name
    return None


def declared_metrics(loaded: Mapping[Any, Any]) -> dict[str, str]:
    """``{top-level name: first declared metric}`` of a :func:`~.harness.load_tasks` result:
    a task's first ``metric_list`` entry (or of its default metrics when the YAML lists none),
    a group's first ``aggregate_metric_list`` entry; a group without one is left out."""
    out = {}
    for key, value in loaded.items():
        if isinstance(key, str):  # a task
            config = getattr(value, "config", None)
            metric = _first_metric(getattr(config, "metric_list", None))
            if metric is None and hasattr(value, "aggregation"):
                metric = next(iter(value.aggregation()), None)
            if metric is not None:
                out[key] = metric
        else:  # a group
            metric = _first_metric(getattr(key, "aggregate_metric_list", None))
            if metric is not None:
                out[getattr(key, "group_name", str(key))] = metric
    return out


def headline_keys(
    results: Mapping[str, Any],
    tasks: Sequence[str] | None = None,
    metrics: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The ``metric,filter`` key of each task's headline in ``results["results"]``.

    ``metrics[task]`` is a metric name (any filter; ``none`` preferred, else the first the task
    reports) or an exact ``metric,filter`` key; a task not in ``metrics`` takes the first
    metric of :data:`HEADLINE_ORDER` it reports. A task with no such numeric value is left out.
    """
    table = results.get("results", {})
    names = list(tasks) if tasks is not None else list(table)
    keys = {}
    for name in names:
        entry = table.get(name, {})
        wanted = [metrics[name]] if metrics and name in metrics else list(HEADLINE_ORDER)
        for metric in wanted:
            if "," in metric:  # an exact "metric,filter" key
                found = [metric] if metric in entry else []
            else:
                found = [k for k in entry if k.split(",")[0] == metric and "_stderr" not in k]
            found.sort(key=lambda k: k != f"{metric},none")  # stable: else the reported order
            if found and isinstance(entry[found[0]], int | float):
                keys[name] = found[0]
                break
    return keys


def headline_scores(
    results: Mapping[str, Any],
    tasks: Sequence[str] | None = None,
    metrics: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """One number per task: the value under its :func:`headline_keys` key."""
    table = results.get("results", {})
    keys = headline_keys(results, tasks, metrics)
    return {name: float(table[name][key]) for name, key in keys.items()}


def leaf_tasks(group_subtasks: Mapping[str, Sequence[str]], name: str) -> list[str]:
    """The tasks under ``name`` in lm-eval's ``group_subtasks`` (a task is its own leaf)."""
    children = group_subtasks.get(name)
    if not children:
        return [name]
    return [leaf for child in children for leaf in leaf_tasks(group_subtasks, child)]


def group_aggregate(results: Mapping[str, Any], group: str, key: str) -> dict[str, Any]:
    """A group's ``key`` (``metric,filter``) over its leaf tasks, two ways.

    Returns ``{"key", "unweighted", "size_weighted", "subtasks"}``: the plain mean of the leaf
    values, and the mean weighted by each leaf's evaluated documents (``n-samples``
    ``effective``), which is how lm-eval 0.4.13 computes a group with ``weight_by_size``.
    """
    subtasks = results.get("group_subtasks", {})
    if group not in subtasks:
        raise ValueError(
            f"aggregate: {group!r} is not a group in these results (no group_subtasks entry); "
            "aggregate only names lm-eval groups such as mmlu."
        )
    table, counts = results.get("results", {}), results.get("n-samples", {})
    leaves = leaf_tasks(subtasks, group)
    missing = [t for t in leaves if not isinstance(table.get(t, {}).get(key), int | float)]
    if missing:
        raise ValueError(f"aggregate {group!r}: no {key!r} value for subtask(s) {missing[:5]}.")
    values = [float(table[t][key]) for t in leaves]
    sizes = [int(counts.get(t, {}).get("effective", 0)) for t in leaves]
    weighted = (
        sum(v * n for v, n in zip(values, sizes, strict=True)) / sum(sizes)
        if sum(sizes)
        else float("nan")
    )
    return {
        "key": key,
        "unweighted": sum(values) / len(values),
        "size_weighted": weighted,
        "subtasks": len(leaves),
    }


def apply_aggregates(
    results: dict[str, Any], keys: Mapping[str, str], aggregate: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """For each ``{group: "unweighted" | "size_weighted"}``: both aggregates of the group's
    headline key, with the chosen one as the group's headline score; returns them (also stored
    under ``results["aggregates"]``, each with ``headline`` naming the chosen one)."""
    out = {}
    for group, how in aggregate.items():
        if how not in AGGREGATES:
            raise ValueError(f"aggregate {group!r}: {how!r} is not one of {list(AGGREGATES)}.")
        if group not in keys:
            continue  # the group reported no headline metric
        entry = group_aggregate(results, group, keys[group])
        entry["headline"] = how
        entry["lm_eval_group_value"] = results["results"][group][keys[group]]
        results.setdefault("scores", {})[group] = entry[how]
        out[group] = entry
    results["aggregates"] = out
    return out


def mean_score(scores: Mapping[str, float]) -> float:
    """Unweighted mean of headline scores (``nan`` when there are none)."""
    values = [v for v in scores.values() if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")
