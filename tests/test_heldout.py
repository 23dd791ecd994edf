"""HeldoutLoss: before/after losses of the model as exported, kept across a resume."""

from __future__ import annotations

import csv
import json
import math

import lightning as L
import pytest
import torch

from blockexp.data.cpt import CPTDataModule, DataSource
from blockexp.errors import UsageError
from blockexp.evaluation.heldout import HeldoutLoss
from blockexp.expanders import LlamaPro
from blockexp.training.module import BlockExpansionModule
from blockexp.training.settings import Optim
from blockexp.training.trainer import make_trainer
from tests.conftest import tiny_llama_dict


@pytest.fixture
def other_text(tmp_path):
    """A .txt corpus (documents separated by blank lines), unlike the training corpus."""
    path = tmp_path / "other.txt"
    docs = [
        f"the {i}th plain sentence of another kind, with numbers {i * 7} and {i * 13}."
        for i in range(40)
    ]
    path.write_text("\n\n".join(docs) + "\n")
    return path


class _Crash(RuntimeError):
    pass


class _CrashAt(L.Callback):
    """Kill the run before step ``step`` (its checkpoint of step ``step`` is on disk)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise _Crash(f"killed at step {self.step}")


def _fit(corpus, other, root, steps, ckpt=None, logger=False, crash_at=None):
    data = CPTDataModule(
        sources=[DataSource(name="c", path=str(corpus))],
        tokenizer="byte",
        seq_len=32,
        batch_size=16,
        val_fraction=0.0,
        cache_dir=str(root / "cache"),
    )
    module = BlockExpansionModule(
        base=tiny_llama_dict(2),
        expander=LlamaPro(num_groups=1),
        tokenizer="byte",
        optim=Optim(lr=1e-2),
    )
    heldout = HeldoutLoss(
        corpora={"domain": str(corpus), "general": str(other)},
        forgetting="general",
        gain="domain",
        seq_len=32,
        max_blocks=4,
        batch_size=2,
    )
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=root / "ckpt", save_last=True, every_n_train_steps=1, save_top_k=0
    )
    trainer = make_trainer(
        max_steps=steps,
        gradient_clip_val=None,
        callbacks=[heldout, checkpoint] + ([_CrashAt(crash_at)] if crash_at else []),
        limit_val_batches=0,
        default_root_dir=root,
        logger=L.pytorch.loggers.CSVLogger(root, name="logs") if logger else False,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    return json.loads((root / "heldout" / "heldout.json").read_text()), heldout


def test_heldout_before_after_and_resume_is_bitwise_the_same(corpus, other_text, tmp_path):
    full, _ = _fit(corpus, other_text, tmp_path / "full", steps=6, logger=True)
    assert set(full["corpora"]) == {"domain", "general"}
    assert (full["forgetting"], full["gain"]) == ("general", "domain")
    assert (full["seq_len"], full["max_blocks"]) == (32, 4)
    assert (full["step_before"], full["step_after"]) == (0, 6)
    for name, entry in full["corpora"].items():
        assert entry["blocks"] == 4 and entry["tokens"] == 4 * 31, name
        assert math.isfinite(entry["before"]) and math.isfinite(entry["after"])
        assert entry["before"] != entry["after"], f"{name}: training did not change the model"
    # trained on the domain corpus at lr 1e-2: its loss falls
    assert full["corpora"]["domain"]["after"] < full["corpora"]["domain"]["before"]
    # logged at step 0 (before) and at the last step (after)
    rows = list(csv.DictReader(open(next((tmp_path / "full" / "logs").rglob("metrics.csv")))))
    logged = [(int(r["step"]), float(r["heldout/domain"])) for r in rows if r.get("heldout/domain")]
    assert logged == [
        (0, full["corpora"]["domain"]["before"]),
        (6, full["corpora"]["domain"]["after"]),
    ]

    split = tmp_path / "split"
    with pytest.raises(_Crash):  # the same run (same LR schedule), killed after step 3
        _fit(corpus, other_text, split, steps=6, crash_at=3)
    first = json.loads((split / "heldout" / "heldout.json").read_text())
    assert first["corpora"]["general"]["before"] == full["corpora"]["general"]["before"]
    assert first["corpora"]["general"]["after"] is None
    assert (first["step_before"], first["step_after"]) == (0, None)
    state = torch.load(split / "ckpt" / "last.ckpt", weights_only=False)
    saved = next(v for k, v in state["callbacks"].items() if k.startswith("HeldoutLoss"))
    assert saved["before"] == {n: e["before"] for n, e in first["corpora"].items()}

    resumed, _ = _fit(corpus, other_text, split, steps=6, ckpt=str(split / "ckpt" / "last.ckpt"))
    for name in ("domain", "general"):
        # not measured again at step 3 (that would differ), and training resumed exactly
        assert resumed["corpora"][name]["before"] == full["corpora"][name]["before"], name
        assert resumed["corpora"][name]["after"] == full["corpora"][name]["after"], name
    assert (resumed["step_before"], resumed["step_after"]) == (0, 6)


def test_heldout_before_is_the_base_loss_for_an_identity_expansion(corpus, other_text, tmp_path):
    from blockexp.evaluation.importance.inputs import load_text_blocks
    from blockexp.evaluation.importance.measure import text_loss
    from blockexp.io.load import load_model
    from blockexp.io.tokenization import load_tokenizer

    result, _ = _fit(corpus, other_text, tmp_path / "run", steps=1)
    base = load_model(tiny_llama_dict(2), dtype="float32", seed=0).eval()
    blocks = load_text_blocks(other_text, load_tokenizer("byte"), 32, 4)
    expected = text_loss(base, blocks, batch_size=2)
    assert result["corpora"]["general"]["before"] == pytest.approx(expected, rel=1e-5)


def test_heldout_refuses_bad_corpora_up_front(corpus, tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=r"HeldoutLoss corpora\['general'\].*nope\.jsonl"):
        HeldoutLoss(corpora={"domain": str(corpus), "general": str(missing)})
    with pytest.raises(UsageError, match="forgetting='gen' names no corpus; choose one of domain"):
        HeldoutLoss(corpora={"domain": str(corpus)}, forgetting="gen")
    with pytest.raises(UsageError, match="gain='x' names no corpus"):
        HeldoutLoss(corpora={"domain": str(corpus)}, gain="x")
    with pytest.raises(UsageError, match="corpus name 'a/b'"):
        HeldoutLoss(corpora={"a/b": str(corpus)})
    with pytest.raises(UsageError, match="corpora is empty"):
        HeldoutLoss(corpora={})
    with pytest.raises(UsageError, match="seq_len must be >= 2"):
        HeldoutLoss(corpora={"domain": str(corpus)}, seq_len=1)
    with pytest.raises(ValueError, match="is a directory"):
        HeldoutLoss(corpora={"domain": str(tmp_path)})


def test_heldout_refuses_a_checkpoint_measured_on_other_corpora(corpus):
    callback = HeldoutLoss(corpora={"domain": str(corpus)})
    with pytest.raises(ValueError, match="corpora=\\['general'\\], this run has corpora"):
        callback.load_state_dict({"corpora": ["general"], "seq_len": 256, "max_blocks": 64})
    callback.load_state_dict(
        {"corpora": ["domain"], "seq_len": 256, "max_blocks": 64, "before": {"domain": 2.5}}
    )
    assert callback.before == {"domain": 2.5}


def test_heldout_is_built_from_a_yaml_config(corpus, tmp_path):
    """jsonargparse builds the callback from its type hints, as ``trainer.callbacks`` of a fit
    config does."""
    from jsonargparse import ArgumentParser

    config = tmp_path / "config.yaml"
    config.write_text(
        "callbacks:\n"
        "  - class_path: blockexp.evaluation.heldout.HeldoutLoss\n"
        "    init_args:\n"
        f"      corpora: {{domain: {corpus}}}\n"
        "      gain: domain\n"
        "      seq_len: 64\n"
    )
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action="config")
    parser.add_argument("--callbacks", type=list[L.Callback])
    built = parser.instantiate_classes(parser.parse_args(["--config", str(config)]))
    (callback,) = built.callbacks
    assert isinstance(callback, HeldoutLoss)
    assert (callback.corpora, callback.gain, callback.seq_len) == (
        {"domain": str(corpus)},
        "domain",
        64,
    )
