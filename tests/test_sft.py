"""SFT data: record layouts, assistant-only loss masks, truncation, packing, errors."""

from __future__ import annotations

import json

import pytest
import torch

from blockexp.data.collate import IGNORE_INDEX
from blockexp.data.records import DataError, iter_json_records
from blockexp.data.sft import SFTDataModule
from blockexp.data.sft.conversations import normalize_record
from blockexp.data.sft.encode import encode_conversation, pack_examples
from blockexp.io.tokenization import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("byte")


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello!"},
        {"from": "human", "value": "2+2?"},
        {"from": "gpt", "value": "4"},
    ]
}
MESSAGES = {
    "messages": [
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
    ]
}
ALPACA = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}


def test_three_layouts_normalize():
    assert normalize_record(SHAREGPT, "f:1")[2] == {"role": "assistant", "content": "Hello!"}
    assert [m["role"] for m in normalize_record(MESSAGES, "f:1")] == ["user", "assistant"]
    assert normalize_record(ALPACA, "f:1") == [
        {"role": "user", "content": "Add the numbers.\n\n2 and 3"},
        {"role": "assistant", "content": "5"},
    ]


def test_loss_only_on_assistant_tokens_multi_turn(tok):
    messages = normalize_record(SHAREGPT, "f:1")
    ids, labels = encode_conversation(tok, messages)
    assert len(ids) == len(labels)
    text = tok.decode(ids)
    assert text.startswith("<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello!</s>")
    trained = tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX])
    # Both assistant turns, each closed by eos; nothing from the system or user turns.
    assert trained == "Hello!</s>4</s>"
    assert all(lab in (i, IGNORE_INDEX) for i, lab in zip(ids, labels, strict=True))


def test_tokenizer_chat_template_is_used(tok):
    custom = load_tokenizer("byte")
    custom.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    ids, labels = encode_conversation(custom, normalize_record(MESSAGES, "f:1"))
    assert custom.decode(ids) == "[user]Name a color.[assistant]Blue.</s>"
    assert custom.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100]) == (
        "Blue.</s>"
    )


def test_truncation_and_packing(tok):
    messages = normalize_record(MESSAGES, "f:1")
    full, _ = encode_conversation(tok, messages)
    ids, labels = encode_conversation(tok, messages, max_length=len(full) - 3)
    assert len(ids) == len(full) - 3 and ids == full[: len(full) - 3]
    examples = [([1] * 5, [1] * 5), ([2] * 4, [2] * 4), ([3] * 3, [3] * 3), ([4] * 2, [4] * 2)]
    rows = pack_examples(examples, max_length=8)
    assert [r[0] for r in rows] == [[1] * 5 + [3] * 3, [2] * 4 + [4] * 2]
    assert sorted(x for r in rows for x in r[0]) == sorted(x for e in examples for x in e[0])


def test_datamodule_batches_mixed_layouts(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", [SHAREGPT, MESSAGES, ALPACA] * 4)
    val = tmp_path / "val.json"
    val.write_text(json.dumps([MESSAGES, ALPACA], indent=2))
    dm = SFTDataModule([str(train)], tokenizer="byte", val_files=[str(val)], batch_size=4)
    dm.setup("fit")
    assert len(dm.train_dataset) == 12 and len(dm.val_dataset) == 2
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    pad = dm.tokenizer.pad_token_id
    # Right padding: padding is masked out of attention and loss.
    assert torch.all(batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX)
    assert torch.all(batch["input_ids"][batch["attention_mask"] == 0] == pad)
    assert batch["attention_mask"][:, 0].all()

    packed = SFTDataModule(
        [str(train)], tokenizer="byte", val_fraction=0.25, packing=True, max_length=256
    )
    packed.setup("fit")
    assert len(packed.val_dataset) == 1  # 3 short held-out conversations fill one row
    assert len(packed.train_dataset) < 9
    assert all(len(ids) <= 256 for ids, _ in packed.train_dataset.examples)


def test_bad_records_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(MESSAGES) + "\n" + '{"conversations": [{"from": "alien", "value": "x"}]}\n'
    )
    with pytest.raises(DataError, match=r"bad\.jsonl:2: .*unknown speaker 'alien'"):
        SFTDataModule([str(bad)], tokenizer="byte").setup()
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(MESSAGES) + "\n\n{not json\n")
    with pytest.raises(DataError, match=r"broken\.jsonl:3: malformed JSON"):
        list(iter_json_records(broken))
    listed = tmp_path / "list.json"
    listed.write_text("[\n" + json.dumps(MESSAGES) + ",\n" + json.dumps({"text": "x"}) + "\n]")
    with pytest.raises(DataError, match=r"list\.json:3: unknown record layout"):
        SFTDataModule([str(listed)], tokenizer="byte").setup()
    no_answer = _write_jsonl(
        tmp_path / "noans.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}]
    )
    with pytest.raises(DataError, match=r"noans\.jsonl:1: .*no non-empty assistant turn"):
        SFTDataModule([str(no_answer)], tokenizer="byte").setup()
    with pytest.raises(FileNotFoundError, match="not found"):
        SFTDataModule([str(tmp_path / "missing.jsonl")], tokenizer="byte")
