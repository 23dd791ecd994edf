"""``python -m blockexp eval``: lm-evaluation-harness on a model directory or training checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from blockexp.io.outputs import atomic_write

__all__ = ["run_eval", "load_for_eval", "default_out_dir", "print_results", "eval_view"]


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
):
    """``(model, tokenizer)`` from a Hugging Face directory or hub id, an exported MoE directory,
    or a ``blockexp fit`` checkpoint (``.ckpt``, rebuilt and checked as ``export`` does)."""
    from transformers import AutoModelForCausalLM

    from blockexp.evaluation.lmeval.harness import offline
    from blockexp.expanders.moe import load_moe_model
    from blockexp.io.tokenization import _HUB_ID_RE, load_tokenizer
    from blockexp.layers.moe import MOE_WEIGHTS_NAME
    from blockexp.training.export import load_checkpoint_file, rebuild_from_checkpoint

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
        return model.eval(), load_tokenizer(tok_spec, trust_remote_code=trust_remote_code)
    if path.is_dir():
        if (path / MOE_WEIGHTS_NAME).is_file():
            model = load_moe_model(path)
        elif not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} has no config.json; pass a Hugging Face model directory, an exported "
                "blockexp directory or a .ckpt file."
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code)
    elif _HUB_ID_RE.match(spec) and not spec.startswith((".", "/", "~")):
        try:
            with offline():
                model = AutoModelForCausalLM.from_pretrained(
                    spec, trust_remote_code=trust_remote_code
                )
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


def print_results(results: dict[str, Any], title: str = "lm-eval results") -> None:
    """A rich table: one row per task and metric (value, stderr, samples), then the mean of
    the headline scores."""
    from rich.console import Console
    from rich.table import Table

    from blockexp.evaluation.lmeval.harness import mean_score

    table = Table(title=title)
    for column in ("task", "metric", "filter", "value", "± stderr", "n"):
        table.add_column(
            column, justify="right" if column in ("value", "± stderr", "n") else "left"
        )
    samples = results.get("n-samples", {})
    for task, entry in results.get("results", {}).items():
        n = samples.get(task, {}).get("effective", "")
        for key, value in entry.items():
            if "," not in key or "_stderr" in key:
                continue
            metric, filt = key.split(",", 1)
            stderr = entry.get(f"{metric}_stderr,{filt}")
            shown = _fmt(value) if isinstance(value, float) else str(value)
            err = _fmt(stderr) if isinstance(stderr, float) else ""
            headline = results.get("scores", {}).get(task)
            mark = " *" if headline is not None and value == headline else ""
            table.add_row(task, metric + mark, filt, shown, err, str(n))
    console = Console()
    console.print(table)
    scores = results.get("scores", {})
    if scores:
        console.print(
            f"headline scores (*): mean {mean_score(scores):.4f} over {len(scores)} task(s)"
        )


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
    batch_size: int = 8,
    out: str | None = None,
    tokenizer: str | None = None,
    base: str | None = None,
    device: str | None = None,
    log_samples: bool = False,
    seed: int = 0,
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
        preset: an evaluation list with per-task shots and headline metrics, e.g.
            configs/eval/llama_pro_general.yaml (the LLaMA Pro paper's); --tasks adds to it.
        include_path: extra directories of task YAMLs (comma-separated).
        num_fewshot: override every task's shot count (default: the task's own).
        limit: evaluate only this many documents per task (a float < 1: that fraction).
        batch_size: lm-eval batch size (an int).
        out: results directory (default: ``<run dir>/eval``, see ``default_out_dir``).
        tokenizer: tokenizer spec (default: the model's own, or the checkpoint's).
        base: for a checkpoint whose base has moved: the base (checked against it).
        device: ``cpu``, ``cuda``, ``cuda:1`` ... (default: cuda when available).
        log_samples: also store every document's prompt, output and scores.
        seed: seed of lm-eval's sampling of few-shot examples and of generation.
        trust_remote_code: allow custom modelling code of the model (off by default).
        confirm_run_unsafe_code: let tasks that execute model-generated code run (HumanEval,
            MBPP); only in a sandbox.
        online: allow downloads (to fill the datasets cache once); offline by default.
    """
    import torch

    from blockexp.evaluation.lmeval.harness import (
        EvalError,
        evaluate_model,
        load_preset,
        load_tasks,
    )

    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be > 0, got {limit}.")
    if batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {batch_size}.")
    names, shots, metrics, unsafe = [], {}, {}, confirm_run_unsafe_code
    if preset:
        spec = load_preset(preset)
        names, shots, metrics = list(spec.tasks), dict(spec.num_fewshot), dict(spec.metrics)
        unsafe = unsafe or spec.confirm_run_unsafe_code
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
    lm, tok = load_for_eval(model, tokenizer, base, trust_remote_code)
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
        include_paths=include,
        seed=seed,
        log_samples=log_samples,
        loaded_tasks=loaded,
        metrics=metrics,
        confirm_run_unsafe_code=unsafe,
        online=online,
    )
    results["settings"].update(model=str(model), preset=preset, seconds=time.perf_counter() - start)
    out_dir = Path(out) if out else default_out_dir(model)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"lmeval-{stamp}.json"
    atomic_write(path, json.dumps(results, indent=2))
    print_results(results, title=f"lm-eval: {model}")
    print(f"wrote {path}")
    return path
