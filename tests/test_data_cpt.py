"""Tests for the byte tokenizer, the CPT data module and the synthetic corpora."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from make_quickstart_data import write_quickstart_data

from blockexp.data.cpt import CPTDataModule, DataSource
from blockexp.data.cpt.tokenize import TokenizeBatch
from blockexp.data.records import DataError
from blockexp.io.tokenization import (
    BYTE_BOS_ID,
    BYTE_EOS_ID,
    BYTE_PAD_ID,
    BYTE_VOCAB_SIZE,
    load_tokenizer,
)

EOS = BYTE_EOS_ID


@pytest.fixture(autouse=True)
def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts), encoding="utf-8")
    return path


def make_docs(
    n: int, prefix: str = "doc", min_len: int = 5, max_len: int = 60, seed: int = 0
) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        body = "".join(
            rng.choice(list("abcdefgh ij\nkl")) for _ in range(int(rng.integers(min_len, max_len)))
        )
        docs.append(f"{prefix}-{i:04d} {body}")
    return docs


def make_dm(tmp_path: Path, sources: list[DataSource], **kwargs) -> CPTDataModule:
    kwargs.setdefault("cache_dir", str(tmp_path / "hf_cache"))
    kwargs.setdefault("seq_len", 16)
    kwargs.setdefault("batch_size", 4)
    return CPTDataModule(sources, **kwargs)


def byte_ids(doc: str) -> list[int]:
    return list(doc.encode("utf-8")) + [EOS]


# ----------------------------------------------------------------------------- tokenizer


def test_byte_tokenizer_round_trip_and_reload(tmp_path):
    from transformers import AutoTokenizer

    tok = load_tokenizer("byte")
    assert (BYTE_VOCAB_SIZE, BYTE_PAD_ID, BYTE_BOS_ID, BYTE_EOS_ID) == (259, 256, 257, 258)
    assert len(tok) == BYTE_VOCAB_SIZE
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (256, 257, 258)
    text = "Héllo, wörld! 🤖\n\n\tcode: x = [1, 2]  # ünïcode \x00\x7f </s>"
    ids = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok(text)["input_ids"][:3] == list(text.encode("utf-8"))[:3]  # no bos added by default
    assert tok.decode([104, 105, EOS], skip_special_tokens=True) == "hi"

    tok.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert reloaded(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == ids
    assert reloaded(text)["input_ids"] == tok(text)["input_ids"]
    assert (reloaded.pad_token_id, reloaded.bos_token_id, reloaded.eos_token_id) == (256, 257, 258)
    assert len(reloaded) == BYTE_VOCAB_SIZE
    # load_tokenizer on the saved directory works too
    assert load_tokenizer(str(tmp_path / "tok")).eos_token_id == EOS


def test_load_tokenizer_missing_path(tmp_path):
    missing = tmp_path / "no_such_tokenizer"
    with pytest.raises(FileNotFoundError, match="no_such_tokenizer"):
        load_tokenizer(str(missing))
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer("./nope/tok")


def _save_plain_tokenizer(path: Path, **special) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(
        models.WordLevel({"[UNK]": 0, "a": 1, "b": 2, "[END]": 3}, unk_token="[UNK]")
    )
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", **special).save_pretrained(
        path
    )


def test_load_tokenizer_requires_eos_and_sets_pad(tmp_path):
    _save_plain_tokenizer(tmp_path / "no_eos")
    with pytest.raises(ValueError, match="no eos token"):
        load_tokenizer(str(tmp_path / "no_eos"))
    _save_plain_tokenizer(tmp_path / "eos_only", eos_token="[END]")
    tok = load_tokenizer(str(tmp_path / "eos_only"))
    assert tok.eos_token_id == 3
    assert tok.pad_token == "[END]" and tok.pad_token_id == 3


# ----------------------------------------------------------------------------- packing


def test_packing_is_exact_concatenation(tmp_path):
    docs = make_docs(40)
    path = write_jsonl(tmp_path / "a.jsonl", docs)
    dm = make_dm(tmp_path, [DataSource("a", str(path))], val_fraction=0.0, seq_len=16)
    dm.setup("fit")
    assert dm.tokenizer.eos_token_id == EOS

    expected = [t for d in docs for t in byte_ids(d)]
    blocks = dm.train_dataset.blocks
    n_blocks = len(expected) // 16
    assert blocks.shape == (n_blocks, 16)
    assert blocks.reshape(-1).tolist() == expected[: n_blocks * 16]
    assert len(dm.train_dataset) == n_blocks  # weight 1.0 -> each block once
    assert sorted(dm.train_dataset.index.tolist()) == list(range(n_blocks))
    # items are exactly seq_len and labels == input_ids
    for i in (0, n_blocks - 1):
        item = dm.train_dataset[i]
        assert item["input_ids"].shape == (16,) and item["input_ids"].dtype == torch.long
        assert torch.equal(item["input_ids"], item["labels"])
    stats = dm.stats()["sources"]["a"]
    assert stats["docs"] == 40 and stats["tokens"] == len(expected)
    assert stats["blocks"] == stats["train_blocks"] == n_blocks and stats["val_blocks"] == 0
    # eos separates the documents
    assert int((blocks == EOS).sum()) == sum(
        1 for i, t in enumerate(expected[: n_blocks * 16]) if t == EOS
    )


def test_special_token_text_is_not_a_control_token(tmp_path):
    docs = ["a</s>b<s>c<pad>" * 3, "plain text " * 3]
    path = write_jsonl(tmp_path / "s.jsonl", docs)
    dm = make_dm(tmp_path, [DataSource("s", str(path))], val_fraction=0.0, seq_len=8)
    dm.setup("fit")
    flat = dm.train_dataset.blocks.reshape(-1).tolist()
    expected = byte_ids(docs[0]) + byte_ids(docs[1])
    assert flat == expected[: len(flat)]
    assert flat.count(EOS) == expected[: len(flat)].count(EOS) <= 2


def test_validation_docs_disjoint_from_train(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", make_docs(50, "alpha"))
    b = write_jsonl(tmp_path / "b.jsonl", make_docs(30, "beta", seed=1))
    two = write_jsonl(tmp_path / "two.jsonl", make_docs(2, "two", min_len=40, max_len=41))
    sources = [DataSource("a", str(a)), DataSource("b", str(b)), DataSource("two", str(two))]
    dm = make_dm(tmp_path, sources, val_fraction=0.2, seq_len=8, seed=3)
    dm.setup("fit")
    stats = dm.stats()["sources"]
    assert (stats["a"]["val_docs"], stats["b"]["val_docs"], stats["two"]["val_docs"]) == (10, 6, 1)
    for name, n in (("a", 50), ("b", 30), ("two", 2)):
        assert stats[name]["train_docs"] + stats[name]["val_docs"] == n
        assert len(set(dm.val_doc_indices[name])) == stats[name]["val_docs"]

    def markers(blocks: np.ndarray) -> set[str]:
        text = bytes(t for t in blocks.reshape(-1).tolist() if t < 256).decode(
            "utf-8", errors="replace"
        )
        return set(re.findall(r"(?:alpha|beta|two)-\d{4}", text))

    train_m, val_m = markers(dm.train_dataset.blocks), markers(dm.val_dataset.blocks)
    assert val_m and train_m
    assert not train_m & val_m
    expected_val = {
        f"{p}-{i:04d}"
        for p, name in (("alpha", "a"), ("beta", "b"), ("two", "two"))
        for i in dm.val_doc_indices[name]
    }
    assert val_m <= expected_val

    # deterministic given the seed
    dm2 = make_dm(tmp_path, sources, val_fraction=0.2, seq_len=8, seed=3)
    dm2.setup("fit")
    assert dm2.val_doc_indices == dm.val_doc_indices
    np.testing.assert_array_equal(dm2.val_dataset.blocks, dm.val_dataset.blocks)


def test_tiny_val_fraction_still_holds_out_one_doc(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", make_docs(20, min_len=30, max_len=40))
    dm = make_dm(tmp_path, [DataSource("a", str(a))], val_fraction=0.001, seq_len=8)
    dm.setup("fit")
    assert dm.stats()["sources"]["a"]["val_docs"] == 1


def test_mixture_weights(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", make_docs(60, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", make_docs(60, "b", seed=1))
    c = write_jsonl(tmp_path / "c.jsonl", make_docs(60, "c", seed=2))
    sources = [
        DataSource("a", str(a), weight=1.0),
        DataSource("b", str(b), weight=1.5),
        DataSource("c", str(c), weight=0.5),
    ]
    dm = make_dm(tmp_path, sources, val_fraction=0.1, seq_len=16)
    dm.setup("fit")
    st = dm.stats()
    sa, sb, sc = (st["sources"][k] for k in "abc")
    assert sa["train_blocks"] == sa["blocks"]
    assert sb["train_blocks"] == int(np.floor(1.5 * sb["blocks"] + 0.5))
    assert sc["train_blocks"] == int(np.floor(0.5 * sc["blocks"] + 0.5))
    assert (
        st["train_blocks"]
        == len(dm.train_dataset)
        == sa["train_blocks"] + sb["train_blocks"] + sc["train_blocks"]
    )
    assert (
        st["val_blocks"]
        == len(dm.val_dataset)
        == sa["val_blocks"] + sb["val_blocks"] + sc["val_blocks"]
    )

    counts = np.bincount(dm.train_dataset.index, minlength=len(dm.train_dataset.blocks))
    ca = counts[: sa["blocks"]]
    cb = counts[sa["blocks"] : sa["blocks"] + sb["blocks"]]
    cc = counts[sa["blocks"] + sb["blocks"] :]
    assert (ca == 1).all()
    assert set(cb.tolist()) <= {1, 2} and int((cb == 2).sum()) == sb["train_blocks"] - sb["blocks"]
    assert set(cc.tolist()) <= {0, 1} and int(cc.sum()) == sc["train_blocks"]


@pytest.mark.parametrize("weight", [0, -1.0, float("nan")])
def test_weight_must_be_positive(weight):
    with pytest.raises(DataError, match="weight"):
        DataSource("a", "a.jsonl", weight=weight)


# ----------------------------------------------------------------------------- caching


def test_tokenization_is_cached(tmp_path, monkeypatch):
    a = write_jsonl(tmp_path / "a.jsonl", make_docs(30))
    dm = make_dm(tmp_path, [DataSource("a", str(a))])
    dm.prepare_data()
    dm.setup("fit")
    files = [f["filename"] for f in dm.tokenized["a"].cache_files]
    assert files and all(Path(f).is_relative_to(tmp_path / "hf_cache") for f in files)
    assert all(Path(f).name.startswith("cache-") for f in files)  # the map result, not the raw load

    def fail(self, batch):
        raise AssertionError("tokenisation was recomputed instead of read from the cache")

    monkeypatch.setattr(TokenizeBatch, "__call__", fail)
    dm2 = make_dm(tmp_path, [DataSource("a", str(a))])
    dm2.setup("fit")
    assert [f["filename"] for f in dm2.tokenized["a"].cache_files] == files
    np.testing.assert_array_equal(dm2.train_dataset.blocks, dm.train_dataset.blocks)


# ----------------------------------------------------------------------------- formats


def test_json_list_parquet_and_txt_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs_json = make_docs(10, "json")
    (tmp_path / "list.json").write_text(
        json.dumps([{"text": d, "id": i} for i, d in enumerate(docs_json)])
    )
    docs_pq = make_docs(10, "pq", seed=1)
    pq.write_table(pa.table({"content": docs_pq, "n": list(range(10))}), tmp_path / "p.parquet")
    paragraphs = [
        "first paragraph\nstill first",
        "second one",
        "third  paragraph with spaces",
        "4th",
    ]
    (tmp_path / "t.txt").write_text(
        "\n\n".join(paragraphs[:2]) + "\n\n\n\n" + "\n\n".join(paragraphs[2:]) + "\n"
    )

    sources = [
        DataSource("j", str(tmp_path / "list.json")),
        DataSource("p", str(tmp_path / "p.parquet"), text_field="content"),
        DataSource("t", str(tmp_path / "t.txt")),
    ]
    dm = make_dm(tmp_path, sources, val_fraction=0.0, seq_len=4)
    dm.setup("fit")
    st = dm.stats()["sources"]
    assert (st["j"]["docs"], st["p"]["docs"], st["t"]["docs"]) == (10, 10, 4)
    offset = 0
    for name, docs in (("j", docs_json), ("p", docs_pq), ("t", paragraphs)):
        expected = [t for d in docs for t in byte_ids(d)]
        n = st[name]["blocks"]
        assert n == len(expected) // 4
        assert (
            dm.train_dataset.blocks[offset : offset + n].reshape(-1).tolist() == expected[: n * 4]
        )
        offset += n


def test_jsonl_blank_lines_and_extra_fields(tmp_path):
    path = tmp_path / "a.jsonl"
    lines = [json.dumps({"text": d, "meta": {"i": i}}) for i, d in enumerate(make_docs(10))]
    path.write_text("\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:]) + "\n\n")
    dm = make_dm(tmp_path, [DataSource("a", str(path))], val_fraction=0.0)
    dm.setup("fit")
    assert dm.stats()["sources"]["a"]["docs"] == 10


# ----------------------------------------------------------------------------- dataloaders


def test_dataloader_batches(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", make_docs(80))
    dm = make_dm(
        tmp_path, [DataSource("a", str(a))], seq_len=16, batch_size=4, val_fraction=0.1, seed=7
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "labels"}
    for key in ("input_ids", "labels"):
        assert batch[key].shape == (4, 16) and batch[key].dtype == torch.long
    assert torch.equal(batch["input_ids"], batch["labels"])
    assert int(batch["input_ids"].max()) < BYTE_VOCAB_SIZE
    val_batch = next(iter(dm.val_dataloader()))
    assert val_batch["input_ids"].shape[1] == 16
    # the shuffle is seeded: same seed -> same order
    dm2 = make_dm(
        tmp_path, [DataSource("a", str(a))], seq_len=16, batch_size=4, val_fraction=0.1, seed=7
    )
    dm2.setup("fit")
    assert torch.equal(next(iter(dm2.train_dataloader()))["input_ids"], batch["input_ids"])


def test_stats_before_setup_raises(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", make_docs(5))
    with pytest.raises(RuntimeError, match="setup"):
        make_dm(tmp_path, [DataSource("a", str(a))]).stats()


# ----------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl.*'gen'"):
        make_dm(tmp_path, [DataSource("gen", str(tmp_path / "missing.jsonl"))])


def test_empty_source(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n   \n")
    dm = make_dm(tmp_path, [DataSource("e", str(tmp_path / "empty.jsonl"))])
    with pytest.raises(DataError, match=r"'e'.*empty"):
        dm.setup("fit")
    (tmp_path / "blank.jsonl").write_text('{"text": "  "}\n{"text": ""}\n')
    with pytest.raises(DataError, match="empty"):
        make_dm(tmp_path, [DataSource("b", str(tmp_path / "blank.jsonl"))]).setup("fit")


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (
            '{"text": "ok"}\n{"text": "ok"}\n{"text": "broken\n',
            r"bad\.jsonl:3: malformed JSON on line 3",
        ),
        (
            '{"text": "ok"}\n\n{"body": "no text"}\n',
            r"bad\.jsonl:3: line 3: record has no 'text' field.*'body'",
        ),
        (
            '{"text": "ok"}\n{"text": 42}\n',
            r"bad\.jsonl:2: line 2: field 'text' must be a string, got int",
        ),
        ('{"text": "ok"}\n["a", "list"]\n', r"bad\.jsonl:2: line 2: expected a JSON object"),
    ],
)
def test_malformed_jsonl_reports_file_and_line(tmp_path, content, pattern):
    (tmp_path / "bad.jsonl").write_text(content)
    dm = make_dm(tmp_path, [DataSource("bad", str(tmp_path / "bad.jsonl"))])
    with pytest.raises(DataError, match=pattern):
        dm.prepare_data()


def test_malformed_json_list(tmp_path):
    (tmp_path / "bad.json").write_text('[{"text": "ok"},\n {"txt": "x"}]')
    with pytest.raises(DataError, match=r"bad\.json:2: line 2: record has no 'text' field"):
        make_dm(tmp_path, [DataSource("bad", str(tmp_path / "bad.json"))]).setup("fit")
    (tmp_path / "bad2.json").write_text('[{"text": "ok"},\n\n {"text": "x",}]')
    with pytest.raises(DataError, match=r"bad2\.json:3: invalid JSON"):
        make_dm(tmp_path, [DataSource("bad2", str(tmp_path / "bad2.json"))]).setup("fit")


def test_parquet_missing_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"p\.parquet: parquet file has no column 'text'.*body"):
        make_dm(tmp_path, [DataSource("p", str(tmp_path / "p.parquet"))]).setup("fit")


def test_settings_validation(tmp_path):
    a = str(write_jsonl(tmp_path / "a.jsonl", make_docs(5)))
    with pytest.raises(DataError, match=r"duplicate data source names \['x'\]"):
        make_dm(tmp_path, [DataSource("x", a), DataSource("x", a)])
    with pytest.raises(DataError, match="seq_len must be an integer >= 2"):
        make_dm(tmp_path, [DataSource("x", a)], seq_len=1)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(DataError, match=r"val_fraction must be in \[0, 1\)"):
            make_dm(tmp_path, [DataSource("x", a)], val_fraction=bad)
    with pytest.raises(DataError, match="non-empty list"):
        make_dm(tmp_path, [])
    (tmp_path / "a.csv").write_text("text\nx\n")
    with pytest.raises(DataError, match=r"a\.csv.*'\.csv'"):
        make_dm(tmp_path, [DataSource("c", str(tmp_path / "a.csv"))])


def test_too_little_data(tmp_path):
    a = write_jsonl(tmp_path / "small.jsonl", ["hello", "world"])  # 12 tokens incl. eos
    dm = make_dm(tmp_path, [DataSource("small", str(a))], seq_len=64, val_fraction=0.0)
    with pytest.raises(DataError, match=r"'small'.*found 12 tokens.*seq_len=64 needs at least 64"):
        dm.setup("fit")


# ----------------------------------------------------------------------------- synthetic corpora


def test_synthetic_data_is_deterministic(tmp_path):
    p1 = write_quickstart_data(tmp_path / "one", seed=0, num_docs=50)
    p2 = write_quickstart_data(tmp_path / "two", seed=0, num_docs=50)
    p3 = write_quickstart_data(tmp_path / "three", seed=1, num_docs=50)
    for key in ("general", "domain"):
        assert p1[key].read_bytes() == p2[key].read_bytes()
        assert p1[key].read_bytes() != p3[key].read_bytes()
        records = [json.loads(line) for line in p1[key].read_text().splitlines()]
        assert len(records) == 50 and all(isinstance(r["text"], str) and r["text"] for r in records)


def test_committed_quickstart_data_matches_generator(tmp_path):
    repo_dir = Path(__file__).resolve().parents[1] / "data" / "quickstart"
    fresh = write_quickstart_data(tmp_path)
    for path in fresh.values():
        committed = (repo_dir / path.name).read_bytes()
        assert committed == path.read_bytes(), (
            f"{path.name} is stale: run python scripts/make_quickstart_data.py data/quickstart"
        )
        assert 150_000 <= len(committed) <= 300_000
