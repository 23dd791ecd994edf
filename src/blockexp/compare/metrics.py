"""The metrics of one run, derived from the files its callbacks wrote (docs/compare.md).

* ``heldout/heldout.json`` (:class:`~blockexp.evaluation.heldout.HeldoutLoss`):
  ``heldout/<name>/before|after|change`` (change = after - before), ``forgetting`` = after -
  before on the corpus named by "forgetting", ``gain`` = before - after on the one named by
  "gain" (nats).
* ``general.json`` (:class:`~blockexp.evaluation.general.GeneralEval`):
  ``general/<task>/start|end``, ``general/mean/start|end`` and ``general/mean/change``; "start"
  is the entry labelled ``start``, "end" the one labelled ``end`` or else the last entry after
  the start (a TRACE run's last round).
* ``trace/R.json`` (:class:`~blockexp.trace.callback.TRACECallback`): ``trace/OP``,
  ``trace/BWT`` (LLaMA Pro eq. 7) and ``trace/BWT_trace`` (TRACE paper) of the last round done,
  as the callback computed them, and R itself.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["finished", "general_metrics", "heldout_metrics", "trace_metrics"]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def heldout_metrics(data: dict[str, Any]) -> dict[str, float]:
    """``heldout/<name>/before|after|change``, ``forgetting`` and ``gain`` of a heldout.json."""
    out: dict[str, float] = {}
    corpora = data.get("corpora") or {}
    for name, entry in corpora.items():
        before, after = _number(entry.get("before")), _number(entry.get("after"))
        if before is not None:
            out[f"heldout/{name}/before"] = before
        if after is not None:
            out[f"heldout/{name}/after"] = after
        if before is not None and after is not None:
            out[f"heldout/{name}/change"] = after - before
    for key, sign in (("forgetting", 1.0), ("gain", -1.0)):
        change = out.get(f"heldout/{data.get(key)}/change")
        if data.get(key) is not None and change is not None:
            out[key] = sign * change
    return out


def _end_entry(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    ends = [e for e in entries if e.get("label") == "end"]
    if ends:
        return ends[-1]
    later = [e for e in entries if e.get("label") != "start"]
    return later[-1] if later else None


def general_metrics(data: dict[str, Any]) -> dict[str, float]:
    """``general/<task>/start|end``, ``general/mean/start|end|change`` of a general.json."""
    entries = data.get("entries") or []
    start = next((e for e in entries if e.get("label") == "start"), None)
    end = _end_entry(entries)
    out: dict[str, float] = {}
    for which, entry in (("start", start), ("end", end)):
        if entry is None:
            continue
        for task, score in (entry.get("scores") or {}).items():
            if (value := _number(score)) is not None:
                out[f"general/{task}/{which}"] = value
        if (mean := _number(entry.get("mean"))) is not None:
            out[f"general/mean/{which}"] = mean
    if "general/mean/start" in out and "general/mean/end" in out:
        out["general/mean/change"] = out["general/mean/end"] - out["general/mean/start"]
    return out


def trace_metrics(data: dict[str, Any]) -> tuple[dict[str, float], list[str], list[list]]:
    """``({"trace/OP", "trace/BWT", "trace/BWT_trace"}, tasks, R)`` of an R.json: OP and both BWTs
    (LLaMA Pro eq. 7; the TRACE paper's) of the last round done (the callback's own values), the
    task names and R (``None`` where not evaluated)."""
    out: dict[str, float] = {}
    for key in ("OP", "BWT", "BWT_trace"):
        series = data.get(key) or []
        if series and (value := _number(series[-1])) is not None:
            out[f"trace/{key}"] = value
    return out, list(data.get("tasks") or []), list(data.get("R") or [])


def finished(heldout: dict | None, general: dict | None, trace: dict | None) -> bool:
    """Whether a run's files say that it reached the end of its fit: heldout "after" measured,
    a GeneralEval "end" entry, or every TRACE round scored."""
    if heldout is not None and heldout.get("step_after") is not None:
        return True
    if general is not None and any(e.get("label") == "end" for e in general.get("entries", [])):
        return True
    if trace is not None and trace.get("tasks"):
        return trace.get("rounds_done") == len(trace["tasks"])
    return False
