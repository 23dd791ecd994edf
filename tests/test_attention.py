"""Packed-sequence position ids (document restarts) and SDPA fallback selection."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from blockexp.data.packing import packed_position_ids
from blockexp.io.load import load_model
from blockexp.training import attention
from blockexp.training.attention import select_attn_implementation
from tests.conftest import tiny_llama_dict

EOS = 258


def test_positions_restart_after_eos():
    ids = torch.tensor([[5, 6, EOS, 7, 8, 9, EOS, 1], [EOS, 2, 3, 4, 5, EOS, EOS, 6]])
    want = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0], [0, 0, 1, 2, 3, 4, 0, 0]])
    assert torch.equal(packed_position_ids(ids, EOS), want)
    assert torch.equal(packed_position_ids(ids[:, :1], EOS), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, seq_len"):
        packed_position_ids(ids[0], EOS)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_documents_do_not_attend_across_boundaries(attn):
    # Restarted position ids and no KV cache (as in training): transformers builds a block-diagonal
    # causal mask, so each document's logits equal those of the document alone.
    model = load_model(tiny_llama_dict(2), dtype="float32", attn_implementation=attn).eval()
    doc_a, doc_b = [5, 6, 7, EOS], [8, 9, 10]
    packed = torch.tensor([doc_a + doc_b])
    pos = packed_position_ids(packed, EOS)
    with torch.no_grad():
        together = model(packed, position_ids=pos, use_cache=False).logits
        alone_a = model(torch.tensor([doc_a]), use_cache=False).logits
        alone_b = model(torch.tensor([doc_b]), use_cache=False).logits
        leaky = model(packed, use_cache=False).logits  # no restarts: doc B sees doc A
    torch.testing.assert_close(together[:, :4], alone_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together[:, 4:], alone_b, rtol=1e-5, atol=1e-5)
    assert (leaky[:, 4:] - alone_b).abs().max() > 1e-3


def test_flattened_packed_batch_gives_the_same_loss():
    from blockexp.data.packing import flatten_packed_batch

    model = load_model(tiny_llama_dict(2), dtype="float32", attn_implementation="sdpa").eval()
    ids = torch.tensor([[5, 6, EOS, 7, 8, 9, EOS, 1], [2, EOS, 3, 4, 5, EOS, 6, 7]])
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": packed_position_ids(ids, EOS)}
    flat = flatten_packed_batch(batch)
    assert flat["input_ids"].shape == (1, 16) and flat["labels"][0, 8] == -100
    with torch.no_grad():
        rows = model(**batch, use_cache=False).loss
        one = model(**flat, use_cache=False).loss
    torch.testing.assert_close(rows, one, rtol=1e-5, atol=1e-6)


def test_cpt_data_module_emits_document_position_ids(tmp_path):
    import json

    from blockexp.data.cpt import CPTDataModule, DataSource

    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": "ab" * (i + 3)}) + "\n" for i in range(40)))
    data = CPTDataModule(
        sources=[DataSource(name="d", path=str(path))],
        seq_len=16,
        batch_size=4,
        val_fraction=0.1,
        cache_dir=str(tmp_path / "cache"),
        document_masking=True,
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert torch.equal(batch["position_ids"], packed_position_ids(batch["input_ids"], EOS))
    assert (batch["position_ids"] == 0).sum() > batch["input_ids"].shape[0]  # restarts inside rows
    plain = CPTDataModule(
        sources=[DataSource(name="d", path=str(path))],
        seq_len=16,
        batch_size=4,
        val_fraction=0.1,
        cache_dir=str(tmp_path / "cache"),
    )
    plain.setup("fit")
    assert "position_ids" not in next(iter(plain.train_dataloader()))


def test_sdpa_is_the_cpu_default():
    assert select_attn_implementation(None) == (
        "sdpa" if not torch.cuda.is_available() else select_attn_implementation("auto")
    )
    model = AutoModelForCausalLM.from_config(
        load_model(tiny_llama_dict(2)).config, attn_implementation=select_attn_implementation(None)
    )
    assert model.config._attn_implementation in ("sdpa", "flash_attention_2")


def test_attention_auto_selection(monkeypatch, make_module):
    monkeypatch.setattr(attention, "flash_attn_available", lambda: False)
    assert select_attn_implementation(None) == "sdpa"
    assert select_attn_implementation("auto") == "sdpa"
    assert select_attn_implementation("eager") == "eager"
    with pytest.raises(ValueError, match="flash-attn"):
        select_attn_implementation("flash_attention_2")
    monkeypatch.setattr(attention, "flash_attn_available", lambda: True)
    assert select_attn_implementation(None) == "flash_attention_2"
    module = make_module()
    monkeypatch.setattr(attention, "flash_attn_available", lambda: False)
    module.configure_model()
    assert module.model.config._attn_implementation == "sdpa"


def test_auto_skips_a_kernel_the_model_class_lacks():
    from blockexp.io.load import load_config
    from tests.conftest import ARCH_CONFIGS

    if torch.cuda.is_available():
        pytest.skip("checks the CPU choice")
    assert select_attn_implementation("auto", load_config(ARCH_CONFIGS["gemma2"])) == "eager"
    assert select_attn_implementation("auto", load_config(ARCH_CONFIGS["gemma3_text"])) == "sdpa"
    assert select_attn_implementation("sdpa", load_config(ARCH_CONFIGS["gemma2"])) == "sdpa"
