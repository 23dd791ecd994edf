"""Shared fixtures: tiny random models built from configs, saved locally. Nothing is downloaded."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]
# The data generators are scripts, not part of the package: tests import them from scripts/.
sys.path.insert(0, str(REPO / "scripts"))


def tiny_llama_dict(num_layers: int = 4, **overrides) -> dict:
    """An inline config of a tiny Llama matching the built-in byte tokenizer."""
    config = {
        "model_type": "llama",
        "vocab_size": 259,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "bos_token_id": 257,
        "eos_token_id": 258,
        "pad_token_id": 256,
        "tie_word_embeddings": False,
    }
    config.update(overrides)
    return config


@pytest.fixture
def tiny_llama():
    """Factory: a tiny random Llama (float32, eval mode) with ``num_layers`` layers."""
    from blockexp.checkpoint import load_model

    def make(num_layers: int = 4, seed: int = 0, **overrides):
        model = load_model(tiny_llama_dict(num_layers, **overrides), dtype="float32", seed=seed)
        # Random init leaves the residual writers tiny; scale them up so that a wrong surgery
        # (a missing or misplaced layer) changes the logits visibly.
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(5.0) if p.ndim == 2 else None
        return model.eval()

    return make


@pytest.fixture
def tiny_llama_dir(tmp_path, tiny_llama):
    """A locally saved tiny Llama checkpoint (safetensors + config + byte tokenizer)."""
    from blockexp.tokenization import load_tokenizer

    model = tiny_llama(4)
    path = tmp_path / "base"
    model.save_pretrained(path, safe_serialization=True)
    load_tokenizer("byte").save_pretrained(path)
    return path


@pytest.fixture
def corpus(tmp_path):
    """A small JSONL corpus of 200 deterministic pseudo-sentences (one ``text`` field each)."""
    path = tmp_path / "corpus.jsonl"
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    with path.open("w") as f:
        for _ in range(200):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(30))}) + "\n")
    return path
