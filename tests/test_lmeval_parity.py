"""`blockexp eval` and lm-eval's own CLI agree sample by sample: the same seeds (lm-eval's
defaults), so the same few-shot prompts and the same per-choice log-likelihoods."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blockexp.cli import main
from blockexp.evaluation.lmeval.harness import (
    DEFAULT_SEEDS,
    EvalError,
    evaluate_model,
    lm_eval_seeds,
)
from blockexp.evaluation.lmeval.tasks import TASKS_DIR

REPO = Path(__file__).resolve().parents[1]
TASK, SHOTS, DOCS = "blockexp_choice", 3, 5


def test_default_seeds_are_lm_evals_own():
    """The four defaults equal lm-eval's CLI defaults and simple_evaluate's (0,1234,1234,1234);
    one integer sets all four, a list each; anything else is refused."""
    import lm_eval
    from lm_eval.config.evaluate_config import DEFAULT_SEED

    assert list(DEFAULT_SEEDS) == DEFAULT_SEED == [0, 1234, 1234, 1234]
    params = inspect.signature(lm_eval.simple_evaluate).parameters
    names = ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed")
    assert tuple(params[n].default for n in names) == DEFAULT_SEEDS
    assert lm_eval_seeds() == DEFAULT_SEEDS
    assert lm_eval_seeds(7) == (7, 7, 7, 7)
    assert lm_eval_seeds([1, 2, 3, 4]) == (1, 2, 3, 4)
    for bad in ([1, 2, 3], "1234", [1, 2, 3, None]):
        with pytest.raises(EvalError, match="seed must be one integer or four"):
            lm_eval_seeds(bad)


def _lm_eval_samples(out_dir: Path) -> dict[int, list[tuple[str, str, float]]]:
    """``{doc_id: [(context, continuation, log-likelihood) per choice]}`` of lm-eval's
    ``samples_<task>_<time>.jsonl``."""
    (path,) = out_dir.rglob(f"samples_{TASK}_*.jsonl")
    out = {}
    for line in path.read_text().splitlines():
        sample = json.loads(line)
        args = sorted(sample["arguments"].items(), key=lambda kv: int(kv[0].rsplit("_", 1)[1]))
        lls = [float(resp[0]) for resp in sample["filtered_resps"]]
        out[sample["doc_id"]] = [
            (a["arg_0"], a["arg_1"], ll) for (_, a), ll in zip(args, lls, strict=True)
        ]
    return out


def _blockexp_samples(results: dict) -> dict[int, list[tuple[str, str, float]]]:
    """The same, from the ``samples`` of a `blockexp eval --log_samples` result."""
    return {
        s["doc_id"]: [
            (ctx, cont, float(resp[0]))
            for (ctx, cont), resp in zip(s["arguments"], s["filtered_resps"], strict=True)
        ]
        for s in results["samples"][TASK]
    }


def _contexts(samples: dict) -> dict[int, str]:
    return {doc: choices[0][0] for doc, choices in samples.items()}


def test_blockexp_eval_equals_lm_eval_cli_per_sample(tiny_llama_dir, tmp_path):
    """The issue's proof: on the same exported model and task at k=3, `blockexp eval` and
    `python -m lm_eval` build identical prompts and score every choice of every document with the
    same log-likelihood. With blockexp's old few-shot seed (0) the prompts differ."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    ref_dir = tmp_path / "lm_eval"
    command = [
        sys.executable, "-m", "lm_eval", "--model", "hf",
        "--model_args", f"pretrained={tiny_llama_dir}", "--device", "cpu",
        "--tasks", TASK, "--include_path", str(TASKS_DIR), "--num_fewshot", str(SHOTS),
        "--limit", str(DOCS), "--batch_size", "4", "--log_samples", "--output_path", str(ref_dir),
    ]  # fmt: skip
    log = (tmp_path / "lm_eval.log").open("w")
    # lm_eval runs beside blockexp (most of its time goes to indexing its own task YAMLs)
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        path = main(
            ["eval", "--model", str(tiny_llama_dir), "--tasks", TASK, "--num_fewshot",
             str(SHOTS), "--limit", str(DOCS), "--batch_size", "4", "--log_samples", "--out",
             str(tmp_path / "b")]
        )  # fmt: skip
        assert process.wait(timeout=600) == 0, (tmp_path / "lm_eval.log").read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    ours_results = json.loads(Path(path).read_text())
    ours = _blockexp_samples(ours_results)
    ref = _lm_eval_samples(ref_dir)
    (ref_results,) = ref_dir.rglob("results_*.json")
    ref_config = json.loads(ref_results.read_text())["config"]

    seeds = [ref_config[k] for k in ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")]
    assert ours_results["settings"]["seed"] == seeds == [0, 1234, 1234, 1234]
    assert sorted(ours) == sorted(ref) == list(range(DOCS))
    for doc, choices in ref.items():
        assert [c[:2] for c in ours[doc]] == [c[:2] for c in choices], doc  # prompts, endings
        assert [c[2] for c in ours[doc]] == pytest.approx([c[2] for c in choices], abs=1e-4)
        assert choices[0][0].count("\n\n") >= SHOTS  # three examples precede the question

    # Teeth: blockexp's former default (every seed 0) draws other few-shot examples.
    from transformers import AutoModelForCausalLM

    from blockexp.io.tokenization import load_tokenizer

    old = evaluate_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir), load_tokenizer(str(tiny_llama_dir)),
        [TASK], num_fewshot=SHOTS, limit=DOCS, batch_size=4, seed=0, log_samples=True,
        bootstrap_iters=0,
    )  # fmt: skip
    old_contexts, ref_contexts = _contexts(_blockexp_samples(old)), _contexts(ref)
    same = [doc for doc in ref_contexts if old_contexts[doc] == ref_contexts[doc]]
    assert len(same) < DOCS, "seed 0 gave lm_eval's prompts: the parity above proves nothing"
