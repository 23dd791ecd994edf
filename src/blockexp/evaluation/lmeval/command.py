"""``python -m blockexp eval``: lm-evaluation-harness on a model directory or training checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from blockexp.io.outputs import atomic_write

__all__ = [
    "run_eval",
    "load_for_eval",
    "default_out_dir",
    "print_results",
    "result_rows",
    "eval_view",
]


def eval_view(model):
    """The plain causal LM to evaluate: the model as exported (an MoE export saver is unwrapped;
    LoRA's :meth:`~blockexp.expanders.Expander.export_model` already merged its adapters)."""
    from blockexp.layers.moe import MoEExport

    return model.model if isinstance(model, MoEExport) else model


def load_for_eval(
    spec: str,
    tokenizer: str | None = None,
    base: str | None = None,
    trust_remote_code: bool = False,
    dtype: str | None = None,
):
    """``(model, tokenizer)`` from a Hugging Face directory or hub id, an exported MoE directory,
    or a ``blockexp fit`` checkpoint (``.ckpt``, rebuilt and checked as ``export`` does).

    ``dtype`` (``float32``, ``float16``, ``bfloat16``): load a Hugging Face model in it (as
    lm-eval's ``--model_args dtype=...``); a checkpoint or MoE export is cast to it."""
    import torch
    from transformers import AutoModelForCausalLM

    from blockexp.evaluation.lmeval.harness import offline
    from blockexp.expanders.moe import load_moe_model
    from blockexp.io.tokenization import _HUB_ID_RE, load_tokenizer
    from blockexp.layers.moe import MOE_WEIGHTS_NAME
    from blockexp.training.export import load_checkpoint_file, rebuild_from_checkpoint

    hf_kwargs = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        hf_kwargs["dtype"] = getattr(torch, dtype)
    path = Path(spec).expanduser()
    if path.is_file() or spec.endswith(".ckpt"):
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist.")
        state = load_checkpoint_file(path)
        info = state.get("blockexp")
        if info is None:
            raise ValueError(f"{path} was not written by blockexp fit (no 'blockexp' entry).")
        model = eval_view(rebuild_from_checkpoint(state, path, base, trust_remote_code))
        tok_spec = tokenizer or info.get("tokenizer")
        if not tok_spec:
            raise ValueError(f"{path} records no tokenizer; pass --tokenizer DIR_OR_HUB_ID.")
        model = model.to(hf_kwargs["dtype"]) if dtype is not None else model
        return model.eval(), load_tokenizer(tok_spec, trust_remote_code=trust_remote_code)
    if path.is_dir():
        if (path / MOE_WEIGHTS_NAME).is_file():
            model = load_moe_model(path, dtype=hf_kwargs.get("dtype"))
        elif not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} has no config.json; pass a Hugging Face model directory, an exported "
                "blockexp directory or a .ckpt file."
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **hf_kwargs)
    elif _HUB_ID_RE.match(spec) and not spec.startswith((".", "/", "~")):
        try:
            with offline():
                model = AutoModelForCausalLM.from_pretrained(spec, **hf_kwargs)
        except OSError:
            raise FileNotFoundError(
                f"model {spec!r} is not a local directory, and not a hub id in the local "
                "Hugging Face cache (eval loads models offline). Check the path, or download "
                "the model first (huggingface-cli download ID)."
            ) from None
    else:
        raise FileNotFoundError(f"model {path} does not exist (not a directory, file or hub id).")
    return model.eval(), load_tokenizer(tokenizer or spec, trust_remote_code=trust_remote_code)


def default_out_dir(spec: str) -> Path:
    """Where results go by default: ``<run dir>/eval``, never inside the model directory.

    The run directory of ``RUN/model`` is ``RUN``; of ``RUN/checkpoints/x.ckpt`` it is ``RUN``;
    a hub id writes to ``outputs/eval/<id>``.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        parent = path.resolve().parent
        return (parent.parent if parent.name == "checkpoints" else parent) / "eval"
    if path.is_dir():
        return path.resolve().parent / "eval"
    return Path("outputs/eval") / spec.replace("/", "__")


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) >= 1e4 else f"{value:.4f}"


def lower_is_better(results: dict[str, Any]) -> set[tuple[str, str]]:
    """``(task, metric)`` pairs that lm-eval declares lower-is-better (``higher_is_better``
    false): perplexities and the like, which are not scores in [0, 1]."""
    return {
        (task, metric)
        for task, metrics in (results.get("higher_is_better") or {}).items()
        for metric, higher in (metrics or {}).items()
        if higher is False
    }


def result_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """The rows of :func:`print_results`: ``(task, metric, filter, value, stderr, n)``, one per
    task and metric. The task's headline (``results["headline_keys"]``: its declared primary
    metric) is marked `` *``, exactly once per task; a group in ``results["aggregates"]`` gets a
    row for the unweighted mean of its subtasks beside lm-eval's (size-weighted) group value,
    each labelled, and the star goes to the one the preset chose."""
    heads = results.get("headline_keys", {})
    aggregates = results.get("aggregates", {})
    samples = results.get("n-samples", {})
    lower = lower_is_better(results)
    rows = []
    for task, entry in results.get("results", {}).items():
        n = str(samples.get(task, {}).get("effective", entry.get("sample_len", "")))
        agg = aggregates.get(task)
        for key, value in entry.items():
            if "," not in key or "_stderr" in key:
                continue
            metric, filt = key.split(",", 1)
            stderr = entry.get(f"{metric}_stderr,{filt}")
            shown = _fmt(value) if isinstance(value, float) else str(value)
            err = _fmt(stderr) if isinstance(stderr, float) else ""
            label = metric + (" (lower is better)" if (task, metric) in lower else "")
            if agg is not None and key == agg["key"]:
                label += " (size-weighted, lm-eval group)"
            if key == heads.get(task) and (agg is None or agg["headline"] == "size_weighted"):
                label += " *"
            rows.append((task, label, filt, shown, err, n))
            if agg is not None and key == agg["key"]:
                label = f"{metric} (unweighted mean of {agg['subtasks']} subtasks)"
                label += " *" if agg["headline"] == "unweighted" else ""
                rows.append((task, label, filt, _fmt(agg["unweighted"]), "", n))
    return rows


def print_results(results: dict[str, Any], title: str = "lm-eval results") -> None:
    """A rich table of :func:`result_rows`, then the mean of the headline scores."""
    from rich.console import Console
    from rich.table import Table

    from blockexp.evaluation.lmeval.scores import mean_score

    table = Table(title=title)
    for column in ("task", "metric", "filter", "value", "± stderr", "n"):
        table.add_column(
            column, justify="right" if column in ("value", "± stderr", "n") else "left"
        )
    for row in result_rows(results):
        table.add_row(*row)
    console = Console()
    console.print(table)
    scores = results.get("scores", {})
    if scores:
        console.print(
            f"headline scores (*): mean {mean_score(scores):.4f} over {len(scores)} task(s)"
        )
    for task, metric in sorted(lower_is_better(results)):
        what = (
            "exp of the mean negative log-likelihood per target: unbounded, and on a small "
            "model dominated by its least likely targets"
            if metric.endswith("perplexity")
            else "not a score in [0, 1]"
        )
        headline = results.get("headline_keys", {}).get(task, "").split(",")[0] == metric
        console.print(
            f"note: {task} {metric} is lower-is-better ({what}); shown as lm-eval reports it"
            + (
                ". It is this task's headline, so the mean mixes scales: name a [0, 1] metric "
                "for it in a preset (`metric:`)"
                if headline
                else ", not in the headline mean"
            )
        )
    settings = results.get("settings", {})
    where = settings.get("reference") or "the preset's reference harness"
    for task, diff in settings.get("version_differences", {}).items():
        console.print(f"note: {task} is version {diff['now']} here, {diff['reference']} in {where}")


def _split(value: str | list[str]) -> list[str]:
    items = value if isinstance(value, list) else str(value).split(",")
    return [item.strip() for item in items if item.strip()]


def run_eval(
    model: str,
    tasks: str | None = None,
    preset: str | None = None,
    include_path: str | None = None,
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int | str | None = None,
    max_batch_size: int | None = None,
    dtype: str | None = None,
    out: str | None = None,
    tokenizer: str | None = None,
    base: str | None = None,
    device: str | None = None,
    log_samples: bool = False,
    seed: int | list[int] | None = None,
    trust_remote_code: bool = False,
    confirm_run_unsafe_code: bool = False,
    online: bool = False,
) -> Path:
    """Evaluate a model with lm-evaluation-harness, offline; print a table and write JSON.

    Args:
        model: a Hugging Face directory (an exported blockexp model included), a hub id already
            in the local cache, or a ``blockexp fit`` checkpoint (``.ckpt``).
        tasks: comma-separated lm-eval task/group/tag names, or names of local task YAMLs
            (shipped: blockexp_cloze, blockexp_choice, blockexp_complete, blockexp_code_line;
            the tag blockexp_general runs the first three).
        preset: an evaluation list with per-task shots and headline metrics (and optionally
            dtype, batch size, group aggregation), e.g. configs/eval/llama_pro_general.yaml
            (the LLaMA Pro paper's); --tasks adds to it.
        include_path: extra directories of task YAMLs (comma-separated).
        num_fewshot: override every task's shot count (default: the task's own).
        limit: evaluate only this many documents per task (a float < 1: that fraction).
        batch_size: lm-eval batch size: an int or "auto" (default: the preset's, else 8).
        max_batch_size: the largest batch "auto" tries (default: the preset's, else lm-eval's).
        dtype: float32, float16 or bfloat16 (default: the preset's, else as saved).
        out: results directory (default: ``<run dir>/eval``, see ``default_out_dir``).
        tokenizer: tokenizer spec (default: the model's own, or the checkpoint's).
        base: for a checkpoint whose base has moved: the base (checked against it).
        device: ``cpu``, ``cuda``, ``cuda:1`` ... (default: cuda when available).
        log_samples: also store every document's prompt, output and scores.
        seed: lm-eval's seeds (python random, numpy, torch, few-shot sampler): one int for all
            four, or a list of four (default: lm-eval's own, [0, 1234, 1234, 1234], so the
            few-shot prompts are those of `lm_eval` on the same task).
        trust_remote_code: allow custom modelling code of the model (off by default).
        confirm_run_unsafe_code: let tasks that execute model-generated code run (HumanEval,
            MBPP); only in a sandbox.
        online: allow downloads (to fill the datasets cache once); offline by default.
    """
    import torch

    from blockexp.evaluation.lmeval.harness import (
        EvalError,
        evaluate_model,
        lm_eval_seeds,
        load_tasks,
    )
    from blockexp.evaluation.lmeval.preset import (
        DTYPES,
        Preset,
        check_batch_size,
        load_preset,
        version_differences,
    )

    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be > 0, got {limit}.")
    if batch_size is not None:
        batch_size = check_batch_size(batch_size, "--batch_size")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {list(DTYPES)}, got {dtype!r}.")
    lm_eval_seeds(seed)  # a malformed --seed fails before anything loads
    spec = load_preset(preset) if preset else Preset("", [], {}, {}, False)
    names, shots, metrics = list(spec.tasks), dict(spec.num_fewshot), dict(spec.metrics)
    unsafe = confirm_run_unsafe_code or spec.confirm_run_unsafe_code
    batch_size = batch_size or spec.batch_size or 8
    max_batch_size = max_batch_size or spec.max_batch_size
    dtype = dtype or spec.dtype
    names += [t for t in _split(tasks or "") if t not in names]
    if not names:
        raise EvalError("no tasks: pass --tasks NAME[,NAME...] or --preset FILE.")
    if num_fewshot is not None:
        shots = dict.fromkeys(names, num_fewshot)
    include = _split(include_path or "")
    if out:  # results never go into (or over) the model, its base or a task file
        from blockexp.io.inputs import check_outside_inputs

        check_outside_inputs(out, [model, base, tokenizer, preset, *include])
    loaded = load_tasks(names, include, online)  # names and data checked before the model loads
    lm, tok = load_for_eval(model, tokenizer, base, trust_remote_code, dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm.to(device)
    if limit is not None and limit >= 1:
        limit = int(limit)
    start = time.perf_counter()
    results = evaluate_model(
        lm,
        tok,
        names,
        num_fewshot=shots or None,
        limit=limit,
        batch_size=batch_size,
        max_batch_size=max_batch_size,
        include_paths=include,
        seed=seed,
        log_samples=log_samples,
        loaded_tasks=loaded,
        metrics=metrics,
        aggregate=spec.aggregate,
        confirm_run_unsafe_code=unsafe,
        online=online,
    )
    results["settings"].update(
        model=str(model),
        preset=preset,
        dtype=str(next(lm.parameters()).dtype).removeprefix("torch."),
        seconds=time.perf_counter() - start,
    )
    if spec.reference or spec.reference_versions:
        results["settings"]["reference"] = spec.reference
        results["settings"]["version_differences"] = version_differences(
            results, spec.reference_versions
        )
    out_dir = Path(out) if out else default_out_dir(model)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"lmeval-{stamp}.json"
    atomic_write(path, json.dumps(results, indent=2))
    print_results(results, title=f"lm-eval: {model}")
    print(f"wrote {path}")
    return path
