"""General-ability evaluation with lm-evaluation-harness, in-process and offline.

:func:`evaluate_model` runs lm-eval tasks on a model object (a loaded Hugging Face directory, an
exported checkpoint, or the model being trained) through lm-eval's own ``HFLM`` wrapper and
``simple_evaluate``, so every score is lm-eval's definition of it. ``python -m blockexp eval``
and the :class:`~blockexp.evaluation.general.GeneralEval` callback both go through it.

* Tasks are lm-eval task names, or names of local task YAMLs found in ``include_paths`` and in
  the shipped tasks directory (:mod:`blockexp.evaluation.lmeval.tasks`: ``blockexp_cloze``,
  ``blockexp_choice``, ``blockexp_complete`` -- tag ``blockexp_general`` -- and
  ``blockexp_code_line``).
* Offline: the Hugging Face Hub and ``datasets`` are switched to offline mode while tasks load.
  A task whose data is not on disk fails with one :class:`EvalError` line naming the task.
* lm-eval is the optional extra ``blockexp[eval]``; without it the error says how to install it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from blockexp.evaluation.lmeval.tasks import TASKS_DIR, shipped_tasks

__all__ = [
    "EvalError",
    "TASKS_DIR",
    "Preset",
    "evaluate_model",
    "headline_scores",
    "load_preset",
    "load_tasks",
    "mean_score",
    "require_lm_eval",
    "shipped_tasks",
]

#: Metrics tried, in order, when a task's headline metric is not given: the first one that the
#: task reports (with any filter) is its headline score.
HEADLINE_ORDER = ("acc_norm", "acc", "edit_sim", "exact_match", "pass@1", "f1", "bleu")


_RESULT_KEYS = ("results", "groups", "n-shot", "versions", "higher_is_better", "n-samples")


class EvalError(ValueError):
    """A task or model that cannot be evaluated (one line; the CLI prints it as ``error:``)."""


def require_lm_eval():
    """The ``lm_eval`` module, or an :class:`EvalError` that says how to install it."""
    try:
        import lm_eval
    except ImportError:
        raise EvalError(
            "lm-evaluation-harness is not installed; install the eval extra: "
            "pip install -e '.[eval]' (or pip install 'blockexp[eval]')."
        ) from None
    return lm_eval


@contextlib.contextmanager
def offline(enabled: bool = True) -> Iterator[None]:
    """Hub and ``datasets`` offline inside the block (module flags and env, then restored)."""
    if not enabled:
        yield
        return
    import datasets
    import huggingface_hub

    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    saved = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _task_manager(tasks: Sequence[str], include_paths: Sequence[str | Path]):
    """A TaskManager that indexes the shipped and given task directories, and lm-eval's own
    tasks only when a requested name is not local (indexing those takes seconds)."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR)]
    for path in include_paths:
        path = Path(path)
        if not path.exists():
            raise EvalError(f"include path {path} does not exist.")
        paths.append(str(path.resolve()))
    local = TaskManager(include_path=paths, include_defaults=False)
    if all(name in local.all_tasks for name in tasks):
        return local
    manager = TaskManager(include_path=paths)
    unknown = [name for name in tasks if name not in manager.all_tasks]
    if unknown:
        raise EvalError(
            f"unknown task(s) {unknown}: not an lm-eval task, group or tag, and no task YAML "
            f"of that name in {paths}. Shipped local tasks: {shipped_tasks()}; list lm-eval's "
            "with `lm_eval ls tasks`; pass --include_path DIR for your own YAMLs."
        )
    return manager


class LoadedTasks(dict):
    """lm-eval's ``{name or group: task or group dict}``, plus ``origin``: for each top-level
    name (:func:`task_names`), the requested name it came from (a tag gives several)."""

    origin: dict[str, str]
    manager: Any


def load_tasks(
    tasks: Sequence[str], include_paths: Sequence[str | Path] = (), online: bool = False
) -> LoadedTasks:
    """Load every task (offline), one requested name at a time so a failure names its task."""
    require_lm_eval()
    from lm_eval.tasks import get_task_dict

    if not tasks:
        raise EvalError("no tasks given; pass --tasks NAME [NAME ...].")
    manager = _task_manager(tasks, include_paths)
    loaded = LoadedTasks()
    loaded.origin, loaded.manager = {}, manager
    with offline(not online), _quiet(True):
        for name in tasks:
            try:
                part = get_task_dict([name], manager)
                loaded.update(part)
                loaded.origin.update(dict.fromkeys(task_names(part), name))
            except Exception as err:  # noqa: BLE001 - lm-eval/datasets raise many kinds
                reason = " ".join(str(err).split())[:300] or type(err).__name__
                raise EvalError(
                    f"task {name!r} could not be loaded offline ({type(err).__name__}: {reason}). "
                    "Its data must be on disk: download it once where the Hub is reachable "
                    '(python -c "import datasets; datasets.load_dataset(PATH, NAME)") and point '
                    "HF_DATASETS_CACHE at the cache, or use a local task YAML (docs/eval.md)."
                ) from None
    return loaded


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """lm-eval's loggers at ERROR inside the block (its per-task notices drown the results)."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    if enabled:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def task_names(loaded: Mapping[Any, Any]) -> list[str]:
    """Top-level names of a :func:`load_tasks` result (a tag expands to its tasks, a group
    keeps its own name)."""
    return [k if isinstance(k, str) else getattr(k, "group_name", str(k)) for k in loaded]


def evaluate_model(
    model,
    tokenizer,
    tasks: Sequence[str],
    *,
    num_fewshot: int | Mapping[str, int | None] | None = None,
    limit: int | float | None = None,
    batch_size: int | str = 8,
    include_paths: Sequence[str | Path] = (),
    seed: int = 0,
    log_samples: bool = False,
    max_length: int | None = None,
    verbose: bool = False,
    bootstrap_iters: int = 1000,
    loaded_tasks: Mapping[Any, Any] | None = None,
    metrics: Mapping[str, str] | None = None,
    confirm_run_unsafe_code: bool = False,
    online: bool = False,
) -> dict[str, Any]:
    """Run lm-eval ``tasks`` on ``model`` (a ``transformers`` causal LM) in this process.

    The model is put in eval mode for the run and its previous mode is restored afterwards.
    ``num_fewshot``: one count for every task, or ``{task: count}`` (tasks not named keep their
    own); tasks with different counts run as separate lm-eval calls whose results are merged.
    ``metrics``: the headline metric per task (default: :data:`HEADLINE_ORDER`).
    ``online``: allow downloads (to fill the datasets cache once; evaluation is offline by
    default). ``confirm_run_unsafe_code``: let tasks that execute generated code (HumanEval, MBPP) run.
    ``bootstrap_iters`` only sets how lm-eval estimates standard errors (lm-eval's own CLI uses
    100000; 0 skips them); the scores do not depend on it. ``loaded_tasks``: the result of
    :func:`load_tasks` for ``tasks``, to skip loading them again.

    Returns:
        A JSON-serialisable dict: lm-eval's ``results``, ``groups``, ``n-shot``, ``versions``,
        ``higher_is_better`` and ``n-samples`` entries, ``samples`` when ``log_samples``, the
        settings under ``settings`` and :func:`headline_scores` under ``scores``.
    """
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    if loaded_tasks is None:
        loaded_tasks = load_tasks(tasks, include_paths, online)
    task_objects = loaded_tasks
    names = task_names(task_objects)
    if isinstance(num_fewshot, Mapping):
        unknown = sorted(set(num_fewshot) - set(tasks) - set(names))
        if unknown:
            raise EvalError(f"num_fewshot names tasks that are not evaluated: {unknown}")
        origin = getattr(task_objects, "origin", {})
        shots_of = {n: num_fewshot.get(n, num_fewshot.get(origin.get(n, n))) for n in names}
    else:
        shots_of = dict.fromkeys(names, num_fewshot)
    runs: dict[Any, list[Any]] = {}
    for key, name in zip(task_objects, names, strict=True):
        runs.setdefault(shots_of.get(name), []).append(task_objects[key])
    was_training = model.training
    model.eval()
    merged: dict[str, Any] = {}
    try:
        with _quiet(not verbose):
            lm = HFLM(
                pretrained=model,
                tokenizer=tokenizer,
                batch_size=batch_size,
                max_length=max_length,
                device=str(next(model.parameters()).device),
            )
        for shots, objects in runs.items():
            with offline(not online), _quiet(not verbose):
                raw = lm_eval.simple_evaluate(
                    model=lm,
                    tasks=objects,
                    num_fewshot=shots,
                    limit=limit,
                    log_samples=log_samples,
                    random_seed=seed,
                    numpy_random_seed=seed,
                    torch_random_seed=seed,
                    fewshot_random_seed=seed,
                    bootstrap_iters=bootstrap_iters,
                    confirm_run_unsafe_code=confirm_run_unsafe_code,
                    # the manager that loaded the tasks: without it lm-eval indexes all of its
                    # task YAMLs again (26,619 YAML loads in one profiled call)
                    task_manager=getattr(task_objects, "manager", None),
                )
            for key in _RESULT_KEYS + (("samples",) if log_samples else ()):
                merged.setdefault(key, {}).update(_plain(raw.get(key, {})))
    finally:
        model.train(was_training)
    out = {key: merged.get(key, {}) for key in _RESULT_KEYS}
    if log_samples:
        out["samples"] = merged.get("samples", {})
    out["settings"] = {
        "tasks": list(tasks),
        "num_fewshot": num_fewshot,
        "limit": limit,
        "batch_size": batch_size,
        "seed": seed,
        "lm_eval_version": getattr(lm_eval, "__version__", "unknown"),
    }
    if metrics:
        origin = getattr(task_objects, "origin", {})
        metrics = {
            n: metrics[k] for n in names if (k := n if n in metrics else origin.get(n)) in metrics
        }
    out["scores"] = headline_scores(out, tasks=names, metrics=metrics)
    return out


def headline_scores(
    results: Mapping[str, Any],
    tasks: Sequence[str] | None = None,
    metrics: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """One number per requested task: ``metrics[task]`` if given, else the first metric of
    :data:`HEADLINE_ORDER` that the task reports (any filter; ``none`` preferred)."""
    table = results.get("results", {})
    names = list(tasks) if tasks is not None else list(table)
    scores = {}
    for name in names:
        entry = table.get(name, {})
        wanted = [metrics[name]] if metrics and name in metrics else list(HEADLINE_ORDER)
        for metric in wanted:
            if "," in metric:  # an exact "metric,filter" key
                keys = [metric] if metric in entry else []
            else:
                keys = [k for k in entry if k.split(",")[0] == metric and "_stderr" not in k]
            keys.sort(key=lambda k: k != f"{metric},none")
            if keys and isinstance(entry[keys[0]], int | float):
                scores[name] = float(entry[keys[0]])
                break
    return scores


class Preset(NamedTuple):
    """A named evaluation list (``configs/eval/*.yaml``): tasks with their shots and metrics."""

    name: str
    tasks: list[str]
    num_fewshot: dict[str, int | None]
    metrics: dict[str, str]
    confirm_run_unsafe_code: bool


def load_preset(path: str | Path) -> Preset:
    """Read an evaluation preset: ``tasks`` is a list of ``{task, num_fewshot, metric}``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise EvalError(f"preset {path} does not exist (see configs/eval/ for the shipped ones).")
    data = yaml.safe_load(path.read_text()) or {}
    items = data.get("tasks")
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
    return Preset(
        str(data.get("name", path.stem)),
        tasks,
        shots,
        metrics,
        bool(data.get("confirm_run_unsafe_code", False)),
    )


def mean_score(scores: Mapping[str, float]) -> float:
    """Unweighted mean of headline scores (``nan`` when there are none)."""
    values = [v for v in scores.values() if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def _plain(value: Any) -> Any:
    """JSON-serialisable copy (numpy scalars to floats, tuples to lists, others to str)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
