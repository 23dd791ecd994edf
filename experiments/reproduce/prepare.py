"""Data preparation of the real-text reproduction; training and evaluation are sweep cells.

    python experiments/reproduce/prepare.py [--out outputs/experiments/reproduce] [--smoke]

1. **Corpora** (``corpus.py``): English prose from the Python documentation that Debian ships
   (``python3.X-doc``) as the general corpus, the CPython standard library's source as the
   domain corpus; files split into train / validation / task pools.
2. **Tokenizer**: a 4,096-entry byte-level BPE trained on both training pools.
3. **Local lm-eval tasks** (:mod:`blockexp.evaluation.lmeval.build`) from the task pools: three
   general tasks (LAMBADA-style cloze, 4-way sentence completion, generative sentence
   completion) and a next-line code-completion task.
4. **The random base** (``base_init/``): an 8-layer Llama (hidden 256, ~8M parameters) with the
   tokenizer beside it; ``base.yaml`` pre-trains it on the prose with ``python -m blockexp fit``.
5. **The budget**: LLaMA Pro's trainable parameter count (2 new blocks) and the LoRA rank that
   comes closest to it (``sweep.yaml`` uses that rank; this script checks it).

Every step is cached in ``--out`` (delete a file or directory to redo it).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus as corpus_mod  # noqa: E402

from blockexp.io.outputs import atomic_write  # noqa: E402

#: The base: 8 layers (room for SLayer's shallow half), ~8.4M parameters.
BASE_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
SMOKE_CONFIG = {"hidden_size": 64, "intermediate_size": 128}


def make_tokenizer(out: Path, corpus: Path, vocab_size: int) -> Path:
    if (out / "tokenizer.json").is_file():
        return out
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = corpus_mod.read_texts(corpus / "general_train.jsonl")
    texts += corpus_mod.read_texts(corpus / "code_train.jsonl")
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(out)
    return out


def make_tasks(out: Path, corpus: Path, docs: int) -> list[str]:
    from blockexp.evaluation.lmeval.build import build_tasks

    marker = out / "tasks.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    prose = corpus_mod.read_texts(corpus / "general_task.jsonl")
    code = corpus_mod.read_texts(corpus / "code_task.jsonl")
    names = build_tasks(out, prose, prefix="repro", n=docs, code=code)
    atomic_write(marker, json.dumps(names))
    return names


def make_base_init(out: Path, tokenizer: Path, smoke: bool) -> Path:
    """The random base with its tokenizer (seed 0), saved as a Hugging Face directory."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer)
    config = LlamaConfig(
        **{**BASE_CONFIG, **(SMOKE_CONFIG if smoke else {})},
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def budget_and_lora_rank(base: Path) -> tuple[int, int]:
    """LLaMA Pro's trainable count (2 groups: the budget) and the LoRA rank closest to it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from blockexp.expanders import get_expander

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))

    def trainable(expander) -> int:
        return expander.expand(copy.deepcopy(model)).parameter_counts()[1]

    budget = trainable(get_expander("LlamaPro")(num_groups=2))
    per_rank = trainable(get_expander("LoRA")(r=1, alpha=2))
    return budget, max(1, round(budget / per_rank))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/experiments/reproduce"))
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--task-docs", type=int, default=200, help="documents per local task")
    parser.add_argument("--smoke", action="store_true", help="a small base for a quick check")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    corpus = out / "corpus"
    if not (corpus / "corpus.json").is_file():
        corpus_mod.write_corpora(corpus, out / "downloads")
    tokenizer = make_tokenizer(out / "tokenizer", corpus, args.vocab_size)
    tasks = make_tasks(out / "tasks", corpus, 20 if args.smoke else args.task_docs)
    base_init = make_base_init(out / "base_init", tokenizer, args.smoke)
    budget, rank = budget_and_lora_rank(base_init)
    info = {
        "corpus": json.loads((corpus / "corpus.json").read_text()),
        "tasks": tasks,
        "budget": budget,
        "lora_rank": rank,
    }
    atomic_write(out / "prepared.json", json.dumps(info, indent=2))
    print(f"budget {budget:,} trainable parameters (LLaMA Pro, 2 groups); LoRA rank {rank}")
    return info


if __name__ == "__main__":
    main()
