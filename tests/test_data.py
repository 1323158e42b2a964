"""Tests of indexed training data in ``lightning_lossval.data``."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from helpers import TRAINER_ARGS
from lightning.pytorch.utilities.data import _update_dataloader
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    SequentialSampler,
    TensorDataset,
)

from lightning_lossval.data import (
    EpochRandomSampler,
    Indexed,
    IndexedCollate,
    IndexedDataset,
    index_dataloader,
)
from lightning_lossval.datamodule import IndexedDataModule

N = 20


class EncodedDataset(Dataset):
    """Sample ``i`` is ``(tensor([i, -i]), 10 * i)``: every sample encodes its own index."""

    def __init__(self, n: int = N) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor([float(i), -float(i)]), 10 * i


def assert_batch_matches_index(batch: Indexed) -> None:
    assert isinstance(batch, Indexed)
    index, (x, y) = batch
    assert index.dtype == torch.long
    torch.testing.assert_close(x[:, 0], index.float())
    torch.testing.assert_close(x[:, 1], -index.float())
    torch.testing.assert_close(y, 10 * index)


def epoch_order(loader: DataLoader, epoch: int) -> list[int]:
    loader.sampler.set_epoch(epoch)
    return torch.cat([b.index for b in loader]).tolist()


# --------------------------------------------------------------------------- IndexedDataset


def test_indexed_dataset_items():
    base = EncodedDataset(5)
    ds = IndexedDataset(base)
    assert len(ds) == 5
    for i in range(5):
        item = ds[i]
        assert isinstance(item, Indexed)
        assert item.index == i
        torch.testing.assert_close(item.data[0], base[i][0])
        assert item.data[1] == 10 * i


def test_indexed_dataset_refuses_iterable():
    class Stream(IterableDataset):
        def __iter__(self):
            yield from range(3)

        def __len__(self):  # even with a length, an iterable dataset has no random access
            return 3

    with pytest.raises(TypeError, match="map-style"):
        IndexedDataset(Stream())


# --------------------------------------------------------------------------- index_dataloader


def test_index_dataloader_keeps_settings_and_custom_collate():
    seen_types = []

    def collate(samples):
        seen_types.extend(type(s) for s in samples)
        xs = torch.stack([s[0] for s in samples])
        return {"x": xs, "y": torch.tensor([s[1] for s in samples]), "count": len(samples)}

    loader = DataLoader(EncodedDataset(N), batch_size=6, drop_last=True, num_workers=2, collate_fn=collate)
    indexed = index_dataloader(loader)
    assert indexed.batch_size == 6
    assert indexed.drop_last is True
    assert indexed.num_workers == 2
    assert isinstance(indexed.dataset, IndexedDataset) and indexed.dataset.dataset is loader.dataset
    assert isinstance(indexed.collate_fn, IndexedCollate) and indexed.collate_fn.collate_fn is collate
    assert isinstance(indexed.sampler, SequentialSampler)  # no shuffling: the order is untouched

    # iterate in-process (the worker copy of seen_types is not visible here)
    in_process = index_dataloader(DataLoader(EncodedDataset(N), batch_size=6, drop_last=True, collate_fn=collate))
    batches = list(in_process)
    assert len(batches) == N // 6  # drop_last kept: 3 full batches, the last 2 samples dropped
    for batch in batches:
        assert isinstance(batch, Indexed)
        assert batch.index.dtype == torch.long and batch.index.shape == (6,)
        assert set(batch.data) == {"x", "y", "count"} and batch.data["count"] == 6
        torch.testing.assert_close(batch.data["x"][:, 0], batch.index.float())
        torch.testing.assert_close(batch.data["y"], 10 * batch.index)
    assert torch.cat([b.index for b in batches]).tolist() == list(range(18))
    # the custom collate saw the plain samples, not Indexed ones
    assert seen_types and all(t is tuple for t in seen_types)

    # and the worker path works with the same objects
    worker_batches = list(indexed)
    assert [b.index.tolist() for b in worker_batches] == [b.index.tolist() for b in batches]


def test_index_dataloader_default_collate():
    loader = index_dataloader(DataLoader(EncodedDataset(7), batch_size=3))
    batches = list(loader)
    assert [len(b.index) for b in batches] == [3, 3, 1]  # drop_last=False kept
    for batch in batches:
        assert_batch_matches_index(batch)


def test_index_dataloader_is_idempotent_and_rejects_non_loaders():
    indexed = index_dataloader(DataLoader(EncodedDataset(), batch_size=4))
    assert index_dataloader(indexed) is indexed
    with pytest.raises(TypeError, match=r"came inside a list.*pass the DataLoader itself"):
        index_dataloader([DataLoader(EncodedDataset(), batch_size=4)])
    with pytest.raises(TypeError, match=r"one training DataLoader, but got 2 in a dict; join .* ConcatDataset"):
        index_dataloader({"a": DataLoader(EncodedDataset()), "b": DataLoader(EncodedDataset())})
    with pytest.raises(TypeError, match=r"expected a torch DataLoader, got TensorDataset"):
        index_dataloader(TensorDataset(torch.zeros(3)))


def test_shuffled_loader_gets_epoch_random_sampler():
    loader = DataLoader(EncodedDataset(N), batch_size=4, shuffle=True)
    a = index_dataloader(loader, seed=7)
    b = index_dataloader(loader, seed=7)
    assert isinstance(a.sampler, EpochRandomSampler)
    assert a.sampler.seed == 7

    order_a1 = epoch_order(a, 1)
    torch.rand(100)  # disturb the global RNG between two iterations
    torch.manual_seed(12345)
    order_b1 = epoch_order(b, 1)
    assert order_a1 == order_b1  # same (seed, epoch), whatever the global RNG did
    torch.manual_seed(999)
    assert epoch_order(a, 1) == order_a1  # and repeatable on the same loader

    order_a0 = epoch_order(a, 0)
    order_a2 = epoch_order(a, 2)
    assert order_a0 != order_a1 and order_a1 != order_a2
    assert order_a1 != list(range(N))  # really shuffled

    for epoch in range(3):
        a.sampler.set_epoch(epoch)
        batches = list(a)
        assert sorted(torch.cat([x.index for x in batches]).tolist()) == list(range(N))  # each once
        for batch in batches:
            assert_batch_matches_index(batch)

    other_seed = index_dataloader(loader, seed=8)
    assert epoch_order(other_seed, 1) != order_a1


def test_epoch_sampler_default_seed_from_seed_everything(monkeypatch):
    loader = DataLoader(EncodedDataset(N), batch_size=4, shuffle=True)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    built_before = index_dataloader(loader)  # the usual script: the loader first, seed_everything(5) just before fit
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    assert epoch_order(built_before, 0) == epoch_order(index_dataloader(loader, seed=5), 0)
    assert built_before.sampler.seed == 5
    monkeypatch.delenv("PL_GLOBAL_SEED")
    # without seed_everything the seed is drawn from torch's global generator, as a plain loader's order is:
    # torch.manual_seed(1) and (2) shuffle differently, the same seed alike
    orders = []
    for seed in (1, 2, 1):
        torch.manual_seed(seed)
        orders.append(epoch_order(index_dataloader(loader), 0))
    assert orders[0] != orders[1] and orders[0] == orders[2]


def test_the_drawn_seed_travels_with_the_loader_state(monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    loader = DataLoader(EncodedDataset(N), batch_size=4, shuffle=True)
    torch.manual_seed(1)
    first = index_dataloader(loader)
    orders = [epoch_order(first, e) for e in range(3)]
    state = first.state_dict()
    assert state["seed"] == first.sampler.seed is not None
    torch.manual_seed(2)  # a new process draws another seed ...
    assert epoch_order(index_dataloader(loader), 0) != orders[0]
    resumed = index_dataloader(loader)
    resumed.load_state_dict(state)  # ... and the checkpoint's state hands back the run's own
    assert [epoch_order(resumed, e) for e in range(3)] == orders

    older = {"delivered": 0, "epoch": 0, "world": 1}  # saved before states kept the seed: the default then
    for env, given, expected in ((None, None, 0), ("5", None, 5), (None, 7, 7)):
        if env is not None:
            monkeypatch.setenv("PL_GLOBAL_SEED", env)
        loaded = index_dataloader(loader, seed=given)
        loaded.load_state_dict(older)
        assert loaded.sampler.seed == expected


def test_indices_stay_global_under_distributed_sampler():
    rank_count = 2
    indexed = index_dataloader(DataLoader(EncodedDataset(N), batch_size=3, shuffle=True), seed=0)
    per_rank = []
    for rank in range(rank_count):
        sampler = DistributedSampler(indexed.dataset, num_replicas=rank_count, rank=rank, shuffle=True, seed=0)
        replaced = _update_dataloader(indexed, sampler)
        assert replaced.sampler is sampler
        assert isinstance(replaced.dataset, IndexedDataset)
        indices = []
        for batch in replaced:
            assert_batch_matches_index(batch)
            indices += batch.index.tolist()
        assert len(indices) == N // rank_count
        per_rank.append(indices)
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(N))


# --------------------------------------------------------------------------- IndexedDataModule


class InnerData(L.LightningDataModule):
    """Defines train and val loaders only; records the hooks it receives."""

    def __init__(self, n: int = N, batch_size: int = 4) -> None:
        super().__init__()
        self.calls: list[tuple] = []
        self.train_set = EncodedDataset(n)
        self.val_set = TensorDataset(torch.arange(6).float().unsqueeze(1), torch.arange(6))
        self.batch_size = batch_size
        self.num_classes = 3
        self.loaded_state = None
        self.hook_batches: list = []
        self.val_loader = DataLoader(self.val_set, batch_size=3)

    def prepare_data(self):
        self.calls.append(("prepare_data",))

    def setup(self, stage):
        self.calls.append(("setup", stage))

    def teardown(self, stage):
        self.calls.append(("teardown", stage))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return self.val_loader

    def state_dict(self):
        return {"answer": 42}

    def load_state_dict(self, state_dict):
        self.loaded_state = state_dict

    def on_after_batch_transfer(self, batch, dataloader_idx):
        self.hook_batches.append(batch)
        x, y = batch
        return x * 2, y


def test_datamodule_loaders_overridden_as_inner():
    inner = InnerData()
    wrapped = IndexedDataModule(inner, seed=0)
    assert is_overridden("train_dataloader", wrapped)
    assert is_overridden("val_dataloader", wrapped)
    assert not is_overridden("test_dataloader", wrapped)
    assert not is_overridden("predict_dataloader", wrapped)
    assert is_overridden("on_after_batch_transfer", wrapped)
    assert not is_overridden("on_before_batch_transfer", wrapped)


def test_datamodule_val_loader_passes_through():
    inner = InnerData()
    wrapped = IndexedDataModule(inner, seed=0)
    val = wrapped.val_dataloader()
    assert val is inner.val_loader
    assert type(val) is DataLoader and val.dataset is inner.val_set
    for batch in val:
        assert not isinstance(batch, Indexed)
        assert isinstance(batch, list) and len(batch) == 2


def test_datamodule_train_loader_is_indexed():
    inner = InnerData()
    wrapped = IndexedDataModule(inner, seed=3)
    loader = wrapped.train_dataloader()
    assert isinstance(loader.sampler, EpochRandomSampler) and loader.sampler.seed == 3
    seen = []
    for batch in loader:
        assert_batch_matches_index(batch)
        seen += batch.index.tolist()
    assert sorted(seen) == list(range(N))


def test_a_loader_of_whole_batches_per_item_is_refused_saying_what_lossval_needs():
    # the "batched fetch" idiom: batch_size=None, a BatchSampler as sampler, __getitem__ taking a list of rows
    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=None, sampler=BatchSampler(range(8), 4, False))
    with pytest.raises(ValueError, match=r"batch_size=None, as for a Dataset whose __getitem__ fetches a whole batch"):
        index_dataloader(loader)


def test_datamodule_delegates_hooks_state_and_attributes():
    inner = InnerData()
    wrapped = IndexedDataModule(inner)
    wrapped.prepare_data()
    wrapped.setup("fit")
    wrapped.teardown("fit")
    assert inner.calls == [("prepare_data",), ("setup", "fit"), ("teardown", "fit")]

    assert wrapped.state_dict() == {"answer": 42}
    wrapped.load_state_dict({"answer": 7})
    assert inner.loaded_state == {"answer": 7}

    assert wrapped.num_classes == 3
    assert wrapped.batch_size == 4
    assert wrapped.datamodule is inner
    with pytest.raises(AttributeError):
        wrapped.no_such_attribute  # noqa: B018


def test_datamodule_batch_hook_sees_inner_batch():
    inner = InnerData()
    wrapped = IndexedDataModule(inner)
    index = torch.tensor([4, 1, 9])
    x = torch.tensor([[4.0], [1.0], [9.0]])
    y = torch.tensor([40, 10, 90])
    out = wrapped.on_after_batch_transfer(Indexed(index, (x, y)), 0)
    assert isinstance(out, Indexed)
    assert out.index is index
    torch.testing.assert_close(out.data[0], 2 * x)
    assert out.data[1] is y
    assert len(inner.hook_batches) == 1 and not isinstance(inner.hook_batches[0], Indexed)
    assert inner.hook_batches[0][0] is x

    # a plain (validation) batch goes straight through
    plain = wrapped.on_after_batch_transfer((x, y), 0)
    assert not isinstance(plain, Indexed)
    torch.testing.assert_close(plain[0], 2 * x)


# --------------------------------------------------------------------------- a real Trainer


class RecordingModule(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.train_indices: list[int] = []
        self.val_batches = 0

    def training_step(self, batch, batch_idx):
        assert isinstance(batch, Indexed), type(batch)
        index, (x, y) = batch
        # the inner datamodule's on_after_batch_transfer doubled x; the index still matches
        torch.testing.assert_close(x[:, 0], 2 * index.float())
        torch.testing.assert_close(y, 10 * index)
        self.train_indices += index.tolist()
        return self.layer(x).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        assert not isinstance(batch, Indexed)
        self.val_batches += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_trainer_sees_every_index_once():
    inner = InnerData(n=N, batch_size=4)
    module = RecordingModule()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, num_sanity_val_steps=0, **TRAINER_ARGS)
    trainer.fit(module, IndexedDataModule(inner, seed=0))
    assert sorted(module.train_indices) == list(range(N))
    assert module.train_indices != list(range(N))  # shuffled by the EpochRandomSampler
    assert module.val_batches == 2  # 6 val samples, batch size 3, passed through unindexed
    assert ("prepare_data",) in inner.calls and ("setup", "fit") in inner.calls and ("teardown", "fit") in inner.calls


def test_a_mid_epoch_state_of_another_number_of_processes_is_resumed_with_a_warning():
    loader = index_dataloader(DataLoader(TensorDataset(torch.arange(40.0)), batch_size=4, shuffle=True), seed=0)
    loader.load_state_dict({"delivered": 3, "epoch": 0})  # this run's own state: nothing to say
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(list(loader)) == 7
    assert not [w for w in caught if "process(es)" in str(w.message)]
    assert loader.state_dict() == {"delivered": 10, "epoch": 0, "world": 1, "seed": 0}
    loader.load_state_dict({"delivered": 3, "epoch": 0, "world": 2})  # saved by a fit on two processes
    with pytest.warns(UserWarning, match=r"epoch that 2 process\(es\) started with 1: each process skips the 3"):
        assert len(list(loader)) == 7
