"""Fault injection: malicious checkpoints, mutated bases, corrupted checkpoints, bad inputs, and
``kill -9`` at random points (slow). Each test prints its counts (run with ``-s``); the table in
docs/security.md comes from such a run."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from blockexp.cli import main
from tests.conftest import record_faults

REPO = Path(__file__).resolve().parents[1]


def _user_error(capsys, args: list[str]) -> str:
    """Run the CLI in-process; return its one error line (it must exit 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def _fit_args(base: Path, root: Path, steps: int, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        str(REPO / "configs/quickstart.yaml"),
        "--model.base",
        str(base),
        "--model.output.export_dir",
        "null",
        "--model.validate_before_fit",
        "false",
        "--trainer.max_steps",
        str(steps),
        "--trainer.limit_val_batches",
        "0",
        "--trainer.logger",
        "false",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.callbacks",
        "[]",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.dirpath",
        str(root / "ckpt"),
        "--trainer.callbacks.save_last",
        "true",
        "--trainer.enable_progress_bar",
        "false",
        "--data.init_args.cache_dir",
        str(root / "cache"),
        *extra,
    ]


def _quick_fit(root: Path, *extra: str) -> list[str]:
    """One quickstart step with no checkpoint, logger or export, outputs under ``root``."""
    return [
        "fit",
        "--config",
        str(REPO / "configs/quickstart.yaml"),
        "--trainer.max_steps",
        "1",
        "--trainer.logger",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.callbacks",
        "[]",
        "--model.output.export_dir",
        "null",
        "--trainer.default_root_dir",
        str(root),
        *extra,
    ]


@pytest.fixture
def trained(tiny_llama_dir, tmp_path, monkeypatch):
    """A trainable-only checkpoint trained on the base directory ``tiny_llama_dir``."""
    monkeypatch.chdir(REPO)
    root = tmp_path / "run"
    main(_fit_args(tiny_llama_dir, root, 2))
    ckpt = root / "ckpt" / "last.ckpt"
    assert ckpt.is_file()
    return tiny_llama_dir, ckpt


# --------------------------------------------------------------------------- malicious input
class _Payload:
    """Unpickling this writes a marker file: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "executed"))


def _remote_code_base(folder: Path, marker: Path) -> Path:
    """A model directory whose config asks to import its own code (which writes ``marker``)."""
    folder.mkdir(parents=True)
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('executed')\n"
        "from transformers import LlamaConfig\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
    )
    config = {
        "model_type": "evil",
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilConfig"},
        "num_hidden_layers": 2,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_malicious_checkpoints_never_run_code(trained, tmp_path, capsys):
    base, ckpt = trained
    marker = tmp_path / "marker"
    state = torch.load(ckpt, weights_only=True)
    variants = {}
    for where in ("top", "state_dict", "hyper_parameters", "blockexp"):  # pickled code
        evil = dict(state)
        if where == "top":
            evil["payload"] = _Payload(marker)
        else:
            evil[where] = {**evil[where], "payload": _Payload(marker)}
        path = tmp_path / f"pickle_{where}.ckpt"
        torch.save(evil, path)
        variants[path.name] = path
    remote = _remote_code_base(tmp_path / "evil_base", marker)
    for trust in (True, "true"):  # remote code named by the checkpoint's hyper-parameters
        evil = dict(state)
        evil["hyper_parameters"] = {**state["hyper_parameters"], "base": str(remote)}
        evil["hyper_parameters"]["trust_remote_code"] = trust
        path = tmp_path / f"remote_{trust}.ckpt"
        torch.save(evil, path)
        variants[path.name] = path
    trials = refused = 0
    for name, path in variants.items():
        trials += 1
        line = _user_error(capsys, ["export", "--ckpt", str(path), "--out", str(tmp_path / name)])
        refused += 1
        assert not marker.exists(), (name, line)
        # Resuming: the checkpoint's settings are ignored; the config decides.
        root = tmp_path / f"resume_{name}"
        args = _fit_args(base, root, 4, "--ckpt_path", str(path))
        trials += 1
        if name.startswith("pickle"):
            _user_error(capsys, args)
            refused += 1
        else:  # the configured base is used, verified and resumed from; nothing remote runs
            main(args)
        assert not marker.exists(), name
    record_faults("malicious checkpoints", trials=trials, refused=refused, executed=0)


def test_remote_code_is_off_unless_the_user_turns_it_on(tmp_path, capsys):
    marker = tmp_path / "marker"
    remote = _remote_code_base(tmp_path / "evil_base", marker)
    line = _user_error(capsys, ["plan", "--base", str(remote), "--expander", "LlamaPro"])
    assert "trust_remote_code" in line or "evil" in line
    assert not marker.exists()


# ----------------------------------------------------------------------------- mutated bases
MUTATIONS = {
    "random embedding": lambda t: {
        **t,
        "model.embed_tokens.weight": torch.randn_like(t["model.embed_tokens.weight"]),
    },
    "zeroed layers.0.q_proj": lambda t: {
        **t,
        "model.layers.0.self_attn.q_proj.weight": torch.zeros_like(
            t["model.layers.0.self_attn.q_proj.weight"]
        ),
    },
    "row-permuted MLP": lambda t: {
        **t,
        "model.layers.1.mlp.up_proj.weight": t["model.layers.1.mlp.up_proj.weight"]
        .flip(0)
        .contiguous(),
    },
    "one value +1 ulp": lambda t: {
        **t,
        "model.norm.weight": torch.nextafter(
            t["model.norm.weight"], torch.full_like(t["model.norm.weight"], 10.0)
        ),
    },
    "swapped layers": lambda t: {
        **t,
        "model.layers.0.mlp.down_proj.weight": t["model.layers.3.mlp.down_proj.weight"],
        "model.layers.3.mlp.down_proj.weight": t["model.layers.0.mlp.down_proj.weight"],
    },
    "fp16 round trip": lambda t: {k: v.half().float() for k, v in t.items()},
}


TENSOR_MUTATIONS = {
    **MUTATIONS,
    "added tensor": lambda t: {**t, "model.extra.weight": torch.ones(4)},
    "removed model.norm.weight": lambda t: {k: v for k, v in t.items() if k != "model.norm.weight"},
    "fp64 base": lambda t: {k: v.double() for k, v in t.items()},
}
CONFIG_MUTATIONS = {  # (field, new value, what the message names)
    "rope_theta": ("rope_theta", 500000.0, "rope"),
    "hidden_act": ("hidden_act", "gelu", "hidden_act"),
    "rms_norm_eps": ("rms_norm_eps", 1e-5, "rms_norm_eps"),
    "max_position_embeddings": ("max_position_embeddings", 4096, "max_position_embeddings"),
}


def _swap_two_token_ids(folder: Path) -> None:
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    a, b = list(vocab)[65:67]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    path.write_text(json.dumps(data))


def _mutated_bases(base: Path, root: Path) -> dict[str, tuple[str, Path, str]]:
    """``name -> (kind, mutated copy of base, what the refusal must name)``."""
    weights = load_file(base / "model.safetensors")
    out = {}
    for name, mutate in TENSOR_MUTATIONS.items():
        folder = root / name.replace(" ", "_")
        shutil.copytree(base, folder)
        mutated = mutate(weights)
        save_file(mutated, folder / "model.safetensors", metadata={"format": "pt"})
        changed = sorted(
            k
            for k in set(weights) | set(mutated)
            if k not in mutated
            or k not in weights
            or not torch.equal(weights[k], mutated[k])
            or weights[k].dtype != mutated[k].dtype
        )
        out[name] = ("tensors", folder, changed[0])
    for name, (field, value, named) in CONFIG_MUTATIONS.items():
        folder = root / f"config_{name}"
        shutil.copytree(base, folder)
        config = json.loads((folder / "config.json").read_text())
        if field == "rope_theta":
            config["rope_parameters"] = {"rope_theta": value, "rope_type": "default"}
        else:
            config[field] = value
        (folder / "config.json").write_text(json.dumps(config))
        out[f"config {name}"] = ("config", folder, named)
    folder = root / "tokenizer_swap"
    shutil.copytree(base, folder)
    _swap_two_token_ids(folder)
    out["two token ids swapped"] = ("tokenizer", folder, "tokenizer.json")
    return out


def test_mutated_bases_are_refused(trained, tmp_path, capsys):
    """A base that differs in a tensor (values, presence, dtype), a model-defining config field or
    a tokenizer file is refused on export and on resume, naming what changed; the export leaves
    nothing behind."""
    base, ckpt = trained
    refused: dict[str, int] = {}
    trials = 0
    for name, (kind, mutated, named) in _mutated_bases(base, tmp_path / "bases").items():
        out = tmp_path / "o"
        lines = [
            _user_error(
                capsys, ["export", "--ckpt", str(ckpt), "--base", str(mutated), "--out", str(out)]
            ),
            _user_error(
                capsys,
                _fit_args(mutated, tmp_path / f"r_{mutated.name}", 4, "--ckpt_path", str(ckpt)),
            ),
        ]
        for line in lines:
            trials += 1
            assert "differs from the one" in line and named in line, (name, line)
            assert str(mutated) in line, (name, line)
            refused[kind] = refused.get(kind, 0) + 1
        assert not out.exists()
    assert refused == {"tensors": 18, "config": 8, "tokenizer": 2}
    by_kind = {f"refused {k}": v for k, v in refused.items()}
    record_faults("mutated bases", trials=trials, refused=sum(refused.values()), **by_kind)


def test_harmless_config_fields_are_not_a_different_base(trained, tmp_path, capsys):
    """Fields that do not change the function (transformers_version, use_cache, dtype) may
    differ: the export goes through and equals the one from the unchanged base."""
    base, ckpt = trained
    saved = tmp_path / "resaved"
    shutil.copytree(base, saved)
    config = json.loads((saved / "config.json").read_text())
    config.update(transformers_version="4.99.0", use_cache=False, dtype="float32")
    (saved / "config.json").write_text(json.dumps(config))
    main(["export", "--ckpt", str(ckpt), "--base", str(saved), "--out", str(tmp_path / "a")])
    main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "b")])
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_forged_base_record_is_caught_when_the_base_is_stated(trained, tmp_path, capsys):
    """The record is an integrity check, not a signature: a checkpoint edited to name another
    base (with that base's record and fingerprint) exports from it. Stating the real base with
    --base refuses it."""
    from blockexp.training.export import load_checkpoint_file

    base, ckpt = trained
    other = tmp_path / "other_base"
    shutil.copytree(base, other)
    weights = load_file(base / "model.safetensors")
    weights["model.embed_tokens.weight"] = torch.randn_like(weights["model.embed_tokens.weight"])
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    # the forger trains on the other base once to learn its record and fingerprint
    donor_root = tmp_path / "donor"
    main(_fit_args(other, donor_root, 1))
    donor = load_checkpoint_file(donor_root / "ckpt" / "last.ckpt")
    state = load_checkpoint_file(ckpt)
    for key in ("base_record", "frozen_fingerprint"):
        state["blockexp"][key] = donor["blockexp"][key]
    state["hyper_parameters"]["base"] = str(other)
    forged = tmp_path / "forged.ckpt"
    torch.save(state, forged)
    main(["export", "--ckpt", str(forged), "--out", str(tmp_path / "from_forged")])  # accepted
    line = _user_error(
        capsys, ["export", "--ckpt", str(forged), "--base", str(base), "--out", str(tmp_path / "x")]
    )
    assert "differs from the one" in line and "model.embed_tokens.weight" in line, line


# ------------------------------------------------------------------------ corrupted checkpoints
def _flip_inside_a_trainable_tensor(src: Path, dst: Path, rng: random.Random) -> None:
    """Overwrite bytes inside a stored trainable tensor's data with 0x7f7f... (3.4e38 floats)."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as archive:
        members = [i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 64]
    info = rng.choice(members)
    header = 30 + len(info.filename.encode()) + len(info.extra)
    start = info.header_offset + header + rng.randrange(0, info.file_size - 8)
    data[start : start + 8] = b"\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f"
    dst.write_bytes(bytes(data))


def test_corrupted_checkpoints_are_refused(trained, tmp_path, capsys):
    base, ckpt = trained
    rng = random.Random(0)
    size = ckpt.stat().st_size
    cases = []
    for i in range(5):
        truncated = tmp_path / f"truncated_{i}.ckpt"
        truncated.write_bytes(ckpt.read_bytes()[: rng.randrange(1, size)])
        cases.append(truncated)
    for i in range(5):
        flipped = tmp_path / f"flipped_{i}.ckpt"
        _flip_inside_a_trainable_tensor(ckpt, flipped, rng)
        cases.append(flipped)
    not_a_ckpt = tmp_path / "text.ckpt"
    not_a_ckpt.write_text("not a checkpoint")
    cases.append(not_a_ckpt)
    trials = refused = 0
    for path in cases:
        trials += 1
        line = _user_error(capsys, ["export", "--ckpt", str(path), "--out", str(tmp_path / "o")])
        assert str(path) in line or path.name in line, line
        refused += 1
        trials += 1
        line = _user_error(
            capsys, _fit_args(base, tmp_path / f"r_{path.stem}", 4, "--ckpt_path", str(path))
        )
        assert path.name in line, line
        refused += 1
    assert not (tmp_path / "o").exists()
    record_faults(
        "corrupted checkpoints", trials=trials, refused=refused, accepted=trials - refused
    )


def _tampered(state: dict, key: str, value: float) -> dict:
    """``state`` with one value of trained tensor ``key`` set to ``value`` and its stored
    checksum recomputed (so only the finiteness check can catch it)."""
    from blockexp.io.digests import tensor_digests

    state = {**state, "state_dict": dict(state["state_dict"]), "blockexp": dict(state["blockexp"])}
    tensor = state["state_dict"][key].clone()
    tensor.view(-1)[3] = value
    state["state_dict"][key] = tensor
    weights = {k: v for k, v in state["state_dict"].items() if k.startswith("model.")}
    state["blockexp"]["stored_digest"] = tensor_digests(weights)
    return state


def test_non_finite_and_unverified_checkpoints_are_refused(trained, tmp_path, capsys):
    """Trained weights holding NaN, inf or 3.4e38 are refused on export and resume even with a
    recomputed checksum, naming the tensor; a checkpoint with no checksums is refused unless the
    user passes the explicit flag (and then still must be finite)."""
    from blockexp.training.export import load_checkpoint_file

    base, ckpt = trained
    state = load_checkpoint_file(ckpt)
    key = sorted(k for k in state["state_dict"] if k.startswith("model.") and "mlp" in k)[0]
    trials = refused = 0
    for label, value in (("nan", float("nan")), ("inf", float("inf")), ("max", 3.4e38)):
        path = tmp_path / f"{label}.ckpt"
        torch.save(_tampered(state, key, value), path)
        for args in (
            ["export", "--ckpt", str(path), "--out", str(tmp_path / "o")],
            _fit_args(base, tmp_path / f"r_{label}", 4, "--ckpt_path", str(path)),
        ):
            trials += 1
            line = _user_error(capsys, args)
            assert key in line and "non-finite" in line and "earlier checkpoint" in line, line
            refused += 1
    for dropped in ("stored_digest", "base_record"):
        bare = {**state, "blockexp": {k: v for k, v in state["blockexp"].items() if k != dropped}}
        path = tmp_path / f"no_{dropped}.ckpt"
        torch.save(bare, path)
        for args, flag in (
            (["export", "--ckpt", str(path), "--out", str(tmp_path / "o")], "--allow_unverified"),
            (
                _fit_args(base, tmp_path / f"r_{dropped}", 4, "--ckpt_path", str(path)),
                "--model.allow_unverified_checkpoint",
            ),
        ):
            trials += 1
            line = _user_error(capsys, args)
            assert flag in line, line
            refused += 1
    assert not (tmp_path / "o").exists()
    # the explicit flag lets a checkpoint of another tool through, and only a finite one
    path = tmp_path / "no_stored_digest.ckpt"
    main(["export", "--ckpt", str(path), "--out", str(tmp_path / "ok"), "--allow_unverified"])
    assert (tmp_path / "ok" / "model.safetensors").is_file()
    bare = _tampered(state, key, float("nan"))
    del bare["blockexp"]["stored_digest"]
    torch.save(bare, tmp_path / "nan_bare.ckpt")
    line = _user_error(
        capsys,
        [
            "export",
            "--ckpt",
            str(tmp_path / "nan_bare.ckpt"),
            "--out",
            str(tmp_path / "o"),
            "--allow_unverified",
        ],
    )
    assert key in line
    record_faults("non-finite / unverified checkpoints", trials=trials + 1, refused=refused + 1)


def _snapshot(*paths: Path) -> dict[str, bytes]:
    """Every file under ``paths`` with its bytes (to prove an input was not touched)."""
    out = {}
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = f.read_bytes()
    return out


def test_export_never_writes_over_its_inputs(trained, tmp_path, capsys, monkeypatch):
    """No output may equal, contain or lie inside an input (base, checkpoint, tokenizer, config),
    resolved through symlinks, even with --overwrite and a manifest in place; the refusal comes
    before anything is hashed."""
    import blockexp.io.base_record
    import blockexp.io.digests
    from blockexp.io.manifest import MANIFEST_NAME

    base, ckpt = trained
    expanded = tmp_path / "expanded"  # an earlier blockexp output, used as the base
    main(
        [
            "expand",
            "--base",
            str(base),
            "--out",
            str(expanded),
            "--expander",
            "LlamaPro",
            "--expander.num_groups",
            "2",
        ]
    )
    (ckpt.parent / MANIFEST_NAME).write_text("{}")  # looks replaceable: only the guard stops it
    link = tmp_path / "link_to_base"
    link.symlink_to(base, target_is_directory=True)
    config = expanded / "export.yaml"
    config.write_text(f"ckpt: {ckpt}\n")
    tokenizer = tmp_path / "tok"
    shutil.copytree(base, tokenizer)
    (tokenizer / MANIFEST_NAME).write_text("{}")

    def never(*args, **kwargs):
        raise AssertionError("hashed before the output check")

    monkeypatch.setattr(blockexp.io.base_record, "tensor_record", never)
    monkeypatch.setattr(blockexp.io.digests, "tensor_digests", never)
    cases = {
        "out is the base": ["--base", str(base), "--out", str(base)],
        "out is the checkpoint's directory": ["--out", str(ckpt.parent)],
        "out holds the checkpoint": ["--out", str(ckpt.parent.parent)],
        "out inside the base": ["--base", str(base), "--out", str(base / "sub")],
        "out is a symlink to the base": ["--base", str(base), "--out", str(link)],
        "out is the tokenizer": ["--tokenizer", str(tokenizer), "--out", str(tokenizer)],
        "out holds the config file": ["--config", str(config), "--out", str(expanded)],
    }
    before = _snapshot(base, ckpt.parent, expanded, tokenizer)
    trials = refused = 0
    for name, extra in cases.items():
        args = ["export", *([] if "--config" in extra else ["--ckpt", str(ckpt)]), *extra]
        trials += 1
        line = _user_error(capsys, [*args, "--overwrite"])
        assert "an input of this command" in line and "Choose an output" in line, (name, line)
        refused += 1
    assert _snapshot(base, ckpt.parent, expanded, tokenizer) == before
    assert link.is_symlink()
    record_faults("outputs over inputs (export)", trials=trials, refused=refused, lost_inputs=0)


def test_expand_and_fit_never_write_over_their_inputs(
    tmp_path, capsys, monkeypatch, tiny_llama_dir
):
    """The same rule for ``expand`` (base, config file) and ``fit`` (export_dir over the data,
    the tokenizer or the config; the run directory inside the base)."""
    from blockexp.io.manifest import MANIFEST_NAME

    monkeypatch.chdir(REPO)
    base = tiny_llama_dir
    (base / MANIFEST_NAME).write_text("{}")
    data = tmp_path / "data"
    data.mkdir()
    (data / MANIFEST_NAME).write_text("{}")
    shutil.copy(REPO / "data/quickstart/general.jsonl", data / "general.jsonl")
    config = data / "extra.yaml"
    config.write_text("model:\n  optim:\n    lr: 0.001\n")
    before = _snapshot(base, data)
    sources = '[{"name": "g", "path": "%s"}]' % (data / "general.jsonl")
    cases = [
        [
            "expand",
            "--base",
            str(base),
            "--out",
            str(base),
            "--expander",
            "LlamaPro",
            "--expander.num_groups",
            "2",
            "--overwrite",
        ],
        [
            "expand",
            "--base",
            str(base),
            "--out",
            str(base / "inside"),
            "--expander",
            "LlamaPro",
            "--expander.num_groups",
            "2",
        ],
        [
            "expand",
            "--config",
            str(config).replace("extra", "expand"),
            "--base",
            str(base),
            "--out",
            str(data),
            "--overwrite",
        ],
        _fit_args(
            base,
            tmp_path / "r1",
            1,
            "--data.init_args.sources",
            sources,
            "--model.output.export_dir",
            str(data),
            "--model.output.export_overwrite",
            "true",
        ),
        _fit_args(
            base,
            tmp_path / "r2",
            1,
            "--config",
            str(config),
            "--model.output.export_dir",
            str(data),
            "--model.output.export_overwrite",
            "true",
        ),
        _fit_args(base, base / "run", 1),
        [
            "importance",
            "--base",
            str(base),
            "--data",
            str(data / "general.jsonl"),
            "--out",
            str(base / "importance"),
        ],
        [
            "importance",
            "--base",
            str(base),
            "--data",
            str(data / "general.jsonl"),
            "--out",
            str(data / "general.jsonl"),
        ],
        ["eval", "--model", str(base), "--tasks", "blockexp_cloze", "--out", str(base / "eval")],
    ]
    (data / "expand.yaml").write_text(
        "expander:\n  class_path: LlamaPro\n  init_args:\n    num_groups: 2\n"
    )
    before = _snapshot(base, data)
    for args in cases:
        line = _user_error(capsys, args)
        assert "input" in line and ("Choose" in line or "choose" in line), (args[:2], line)
    assert _snapshot(base, data) == before
    assert not (base / "run").exists() and not (tmp_path / "r1" / "ckpt").exists()
    record_faults(
        "outputs over inputs (expand, fit)", trials=len(cases), refused=len(cases), lost_inputs=0
    )


# ---------------------------------------------------------------------------------- bad input
def test_every_bad_input_is_one_line(tmp_path, capsys, monkeypatch, tiny_llama_dir):
    monkeypatch.chdir(REPO)
    quick = _quick_fit(tmp_path / "run")
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "ok"}\n{"text": broken\n')
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"\xff\xfe not utf-8\n")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model:\n  lr: [1, 2\n")
    sft = tmp_path / "sft.json"
    sft.write_text('[{"prompt": "p"}]')
    trace = tmp_path / "trace" / "A"
    trace.mkdir(parents=True)
    for split in ("train", "test"):
        (trace / f"{split}.json").write_text('[{"prompt": "p", "answer": 3}]')
    truncated_base = tmp_path / "truncated_base"
    shutil.copytree(tiny_llama_dir, truncated_base)
    weights = truncated_base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    truncated_ckpt = tmp_path / "t.ckpt"
    truncated_ckpt.write_bytes(b"PK\x03\x04" + os.urandom(100))
    sources = '[{"name": "x", "path": "%s"}]'
    cases = {
        "bad num_groups": ([*quick, "--model.expander.num_groups", "3"], "num_groups"),
        "malformed JSONL": (
            [*quick, "--data.init_args.sources", sources % bad_jsonl],
            "bad.jsonl:2",
        ),
        "non-UTF-8": ([*quick, "--data.init_args.sources", sources % latin], "latin.txt"),
        "SFT schema": (
            [
                *quick,
                "--data",
                "blockexp.data.sft.SFTDataModule",
                "--data.init_args.train_files",
                f"[{sft}]",
            ],
            "sft.json:1",
        ),
        "TRACE schema": (
            [
                *quick,
                "--data",
                "blockexp.trace.data.TRACEDataModule",
                "--data.init_args.root",
                str(trace.parent),
                "--data.init_args.tasks",
                "[A]",
                "--data.init_args.epochs",
                "1",
                "--data.init_args.task_metrics",
                "{A: accuracy}",
            ],
            "train.json:1",
        ),
        "truncated safetensors": ([*quick, "--model.base", str(truncated_base)], "truncated_base"),
        "truncated .ckpt (export)": (
            ["export", "--ckpt", str(truncated_ckpt), "--out", str(tmp_path / "o")],
            "t.ckpt",
        ),
        "missing .ckpt (export)": (
            ["export", "--ckpt", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "o")],
            "none.ckpt",
        ),
        "malformed YAML": (["fit", "--config", str(bad_yaml)], "bad.yaml:3"),
        "missing base": (
            ["plan", "--base", str(tmp_path / "nowhere"), "--expander", "LlamaPro"],
            "nowhere",
        ),
    }
    one_line = 0
    for name, (args, where) in cases.items():
        line = _user_error(capsys, args)
        assert where in line, (name, line)
        one_line += 1
    record_faults("bad inputs", trials=len(cases), one_line=one_line, tracebacks=0)
    # With --debug the traceback is shown instead.
    with pytest.raises(ValueError):
        main(["--debug", *cases["malformed YAML"][0]])


def test_progress_bar_can_be_switched_off(tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import ProgressBar

    monkeypatch.chdir(REPO)
    cli = main(_quick_fit(tmp_path, "--trainer.enable_progress_bar", "false"))
    assert cli.trainer.global_step == 1  # trained, with the default rich bar left out
    assert not any(isinstance(c, ProgressBar) for c in cli.trainer.callbacks)


# ------------------------------------------------------------------- what a user made is kept
def test_exports_never_replace_what_a_user_made(tmp_path, monkeypatch, tiny_llama_dir, capsys):
    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    (run / "ckpt").mkdir(parents=True)
    (run / "ckpt" / "keep.ckpt").write_text("x")
    (run / "notes.txt").write_text("mine")
    for target in (run, tmp_path):  # the run directory itself, or a directory holding it
        line = _user_error(
            capsys,
            _fit_args(
                tiny_llama_dir,
                run,
                1,
                "--model.output.export_dir",
                str(target),
                "--model.output.export_overwrite",
                "true",
            ),
        )
        assert "holds" in line or "not an earlier blockexp output" in line, line
    other = tmp_path / "someone_elses"
    other.mkdir()
    (other / "file").write_text("keep")
    line = _user_error(
        capsys,
        _fit_args(
            tiny_llama_dir,
            tmp_path / "run2",
            1,
            "--model.output.export_dir",
            str(other),
            "--model.output.export_overwrite",
            "true",
        ),
    )
    assert "not an earlier blockexp output" in line
    assert (other / "file").read_text() == "keep" and (run / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "run2" / "ckpt").exists()  # refused before training


def test_second_fit_into_a_used_run_directory_is_refused(trained, capsys):
    base, ckpt = trained
    line = _user_error(capsys, _fit_args(base, ckpt.parent.parent, 2))
    assert "--ckpt_path" in line and str(ckpt) in line
    assert sorted(p.name for p in ckpt.parent.glob("*.ckpt")) == ["last.ckpt"]


def test_stale_temporaries_of_dead_processes_are_cleaned(tmp_path):
    from blockexp.io.outputs import atomic_output_dir

    out = tmp_path / "out"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    (tmp_path / f".out.tmp-{dead}-1").mkdir()
    (tmp_path / f".out.old-{dead}-2").mkdir()
    (tmp_path / f".out.old-{dead}-2" / "blockexp_manifest.json").write_text("{}")  # an output
    alive = tmp_path / f".out.tmp-{os.getpid()}-3"
    alive.mkdir()
    with atomic_output_dir(out, overwrite=True) as tmp:  # restores the old output, then replaces
        (tmp / "blockexp_manifest.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "out"]


# --------------------------------------------------------------------------------- kill -9
def _kill_during(
    args: list[str], delay: float, cwd: Path, env: dict, when: tuple[Path, str] | None = None
) -> int:
    """Run the CLI and SIGKILL it ``delay`` seconds after start, or, with ``when=(folder, glob)``,
    ``delay`` seconds after a file matching ``glob`` appears in ``folder`` (mid-write)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "blockexp", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if when is not None:
        folder, pattern = when
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if folder.is_dir() and any(folder.glob(pattern)):
                break
            time.sleep(0.0005)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    return proc.wait()


def _temporaries(folder: Path, pattern: str) -> list[Path]:
    """What a killed write left matching ``pattern``; the lock file a kill leaves is not a
    temporary (the next writer reuses it and removes it)."""
    return [p for p in folder.glob(pattern) if not p.name.endswith(".lock")]


def _env(tmp_path: Path) -> dict:
    temp = tmp_path / "system_tmp"
    temp.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(temp), "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_kill_export_at_random_points(trained, tmp_path):
    _, ckpt = trained
    env = _env(tmp_path)
    out = tmp_path / "exported"
    export = ["export", "--ckpt", str(ckpt), "--out", str(out), "--overwrite", "true"]
    subprocess.run(
        [sys.executable, "-m", "blockexp", *export], env=env, check=True, capture_output=True
    )
    reference = load_file(out / "model.safetensors")
    rng = random.Random(2)
    trials = survived = left_by_kill = 0
    for _ in range(8):
        _kill_during(export, rng.uniform(0.0, 0.05), REPO, env, (tmp_path, ".exported.tmp-*"))
        trials += 1
        left_by_kill += bool(_temporaries(tmp_path, ".exported.*"))
        if out.exists():  # the previous export, intact, or the new one, complete
            got = load_file(out / "model.safetensors")
            assert all(torch.equal(got[k], reference[k]) for k in reference)
        survived += 1
    subprocess.run(
        [sys.executable, "-m", "blockexp", *export], env=env, check=True, capture_output=True
    )
    leftovers = [p.name for p in tmp_path.glob(".exported.*")]
    assert not leftovers and not any((tmp_path / "system_tmp").iterdir())
    record_faults(
        "kill -9 during export",
        trials=trials,
        survived=survived,
        partial_outputs=trials - survived,
        killed_mid_write=left_by_kill,
        leftovers_after_next_run=len(leftovers),
    )


@pytest.mark.slow
def test_kill_expand_at_random_points(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    env = _env(tmp_path)
    base = tmp_path / "base"  # ~100 MB so that writing takes a while
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32000,
            hidden_size=512,
            intermediate_size=1408,
            num_hidden_layers=8,
            num_attention_heads=8,
        )
    ).save_pretrained(base)
    expand = [
        "expand",
        "--base",
        str(base),
        "--out",
        str(tmp_path / "out"),
        "--expander",
        "LlamaPro",
        "--expander.num_groups",
        "2",
        "--overwrite",
        "true",
        "--in_memory",
    ]
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "blockexp", *expand, "true"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
    )
    full = time.perf_counter() - started
    reference = load_file(tmp_path / "out" / "model.safetensors")
    rng = random.Random(0)
    trials = survived = left_by_kill = 0
    for trial in range(10):
        mode = "true" if trial % 2 else "false"  # in memory, or streamed
        if trial < 4:  # at a random time
            _kill_during([*expand, mode], rng.uniform(0.3 * full, 1.1 * full), tmp_path, env)
        else:  # while the output is being written
            when = (tmp_path, ".out.tmp-*")
            _kill_during([*expand, mode], rng.uniform(0.0, 0.3), tmp_path, env, when)
        trials += 1
        left_by_kill += bool(_temporaries(tmp_path, ".out.*"))  # cleaned by the next run
        out = tmp_path / "out"
        if out.exists():  # complete (old or new): both equal the reference
            got = (
                load_file(out / "model.safetensors")
                if (out / "model.safetensors").exists()
                else None
            )
            if got is not None:
                assert got.keys() == reference.keys()
                assert all(torch.equal(got[k], reference[k]) for k in got)
            assert (out / "blockexp_manifest.json").is_file()
        survived += 1
    subprocess.run(
        [sys.executable, "-m", "blockexp", *expand, "false"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
    )
    leftovers = [p.name for p in tmp_path.glob(".out.*")]
    assert not leftovers, leftovers  # the next run removed what killed runs left
    assert not any((tmp_path / "system_tmp").iterdir())
    record_faults(
        "kill -9 during expand",
        trials=trials,
        survived=survived,
        partial_outputs=trials - survived,
        killed_mid_write=left_by_kill,
        leftovers_after_next_run=len(leftovers),
    )


@pytest.mark.slow
def test_kill_fit_and_checkpoint_saves_then_resume(tmp_path, tiny_llama_dir):
    env = _env(tmp_path)
    root = tmp_path / "run"
    args = _fit_args(tiny_llama_dir, root, 40, "--trainer.callbacks.every_n_train_steps", "2")
    rng = random.Random(1)
    trials = survived = resumed = 0
    for trial in range(8):
        if trial % 2:  # while a checkpoint file is being written
            when = (root / "ckpt", ".*.tmp-*")
            _kill_during(args, rng.uniform(0.0, 0.02), REPO, env, when)
        else:
            _kill_during(args, rng.uniform(4.0, 12.0), REPO, env)
        trials += 1
        # A kill between a step checkpoint and last.ckpt leaves only the step file: resume from
        # the newest complete checkpoint (a fresh run into that directory is refused, rightly).
        saved = sorted((root / "ckpt").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        last = root / "ckpt" / "last.ckpt" if (root / "ckpt" / "last.ckpt").exists() else None
        last = last or (saved[-1] if saved else None)
        resumed += last is not None
        if last is not None:  # complete and verified, or absent
            from blockexp.io.digests import check_stored_tensors
            from blockexp.training.export import load_checkpoint_file

            state = load_checkpoint_file(last)
            check_stored_tensors(state["state_dict"], state["blockexp"]["stored_digest"], "last")
            args = _fit_args(
                tiny_llama_dir,
                root,
                40,
                "--trainer.callbacks.every_n_train_steps",
                "2",
                "--ckpt_path",
                str(last),
            )
        survived += 1
    result = subprocess.run(
        [sys.executable, "-m", "blockexp", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.load(root / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 40
    leftovers = [p.name for p in (root / "ckpt").glob(".*")]
    assert not leftovers, leftovers
    assert not any((tmp_path / "system_tmp").iterdir())  # no temp file outside the run
    record_faults(
        "kill -9 during fit / checkpoint save",
        trials=trials,
        survived=survived,
        partial_outputs=trials - survived,
        resumed_from_checkpoint=resumed,
        leftovers=len(leftovers),
    )
