"""Shared fixtures: tiny random models built from configs, saved locally. Nothing is downloaded."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest
import torch

from blockexp.training.settings import Optim

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]
# The data generators are scripts, not part of the package: tests import them from scripts/.
sys.path.insert(0, str(REPO / "scripts"))


@pytest.fixture(autouse=True)
def _known_noise_filtered():
    """pytest resets the warning filters around each test (and shows every DeprecationWarning):
    put back the precise filters for the dependencies' known noise (blockexp.console), so the
    run's warning summary holds only what is new."""
    from blockexp.console import filter_known_warnings

    filter_known_warnings()


def tiny_llama_dict(num_layers: int = 4, **overrides) -> dict:
    """The tiny Llama of ``configs/model/tiny_llama.yaml`` made smaller still for tests (hidden
    32), matching the built-in byte tokenizer."""
    import yaml

    piece = yaml.safe_load((REPO / "configs" / "model" / "tiny_llama.yaml").read_text())
    config = dict(piece["model"]["base"])
    config.update(
        hidden_size=32,
        intermediate_size=64,
        max_position_embeddings=256,
        num_hidden_layers=num_layers,
    )
    config.update(overrides)
    return config


def random_ids(seed: int = 0, batch: int = 2, length: int = 10) -> torch.Tensor:
    """Seeded random byte-tokenizer ids of shape ``[batch, length]``."""
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


# Tiny configs of every supported architecture; the sliding window (4) is shorter than the
# generated sequences, so sliding attention and sliding KV-cache layers really are exercised.
_MOE = dict(num_experts_per_tok=2, moe_intermediate_size=24)
ARCH_CONFIGS = {
    "llama": tiny_llama_dict(4),
    # Llama-3.x: llama3 rope scaling, tied embeddings, rope theta 500k.
    "llama3_tied": tiny_llama_dict(
        4,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "mistral": tiny_llama_dict(4, model_type="mistral", sliding_window=4),
    "qwen2": tiny_llama_dict(
        4, model_type="qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=2
    ),
    "qwen3": tiny_llama_dict(
        4,
        model_type="qwen3",
        head_dim=16,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=2,
    ),
    "phi3": tiny_llama_dict(4, model_type="phi3", sliding_window=4),
    "gemma": tiny_llama_dict(4, model_type="gemma", head_dim=16, tie_word_embeddings=True),
    "gemma2": tiny_llama_dict(
        4,
        model_type="gemma2",
        head_dim=16,
        sliding_window=4,
        query_pre_attn_scalar=16,
        tie_word_embeddings=True,
    ),
    "gemma3_text": tiny_llama_dict(
        4,
        model_type="gemma3_text",
        head_dim=16,
        sliding_window=4,
        query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention"] * 2,
        tie_word_embeddings=True,
    ),
    "olmo2": tiny_llama_dict(4, model_type="olmo2"),
    "mixtral": tiny_llama_dict(
        4, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2, sliding_window=4
    ),
    "qwen2_moe": tiny_llama_dict(
        4, model_type="qwen2_moe", num_experts=4, shared_expert_intermediate_size=40, **_MOE
    ),
    "qwen3_moe": tiny_llama_dict(4, model_type="qwen3_moe", head_dim=16, num_experts=4, **_MOE),
}
# Sparse models whose dense and sparse FFN layers alternate (decoder_sparse_step 2).
MIXED_MOE_CONFIGS = {
    "qwen2_moe": {**ARCH_CONFIGS["qwen2_moe"], "decoder_sparse_step": 2},
    "qwen3_moe": {**ARCH_CONFIGS["qwen3_moe"], "decoder_sparse_step": 2, "mlp_only_layers": [3]},
}


def make_arch_model(model_type: str | dict, seed: int = 0):
    """A tiny model of ``model_type`` (a key of :data:`ARCH_CONFIGS`, or a config dict), in eval
    mode, whose every layer visibly matters."""
    from blockexp.io.load import load_model

    config = ARCH_CONFIGS[model_type] if isinstance(model_type, str) else model_type
    model = load_model(config, dtype="float32", seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.mul_(5.0)  # make every layer matter (random init leaves them tiny)
            elif p.ndim == 1 and not torch.all(p == 1):
                p.normal_(0, 0.5)  # biases (Qwen2 q/k/v) are zero at init: make them count
    return model.eval()


@pytest.fixture(params=sorted(ARCH_CONFIGS))
def model_type(request) -> str:
    """Every supported architecture in turn."""
    return request.param


@pytest.fixture
def arch_model():
    """Factory: :func:`make_arch_model`."""
    return make_arch_model


class RandomBlocks(torch.utils.data.Dataset):
    """16 random byte sequences as ``{"input_ids", "labels"}`` (labels = inputs)."""

    def __init__(self, n: int = 16, seq_len: int = 16) -> None:
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 256, (n, seq_len), generator=gen)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i].clone()}


def _make_trainer(tmp_path, steps: int, **kwargs):
    from blockexp.training.trainer import make_trainer

    return make_trainer(
        **{"max_steps": steps, "limit_val_batches": 2, "default_root_dir": tmp_path, **kwargs}
    )


def _make_module(**kwargs):
    from blockexp.expanders import LlamaPro
    from blockexp.training.module import BlockExpansionModule

    return BlockExpansionModule(
        base=tiny_llama_dict(4),
        expander=LlamaPro(num_groups=2),
        tokenizer="byte",
        **kwargs,
        optim=Optim(lr=1e-2),
    )


def _fit_module(module, tmp_path, steps: int = 3, precision: str = "32-true", callbacks=None):
    from torch.utils.data import DataLoader

    trainer = _make_trainer(
        tmp_path, steps, precision=precision, callbacks=callbacks, gradient_clip_val=None
    )
    trainer.fit(module, train_dataloaders=DataLoader(RandomBlocks(), batch_size=4))
    return trainer


@pytest.fixture
def make_trainer():
    """Factory ``(tmp_path, steps, **trainer_kwargs)``: a quiet CPU trainer."""
    return _make_trainer


@pytest.fixture
def make_module():
    """Factory ``(**module_kwargs)``: LLaMA Pro (2 groups) on a tiny 4-layer Llama, lr 1e-2."""
    return _make_module


@pytest.fixture
def fit_module():
    """``(module, tmp_path, steps=3, precision="32-true", callbacks=None)``: fit on
    :class:`RandomBlocks`; returns the trainer."""
    return _fit_module


@pytest.fixture
def tiny_llama():
    """Factory: a tiny random Llama (float32, eval mode) with ``num_layers`` layers."""
    from blockexp.io.load import load_model

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
    from blockexp.io.tokenization import load_tokenizer

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


# ---------------------------------------------------------------------------- fault-suite table
FAULT_ROWS: list[dict] = []
FAULT_COLUMNS = ("trials", "refused", "survived", "partial outputs", "executed", "lost inputs")


def record_faults(suite: str, **counts: int) -> None:
    """Record one fault-injection suite's counts (keys: :data:`FAULT_COLUMNS` with ``_`` for
    spaces, plus any detail); printed as one table at the end of the run."""
    FAULT_ROWS.append({"suite": suite, **{k.replace("_", " "): v for k, v in counts.items()}})


def pytest_terminal_summary(terminalreporter) -> None:
    """The fault suites' counts as one table (docs/security.md is re-measured from it)."""
    if not FAULT_ROWS:
        return
    write = terminalreporter.write_line
    write("")
    write("fault injection (docs/security.md):")
    write("| suite | " + " | ".join(FAULT_COLUMNS) + " | detail |")
    write("|---|" + "---|" * (len(FAULT_COLUMNS) + 1))
    totals = dict.fromkeys(FAULT_COLUMNS, 0)
    for row in FAULT_ROWS:
        cells = []
        for col in FAULT_COLUMNS:
            value = row.get(col)
            cells.append("" if value is None else str(value))
            totals[col] += value or 0
        detail = ", ".join(f"{k} {v}" for k, v in row.items() if k not in (*FAULT_COLUMNS, "suite"))
        write(f"| {row['suite']} | " + " | ".join(cells) + f" | {detail} |")
    write("| **total** | " + " | ".join(str(totals[c]) for c in FAULT_COLUMNS) + " | |")
