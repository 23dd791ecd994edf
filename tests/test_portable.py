"""Outputs keep the base's non-weight files and load alike in transformers 4.x and 5.x
(:mod:`blockexp.io.portable`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from blockexp.cli import main
from blockexp.expanders import LlamaPro
from blockexp.io.portable import (
    _ATTRIBUTE_MAPS,
    carry_base_files,
    is_weight_file,
    make_portable,
    portable_config,
    portable_tokenizer_config,
)
from blockexp.io.streaming import stream_expand
from blockexp.io.tokenization import load_tokenizer
from blockexp.training.settings import Optim
from tests.conftest import ARCH_CONFIGS, RandomBlocks, make_arch_model, tiny_llama_dict

REPO = Path(__file__).resolve().parents[1]
CHAT = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
TOOL_CHAT = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
GENERATION = {
    "bos_token_id": 257,
    "do_sample": True,
    "eos_token_id": [2, 3],
    "temperature": 0.6,
    "top_p": 0.9,
    "transformers_version": "4.45.0",
}
# Files of the base that every output keeps byte for byte.
KEPT = (
    "generation_config.json",
    "chat_template.jinja",
    "additional_chat_templates/tool_use.jinja",
    "README.md",
    "LICENSE",
    "modeling_notes.py",
    "preprocessor_config.json",
)
# ... and what it leaves behind: weights, other formats of them, repository and cache folders.
LEFT = ("training_args.bin", "original", ".git", ".cache", "checkpoint-10", "consolidated.00.pth")
TEXT = "Hello, world! <tool> ümlaut 123"
MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]

# RoPE and architecture variants beyond conftest.ARCH_CONFIGS (which has llama3 scaling).
VARIANTS = {
    "llama_linear": tiny_llama_dict(2, rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "llama_dynamic": tiny_llama_dict(2, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
    "llama_theta_bf16": tiny_llama_dict(2, rope_theta=123456.0),
    "qwen2_yarn": tiny_llama_dict(
        2,
        model_type="qwen2",
        rope_theta=1e6,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    ),
    "phi3_longrope": tiny_llama_dict(
        2,
        model_type="phi3",
        original_max_position_embeddings=8,
        rope_scaling={
            "type": "longrope",
            "short_factor": [1.0, 1.1, 1.2, 1.3],
            "long_factor": [2.0, 2.5, 3.0, 3.5],
        },
    ),
    "gemma3_linear": tiny_llama_dict(
        2,
        model_type="gemma3_text",
        head_dim=16,
        sliding_window=4,
        query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention"],
        tie_word_embeddings=True,
        rope_scaling={"rope_type": "linear", "factor": 8.0},
    ),
}
CASES = {**ARCH_CONFIGS, **VARIANTS}


def _tokenizer():
    tok = load_tokenizer("byte")
    tok.chat_template = CHAT
    tok.add_special_tokens({"additional_special_tokens": ["<tool>"]})
    return tok


def _save_model(model, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    _tokenizer().save_pretrained(path)
    return path


def _make_base(model, path: Path) -> Path:
    """A local base as the hub has them: weights, tokenizer with chat templates, generation
    config, README, licence, custom code; plus weights in other formats and folders to leave."""
    _save_model(model, path)
    (path / "generation_config.json").write_text(json.dumps(GENERATION, indent=2) + "\n")
    (path / "additional_chat_templates").mkdir()
    (path / "additional_chat_templates" / "tool_use.jinja").write_text(TOOL_CHAT)
    (path / "README.md").write_text("# tiny\n\nA model card.\n")
    (path / "LICENSE").write_text("Apache-2.0\n")
    (path / "modeling_notes.py").write_text("NOTE = 'custom code travels with the model'\n")
    (path / "preprocessor_config.json").write_text('{"feature_size": 1}\n')
    (path / "training_args.bin").write_bytes(b"\0" * 16)
    (path / "consolidated.00.pth").write_bytes(b"\0" * 16)
    for folder in ("original", ".git", ".cache", "checkpoint-10"):
        (path / folder).mkdir()
        (path / folder / "params.json").write_text("{}\n")
    return path


def _check_kept(base: Path, out: Path, tokenizer_from_base: bool = True) -> None:
    for name in KEPT:
        if not tokenizer_from_base and "chat_template" in name:
            assert not (out / name).exists(), name
            continue
        assert (out / name).read_bytes() == (base / name).read_bytes(), name
    for name in LEFT:
        assert not (out / name).exists(), name
    generation = GenerationConfig.from_pretrained(out)
    assert generation.eos_token_id == [2, 3]
    assert (generation.temperature, generation.top_p, generation.do_sample) == (0.6, 0.9, True)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 6  # blockexp's config, not the base's
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    if tokenizer_from_base:
        tok, want = AutoTokenizer.from_pretrained(out), _tokenizer()
        assert tok(TEXT)["input_ids"] == want(TEXT)["input_ids"]
        assert tok.apply_chat_template(MESSAGES, tokenize=False) == want.apply_chat_template(
            MESSAGES, tokenize=False
        )
        assert tokenizer_config["chat_template"] == [
            {"name": "default", "template": CHAT},
            {"name": "tool_use", "template": TOOL_CHAT},
        ]


def test_expand_streamed_and_in_memory_keep_the_base_files(tiny_llama, tmp_path, capsys):
    base = _make_base(tiny_llama(4), tmp_path / "base")
    common = ["--base", str(base), "--expander", "LlamaPro", "--expander.num_groups", "2"]
    main(["expand", *common, "--out", str(tmp_path / "streamed")])
    assert "streamed" in capsys.readouterr().out
    main(["expand", *common, "--out", str(tmp_path / "in_memory"), "--in_memory"])
    assert "Expanding in memory" in capsys.readouterr().out
    for out in ("streamed", "in_memory"):
        _check_kept(base, tmp_path / out)
    a, b = (AutoModelForCausalLM.from_pretrained(tmp_path / d) for d in ("streamed", "in_memory"))
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)


def test_export_keeps_the_base_files(tiny_llama, tmp_path, make_trainer):
    from torch.utils.data import DataLoader

    from blockexp.training.module import BlockExpansionModule

    base = _make_base(tiny_llama(4), tmp_path / "base")
    module = BlockExpansionModule(
        base=str(base), expander=LlamaPro(num_groups=2), optim=Optim(lr=1e-2)
    )
    trainer = make_trainer(tmp_path / "run", 1)
    trainer.fit(module, train_dataloaders=DataLoader(RandomBlocks(), batch_size=4))
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "exported")])
    _check_kept(base, tmp_path / "exported")
    module.export(tmp_path / "fit_export")  # what fit's model.output.export_dir writes
    _check_kept(base, tmp_path / "fit_export")
    # Another tokenizer: the base's tokenizer files (chat templates included) stay behind.
    main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "other"), "--tokenizer", "byte"])
    _check_kept(base, tmp_path / "other", tokenizer_from_base=False)
    module.model.eval()
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        want = module.model(ids).logits
        for out in ("exported", "fit_export", "other"):
            got = AutoModelForCausalLM.from_pretrained(tmp_path / out)(ids).logits
            assert (got - want).abs().max() <= 1e-5, out


def test_hub_id_in_memory_keeps_the_generation_config(tiny_llama, tmp_path, monkeypatch, capsys):
    """A hub id (here served offline from a hub cache) has no directory to copy from: the
    generation config written from ``model.generation_config`` round-trips."""
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--blockexp-test--tiny"
    _make_base(tiny_llama(4), repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "out"
    main(
        ["expand", "--base", "blockexp-test/tiny", "--out", str(out), "--expander", "LlamaPro"]
        + ["--expander.num_groups", "2"]
    )
    assert "not a local directory" in capsys.readouterr().out
    generation = GenerationConfig.from_pretrained(out)
    assert generation.eos_token_id == [2, 3]
    assert (generation.temperature, generation.top_p, generation.do_sample) == (0.6, 0.9, True)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok(TEXT)["input_ids"] == _tokenizer()(TEXT)["input_ids"]
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "PreTrainedTokenizerFast"
    )
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"


def test_carry_rules(tmp_path):
    base, dest = tmp_path / "base", tmp_path / "dest"
    base.mkdir()
    dest.mkdir()
    for name in ("README.md", "generation_config.json", "tokenizer.json", "config.json", "x.py"):
        (base / name).write_text(f"base {name}")
        (dest / name).write_text(f"written {name}") if name != "x.py" else None
    (base / "blockexp_manifest.json").write_text("{}")
    (base / "model-00001-of-00002.safetensors").write_text("")
    (base / "pytorch_model.bin.index.json").write_text("{}")
    assert carry_base_files(base, dest, tokenizer_from_base=False) == [
        "generation_config.json",
        "x.py",
    ]
    text = {p.name: p.read_text() for p in dest.iterdir()}
    assert text == {
        "README.md": "written README.md",  # e.g. an MoE export's own README
        "config.json": "written config.json",
        "generation_config.json": "base generation_config.json",
        "tokenizer.json": "written tokenizer.json",
        "x.py": "base x.py",
    }
    carry_base_files(base, dest, tokenizer_from_base=True)
    assert (dest / "tokenizer.json").read_text() == "base tokenizer.json"
    assert is_weight_file("model.safetensors.index.json") and is_weight_file("tf_model.h5")
    assert not is_weight_file("tokenizer.json") and not is_weight_file("binary.txt")


def test_portable_config_fields():
    llama3 = {
        "model_type": "llama",
        "dtype": "bfloat16",
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    }
    out = portable_config(llama3)
    assert out["torch_dtype"] == "bfloat16" and out["rope_theta"] == 500000.0
    assert out["rope_scaling"] == {
        k: v for k, v in llama3["rope_parameters"].items() if k != "rope_theta"
    }
    assert out["rope_parameters"] == llama3["rope_parameters"]  # what 5.x reads is untouched
    assert portable_config(out) == out  # idempotent
    plain = portable_config(
        {"model_type": "qwen2", "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
    )
    assert plain["rope_theta"] == 1e6 and plain["rope_scaling"] is None
    gemma3 = portable_config(
        {
            "model_type": "gemma3_text",
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
        }
    )
    assert gemma3["rope_theta"] == 1e6 and gemma3["rope_local_base_freq"] == 1e4
    assert gemma3["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}
    moe = portable_config({"model_type": "qwen3_moe", "num_local_experts": 4})
    assert moe["num_experts"] == 4
    phi3 = portable_config(
        {
            "model_type": "phi3",
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e4,
                "partial_rotary_factor": 0.5,
            },
        }
    )
    assert phi3["partial_rotary_factor"] == 0.5 and phi3["rope_scaling"] is None
    assert (
        portable_config({"model_type": "gemma", "hidden_act": "gelu_pytorch_tanh"})[
            "hidden_activation"
        ]
        == "gelu_pytorch_tanh"
    )
    # A 4.x-style config (a base written by 4.x, streamed) needs nothing.
    old = {"model_type": "llama", "torch_dtype": "float16", "rope_theta": 1e4, "rope_scaling": None}
    assert portable_config(old) == old


def test_portable_tokenizer_config(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    data = {"tokenizer_class": "TokenizersBackend", "extra_special_tokens": ["<a>", "<b>"]}
    out = portable_tokenizer_config(data, tmp_path)
    assert out == {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "additional_special_tokens": ["<a>", "<b>"],
    }
    (tmp_path / "chat_template.jinja").write_text(CHAT)
    assert portable_tokenizer_config(data, tmp_path)["chat_template"] == CHAT
    named = {"tokenizer_class": "LlamaTokenizer", "extra_special_tokens": {"image_token": "<i>"}}
    assert portable_tokenizer_config(named) == named  # a 4.x class, 4.47+'s named extra tokens


def test_attribute_maps_match_transformers():
    """The built-in copy of 5.x's renamed config fields (so that streaming needs no transformers
    import) agrees with the installed release."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    for model_type, mapping in _ATTRIBUTE_MAPS.items():
        assert dict(CONFIG_MAPPING[model_type].attribute_map) == mapping, model_type


def _reference(path: Path, ids: torch.Tensor) -> dict:
    """What transformers 5 (this process) reads from a directory."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto", attn_implementation="eager")
    tok = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        logits = model.eval()(input_ids=ids).logits.float()
    chat = tok.apply_chat_template(MESSAGES, tokenize=False) if tok.chat_template else None
    return {
        "config": AutoConfig.from_pretrained(path).to_dict(),
        "logits": logits,
        "dtype": str(model.dtype),
        "ids": tok(TEXT)["input_ids"],
        "decoded": tok.decode(tok(TEXT)["input_ids"]),
        "special": tok.all_special_tokens,
        "chat": chat,
    }


# Keys make_portable adds for 4.x that 5.x keeps as plain attributes.
_LEGACY_KEYS = {"hidden_activation", "partial_rotary_factor"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_transformers_5_reads_portable_directories_alike(name, tmp_path):
    model = make_arch_model(CASES[name])
    if name == "llama_theta_bf16":
        model = model.to(torch.bfloat16)
    path = _save_model(model, tmp_path / name)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    before = _reference(path, ids)
    assert set(make_portable(path)) == {"config.json", "tokenizer_config.json"}
    assert make_portable(path) == []  # idempotent
    after = _reference(path, ids)
    assert torch.equal(after.pop("logits"), before.pop("logits"))
    config_after, config_before = after.pop("config"), before.pop("config")
    assert after == before
    assert set(config_after) - set(config_before) <= _LEGACY_KEYS
    for key, value in config_before.items():
        assert config_after[key] == value, key


# ---------------------------------------------------------------- transformers 4.x (slow)

COMPAT_VERSIONS = ("4.45.2", "4.57.6")
# Architectures newer than a release do not load in it.
FIRST_RELEASE = {"olmo2": (4, 47), "gemma3_text": (4, 50), "qwen3": (4, 51), "qwen3_moe": (4, 51)}
# transformers 4.45 applies Qwen2's, Mixtral's and Phi-3's sliding window only with
# flash-attention, so those models get a window longer than the test sequence there.
SWA_FLASH_ONLY = {"4.45.2"}
SWA_MODELS = {"qwen2", "mixtral", "phi3"}
# transformers 4.45's YaRN takes max_position_embeddings as the pre-training length (it ignores
# original_max_position_embeddings), so there the two are equal, as in Qwen2.5's configs.
YARN_MAX_IS_ORIGINAL = {"4.45.2"}
SEQ = 12


def _config_for(name: str, version: str) -> dict:
    config = dict(CASES[name])
    if version in SWA_FLASH_ONLY and config["model_type"] in SWA_MODELS:
        config["sliding_window"] = 2 * SEQ
    scaling = config.get("rope_scaling") or {}
    if version in YARN_MAX_IS_ORIGINAL and scaling.get("rope_type") == "yarn":
        config["rope_scaling"] = {
            **scaling,
            "original_max_position_embeddings": config["max_position_embeddings"],
        }
    return config


def _build_compat_dirs(root: Path, version: str) -> dict[str, Path]:
    """Streamed and exported expansions of tiny Llamas (untied, llama3 RoPE tied, bf16) and
    Qwen2, every architecture the release knows saved and made portable, and one unportable
    directory as the control."""
    from torch.utils.data import DataLoader

    from blockexp.training.export import export_checkpoint
    from blockexp.training.module import BlockExpansionModule
    from tests.conftest import _make_trainer

    numbers = tuple(int(p) for p in version.split(".")[:2])
    dirs: dict[str, Path] = {}
    for name in ("llama", "llama3_tied", "qwen2"):
        base = _make_base(make_arch_model(_config_for(name, version)), root / f"base_{name}")
        dirs[f"streamed_{name}"] = root / f"streamed_{name}"
        stream_expand(base, dirs[f"streamed_{name}"], LlamaPro(num_groups=2))
    bf16 = _make_base(make_arch_model(CASES["llama"]).to(torch.bfloat16), root / "base_bf16")
    dirs["streamed_llama_bf16"] = root / "streamed_llama_bf16"
    stream_expand(bf16, dirs["streamed_llama_bf16"], LlamaPro(num_groups=2))
    for name in ("llama", "llama3_tied"):
        module = BlockExpansionModule(
            base=str(root / f"base_{name}"), expander=LlamaPro(num_groups=2), optim=Optim(lr=1e-2)
        )
        trainer = _make_trainer(root / f"run_{name}", 2)
        trainer.fit(module, train_dataloaders=DataLoader(RandomBlocks(), batch_size=4))
        trainer.save_checkpoint(root / f"{name}.ckpt")
        dirs[f"exported_{name}"] = export_checkpoint(
            str(root / f"{name}.ckpt"), str(root / f"exported_{name}")
        )
    for name in sorted(CASES):
        if numbers < FIRST_RELEASE.get(CASES[name]["model_type"], (4, 0)):
            continue
        model = make_arch_model(_config_for(name, version))
        model = model.to(torch.bfloat16) if name.endswith("_bf16") else model
        path = _save_model(model, root / f"saved_{name}")
        make_portable(path)
        dirs[f"saved_{name}"] = path
    dirs["control_unportable"] = _save_model(
        make_arch_model(CASES["llama3_tied"]), root / "control_unportable"
    )
    # Control: a portable tokenizer beside 5.x's config.json.
    dirs["control_rope"] = _save_model(make_arch_model(CASES["llama3_tied"]), root / "control_rope")
    path = dirs["control_rope"] / "tokenizer_config.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps(portable_tokenizer_config(data, dirs["control_rope"])))
    return dirs


@pytest.mark.slow
@pytest.mark.parametrize("version", COMPAT_VERSIONS)
def test_loads_in_transformers_4x(version, tmp_path):
    """Exported, streamed and saved directories load in an isolated transformers 4.x venv
    (``scripts/compat_env.py``; created on first use, which downloads) with the logits, token ids,
    decoding and chat rendering of 5.x in this process."""
    made = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "compat_env.py"), "--transformers", version],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    python = made.stdout.strip().splitlines()[-1]
    dirs = _build_compat_dirs(tmp_path, version)
    ids = torch.randint(0, 256, (2, SEQ), generator=torch.Generator().manual_seed(0))
    job = {
        "ids": ids.tolist(),
        "text": TEXT,
        "messages": MESSAGES,
        "dirs": {k: str(v) for k, v in dirs.items()},
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    ran = subprocess.run(
        [
            python,
            str(REPO / "scripts" / "compat_load.py"),
            str(tmp_path / "job.json"),
            str(tmp_path / "result.pt"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    result = torch.load(tmp_path / "result.pt", weights_only=False)
    assert result["transformers"] == version
    got = result["results"]
    # Controls: without make_portable, 4.x cannot build 5.x's tokenizer, and reads Llama 3's
    # RoPE as plain RoPE with theta 10000 (no error, other logits).
    assert "TokenizersBackend does not exist" in got["control_unportable"]["error"]
    control = got["control_rope"]
    assert (control["rope_theta"], control["rope_scaling"]) == (10000.0, None)
    reference = _reference(dirs["control_rope"], ids)["logits"]
    assert (control["logits"] - reference).abs().max() > 1e-2
    assert got["streamed_llama3_tied"]["rope_theta"] == 500000.0
    assert got["streamed_llama3_tied"]["rope_scaling"]["rope_type"] == "llama3"
    failures = []
    for name, path in dirs.items():
        if name.startswith("control_"):
            continue
        old, new = got[name], _reference(path, ids)
        if "error" in old:
            failures.append(f"{name}: {old['error'][:300]}")
            continue
        tol = 1e-5 if new["dtype"] == "torch.float32" else 2e-2
        diff = (old["logits"] - new["logits"]).abs().max().item()
        for what, ok in (
            (f"dtype {old['dtype']} != {new['dtype']}", old["dtype"] == new["dtype"]),
            (f"logits differ by {diff:.2e}", diff <= tol),
            ("token ids differ", old["ids"] == new["ids"]),
            ("decoding differs", old["decoded"] == new["decoded"]),
            ("chat rendering differs", old["chat"] == new["chat"]),
        ):
            if not ok:
                failures.append(f"{name}: {what}")
    assert not failures, f"transformers {version}:\n" + "\n".join(failures)
