"""Command line: plan, expand, export, and an end-to-end fit of the quickstart config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from blockexp.cli import main
from blockexp.io.inputs import OutputExistsError
from blockexp.io.manifest import MANIFEST_NAME
from blockexp.training.settings import Output
from blockexp.training.trainer import make_trainer
from tests.conftest import tiny_llama_dict

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def test_plan_json_from_config_alone(tmp_path):
    from transformers import LlamaConfig

    # A Llama-2-7B-shaped config.json and nothing else: no weights, no model (config shapes).
    LlamaConfig(
        num_hidden_layers=32,
        hidden_size=4096,
        intermediate_size=11008,
        num_attention_heads=32,
        vocab_size=32000,
    ).save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.safetensors"))
    cmd = [
        sys.executable,
        "-m",
        "blockexp",
        "plan",
        "--base",
        str(tmp_path),
        "--expander",
        "LlamaPro",
        "--expander.num_groups",
        "8",
        "--json",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["num_layers"] == 40
    # LLaMA Pro 8.3B: 6.74B base + 8 blocks of 202.4M parameters.
    assert data["total_params"] == 6_738_415_616 + 8 * 202_383_360
    assert data["trainable_params"] == 8 * 202_383_360
    new = [layer for layer in data["layers"] if layer["trainable"]]
    assert [layer["index"] for layer in new] == [4, 9, 14, 19, 24, 29, 34, 39]
    assert all(layer["init"] == "copy" and layer["zero_out"] for layer in new)
    assert set(data["layers"][0]) >= {"index", "source", "init", "trainable"}


def test_plan_bad_group_count_is_a_clear_error(tmp_path, capsys):
    from transformers import LlamaConfig

    LlamaConfig(
        num_hidden_layers=6, hidden_size=32, intermediate_size=64, num_attention_heads=4
    ).save_pretrained(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "plan",
                "--base",
                str(tmp_path / "config.json"),
                "--expander",
                "LlamaPro",
                "--expander.num_groups",
                "4",
            ]
        )
    assert exc.value.code == 2
    assert "cannot be split into num_groups=4" in capsys.readouterr().err


def test_plan_missing_base_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--base", str(tmp_path / "nope"), "--expander", "LlamaPro"])
    assert "does not exist" in capsys.readouterr().err


def test_expand_writes_identity_checkpoint(tiny_llama_dir, tmp_path):
    out = tmp_path / "expanded"
    base_files = {p.name: p.stat().st_mtime_ns for p in tiny_llama_dir.iterdir()}
    main(
        [
            "expand",
            "--base",
            str(tiny_llama_dir),
            "--out",
            str(out),
            "--expander",
            "LlamaPro",
            "--expander.num_groups",
            "2",
            "--expander.blocks_per_group",
            "2",
        ]
    )
    assert {p.name: p.stat().st_mtime_ns for p in tiny_llama_dir.iterdir()} == base_files
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["num_layers"] == 8 and manifest["new_layers"] == [2, 3, 6, 7]
    assert manifest["plan"]["layers"][2]["source"] == [0]
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    expanded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert expanded.config.num_hidden_layers == 8
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        assert (base(ids).logits - expanded(ids).logits).abs().max() <= 1e-5
        kw = dict(
            max_new_tokens=8, do_sample=False, pad_token_id=256, attention_mask=torch.ones_like(ids)
        )
        assert torch.equal(base.generate(ids, **kw), expanded.generate(ids, **kw))
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("héllo")["input_ids"] == list("héllo".encode())


def test_expand_preserves_dtype(tiny_llama, tmp_path):
    base_dir = tmp_path / "bf16"
    tiny_llama(2).to(torch.bfloat16).save_pretrained(base_dir)
    out = tmp_path / "out"
    main(
        [
            "expand",
            "--base",
            str(base_dir),
            "--out",
            str(out),
            "--expander",
            "LlamaPro",
            "--expander.num_groups",
            "1",
        ]
    )
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}


def test_expand_refuses_base_dir_and_existing_output(tiny_llama_dir, tmp_path):
    for target in (tiny_llama_dir, tiny_llama_dir / "sub"):
        with pytest.raises((OutputExistsError, SystemExit)):
            main(
                [
                    "expand",
                    "--base",
                    str(tiny_llama_dir),
                    "--out",
                    str(target),
                    "--expander",
                    "LlamaPro",
                    "--expander.num_groups",
                    "2",
                ]
            )
    assert not (tiny_llama_dir / MANIFEST_NAME).exists()
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    with pytest.raises((OutputExistsError, SystemExit)):
        main(
            [
                "expand",
                "--base",
                str(tiny_llama_dir),
                "--out",
                str(occupied),
                "--expander",
                "LlamaPro",
                "--expander.num_groups",
                "2",
            ]
        )
    assert (occupied / "keep.txt").read_text() == "x"


def _quickstart_args(steps: int, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        str(QUICKSTART),
        "--trainer.max_steps",
        str(steps),
        "--trainer.val_check_interval",
        "2",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.callbacks.init_args.limit",  # GeneralEval, the config's last callback
        "3",
        *extra,
    ]


def test_quickstart_fit_end_to_end_and_resume(tmp_path, monkeypatch, capsys):
    # Run in a scratch directory: the config's relative output paths land there.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(REPO / "data")
    main(_quickstart_args(4))
    out = capsys.readouterr().out
    assert "blockexp summary" in out and "val loss before" in out and "val loss after" in out
    model_dir = tmp_path / "outputs/quickstart/model"
    exported = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert exported.config.num_hidden_layers == 6
    last = tmp_path / "outputs/quickstart/checkpoints/last.ckpt"
    assert last.is_file()
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # no pickled objects
    assert ckpt["global_step"] == 4

    # The export command rebuilds the same model from the training checkpoint.
    main(["export", "--ckpt", str(last), "--out", str(tmp_path / "from_ckpt")])
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "from_ckpt").eval()
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        assert (again(ids).logits - exported(ids).logits).abs().max() <= 1e-6
    assert (tmp_path / "from_ckpt" / "tokenizer.json").is_file()
    # GeneralEval wrote the general scores before and after training
    general = json.loads((tmp_path / "outputs/quickstart/general/general.json").read_text())
    assert [(e["label"], e["step"]) for e in general["entries"]] == [("start", 0), ("end", 4)]
    assert general["limit"] == 3 and set(general["entries"][0]["scores"]) == {
        "blockexp_cloze", "blockexp_choice", "blockexp_complete"
    }  # fmt: skip

    # Resume from the last checkpoint and train on to step 8.
    main(_quickstart_args(8, "--ckpt_path", str(last)))
    general = json.loads((tmp_path / "outputs/quickstart/general/general.json").read_text())
    # the resumed run restores the entries stored in the checkpoint (its "start"; the first run's
    # "end" came after its last checkpoint), so it does not evaluate "start" again
    assert [(e["label"], e["step"]) for e in general["entries"]] == [("start", 0), ("end", 8)]
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 8
    # Checkpoints hold only what resuming needs: trainable weights (+ a frozen fingerprint).
    frozen = "model.model.layers.0.self_attn.q_proj.weight"
    assert frozen not in ckpt["state_dict"] and ckpt["blockexp"]["frozen_fingerprint"]
    new = "model.model.layers.2.self_attn.q_proj.weight"
    assert not torch.equal(ckpt["state_dict"][new], resumed["state_dict"][new])
    after = AutoModelForCausalLM.from_pretrained(model_dir).eval()  # re-exported at the end
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(after.state_dict()[name], exported.state_dict()[name])


def _fit_from_dir(base_dir, root, steps, save_frozen, ckpt=None):
    import lightning as L

    from blockexp.data.cpt import CPTDataModule, DataSource
    from blockexp.expanders import LlamaPro
    from blockexp.training.module import BlockExpansionModule

    data = CPTDataModule(
        sources=[DataSource(name="d", path=str(REPO / "data/quickstart/domain.jsonl"))],
        seq_len=32,
        batch_size=4,
        val_fraction=0.0,
        cache_dir=str(root / "cache"),
    )
    module = BlockExpansionModule(
        base=str(base_dir), expander=LlamaPro(num_groups=2), output=Output(save_frozen=save_frozen)
    )
    trainer = make_trainer(
        max_steps=steps,
        gradient_clip_val=None,
        limit_val_batches=0,
        default_root_dir=root,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    return module, root / "ckpt" / "last.ckpt"


def test_trainable_only_checkpoint_refuses_a_changed_base(tiny_llama, tiny_llama_dir, tmp_path):
    from blockexp.training.export import rebuild_from_checkpoint

    module, last = _fit_from_dir(tiny_llama_dir, tmp_path / "run", 2, save_frozen=False)
    state = torch.load(last, map_location="cpu", weights_only=True)
    rebuilt = rebuild_from_checkpoint(state, last)
    ids = torch.randint(0, 256, (2, 10))
    module.model.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(ids).logits, module.model(ids).logits)
    tiny_llama(4, seed=1).save_pretrained(tiny_llama_dir)  # the base changes on disk
    with pytest.raises(ValueError, match="differs from the one .*was trained on"):
        rebuild_from_checkpoint(state, last)
    with pytest.raises(ValueError, match="differs from the one .*was trained on"):
        _fit_from_dir(tiny_llama_dir, tmp_path / "run", 4, save_frozen=False, ckpt=str(last))


def test_save_frozen_makes_checkpoints_self_contained(tiny_llama_dir, tmp_path):
    import shutil

    from blockexp.training.export import rebuild_from_checkpoint

    module, last = _fit_from_dir(tiny_llama_dir, tmp_path / "run", 2, save_frozen=True)
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert "model.model.layers.0.self_attn.q_proj.weight" in state["state_dict"]
    shutil.rmtree(tiny_llama_dir)  # the base is gone: the checkpoint alone suffices
    rebuilt = rebuild_from_checkpoint(state, last)
    ids = torch.randint(0, 256, (2, 10))
    module.model.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(ids).logits, module.model(ids).logits)


@pytest.mark.parametrize(
    "args,trainable",
    [
        (["--expander", "LoRA", "--expander.r", "2", "--expander.target_modules", "[q_proj]"], 256),
        (["--expander", "MoEExpansion", "--expander.num_experts", "1"], 2 * (3 * 32 * 64 + 64)),
        (["--expander", "SuffixStack", "--expander.num_blocks", "1"], None),
        (["--expander", "FullFineTune"], None),
    ],
)
def test_plan_command_from_config_alone(tmp_path, capsys, args, trainable):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_llama_dict(2)))
    main(["plan", "--base", str(config), *args, "--json"])
    summary = json.loads(capsys.readouterr().out)
    if trainable is not None:  # LoRA: 2 layers x (A 2x32 + B 32x2); MoE: expert + router
        assert summary["trainable_params"] == trainable
    if args[1] == "SuffixStack":
        assert summary["num_layers"] == 3 and summary["layers"][2]["trainable"]
    if args[1] == "FullFineTune":
        assert summary["trainable_params"] == summary["total_params"]
