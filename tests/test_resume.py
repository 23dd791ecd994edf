"""Resuming from a checkpoint replays exactly the batches an uninterrupted run would have seen."""

from __future__ import annotations

import hashlib

import lightning as L
import pytest
import torch

from blockexp.data.cpt import CPTDataModule, DataSource
from blockexp.data.loader import EpochSampler, ResumableDataLoader
from blockexp.expanders import LlamaPro
from blockexp.training.module import BlockExpansionModule
from blockexp.training.trainer import make_trainer
from tests.conftest import tiny_llama_dict


class _Record(L.Callback):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append(hashlib.md5(batch["input_ids"].numpy().tobytes()).hexdigest())


def _fit(corpus_path, root, steps, ckpt=None) -> list[str]:
    data = CPTDataModule(
        sources=[DataSource(name="c", path=str(corpus_path))],
        tokenizer="byte",
        seq_len=32,
        batch_size=64,
        val_fraction=0.0,
        cache_dir=str(root / "cache"),
    )
    module = BlockExpansionModule(
        base=tiny_llama_dict(2), expander=LlamaPro(num_groups=1), tokenizer="byte"
    )
    record = _Record()
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=root / "ckpt", save_last=True, every_n_train_steps=1, save_top_k=0
    )
    trainer = make_trainer(
        max_steps=steps,
        gradient_clip_val=None,
        callbacks=[record, checkpoint],
        limit_val_batches=0,
        default_root_dir=root,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    return record.seen, trainer.num_training_batches


@pytest.mark.parametrize("where", ["first epoch", "second epoch"])
def test_resume_replays_the_same_batches(corpus, tmp_path, where):
    full, epoch_len = _fit(corpus, tmp_path / "full", steps=26)
    assert epoch_len < 20, "the run must cross an epoch boundary"
    stop_at = 5 if where == "first epoch" else epoch_len + 3
    first, _ = _fit(corpus, tmp_path / "split", steps=stop_at)
    state = torch.load(tmp_path / "split/ckpt/last.ckpt", weights_only=True)
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"]  # loader state saved
    rest, _ = _fit(
        corpus, tmp_path / "split", steps=26, ckpt=str(tmp_path / "split/ckpt/last.ckpt")
    )
    assert first + rest == full


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.epoch = 1
    assert list(a) != list(b)
    b.epoch, b.skip = 0, 10
    assert list(b) == list(a)[10:]
    loader = ResumableDataLoader(list(range(20)), batch_size=4, seed=1)
    first = [x.tolist() for x in loader]
    second = [x.tolist() for x in loader]
    assert first != second and sorted(sum(first, [])) == list(range(20))
    loader.load_state_dict({"epoch": 0, "batches": 2})
    assert [x.tolist() for x in loader] == first[2:]


def test_epoch_sampler_shards_one_permutation_across_data_parallel_ranks():
    """Under DDP/FSDP each rank reads its share of the same (seed, epoch) permutation, and the
    sampler is a DistributedSampler, so Lightning keeps the resumable loader as it is (it used to
    try to rebuild it around a sampler of its own, and failed)."""
    from torch.utils.data.distributed import DistributedSampler

    one = EpochSampler(10, seed=3)
    shards = [EpochSampler(10, seed=3, num_replicas=3, rank=r) for r in range(3)]
    assert isinstance(one, DistributedSampler) and len(one) == 10
    assert all(len(s) == len(list(s)) == 4 for s in shards)
    padded = one.order(0) + one.order(0)[:2]  # to a multiple of 3, as DistributedSampler pads
    assert [list(s) for s in shards] == [padded[r::3] for r in range(3)]
    shards[1].skip = 2  # resuming mid-epoch skips this rank's consumed samples
    assert list(shards[1]) == shards[1].order(0)[2:]
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(10, num_replicas=2, rank=2)
