"""Statistics over seeds: groups, means with Student's t intervals, paired comparisons against a
reference group, and the Pareto front of (forgetting, gain).

* A group is the runs that agree on every parameter but ``seed``.
* Per group and metric: ``n``, the mean, the sample standard deviation ``sd`` (``n - 1`` in the
  denominator) and the 95% confidence interval ``mean ± t_{0.975, n-1} * sd / sqrt(n)``; with
  ``n = 1`` there is no interval (``note`` says so).
* Paired comparison of a group against its reference group (the group with the reference's
  values on the reference axes and the group's own values on the others) over the seeds that
  both have the metric for: per-seed differences ``group - reference``, their mean with its 95%
  t interval, and the two-sided paired t-test's p-value (``scipy.stats.ttest_rel``, df = n - 1).
  ``significant``: the interval excludes 0 (``None`` when there is no interval, or when every
  difference is the same and the t statistic is undefined).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from blockexp.errors import UsageError

__all__ = [
    "LEVEL",
    "SEED",
    "TEST_NAME",
    "axes_of",
    "estimate",
    "group_label",
    "group_runs",
    "label",
    "paired",
    "pareto_front",
    "reference_groups",
    "parse_reference",
    "summarize",
]

SEED = "seed"
LEVEL = 0.95
TEST_NAME = "paired t-test, two-sided, df=n-1"

Key = tuple[tuple[str, str], ...]


def label(value: Any) -> str:
    """A parameter value as text: strings as they are, anything else as JSON (``0.0001``,
    ``true``, ``null``, ``[1, 2]``)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def axes_of(runs: Sequence[Any], order: Sequence[str] = ()) -> list[str]:
    """The parameter names of ``runs`` but the seed: ``order`` first (a sweep's axes), then the
    others in the order they first appear."""
    names = [a for a in order if a != SEED]
    for run in runs:
        names += [a for a in run.params if a != SEED and a not in names]
    return names


def group_label(key: Key) -> str:
    """``"strategy=LlamaPro, lr=0.0001"`` (``"all"`` when there are no parameters)."""
    return ", ".join(f"{a}={v}" for a, v in key) or "all"


def group_runs(runs: Sequence[Any], axes: Sequence[str]) -> dict[Key, list[Any]]:
    """Runs by their values on ``axes`` (a missing parameter reads as ``null``), in the order
    the groups first appear."""
    groups: dict[Key, list[Any]] = {}
    for run in runs:
        key = tuple((a, label(run.params.get(a))) for a in axes)
        groups.setdefault(key, []).append(run)
    return groups


def estimate(values: Sequence[float]) -> dict[str, Any]:
    """``n``, ``mean``, ``sd``, ``ci_low``, ``ci_high``, ``ci_half`` (95%, Student's t) and a
    ``note``; ``sd`` and the interval are ``None`` for ``n < 2``."""
    from scipy import stats

    n = len(values)
    out: dict[str, Any] = {"n": n, "mean": None, "sd": None}
    out.update(ci_low=None, ci_high=None, ci_half=None, note="")
    if n == 0:
        out["note"] = "no values"
        return out
    mean = math.fsum(values) / n
    out["mean"] = mean
    if n == 1:
        out["note"] = "n=1: no interval"
        return out
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * sd / math.sqrt(n)
    out.update(sd=sd, ci_low=mean - half, ci_high=mean + half, ci_half=half)
    return out


def summarize(groups: dict[Key, list[Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row per group and metric with at least one value: ``group``, ``metric``,
    ``runs`` (names) and :func:`estimate`'s fields."""
    rows = []
    for key, runs in groups.items():
        for metric in metrics:
            have = [r for r in runs if metric in r.metrics]
            if not have:
                continue
            row = {"group": group_label(key), "metric": metric}
            row.update(estimate([r.metrics[metric] for r in have]))
            row["runs"] = [r.name for r in have]
            rows.append(row)
    return rows


def _matches(value: str, wanted: Any) -> bool:
    if not isinstance(wanted, str):
        return value == label(wanted)
    if value == wanted:
        return True
    try:
        return float(json.loads(value)) == float(wanted)
    except (ValueError, TypeError):
        return False


def parse_reference(spec: str | dict[str, Any], axes: Sequence[str]) -> dict[str, Any]:
    """``"strategy=LlamaPro"`` (several joined by commas), ``"LlamaPro"`` (a value of the first
    axis) or a dict ``{axis: value}`` -> ``{axis: value}``."""
    if isinstance(spec, dict):
        parsed = dict(spec)
    elif "=" in spec:
        parsed = {}
        for part in spec.split(","):
            axis, eq, value = part.partition("=")
            if not eq or not axis.strip():
                raise UsageError(f"compare: --reference {spec!r}: expected AXIS=VALUE[,...].")
            parsed[axis.strip()] = value.strip()
    else:
        if not axes:
            raise UsageError(
                f"compare: --reference {spec!r}: the runs have no parameter besides the seed."
            )
        parsed = {axes[0]: spec}
    unknown = [a for a in parsed if a not in axes]
    if unknown:
        raise UsageError(
            f"compare: --reference names {', '.join(unknown)}, not a parameter of these runs "
            f"(parameters: {', '.join(axes) or 'none besides the seed'})."
        )
    return parsed


def reference_groups(groups: dict[Key, list[Any]], reference: dict[str, Any]) -> dict[Key, Key]:
    """Each group that does not match ``reference`` -> its reference group (same values on the
    other axes); groups without one are left out.

    Raises:
        UsageError: no group matches ``reference`` (the message lists the groups).
    """
    refs = [k for k in groups if all(_matches(dict(k)[a], v) for a, v in reference.items())]
    if not refs:
        wanted = ", ".join(f"{a}={label(v)}" for a, v in reference.items())
        raise UsageError(
            f"compare: the reference {wanted} is not among the groups: "
            f"{'; '.join(group_label(k) for k in groups)}."
        )
    out = {}
    for key in groups:
        if key in refs:
            continue
        others = [(a, v) for a, v in key if a not in reference]
        ref = next((r for r in refs if all(p in r for p in others)), None)
        if ref is not None:
            out[key] = ref
    return out


def _by_seed(runs: list[Any], key: Key) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for run in runs:
        if SEED not in run.params:
            continue
        seed = label(run.params[SEED])
        if seed in out:
            raise UsageError(
                f"compare: group {group_label(key)} has two runs with seed {seed} "
                f"({out[seed].name}, {run.name}); pass only one of them."
            )
        out[seed] = run
    return out


def paired(
    groups: dict[Key, list[Any]], pairs: dict[Key, Key], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per (group, metric) that its reference group shares: ``group``,
    ``reference``, ``metric``, ``n``, ``seeds``, ``differences`` (group - reference, per seed),
    ``mean_diff``, ``sd``, ``ci_low``, ``ci_high``, ``ci_half``, ``p``, ``test``,
    ``significant`` and ``note`` (module docstring)."""
    from scipy import stats

    rows = []
    for key, ref in pairs.items():
        mine, theirs = _by_seed(groups[key], key), _by_seed(groups[ref], ref)
        for metric in metrics:
            seeds = [
                s
                for s in mine
                if s in theirs and metric in mine[s].metrics and metric in theirs[s].metrics
            ]
            if not seeds and not any(metric in r.metrics for r in groups[key]):
                continue
            a = [mine[s].metrics[metric] for s in seeds]
            b = [theirs[s].metrics[metric] for s in seeds]
            diffs = [x - y for x, y in zip(a, b, strict=True)]
            est = estimate(diffs)
            row = {"group": group_label(key), "reference": group_label(ref), "metric": metric}
            row.update(n=len(seeds), seeds=seeds, differences=diffs, mean_diff=est["mean"])
            row.update({k: est[k] for k in ("sd", "ci_low", "ci_high", "ci_half")})
            row.update(p=None, test="", significant=None, note=est["note"])
            if not seeds:
                row["note"] = "no seed with this metric in both groups"
            elif len(seeds) >= 2:
                row["test"] = f"paired t-test, two-sided, df={len(seeds) - 1}"
                if est["sd"] == 0:
                    row["note"] = "every difference is the same: t is undefined"
                else:
                    row["p"] = float(stats.ttest_rel(a, b).pvalue)
                    row["significant"] = bool(est["ci_low"] > 0 or est["ci_high"] < 0)
            rows.append(row)
    return rows


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points ``(forgetting, gain)`` that no other point dominates (another has
    forgetting <= and gain >=, one of them strictly), sorted by forgetting."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (u <= x and v >= y) and (u < x or v > y) for j, (u, v) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))
