"""Training data that carries global sample indices.

A training batch becomes ``Indexed(index, data)``: ``index`` is a ``[B]`` long tensor of positions
in the training dataset and ``data`` is exactly the batch the wrapped loader would have produced.
The index comes from the dataset itself, so it stays global whatever sampler Lightning injects
(``DistributedSampler`` included). Validation, test and predict loaders are not touched.
LossVal values one training loader, and a training step's losses are one per indexed sample;
:func:`several_loaders_error` says what to do otherwise.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from torch.nn.utils.rnn import PackedSequence
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, SequentialSampler
from torch.utils.data.dataloader import default_collate

from lightning_lossval.errors import DataError, warn

BATCH_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
UNWRAPPING: weakref.WeakSet = weakref.WeakSet()
"""The modules whose training step takes the indices off the batches (``patching.patch`` adds a
module, ``patching.restore`` removes it): with none, an indexed batch would reach a user's step."""


class Indexed(NamedTuple):
    """A sample (``index``: int) or a batch (``index``: ``[B]`` long tensor) with its position(s)."""

    index: Any
    data: Any


class IndexedDataset(Dataset):
    """A map-style dataset whose item ``i`` is ``Indexed(i, dataset[i])``."""

    def __init__(self, dataset: Dataset) -> None:
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            raise TypeError(
                f"LossVal needs a map-style training dataset with __len__ and __getitem__ (one weight per "
                f"sample), got {type(dataset).__name__}; materialise the iterable data into a Dataset first"
            )
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Indexed:
        return Indexed(index, self.dataset[index])


class IndexedCollate:
    """Collates ``Indexed`` samples: the indices into a long tensor, the samples with ``collate_fn``.

    Samples that are ``None`` (unreadable items a dataset skips) are left out with their indices.
    The first batch is checked for samples in an order of the collate's own (:func:`check_collate_order`).
    """

    def __init__(self, collate_fn: Callable[[list], Any] | None = None) -> None:
        self.collate_fn = collate_fn or default_collate
        self.checked = collate_fn is None or collate_fn is default_collate

    def __call__(self, samples: list[Indexed]) -> Indexed:
        samples = [s for s in samples if s.data is not None]
        index = torch.tensor([s.index for s in samples], dtype=torch.long)
        data = [s.data for s in samples]
        batch = self.collate_fn(data)
        if not self.checked:
            self.checked = True
            check_collate_order(data, batch)
        return Indexed(index, batch)


def _leaves(item: Any) -> list[torch.Tensor]:
    """The tensors, arrays and numbers of a sample or a collated batch (inside tuples, lists and
    mappings), in order, as tensors; a ``PackedSequence`` holds none (its own indices keep the order)."""
    if isinstance(item, PackedSequence):
        return []
    if isinstance(item, torch.Tensor):
        return [item]
    if isinstance(item, float):  # as default_collate stacks Python floats: float64
        return [torch.tensor(item, dtype=torch.float64)]
    if isinstance(item, (int, np.ndarray, np.number)) and not isinstance(item, bool):
        return [torch.as_tensor(item)]
    if isinstance(item, Mapping):
        item = list(item.values())
    if isinstance(item, (list, tuple)):
        return [leaf for part in item for leaf in _leaves(part)]
    return []


def check_collate_order(samples: list, batch: Any, rows: int = 8) -> None:
    """Refuse a collated ``batch`` whose rows are ``samples`` in another order (a ``collate_fn`` that
    sorts them, by length say), so that row ``i`` is not sample ``i``. Read from the batch alone (the
    collate is not called again): a row holds a sample when the sample's tensors and numbers, in their
    order, fill the leading part of that row of the batch's ``[B, ...]`` tensors, in theirs (padded,
    say), some of which may hold none (lengths or an attention mask the collate adds). The first
    ``rows`` rows are checked; a batch that holds no sample as it was (normalised, tokenised, a
    sample's list of numbers stacked into one tensor) is not judged."""
    n, parts = len(samples), [_leaves(sample) for sample in samples]
    columns = [c for c in _leaves(batch) if c.dim() > 0 and c.shape[0] == n]
    if n < 2 or not columns or not all(parts):
        return

    def kind(t: torch.Tensor) -> int:  # bool < integer < float
        return 2 if t.is_floating_point() else int(t.dtype != torch.bool)

    def fills(part: torch.Tensor, row: torch.Tensor) -> bool:  # widened (int labels as floats), never narrowed
        lead = tuple(slice(0, k) for k in part.shape)  # (an id read as a mask, a float cut to an integer)
        return (
            part.dim() == row.dim()
            and kind(part) <= kind(row)
            and all(a <= b for a, b in zip(part.shape, row.shape))
            and torch.equal(row[lead].cpu(), part.to(row.dtype).cpu())
        )

    def holds(row: int, sample: int) -> bool:  # the sample's parts fill columns in order (the earliest that fits)
        rest = iter(columns)
        return all(any(fills(p, c[row]) for c in rest) for p in parts[sample])

    checked = range(min(rows, n))
    if all(holds(i, i) for i in checked) or not all(any(holds(i, j) for j in range(n)) for i in checked):
        return
    raise DataError(
        "the training DataLoader's collate_fn puts a batch's samples in an order of its own (row i of its batch "
        "is not the i-th sample it got), but LossVal credits row i of the batch to the i-th sample the sampler "
        "drew, so every loss would be credited to another row: keep the samples in the order the collate_fn gets "
        "them (for packed sequences, pack_padded_sequence(..., enforce_sorted=False) needs no sorting), or order "
        "them before they reach it (a batch_sampler that yields the indices sorted)"
    )


class EpochRandomSampler(RandomSampler):
    """A random order that depends only on ``(seed, epoch)``.

    Lightning calls ``set_epoch`` before each epoch, so a run resumed from a checkpoint shuffles
    exactly like an uninterrupted one (a plain ``RandomSampler`` draws from the global RNG, which
    a checkpoint does not hold). Lightning still sees a ``RandomSampler``, so under DDP it swaps
    in a shuffling ``DistributedSampler``, which is epoch-seeded too.
    """

    def __init__(self, data_source: Dataset, seed: int | None = 0) -> None:
        super().__init__(data_source)
        self.seed = seed  # None: default_seed() at the first iteration, after the run's seed_everything
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.seed is None:
            self.seed = default_seed()
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class EpochSequentialSampler(SequentialSampler):
    """The dataset's order, keeping the epoch Lightning sets, so that a resumed
    :class:`IndexedDataLoader` knows which epoch its saved state belongs to."""

    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class IndexedDataLoader(DataLoader):
    """A ``DataLoader`` that can resume in the middle of an epoch.

    Lightning stores ``state_dict()`` (the batches delivered so far in this epoch) in checkpoints
    and hands it back to ``load_state_dict`` on resume; the next epoch's iteration then skips
    the batches that were already trained on, if it is the epoch the state was saved in (the
    sampler's ``epoch``, where it keeps one). With the epoch-seeded order of
    :class:`EpochRandomSampler` (or Lightning's ``DistributedSampler``) a run killed mid-epoch
    and resumed sees exactly the batches an uninterrupted run would.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._delivered = 0
        self._skip: tuple[int, int | None] = (0, None)  # (batches, epoch) to skip, from load_state_dict
        self._saved_world = _world_size()  # the number of processes of the run whose state was loaded

    def __iter__(self):
        self._delivered = 0
        return self._iterate()

    def _iterate(self):
        # Decided at the first fetch, where the wrapped loader's iterator is made too (its workers draw
        # indices from the sampler as soon as it exists): Lightning may create this iterator before it
        # loads the saved state (load_pending_state) or sets the epoch on the sampler (a resumed epoch; a
        # state saved on the last batch an epoch's limit_train_batches allows: that epoch starts afresh,
        # as does one whose saved state covers the whole loader).
        (skip, epoch), self._skip = self._skip, (0, None)
        if skip >= len(self) or (epoch is not None and epoch != self._epoch()):
            skip = 0
        if skip and self._saved_world != _world_size():
            warn(
                f"resuming in the middle of an epoch that {self._saved_world} process(es) started with "
                f"{_world_size()}: each process skips the {skip} batches it counts as done, but the processes split "
                "the rows differently, so some rows of this epoch are trained twice and others not at all (visits in "
                "values.csv shows which); resume from an epoch-end checkpoint, or with the same number of processes"
            )
        if not UNWRAPPING:
            warn(
                "this loader's batches are Indexed(index, data) for LossValCallback, and no module is being fitted "
                "with one: a step would receive the sample indices as its batch. To fit, add LossValCallback(...); to "
                "predict, test or validate, give the loader it wraps (its rows: this loader's dataset.dataset)"
            )
        for batch in super().__iter__():
            self._delivered += 1
            if self._delivered > skip:
                yield batch

    def _epoch(self) -> int | None:
        """The epoch Lightning set on the sampler (``set_epoch``), if the sampler keeps one."""
        for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if isinstance(getattr(sampler, "epoch", None), int):
                return sampler.epoch
        return None

    def state_dict(self) -> dict[str, int | None]:
        seed = self.sampler.seed if isinstance(self.sampler, EpochRandomSampler) else None
        return {"delivered": self._delivered, "epoch": self._epoch(), "world": _world_size(), "seed": seed}

    def load_state_dict(self, state_dict: dict[str, int | None]) -> None:
        self._skip = (int(state_dict["delivered"]), state_dict.get("epoch"))
        self._saved_world = int(state_dict.get("world") or _world_size())  # older checkpoints did not say
        self.restore_seed(state_dict)

    def restore_seed(self, state_dict: dict[str, int | None]) -> None:
        """Shuffle as the run that saved ``state_dict`` did: with its seed, drawn or given. A state saved before
        it kept the seed was written with the default of then, ``seed_everything``'s or 0; a run resumed without
        ``seed_everything`` takes 0, which is wrong only for a run that had called it and now does not."""
        if isinstance(self.sampler, EpochRandomSampler):
            old = self.sampler.seed if self.sampler.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
            seed = state_dict.get("seed", old)
            self.sampler.seed = self.sampler.seed if seed is None else int(seed)


def load_pending_state(trainer: Any) -> None:
    """Hand the training loader the state a resumed checkpoint saved for it (the batches of the epoch
    already trained), if Lightning has not: it does so only when it builds the loader after restoring
    the checkpoint, and a ``configure_optimizers`` that reads ``trainer.estimated_stepping_batches``
    builds it before (the loader would start the epoch over)."""
    loop = trainer.fit_loop
    states = getattr(loop, "_combined_loader_states_to_load", None)
    if not states or loop._combined_loader is None:
        return
    if loop.restarting:  # in the middle of an epoch
        loop._load_combined_loader_states()
        return
    # at an epoch's end Lightning drops the state, but its seed still decides the orders of the epochs to come
    loaders = [loader for loader in loop._combined_loader.flattened if isinstance(loader, IndexedDataLoader)]
    for loader, state in zip(loaders, states):
        loader.restore_seed(state)
    loop._combined_loader_states_to_load = []


def _world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def default_seed() -> int:
    """The seed of ``lightning.seed_everything`` if it was called, else one drawn from torch's global
    generator, as a plain shuffling loader draws its order: runs seeded only with
    ``torch.manual_seed`` (or not at all) get orders of their own, not one shared order."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else int(torch.randint(2**31, ()).item())


def index_dataloader(loader: DataLoader, seed: int | None = None) -> DataLoader:
    """A copy of a training ``DataLoader`` whose batches are ``Indexed(index, batch)``, resumable
    mid-epoch (:class:`IndexedDataLoader`).

    Batch size, workers, ``drop_last``, ``collate_fn`` (applied to the samples as before) and a
    custom sampler or batch sampler are kept; a plain shuffling ``RandomSampler`` becomes an
    :class:`EpochRandomSampler` seeded with ``seed`` (default: the initial seed of the loader's
    ``generator`` when it has one, else :func:`default_seed` when the first epoch starts, so a loader
    built before ``seed_everything`` still takes its seed).
    """
    if not isinstance(loader, DataLoader):
        got = f"expected a torch DataLoader, got {type(loader).__name__}: index_dataloader(DataLoader(dataset, ...))"
        raise TypeError(several_loaders_error(loader) or got)
    if isinstance(loader.dataset, IndexedDataset):
        return loader
    if loader.batch_size is None and loader.batch_sampler is None:
        raise ValueError(
            "the training DataLoader has automatic batching disabled (batch_size=None, as for a Dataset whose "
            "__getitem__ fetches a whole batch from a BatchSampler): LossVal values each dataset item, so give the "
            "Dataset a __getitem__ that returns one sample and the DataLoader a batch_size (or a batch_sampler)"
        )
    dataset = IndexedDataset(loader.dataset)
    common = dict(
        num_workers=loader.num_workers,
        collate_fn=IndexedCollate(loader.collate_fn),
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers,
    )
    if loader.batch_size is None:  # a custom batch sampler decides the batches
        return IndexedDataLoader(dataset, batch_sampler=loader.batch_sampler, **common)
    sampler = loader.sampler
    if type(sampler) is RandomSampler and not sampler.replacement and sampler._num_samples is None:
        if seed is None and sampler.generator is not None:  # the user's shuffling generator decides the orders
            seed = sampler.generator.initial_seed()
        sampler = EpochRandomSampler(dataset, seed)  # no seed: the run's, at the first iteration
    elif type(sampler) is SequentialSampler:
        sampler = EpochSequentialSampler(dataset)
    return IndexedDataLoader(
        dataset, batch_size=loader.batch_size, sampler=sampler, drop_last=loader.drop_last, **common
    )


def several_loaders_error(loader: Any) -> str | None:
    """Why a fit's training loaders cannot be valued when they are a list, tuple, dict or ``CombinedLoader``
    (LossVal values one indexed ``DataLoader``); ``None`` for anything else."""
    if not isinstance(loader, (CombinedLoader, Mapping, list, tuple)):
        return None
    count = len(loader.flattened if isinstance(loader, CombinedLoader) else loader)
    if count == 1:
        return (
            f"the training DataLoader came inside a {type(loader).__name__}, so training_step would get a "
            "collection of batches: pass the DataLoader itself, trainer.fit(model, train_dataloaders=loader)"
        )
    return (
        f"LossVal values the samples of one training DataLoader, but got {count} in a {type(loader).__name__}; "
        "join their datasets into one: index_dataloader(DataLoader(ConcatDataset([dataset_a, dataset_b]), "
        "batch_size=..., shuffle=True)) (value i is then item i of the ConcatDataset)"
    )


def on_inner_batch(hook: Callable) -> Callable:
    """Wrap a batch hook ``hook(batch, *args)`` so that it sees the batch inside an ``Indexed``."""

    @functools.wraps(hook)
    def wrapped(batch: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(batch, Indexed):
            return Indexed(batch.index, hook(batch.data, *args, **kwargs))
        return hook(batch, *args, **kwargs)

    return wrapped
