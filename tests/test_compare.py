"""compare: hand-made run directories with known numbers, checked against statistics and scipy."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from blockexp.compare.command import compare
from blockexp.compare.plot import mean_R
from blockexp.compare.stats import estimate, pareto_front
from blockexp.errors import UsageError

SEEDS = (0, 1, 2)
# forgetting corpus "general" (before 3.0), gain corpus "domain" (before 4.0): after, per seed
AFTER = {
    "LlamaPro": {"general": (3.05, 3.10, 3.02), "domain": (3.5, 3.4, 3.6)},
    "FullFineTune": {"general": (3.4, 3.35, 3.45), "domain": (3.2, 3.15, 3.3)},
}
PNG = b"\x89PNG\r\n\x1a\n"


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


def _heldout(general_after, domain_after, before=(3.0, 4.0)):
    return {
        "corpora": {
            "general": {
                "path": "g.jsonl",
                "before": before[0],
                "after": general_after,
                "tokens": 9,
            },
            "domain": {"path": "d.jsonl", "before": before[1], "after": domain_after, "tokens": 9},
        },
        "forgetting": "general",
        "gain": "domain",
        "seq_len": 8,
        "max_blocks": 2,
        "step_before": 0,
        "step_after": None if general_after is None else 10,
    }


def _cell(root, cell, params, files, status="done"):
    """A sweep cell directory: cell.json plus the given files (relative path -> data)."""
    info = {"sweep": "s", "cell": cell, "params": params, "status": status, "error": None}
    info.update(seconds=1.5, started=None, finished=None, config="config.yaml")
    if status == "failed":
        info["error"] = "RuntimeError: out of memory"
    _write(root / "cells" / cell / "cell.json", info)
    for name, data in files.items():
        _write(root / "cells" / cell / name, data)


@pytest.fixture
def sweep(tmp_path):
    """2 strategies x 3 seeds, done, plus one failed cell (with a 'before') and one pending."""
    root = tmp_path / "sweep"
    cells = []
    for strategy, after in AFTER.items():
        for i, seed in enumerate(SEEDS):
            cell = f"{strategy}-s{seed}"
            params = {"strategy": strategy, "seed": seed}
            held = _heldout(after["general"][i], after["domain"][i])
            _cell(root, cell, params, {"heldout/heldout.json": held})
            cells.append({"cell": cell, "params": params, "dir": f"cells/{cell}"})
    held = {"heldout/heldout.json": _heldout(None, None)}
    _cell(root, "LlamaPro-s3", {"strategy": "LlamaPro", "seed": 3}, held, status="failed")
    cells.append({"cell": "LlamaPro-s3", "params": {"strategy": "LlamaPro", "seed": 3},
                  "dir": "cells/LlamaPro-s3"})  # fmt: skip
    cells.append({"cell": "SLayer-s0", "params": {"strategy": "SLayer", "seed": 0},
                  "dir": "cells/SLayer-s0"})  # fmt: skip
    axes = {"strategy": ["LlamaPro", "FullFineTune", "SLayer"], "seed": [0, 1, 2, 3]}
    _write(root / "sweep.json", {"name": "s", "file": "s.yaml", "recipe": "r.yaml", "axes": axes,
                                 "cells": cells, "reference": {"strategy": "LlamaPro"},
                                 "evaluate": {}})  # fmt: skip
    return root


def _values(strategy, metric):
    after = AFTER[strategy]
    if metric == "forgetting":
        return [a - 3.0 for a in after["general"]]
    return [4.0 - a for a in after["domain"]]


def test_summary_and_paired_tests_match_statistics_and_scipy(sweep):
    out = compare([str(sweep)])
    assert out == (sweep / "compare").resolve()
    summary = pd.read_csv(out / "summary.csv")
    for strategy in AFTER:
        for metric in ("forgetting", "gain"):
            values = _values(strategy, metric)
            row = summary[(summary.group == f"strategy={strategy}") & (summary.metric == metric)]
            assert len(row) == 1
            row = row.iloc[0]
            mean, sd = statistics.mean(values), statistics.stdev(values)
            low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sd / math.sqrt(3))
            assert row.n == 3  # the failed cell's partial numbers are not used
            assert row["mean"] == pytest.approx(mean, abs=1e-12)
            assert row.sd == pytest.approx(sd, abs=1e-12)
            assert (row.ci_low, row.ci_high) == (pytest.approx(low), pytest.approx(high))
            assert row.ci_half == pytest.approx((high - low) / 2)
    paired = pd.read_csv(out / "paired.csv")
    assert set(paired.group) == {"strategy=FullFineTune"}
    assert set(paired.reference) == {"strategy=LlamaPro"}
    for metric in ("forgetting", "gain"):
        row = paired[paired.metric == metric].iloc[0]
        full, pro = _values("FullFineTune", metric), _values("LlamaPro", metric)
        diffs = [a - b for a, b in zip(full, pro, strict=True)]
        assert json.loads(row.differences) == pytest.approx(diffs)
        assert json.loads(row.seeds) == ["0", "1", "2"]
        assert row.mean_diff == pytest.approx(statistics.mean(diffs))
        low, high = stats.t.interval(
            0.95, 2, loc=statistics.mean(diffs), scale=statistics.stdev(diffs) / math.sqrt(3)
        )
        assert (row.ci_low, row.ci_high) == (pytest.approx(low), pytest.approx(high))
        assert row.p == pytest.approx(stats.ttest_rel(full, pro).pvalue, rel=1e-12)
        assert row.test == "paired t-test, two-sided, df=2"
        assert row.significant == bool(low > 0 or high < 0)
    assert paired[paired.metric == "forgetting"].iloc[0].significant  # Full forgets more

    cells = pd.read_csv(out / "cells.csv")
    assert len(cells) == 8  # every cell, failed and pending included
    status = dict(zip(cells.run, cells.status, strict=True))
    assert (status["LlamaPro-s3"], status["SLayer-s0"], status["LlamaPro-s0"]) == (
        "failed",
        "pending",
        "done",
    )
    assert cells.set_index("run").loc["LlamaPro-s1", "forgetting"] == pytest.approx(0.10)
    assert pd.read_parquet(out / "cells.parquet").shape == cells.shape
    long = pd.read_parquet(out / "long.parquet")
    assert set(long.columns) == {"run", "status", "strategy", "seed", "metric", "value"}
    one = long[(long.run == "FullFineTune-s2") & (long.metric == "heldout/domain/change")]
    assert one.value.tolist() == pytest.approx([3.3 - 4.0])
    assert len(pd.read_csv(out / "long.csv")) == len(long)
    assert "± " in (out / "summary.md").read_text()
    assert "paired t-test, two-sided, df=2" in (out / "paired.md").read_text()
    assert (out / "gain_forgetting.png").read_bytes().startswith(PNG)
    assert not (out / "trace_R.png").exists()


def test_incomplete_runs_join_the_statistics_when_asked(sweep, tmp_path):
    out = compare([str(sweep)], out=str(tmp_path / "all"), incomplete=True, metrics=["forgetting"])
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.metric) == {"forgetting"}
    # the failed cell has a 'before' but no 'after': still no forgetting value
    assert summary[summary.group == "strategy=LlamaPro"].n.tolist() == [3]
    before = compare([str(sweep)], out=str(tmp_path / "b"), incomplete=True,
                     metrics=["heldout/general/before"])  # fmt: skip
    summary = pd.read_csv(before / "summary.csv")
    assert summary[summary.group == "strategy=LlamaPro"].n.tolist() == [4]


def test_estimate_with_one_value_has_no_interval():
    est = estimate([0.25])
    assert (est["n"], est["mean"], est["ci_low"], est["note"]) == (
        1,
        0.25,
        None,
        "n=1: no interval",
    )


def test_pareto_front_on_a_hand_picked_case():
    points = [(0.1, 0.5), (0.2, 0.4), (0.05, 0.3), (0.3, 0.9), (0.3, 0.8), (0.05, 0.3)]
    # (0.2, 0.4) is dominated by (0.1, 0.5); (0.3, 0.8) by (0.3, 0.9); equal points both stay
    assert pareto_front(points) == [2, 5, 0, 3]
    assert pareto_front([(0.0, 0.0)]) == [0]


def _trace_R(scores):
    from blockexp.trace.report import results

    R = np.array([[np.nan if v is None else v for v in row] for row in scores], dtype=np.float64)
    return results(["a", "b", "c"], R, metrics={})


TRACE_SCORES = {
    ("LlamaPro", 0): [[0.5, None, None], [0.45, 0.6, None], [0.4, 0.55, 0.7]],
    ("LlamaPro", 1): [[0.52, None, None], [0.5, 0.58, None], [0.44, 0.57, 0.66]],
    ("LoRA", 0): [[0.4, None, None], [0.2, 0.5, None], [0.1, 0.3, 0.6]],
    ("LoRA", 1): [[0.42, None, None], [0.25, 0.52, None], [0.15, 0.28, 0.62]],
}


def test_trace_runs_give_op_bwt_intervals_and_the_heatmap(tmp_path):
    root = tmp_path / "trace_sweep"
    cells = []
    for (strategy, seed), scores in TRACE_SCORES.items():
        cell = f"{strategy}-{seed}"
        params = {"strategy": strategy, "seed": seed}
        _cell(root, cell, params, {"trace/R.json": _trace_R(scores)})
        cells.append({"cell": cell, "params": params, "dir": f"cells/{cell}"})
    _write(root / "sweep.json", {"name": "t", "axes": {"strategy": ["LlamaPro", "LoRA"]},
                                 "cells": cells, "reference": None})  # fmt: skip
    out = compare([str(root)], reference="LlamaPro")
    summary = pd.read_csv(out / "summary.csv").set_index(["group", "metric"])
    for strategy in ("LlamaPro", "LoRA"):
        runs = [_trace_R(TRACE_SCORES[(strategy, s)]) for s in (0, 1)]
        for key in ("OP", "BWT", "BWT_trace"):
            values = [r[key][-1] for r in runs]
            row = summary.loc[(f"strategy={strategy}", f"trace/{key}")]
            low, high = stats.t.interval(
                0.95, 1, loc=statistics.mean(values), scale=statistics.stdev(values) / math.sqrt(2)
            )
            assert row["mean"] == pytest.approx(statistics.mean(values))
            assert (row.ci_low, row.ci_high) == (pytest.approx(low), pytest.approx(high))
    paired = pd.read_csv(out / "paired.csv").set_index("metric")
    assert paired.loc["trace/BWT", "test"] == "paired t-test, two-sided, df=1"
    assert (out / "trace_R.png").read_bytes().startswith(PNG)
    assert not (out / "gain_forgetting.png").exists()


def test_mean_R_is_the_elementwise_mean_blank_where_unscored():
    class R:
        def __init__(self, scores):
            self.tasks, self.R = ["a", "b", "c"], scores

    tasks, mean, used = mean_R([R(TRACE_SCORES[("LoRA", 0)]), R(TRACE_SCORES[("LoRA", 1)])])
    assert (tasks, used) == (["a", "b", "c"], 2)
    assert mean[2, 1] == pytest.approx((0.3 + 0.28) / 2)
    assert math.isnan(mean[0, 2])


def _plain_run(root, strategy, seed, general_after, domain_after, general_json=None):
    """A `fit` run directory: config.yaml (as LightningCLI resolves it) + heldout.json."""
    config = (
        f"seed_everything: {seed}\ntrainer:\n  max_steps: 10\nmodel:\n  expander:\n"
        f"    class_path: blockexp.expanders.{strategy}\n    init_args: {{}}\n"
    )
    _write(root / "config.yaml", config)
    _write(root / "heldout" / "heldout.json", _heldout(general_after, domain_after))
    if general_json is not None:
        _write(root / "general" / "general.json", general_json)


def test_plain_fit_run_dirs_are_read_with_the_strategy_from_their_expander(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    general = {"entries": [
        {"label": "start", "step": 0, "scores": {"cloze": 0.5, "choice": 0.3}, "mean": 0.4},
        {"label": "end", "step": 10, "scores": {"cloze": 0.45, "choice": 0.35}, "mean": 0.4 - 0.01},
    ]}  # fmt: skip
    _plain_run(runs / "pro", "LlamaPro", 7, 3.1, 3.5, general)
    _plain_run(runs / "full", "FullFineTune", 7, 3.4, 3.2)
    monkeypatch.chdir(tmp_path)
    out = compare([str(runs)], reference="LlamaPro")
    assert out == (tmp_path / "compare").resolve()
    cells = pd.read_csv(out / "cells.csv").set_index("run")
    assert cells.loc["pro", "strategy"] == "LlamaPro" and cells.loc["pro", "seed"] == 7
    assert cells.loc["pro", "status"] == "done"
    assert cells.loc["pro", "forgetting"] == pytest.approx(0.1)
    assert cells.loc["pro", "general/cloze/end"] == pytest.approx(0.45)
    assert cells.loc["pro", "general/mean/change"] == pytest.approx(-0.01)
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.note) == {"n=1: no interval"}
    paired = pd.read_csv(out / "paired.csv").set_index("metric")
    assert paired.loc["forgetting", "n"] == 1
    assert paired.loc["forgetting", "mean_diff"] == pytest.approx(0.3)
    assert paired.loc["forgetting", "note"] == "n=1: no interval"
    assert math.isnan(paired.loc["forgetting", "p"])
    # one run dir given directly works too
    one = compare([str(runs / "full")], out=str(tmp_path / "one"))
    assert pd.read_csv(one / "cells.csv").strategy.tolist() == ["FullFineTune"]
    assert not (one / "paired.csv").exists()


def test_clear_errors(sweep, tmp_path):
    with pytest.raises(FileNotFoundError, match="'nowhere' does not exist"):
        compare(["nowhere"])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(UsageError, match="no runs found in .*empty"):
        compare([str(tmp_path / "empty")])
    with pytest.raises(
        UsageError,
        match=r"reference strategy=LoRA is not among the groups: strategy=LlamaPro; "
        r"strategy=FullFineTune",
    ):
        compare([str(sweep)], reference="strategy=LoRA")
    with pytest.raises(UsageError, match="names lr, not a parameter of these runs"):
        compare([str(sweep)], reference="lr=0.1")
    with pytest.raises(UsageError, match="no run has the metric 'forgeting' \\(did you mean"):
        compare([str(sweep)], metrics=["forgeting"])
    with pytest.raises(UsageError, match="is inside the run directory"):
        compare([str(sweep)], out=str(sweep / "cells" / "LlamaPro-s0" / "cmp"))
    dup = tmp_path / "dup"
    _plain_run(dup / "a", "LlamaPro", 1, 3.1, 3.5)
    _plain_run(dup / "b", "LlamaPro", 1, 3.2, 3.5)
    _plain_run(dup / "c", "LoRA", 1, 3.2, 3.5)
    with pytest.raises(UsageError, match="strategy=LlamaPro has two runs with seed 1 \\(a, b\\)"):
        compare([str(dup)], reference="LlamaPro", out=str(tmp_path / "o"))
    pending = tmp_path / "pending"
    _write(pending / "sweep.json", {"name": "p", "cells": [{"cell": "x", "params": {}}]})
    with pytest.raises(UsageError, match="none of the 1 runs is done \\(pending 1\\)"):
        compare([str(pending)])


def test_the_command_line_is_built_from_the_signature(sweep, tmp_path):
    from jsonargparse import CLI

    from blockexp.errors import PARSER_KWARGS

    out = tmp_path / "cli"
    args = ["compare", "--runs", f"[{sweep}]", "--reference", "strategy=LlamaPro"]
    args += ["--out", str(out), "--metrics", "[gain]", "--plots", "false"]
    result = CLI({"compare": compare}, args=args, as_positional=False, **PARSER_KWARGS)
    assert result == out.resolve()
    assert set(pd.read_csv(out / "paired.csv").metric) == {"gain"}
    assert not (out / "gain_forgetting.png").exists()


def test_compare_imports_neither_torch_nor_lightning(sweep, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; from blockexp.compare.command import compare; "
        f"compare([{str(sweep)!r}], out={str(tmp_path / 'o')!r}); "
        "heavy = [m for m in ('torch', 'lightning', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "summary.csv").is_file()


def test_point_labels_do_not_overlap_on_a_crowded_plot():
    """Points closer than a label's size (as LlamaPro, LoRA and SuffixStack were in
    experiments/strategies/results.png) get labels that overlap neither each other nor the legend;
    one-parameter groups are labelled by their value."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from blockexp.compare.plot import _place_labels, _short_labels

    groups = [f"strategy={n}" for n in ("LlamaPro", "LoRA", "SuffixStack", "PrefixStack", "SLayer")]
    assert _short_labels(groups) == ["LlamaPro", "LoRA", "SuffixStack", "PrefixStack", "SLayer"]
    assert _short_labels(["lr=1,seed=2", "lr=3,seed=2"]) == ["lr=1,seed=2", "lr=3,seed=2"]
    points = [(2.13, 4.15), (2.16, 4.16), (2.10, 4.14), (1.71, 4.07), (2.43, 4.36)]
    fig = Figure(figsize=(7.5, 5.5))
    ax = fig.subplots()
    ax.plot(*zip(*points, strict=True), "o", label="points")
    ax.set_xlim(0, 3.5)
    ax.set_ylim(0, 5.5)
    ax.legend(loc="lower right")
    _place_labels(fig, ax, points, _short_labels(groups))
    renderer = FigureCanvasAgg(fig).get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert sorted(t.get_text() for t in ax.texts) == sorted(_short_labels(groups))
    legend = ax.get_legend().get_window_extent(renderer)
    for i, a in enumerate(boxes):
        assert not a.overlaps(legend)
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)
