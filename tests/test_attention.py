"""Packed-sequence position ids (document restarts) and SDPA fallback selection."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from blockexp.checkpoint import load_model
from blockexp.precision import packed_position_ids, select_attn_implementation
from tests.conftest import tiny_llama_dict

EOS = 258


def test_positions_restart_after_eos():
    ids = torch.tensor([[5, 6, EOS, 7, 8, 9, EOS, 1], [EOS, 2, 3, 4, 5, EOS, EOS, 6]])
    want = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0], [0, 0, 1, 2, 3, 4, 0, 0]])
    assert torch.equal(packed_position_ids(ids, EOS), want)
    assert torch.equal(packed_position_ids(ids[:, :1], EOS), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, seq_len"):
        packed_position_ids(ids[0], EOS)


def test_restarted_positions_match_separate_documents_for_the_first_document():
    # With restarts, the second document's *rotary* positions equal those of a fresh sequence;
    # under SDPA it still attends to the first document (documented), so only doc A matches.
    model = load_model(tiny_llama_dict(2), dtype="float32", attn_implementation="sdpa").eval()
    doc_a, doc_b = [5, 6, 7, EOS], [8, 9, 10]
    packed = torch.tensor([doc_a + doc_b])
    pos = packed_position_ids(packed, EOS)
    with torch.no_grad():
        together = model(packed, position_ids=pos).logits
        alone = model(torch.tensor([doc_a])).logits
    torch.testing.assert_close(together[:, :4], alone, rtol=1e-5, atol=1e-5)


def test_sdpa_is_the_cpu_default():
    assert select_attn_implementation(None) == (
        "sdpa" if not torch.cuda.is_available() else select_attn_implementation("auto")
    )
    model = AutoModelForCausalLM.from_config(
        load_model(tiny_llama_dict(2)).config, attn_implementation=select_attn_implementation(None)
    )
    assert model.config._attn_implementation in ("sdpa", "flash_attention_2")
