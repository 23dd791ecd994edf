"""Streaming on-disk expansion: bitwise equal to in-memory expansion, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from blockexp.cli import main
from blockexp.expanders import Expander, LlamaPro
from blockexp.io.manifest import MANIFEST_NAME
from blockexp.io.safetensors import INDEX_FILE, StreamingError, parse_size, read_safetensors_header
from blockexp.io.streaming import can_stream, stream_expand
from blockexp.io.tokenization import load_tokenizer
from blockexp.layers import LayerSpec, Plan


class MeanBetween(Expander):
    """Test strategy: after every other layer, a trainable mean of it and the next (SLayer-like)."""

    streamable = True

    def plan(self, num_layers: int) -> Plan:
        groups = []
        for i in range(num_layers):
            group = [LayerSpec(0, (i,), "base")]
            if i % 2 == 0 and i + 1 < num_layers:
                group.append(LayerSpec(0, (i, i + 1), "mean", zero_out=True, trainable=True))
            groups.append(group)
        return Plan.from_groups(num_layers, groups, "MeanBetween")


class MeanNoZero(MeanBetween):
    def plan(self, num_layers: int) -> Plan:
        plan = super().plan(num_layers)
        layers = tuple(
            LayerSpec(s.index, s.source, s.init, False, s.trainable) for s in plan.layers
        )
        return Plan(plan.base_num_layers, layers, "MeanNoZero")


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors"))
    out = {}
    for f in files:
        with safe_open(str(f), "pt") as handle:
            for key in handle.keys():
                assert key not in out, f"{key} stored twice"
                out[key] = handle.get_tensor(key)
    return out


def _save_base(
    tiny_llama, path: Path, dtype=torch.float32, shard="30KB", layers=4, **overrides
) -> Path:
    model = tiny_llama(layers, **overrides).to(dtype)
    model.save_pretrained(path, safe_serialization=True, max_shard_size=shard)
    load_tokenizer("byte").save_pretrained(path)
    return path


def _expand(base: Path, out: Path, expander: str, *args: str) -> None:
    main(["expand", "--base", str(base), "--out", str(out), "--expander", expander, *args])


@pytest.mark.parametrize(
    ("dtype", "tied", "expander"),
    [
        (torch.float32, False, LlamaPro(num_groups=2, blocks_per_group=2)),
        (torch.bfloat16, True, LlamaPro(num_groups=2)),
        (torch.bfloat16, False, MeanBetween()),
        (torch.float16, True, MeanNoZero()),
        (
            torch.float32,
            False,
            LlamaPro(2, train_embeddings=True, train_lm_head=True, train_norms=True),
        ),
        (torch.float32, True, LlamaPro(2, train_lm_head=True, train_norms=True)),
    ],
    ids=[
        "fp32-llamapro",
        "bf16-tied-llamapro",
        "bf16-mean",
        "fp16-tied-mean-nozero",
        "fp32-train-all-extras",
        "fp32-tied-train-head-norms",
    ],
)
def test_streaming_equals_in_memory(tiny_llama, tmp_path, dtype, tied, expander):
    base = _save_base(tiny_llama, tmp_path / "base", dtype, tie_word_embeddings=tied)
    assert (base / INDEX_FILE).is_file(), "the base must be sharded for this test"
    streamed = tmp_path / "streamed"
    manifest = stream_expand(base, streamed, expander, max_shard_size="40KB", chunk_bytes=1000)
    assert manifest["streamed"] is True

    from blockexp.io.load import load_model
    from blockexp.io.manifest import build_manifest

    model = load_model(str(base))
    n_base = sum(p.numel() for p in model.parameters())
    expansion = expander.expand(model)
    reference = tmp_path / "in_memory"
    model.save_pretrained(reference, safe_serialization=True)
    ref = _tensors(reference)
    got = _tensors(streamed)
    assert sorted(got) == sorted(ref)
    for key, value in ref.items():
        assert got[key].dtype == value.dtype == dtype, key
        assert torch.equal(got[key], value), key
    assert ("lm_head.weight" in got) is (not tied)

    # Sharded output with a complete index; every shard within the limit.
    index = json.loads((streamed / INDEX_FILE).read_text())
    assert set(index["weight_map"]) == set(got)
    shards = sorted(streamed.glob("model-*.safetensors"))
    assert len(shards) > 1
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in got.values()
    )
    for shard in shards:
        sizes = [e.nbytes for e in read_safetensors_header(shard).values()]
        assert sum(sizes) <= 40_000 or len(sizes) == 1

    # Same config and manifest as the in-memory path; tokenizer copied.
    cfg = json.loads((streamed / "config.json").read_text())
    ref_cfg = json.loads((reference / "config.json").read_text())
    for key in ("num_hidden_layers", "layer_types", "tie_word_embeddings", "dtype"):
        assert cfg.get(key) == ref_cfg.get(key), key
    want = build_manifest(expansion, expander, str(base), 4, n_base)
    got_manifest = json.loads((streamed / MANIFEST_NAME).read_text())
    for key in (
        "plan",
        "trainable_parameters",
        "total_params",
        "trainable_params",
        "new_layers",
        "base_params",
        "num_layers",
    ):
        assert got_manifest[key] == want[key], key
    assert (streamed / "tokenizer.json").is_file()

    # And it loads as a plain transformers model computing the base function when the plan says so.
    loaded = AutoModelForCausalLM.from_pretrained(streamed).eval()
    assert loaded.dtype == dtype
    if isinstance(expander, LlamaPro):
        base_model = AutoModelForCausalLM.from_pretrained(base).eval()
        ids = torch.randint(0, 256, (1, 9))
        with torch.no_grad():
            diff = (base_model(ids).logits.float() - loaded(ids).logits.float()).abs().max()
        assert diff <= (1e-5 if dtype == torch.float32 else 2e-2)


def test_cli_expand_streams_and_in_memory_flag_agrees(tiny_llama, tmp_path, capsys):
    base = _save_base(tiny_llama, tmp_path / "base", torch.bfloat16, shard="20KB")
    _expand(base, tmp_path / "s", "LlamaPro", "--expander.num_groups", "4")
    assert "streamed" in capsys.readouterr().out
    _expand(base, tmp_path / "m", "LlamaPro", "--expander.num_groups", "4", "--in_memory")
    assert "Expanding in memory" in capsys.readouterr().out
    a, b = _tensors(tmp_path / "s"), _tensors(tmp_path / "m")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_cast_dtype_while_streaming(tiny_llama, tmp_path):
    base = _save_base(tiny_llama, tmp_path / "base", torch.float32, shard="1GB")
    out = tmp_path / "out"
    stream_expand(base, out, LlamaPro(num_groups=2), dtype="bfloat16")
    got = _tensors(out)
    assert {t.dtype for t in got.values()} == {torch.bfloat16}
    assert (out / "model.safetensors").is_file() and not (out / INDEX_FILE).exists()
    ref = _tensors(base)
    assert torch.equal(
        got["model.layers.0.mlp.up_proj.weight"],
        ref["model.layers.0.mlp.up_proj.weight"].bfloat16(),
    )
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_non_streamable_cases_say_why(tiny_llama, tmp_path):
    base = _save_base(tiny_llama, tmp_path / "base", shard="1GB")
    assert can_stream(LlamaPro(num_groups=2), str(base)) is None
    assert "is not streamable" in can_stream(Expander(), str(base))
    assert "not a local directory" in can_stream(LlamaPro(num_groups=2), "org/name")
    with pytest.raises(StreamingError, match="is not streamable"):
        stream_expand(base, tmp_path / "x", Expander())
    assert not (tmp_path / "x").exists()
    (base / "model.safetensors").rename(base / "weights.bin")
    assert "no safetensors" in can_stream(LlamaPro(num_groups=2), str(base))


def test_truncated_shard_fails_and_leaves_no_output(tiny_llama, tmp_path):
    base = _save_base(tiny_llama, tmp_path / "base", shard="1GB")
    data = (base / "model.safetensors").read_bytes()
    (base / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(Exception, match="truncated|end of file"):
        stream_expand(base, tmp_path / "out", LlamaPro(num_groups=2))
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size(123) == 123
    with pytest.raises(ValueError, match="Cannot parse size"):
        parse_size("lots")


def test_peak_memory_does_not_grow_with_the_model(tmp_path):
    # A ~96 MB bf16 checkpoint expanded in a fresh process: the resident-memory high-water mark
    # grows by far less than one output shard (here 64 MB) over the process's baseline.
    script = textwrap.dedent(
        f"""
        import json, resource, torch
        from transformers import LlamaConfig, LlamaForCausalLM
        from blockexp.expanders import LlamaPro
        from blockexp.io.streaming import stream_expand

        cfg = LlamaConfig(hidden_size=512, intermediate_size=2048, num_hidden_layers=8,
                          num_attention_heads=8, vocab_size=32000, dtype="bfloat16")
        LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(
            "{tmp_path}/base", max_shard_size="64MB")
        del cfg
        import gc; gc.collect()

        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024

        # Reset the high-water mark to the current RSS (Linux >= 4.0) after building the base.
        open("/proc/self/clear_refs", "w").write("5")
        before = status("VmRSS:")
        stream_expand("{tmp_path}/base", "{tmp_path}/out", LlamaPro(num_groups=4),
                      max_shard_size="64MB")
        print(json.dumps({{"before": before, "peak": status("VmHWM:")}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    size = sum(p.stat().st_size for p in (tmp_path / "base").glob("*.safetensors"))
    assert size > 90e6
    growth = numbers["peak"] - numbers["before"]
    print(
        f"base {size / 1e6:.0f} MB, before {numbers['before'] / 1e6:.0f} MB, growth {growth / 1e6:.1f} MB"
    )
    assert growth < 64e6, f"peak RSS grew by {growth / 1e6:.1f} MB for a {size / 1e6:.0f} MB base"


def test_streaming_follows_the_declared_capability(tiny_llama, tmp_path):
    from blockexp.expanders import LoRA, SLayer

    base = _save_base(tiny_llama, tmp_path / "base", layers=8)
    assert can_stream(LlamaPro(num_groups=2), base) is None
    assert can_stream(SLayer(), base) is None  # plan + describe(): streamable
    assert "is not streamable" in can_stream(LoRA(), base)


def test_slayer_streams_bitwise_equal_to_memory_with_the_same_manifest(tiny_llama, tmp_path):
    from blockexp.expanders import SLayer

    base = _save_base(tiny_llama, tmp_path / "base", layers=8)
    expander = SLayer(num_deleted=2)
    streamed = stream_expand(base, tmp_path / "streamed", expander)
    main(
        [
            "expand",
            "--base",
            str(base),
            "--out",
            str(tmp_path / "memory"),
            "--expander",
            "SLayer",
            "--in_memory",
            "true",
        ]
    )
    memory = json.loads((tmp_path / "memory" / MANIFEST_NAME).read_text())
    assert streamed["extra"]["deleted_layers"] == [6, 7]
    for key in ("extra", "plan", "trainable_parameters", "trainable_params", "total_params"):
        assert streamed[key] == memory[key], key
    a, b = _tensors(tmp_path / "streamed"), _tensors(tmp_path / "memory")
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
