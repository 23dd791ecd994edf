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
* Seeds: lm-eval's own defaults (:data:`DEFAULT_SEEDS`), so the few-shot prompts are those of
  ``lm_eval`` on the same task; headline metrics and group aggregates: :mod:`.scores`.
* lm-eval is the optional extra ``blockexp[eval]``; without it the error says how to install it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from blockexp.evaluation.lmeval.scores import (
    apply_aggregates,
    declared_metrics,
    headline_keys,
)
from blockexp.evaluation.lmeval.tasks import TASKS_DIR, shipped_tasks

__all__ = [
    "DEFAULT_SEEDS",
    "EvalError",
    "TASKS_DIR",
    "evaluate_model",
    "lm_eval_seeds",
    "load_tasks",
    "require_lm_eval",
    "shipped_tasks",
]

#: lm-eval's own default seeds (python ``random``, numpy, torch, few-shot sampler), which its
#: CLI and ``simple_evaluate`` use: lm_eval/defaults.py DEFAULT_RANDOM_SEED = 0 and
#: DEFAULT_OTHER_SEED = 1234; lm_eval/config/evaluate_config.py DEFAULT_SEED = [0, 1234, 1234,
#: 1234] (lm-eval 0.4.13; a test checks they still agree).
DEFAULT_SEEDS = (0, 1234, 1234, 1234)

_RESULT_KEYS = (
    "results",
    "groups",
    "group_subtasks",
    "n-shot",
    "versions",
    "higher_is_better",
    "n-samples",
)


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
    with offline(not online), _quiet(True), warnings.catch_warnings():
        # lm-eval 0.4.13 deprecates the nested task dicts that get_task_dict returns in favour of
        # TaskManager.load(); this module (and simple_evaluate's `tasks=`) still speak the nested
        # form, which lm-eval < 0.5 (our pin) keeps. The notice says nothing a user can act on.
        warnings.filterwarnings(
            "ignore", r"(get_task_dict|Use TaskManager\.load)", DeprecationWarning
        )
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


def lm_eval_seeds(seed: int | Sequence[int] | None = None) -> tuple[int, int, int, int]:
    """The four seeds lm-eval takes (python ``random``, numpy, torch, few-shot sampler).

    ``None``: lm-eval's own defaults (:data:`DEFAULT_SEEDS`, ``0,1234,1234,1234``), so the same
    model and task give the same few-shot prompts as ``lm_eval``; one integer: all four (as
    ``lm_eval --seed N``); four integers: one each.
    """
    if seed is None:
        return DEFAULT_SEEDS
    if isinstance(seed, int) and not isinstance(seed, bool):
        return (seed,) * 4
    values = list(seed) if isinstance(seed, list | tuple) else []
    if len(values) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise EvalError(
            f"seed must be one integer or four (python, numpy, torch, few-shot), got {seed!r}; "
            f"leave it unset for lm-eval's defaults {list(DEFAULT_SEEDS)}."
        )
    return tuple(values)  # type: ignore[return-value]


def _check_aggregates(aggregate: Mapping[str, str], loaded: Mapping[Any, Any]) -> None:
    groups = {getattr(k, "group_name", None) for k in loaded if not isinstance(k, str)}
    origin = getattr(loaded, "origin", {})
    groups |= {origin.get(g) for g in groups}
    stray = sorted(set(aggregate) - groups)
    if stray:
        raise EvalError(
            f"aggregate names {stray}, which are not lm-eval groups among the evaluated tasks "
            "(aggregate: {GROUP: unweighted|size_weighted} applies to groups such as mmlu)."
        )


def evaluate_model(
    model,
    tokenizer,
    tasks: Sequence[str],
    *,
    num_fewshot: int | Mapping[str, int | None] | None = None,
    limit: int | float | None = None,
    batch_size: int | str = 8,
    max_batch_size: int | None = None,
    include_paths: Sequence[str | Path] = (),
    seed: int | Sequence[int] | None = None,
    log_samples: bool = False,
    max_length: int | None = None,
    verbose: bool = False,
    bootstrap_iters: int = 1000,
    loaded_tasks: Mapping[Any, Any] | None = None,
    metrics: Mapping[str, str] | None = None,
    aggregate: Mapping[str, str] | None = None,
    confirm_run_unsafe_code: bool = False,
    online: bool = False,
) -> dict[str, Any]:
    """Run lm-eval ``tasks`` on ``model`` (a ``transformers`` causal LM) in this process.

    The model is put in eval mode for the run and its previous mode is restored afterwards.
    ``num_fewshot``: one count for every task, or ``{task: count}`` (tasks not named keep their
    own); tasks with different counts run as separate lm-eval calls whose results are merged.
    ``batch_size``: an integer or ``"auto"`` (lm-eval finds the largest that fits, up to
    ``max_batch_size``). ``seed``: see :func:`lm_eval_seeds` (default: lm-eval's own).
    ``metrics``: the headline metric per task (default: the task's first declared metric, see
    :mod:`.scores`). ``aggregate``: ``{group: "unweighted" | "size_weighted"}``, how a group's
    headline score is taken from its leaf tasks (both are recorded under ``aggregates``).
    ``online``: allow downloads (to fill the datasets cache once; evaluation is offline by
    default). ``confirm_run_unsafe_code``: let tasks that execute generated code (HumanEval, MBPP) run.
    ``bootstrap_iters`` only sets how lm-eval estimates standard errors (lm-eval's own CLI uses
    100000; 0 skips them); the scores do not depend on it. ``loaded_tasks``: the result of
    :func:`load_tasks` for ``tasks``, to skip loading them again.

    Returns:
        A JSON-serialisable dict: lm-eval's ``results``, ``groups``, ``group_subtasks``,
        ``n-shot``, ``versions``, ``higher_is_better`` and ``n-samples`` entries, ``samples``
        when ``log_samples``, the settings under ``settings``, the headline ``metric,filter`` key
        of each task under ``headline_keys``, its value under ``scores`` and the group
        aggregates under ``aggregates``.
    """
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    seeds = lm_eval_seeds(seed)
    if loaded_tasks is None:
        loaded_tasks = load_tasks(tasks, include_paths, online)
    task_objects = loaded_tasks
    names = task_names(task_objects)
    _check_aggregates(aggregate or {}, task_objects)
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
        # a task by its object; a group by its key (the Group, which holds its subtasks)
        runs.setdefault(shots_of.get(name), []).append(
            task_objects[key] if isinstance(key, str) else key
        )
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
                **({"max_batch_size": max_batch_size} if max_batch_size else {}),
            )
        for shots, objects in runs.items():
            with offline(not online), _quiet(not verbose):
                raw = lm_eval.simple_evaluate(
                    model=lm,
                    tasks=objects,
                    num_fewshot=shots,
                    limit=limit,
                    log_samples=log_samples,
                    random_seed=seeds[0],
                    numpy_random_seed=seeds[1],
                    torch_random_seed=seeds[2],
                    fewshot_random_seed=seeds[3],
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
        "seed": list(seeds),
        "lm_eval_version": getattr(lm_eval, "__version__", "unknown"),
    }
    origin = getattr(task_objects, "origin", {})

    def given(table: Mapping[str, str] | None, name: str) -> str | None:
        """A preset's entry for a task: by its own name or the (tag) name it came from."""
        table = table or {}
        return table.get(name, table.get(origin.get(name, name)))

    wanted = declared_metrics(task_objects)
    wanted.update({n: m for n in names if (m := given(metrics, n))})
    out["headline_keys"] = headline_keys(out, tasks=names, metrics=wanted)
    out["scores"] = {n: float(out["results"][n][k]) for n, k in out["headline_keys"].items()}
    by_name = {n: how for n in names if (how := given(aggregate, n))}
    apply_aggregates(out, out["headline_keys"], by_name)
    return out


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
