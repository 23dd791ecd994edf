"""Headline metrics (one star per task, by the declared metric), MMLU-style group aggregation
(unweighted mean of subjects beside lm-eval's size-weighted group value) and preset keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blockexp.cli import main
from blockexp.evaluation.lmeval.build import write_task
from blockexp.evaluation.lmeval.command import print_results, result_rows
from blockexp.evaluation.lmeval.harness import EvalError, evaluate_model, load_tasks
from blockexp.evaluation.lmeval.preset import load_preset, version_differences
from blockexp.evaluation.lmeval.scores import (
    apply_aggregates,
    declared_metrics,
    group_aggregate,
    headline_keys,
)
from blockexp.evaluation.lmeval.tasks import TASKS_DIR

REPO = Path(__file__).resolve().parents[1]


def _stars(rows) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for task, metric, *_ in rows:
        if metric.endswith(" *"):
            out.setdefault(task, []).append(metric)
    return out


def test_star_marks_the_declared_metric_once_even_when_values_tie():
    """Two metrics of 0.0 used to be starred both (the star went by value); now the task's
    declared metric is starred, and only it."""
    results = {
        "results": {
            "gen": {"alias": "gen", "edit_sim,none": 0.0, "exact_match,none": 0.0},
            "mc": {"acc,none": 0.25, "acc_stderr,none": 0.1, "acc_norm,none": 0.25},
        },
        "n-samples": {"gen": {"effective": 4}, "mc": {"effective": 4}},
    }
    results["headline_keys"] = headline_keys(results, metrics={"gen": "edit_sim", "mc": "acc"})
    assert _stars(result_rows(results)) == {"gen": ["edit_sim *"], "mc": ["acc *"]}


def test_declared_metric_is_the_tasks_first(tmp_path):
    """Without a preset metric the headline is the first metric of the task's metric_list (the
    shipped tasks list theirs first); a preset's metric wins."""
    docs = [json.loads(x) for x in (TASKS_DIR / "blockexp_choice.jsonl").read_text().splitlines()]
    yaml_path = write_task(tmp_path, "acc_first", "choice", docs[:3])
    swapped = (  # the same task, declaring acc before acc_norm
        yaml_path.read_text()
        .replace("metric: acc_norm\n", "metric: SWAP\n")
        .replace("metric: acc\n", "metric: acc_norm\n")
        .replace("metric: SWAP\n", "metric: acc\n")
    )
    assert swapped.index("metric: acc\n") < swapped.index("metric: acc_norm\n")
    yaml_path.write_text(swapped)
    loaded = load_tasks(["blockexp_general", "blockexp_code_line", "acc_first"], [tmp_path])
    assert declared_metrics(loaded) == {
        "blockexp_cloze": "acc", "blockexp_choice": "acc_norm", "blockexp_complete": "edit_sim",
        "blockexp_code_line": "edit_sim", "acc_first": "acc",
    }  # fmt: skip


def test_eval_table_stars_one_metric_per_task(tiny_llama_dir, tmp_path, capsys):
    """A real run: every task's table rows carry exactly one star, on its declared metric."""
    from transformers import AutoModelForCausalLM

    from blockexp.io.tokenization import load_tokenizer

    out = evaluate_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir), load_tokenizer("byte"),
        ["blockexp_cloze", "blockexp_choice"], limit=2, batch_size=4, bootstrap_iters=0,
        metrics={"blockexp_choice": "acc"},
    )  # fmt: skip
    assert out["headline_keys"] == {"blockexp_cloze": "acc,none", "blockexp_choice": "acc,none"}
    assert _stars(result_rows(out)) == {"blockexp_cloze": ["acc *"], "blockexp_choice": ["acc *"]}
    assert out["scores"]["blockexp_cloze"] == out["results"]["blockexp_cloze"]["acc,none"]
    # the cloze task's perplexity is labelled and explained, not left beside acc unexplained
    rows = {(r[0], r[1]) for r in result_rows(out)}
    assert ("blockexp_cloze", "perplexity (lower is better)") in rows
    capsys.readouterr()
    print_results(out)
    printed = " ".join(capsys.readouterr().out.split())
    assert "note: blockexp_cloze perplexity is lower-is-better" in printed
    assert "not in the headline mean" in printed


def _mmlu_like() -> dict:
    """lm-eval 0.4.13's result structure for a group of groups (as `simple_evaluate` returns it
    for mmlu, cut to four subjects): leaves, subgroups and the group itself in ``results`` with
    ``sample_len``, the hierarchy in ``group_subtasks``, the sizes in ``n-samples``. The group
    values are lm-eval's: weighted by size."""
    leaves = {  # subject: (acc, documents)
        "mmlu_abstract_algebra": (0.30, 100), "mmlu_anatomy": (0.40, 135),
        "mmlu_formal_logic": (0.50, 126), "mmlu_high_school_european_history": (0.60, 165),
    }  # fmt: skip
    stem = ["mmlu_abstract_algebra", "mmlu_anatomy"]
    humanities = ["mmlu_formal_logic", "mmlu_high_school_european_history"]

    def weighted(names):
        return sum(leaves[n][0] * leaves[n][1] for n in names) / sum(leaves[n][1] for n in names)

    results = {n: {"alias": n, "sample_len": d, "acc,none": a, "acc_stderr,none": 0.04}
               for n, (a, d) in leaves.items()}  # fmt: skip
    for name, names in (("mmlu_stem", stem), ("mmlu_humanities", humanities),
                        ("mmlu", stem + humanities)):  # fmt: skip
        size = sum(leaves[n][1] for n in names)
        results[name] = {"alias": name, "name": name, "sample_len": size,
                         "acc,none": weighted(names), "acc_stderr,none": 0.02,
                         "sample_count": {"acc,none": size}}  # fmt: skip
    return {
        "results": results,
        "groups": {k: results[k] for k in ("mmlu_stem", "mmlu_humanities", "mmlu")},
        "group_subtasks": {
            "mmlu": ["mmlu_stem", "mmlu_humanities"],
            "mmlu_stem": stem,
            "mmlu_humanities": humanities,
        },  # fmt: skip
        "versions": {**{n: 1.0 for n in leaves}, "mmlu": "2", "mmlu_stem": "2"},
        "n-samples": {n: {"original": d, "effective": d} for n, (_, d) in leaves.items()},
    }


def test_mmlu_unweighted_mean_of_subjects_beside_lm_evals_weighted_group():
    results = _mmlu_like()
    agg = group_aggregate(results, "mmlu", "acc,none")
    assert agg["subtasks"] == 4
    assert agg["unweighted"] == pytest.approx((0.30 + 0.40 + 0.50 + 0.60) / 4)  # 0.45
    assert agg["size_weighted"] == pytest.approx((30 + 54 + 63 + 99) / 526)  # 0.4677
    assert agg["size_weighted"] == pytest.approx(results["results"]["mmlu"]["acc,none"])
    results["headline_keys"] = headline_keys(results, ["mmlu"], {"mmlu": "acc"})
    apply_aggregates(results, results["headline_keys"], {"mmlu": "unweighted"})
    assert results["scores"]["mmlu"] == pytest.approx(0.45)
    rows = [r for r in result_rows(results) if r[0] == "mmlu"]
    assert [(r[1], r[3]) for r in rows] == [
        ("acc (size-weighted, lm-eval group)", "0.4677"),
        ("acc (unweighted mean of 4 subtasks) *", "0.4500"),
    ]
    apply_aggregates(results, results["headline_keys"], {"mmlu": "size_weighted"})
    assert results["scores"]["mmlu"] == pytest.approx(246 / 526)
    assert _stars(result_rows(results))["mmlu"] == ["acc (size-weighted, lm-eval group) *"]
    with pytest.raises(ValueError, match="'mmlu_anatomy' is not a group"):
        group_aggregate(results, "mmlu_anatomy", "acc,none")
    # the preset's reference versions: the subjects were 0.0 in the 0.4.1 fork, 1.0 now
    assert version_differences(results, {"mmlu_*": "0.0"}) == {
        n: {"now": "1.0", "reference": "0.0"} for n in results["n-samples"]
    }
    assert version_differences(results, {"mmlu_*": "1.0"}) == {}


def _mini_group(directory: Path) -> None:
    """A two-level local group of three choice tasks of different sizes (2, 5, 3 documents)."""
    docs = [json.loads(x) for x in (TASKS_DIR / "blockexp_choice.jsonl").read_text().splitlines()]
    write_task(directory, "mini_a1", "choice", docs[:2])
    write_task(directory, "mini_a2", "choice", docs[2:7])
    write_task(directory, "mini_b1", "choice", docs[7:10])
    agg = "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n"
    for name, members in (("mini_a", "[mini_a1, mini_a2]"), ("mini_b", "[mini_b1]"),
                          ("mini", "[mini_a, mini_b]")):  # fmt: skip
        (directory / f"_{name}.yaml").write_text(f"group: {name}\ntask: {members}\n{agg}")


def test_preset_dtype_batch_size_and_aggregate_through_eval(tiny_llama_dir, tmp_path, capsys):
    """A preset's dtype, batch size and group aggregation reach the run: the unweighted mean of
    the group's leaves is its headline, lm-eval's own group value equals the size-weighted one,
    and a task version differing from the reference is listed."""
    _mini_group(tmp_path / "tasks")
    preset = tmp_path / "p.yaml"
    preset.write_text(
        "tasks: [{task: mini, metric: acc}]\ndtype: bfloat16\nbatch_size: 2\n"
        "aggregate: {mini: unweighted}\nreference: a test harness\n"
        "reference_versions: {'mini_*': 0.5}\n"
    )
    path = main(["eval", "--model", str(tiny_llama_dir), "--preset", str(preset),
                 "--include_path", str(tmp_path / "tasks"), "--out", str(tmp_path / "e")])  # fmt: skip
    data = json.loads(Path(path).read_text())
    settings = data["settings"]
    assert settings["dtype"] == "bfloat16" and settings["batch_size"] == 2
    assert settings["seed"] == [0, 1234, 1234, 1234]
    assert sorted(settings["version_differences"]) == ["mini_a1", "mini_a2", "mini_b1"]
    leaves = [data["results"][t]["acc,none"] for t in ("mini_a1", "mini_a2", "mini_b1")]
    agg = data["aggregates"]["mini"]
    assert agg["key"] == "acc,none" and agg["headline"] == "unweighted"
    assert agg["unweighted"] == pytest.approx(sum(leaves) / 3)
    assert data["scores"]["mini"] == agg["unweighted"]
    # lm-eval's own group value is the mean weighted by size (2, 5 and 3 documents)
    assert agg["size_weighted"] == pytest.approx(
        (2 * leaves[0] + 5 * leaves[1] + 3 * leaves[2]) / 10
    )
    assert agg["size_weighted"] == pytest.approx(data["results"]["mini"]["acc,none"])
    assert agg["lm_eval_group_value"] == data["results"]["mini"]["acc,none"]
    printed = capsys.readouterr().out
    assert "unweighted mean of 3" in printed
    assert "mini_a1 is version 1.0 here, 0.5 in a test harness" in printed


def test_llama_pro_preset_runs_as_its_authors_ran_it():
    paper = load_preset(REPO / "configs/eval/llama_pro_general.yaml")
    # TencentARC/LLaMA-Pro -> hills-code/lm-evaluation-harness@81e9bcc scripts/leaderboard.sh:
    # --model_args pretrained=$1,dtype=float16 --batch_size auto --max_batch_size 8
    assert (paper.dtype, paper.batch_size, paper.max_batch_size) == ("float16", "auto", 8)
    assert paper.aggregate == {"mmlu": "unweighted"}
    assert paper.reference_versions["mmlu_*"] == "0.0"
    assert paper.reference_versions["truthfulqa_mc2"] == "2.0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tasks: [mmlu]\ndtype: half\n", "dtype must be one of"),
        ("tasks: [mmlu]\nbatch_size: 0\n", "batch_size must be an integer >= 1 or 'auto'"),
        ("tasks: [mmlu]\naggregate: {mmlu: median}\n", "aggregate must map group names"),
        ("tasks: [mmlu]\naggregate: {arc: unweighted}\n", "not in tasks: \\['arc'\\]"),
        ("tasks: [mmlu]\nseed: 3\n", "unknown keys \\['seed'\\]"),
    ],
)
def test_bad_preset_keys_are_one_line_errors(tmp_path, text, message):
    preset = tmp_path / "p.yaml"
    preset.write_text(text)
    with pytest.raises(EvalError, match=message):
        load_preset(preset)


def test_aggregate_of_a_task_that_is_not_a_group_is_refused(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from blockexp.io.tokenization import load_tokenizer

    with pytest.raises(EvalError, match="not lm-eval groups"):
        evaluate_model(
            AutoModelForCausalLM.from_pretrained(tiny_llama_dir), load_tokenizer("byte"),
            ["blockexp_cloze"], limit=1, aggregate={"blockexp_cloze": "unweighted"},
        )  # fmt: skip
