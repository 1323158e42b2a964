"""Lightning projects written the way users write them: their hooks, targets, copies and mistakes."""

from __future__ import annotations

import copy
import json
import logging
import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import TRAINER_ARGS, BlobData, Net, blobs
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from lightning_lossval import IndexedDataModule, LossValCallback, LossValMixin, index_dataloader
from lightning_lossval.errors import ConfigError, DataError
from lightning_lossval.metrics import detection_report
from lightning_lossval.objective import balanced_by_class, class_balanced, weight_mass


@pytest.fixture(autouse=True)
def seeded():
    L.seed_everything(0)


def fit(tmp_path, model, callbacks, data=None, epochs=1, ckpt_path=None, **args):
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_epochs=epochs, logger=False, callbacks=callbacks, **TRAINER_ARGS, **args
    )
    trainer.fit(model, data if data is not None else IndexedDataModule(BlobData(n=96, n_val=40)), ckpt_path=ckpt_path)
    return trainer


class BatchSeen(Callback):
    """A user's callback that unpacks the training batch, as its authors expect it to look."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, y = batch
        self.seen.append(("callback start", tuple(x.shape), tuple(y.shape)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        x, y = batch
        self.seen.append(("callback end", tuple(x.shape), tuple(y.shape)))


class HookNet(Net):
    def on_train_batch_start(self, batch, batch_idx):
        self.seen = getattr(self, "seen", []) + [("module start", type(batch).__name__, len(batch[0]))]

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.seen.append(("module end", type(batch).__name__, len(batch[0])))


def test_batch_hooks_of_the_module_and_other_callbacks_see_the_users_batch(tmp_path):
    """on_train_batch_start/_end get the batch the loader made (x, y), not the indexed one."""
    spy, model = BatchSeen(), HookNet()
    fit(tmp_path, model, [LossValCallback(export=False, show=0), spy])
    assert len(spy.seen) == 6 and len(model.seen) == 6  # 3 batches of 32
    assert {s[1:] for s in spy.seen} == {((32, 8), (32,))}
    assert {s[1:] for s in model.seen} == {("list", 32)}  # default_collate's list, as without the callback


def test_binary_float_targets_are_balanced_as_classes():
    """BCE's 0/1 float targets and integer classes, [B] or [B, 1], keep each class's share; other
    float targets (regression) leave the masses alone."""
    masses = torch.tensor([0.2, 1.0, 1.5, 0.5, 1.0])
    classes = torch.tensor([1, 0, 0, 0, 1])
    expected = class_balanced(masses, classes)
    assert not torch.allclose(expected, masses)
    for targets in (classes, classes.unsqueeze(1), classes.float(), classes.float().unsqueeze(1)):
        torch.testing.assert_close(balanced_by_class(masses, targets), expected)
    for targets in (torch.tensor([0.0, 0.5, 1.0, 2.0, 1.0]), classes.unsqueeze(0), None, torch.ones(5, 3)):
        torch.testing.assert_close(balanced_by_class(masses, targets), masses)


class BinaryNet(LossValMixin, L.LightningModule):
    """Binary cross-entropy on one logit, as users write it: float targets [B, 1]."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.lossval_loss(F.binary_cross_entropy_with_logits(self.net(x), y, reduction="none").squeeze(1))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def test_binary_cross_entropy_training_keeps_the_minority_class_share(tmp_path):
    """With 10% positives and BCE's float targets, the network trains on the masses' weighted mean with
    the masses rescaled within each class, as with integer classes: down-weighting some positives never
    shrinks the class."""
    x, y = blobs(440, classes=2, seed=3)
    negatives, positives = torch.nonzero(y == 0).flatten(), torch.nonzero(y == 1).flatten()
    keep = torch.cat([negatives, positives[: len(negatives) // 9]])
    x, y = x[keep], y[keep].float().unsqueeze(1)
    steps = []

    class Spy(LossValCallback):
        def loss(self, pl_module, losses, features):
            returned = super().loss(pl_module, losses, features)
            index, (_, targets) = self._step
            masses = weight_mass(self._store.values()[index].float(), "sigmoid")
            held = class_balanced(masses, targets.flatten().long())
            unbalanced = (masses * losses).sum() / masses.sum()
            steps.append((returned.item(), ((held * losses).sum() / held.sum()).item(), unbalanced.item()))
            return returned

    loader = DataLoader(TensorDataset(x, y), batch_size=40, shuffle=True)
    fit(tmp_path, BinaryNet(), [Spy(val_data=(x[:60], y[:60]), export=False, show=0)], index_dataloader(loader), 3)
    assert len(steps) == 3 * len(loader)
    assert all(returned == pytest.approx(balanced, rel=1e-5) for returned, balanced, _ in steps)
    assert sum(abs(balanced - plain) > 1e-4 * plain for _, balanced, plain in steps) > 10  # balancing mattered


class DetachedNet(Net):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.lossval_loss(F.cross_entropy(self(x), y, reduction="none").detach())


class IntegerLossNet(Net):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.lossval_loss((self(x).argmax(1) != y).long())


@pytest.mark.parametrize(
    "module, message",
    [
        (DetachedNet, r"carry no gradient \(computed under torch.no_grad\(\) or detached\), so the network would not"),
        (IntegerLossNet, r"needs floating-point per-sample losses, got torch.int64: pass losses.float\(\)"),
    ],
)
def test_losses_the_network_cannot_learn_from_are_refused(tmp_path, module, message):
    with pytest.raises(DataError, match=message):
        fit(tmp_path, module(), [LossValCallback(export=False, show=0)])


class Growing(Dataset):
    """A dataset that grows each time the loaders are rebuilt: 64 rows at fit start, 96 after."""

    def __init__(self):
        self.x, self.y = blobs(96, seed=1)
        self.n = 32

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class GrowingData(L.LightningDataModule):
    def __init__(self):
        super().__init__()
        self.data = Growing()

    def train_dataloader(self):
        self.data.n += 32
        return DataLoader(self.data, batch_size=16, shuffle=True)

    def val_dataloader(self):
        return DataLoader(TensorDataset(*blobs(40, seed=2)), batch_size=40)


def test_a_dataset_that_grows_during_fit_is_named_on_any_batch(tmp_path):
    """Rows beyond the length counted at the start are refused on the batch that brings them, not only the first."""
    with pytest.raises(DataError, match=r"outside the 64 rows the training dataset had when the fit started"):
        fit(tmp_path, Net(), [LossValCallback(export=False, show=0)], data=IndexedDataModule(GrowingData()), epochs=2,
            reload_dataloaders_every_n_epochs=1)  # fmt: skip


def test_a_dataloader_in_indexed_datamodule_points_to_index_dataloader():
    with pytest.raises(TypeError, match=r"got DataLoader \(a training DataLoader goes in index_dataloader\(loader\)\)"):
        IndexedDataModule(DataLoader(TensorDataset(torch.zeros(4, 2))))


def test_numpy_validation_arrays_are_read_like_tensors(tmp_path):
    x, y = blobs(40, seed=2)
    values = []
    for val_data in ((x, y), (x.numpy(), y.numpy()), x.numpy()):
        L.seed_everything(0)
        cb = LossValCallback(val_data=val_data, export=False, show=0)
        fit(tmp_path, Net(), [cb])
        values.append(cb.values)
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=0)
    torch.testing.assert_close(values[0], values[2], rtol=0, atol=0)


class Copier(Callback):
    """Keeps a deep copy of the module, as weight averaging and keep-the-best code do."""

    def on_train_epoch_end(self, trainer, pl_module):
        self.copy = copy.deepcopy(pl_module)


@pytest.mark.parametrize("objective", ["default", "paper"])
def test_a_copy_made_during_fit_is_the_plain_module(tmp_path, objective):
    copier = Copier()
    fit(tmp_path, Net(), [LossValCallback(objective=objective, export=False, show=0), copier])
    plain = copier.copy
    assert not {"training_step", "_lossval_callback", "_lossval_patched"} & set(vars(plain))
    assert "lossval_weights" not in dict(plain.named_parameters())
    fit(tmp_path / "again", plain, [], data=BlobData(n=96, n_val=40))  # trains without LossVal


@pytest.mark.parametrize("objective", ["default", "paper"])  # paper: the weights are a group of the optimizer
def test_resuming_a_checkpoint_written_without_the_callback_says_so(tmp_path, caplog, objective):
    fit(tmp_path, Net(), [ModelCheckpoint(dirpath=tmp_path / "ckpt")], data=BlobData(n=96, n_val=40))
    (path,) = (tmp_path / "ckpt").glob("*.ckpt")
    cb = LossValCallback(objective=objective, export=False, show=0)
    with caplog.at_level(logging.INFO):
        fit(tmp_path, Net(), [cb], epochs=2, ckpt_path=path)
    assert f"{path} holds no LossVal weights (written without this callback)" in caplog.text
    assert cb.visits.tolist() == [1] * 96 and (cb.values != 1).all()


def test_a_fit_without_the_callback_resumes_a_checkpoint_of_the_paper_objective(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    fit(tmp_path, Net(), [LossValCallback(objective="paper", show=0), checkpoint])
    saved = torch.load(checkpoint.best_model_path, weights_only=False)["optimizer_states"][0]["param_groups"]
    assert [g.get("name") for g in saved] == [None, "lossval_weights"]  # the dense weights' group is in the file
    trainer = fit(tmp_path, Net(), [], data=BlobData(n=96, n_val=40), epochs=2, ckpt_path=checkpoint.best_model_path)
    assert trainer.current_epoch == 2 and len(trainer.optimizers[0].param_groups) == 1


def test_an_indexed_datamodule_without_the_callback_says_what_is_missing(tmp_path):
    # the README's module, its callback left out for a run without LossVal: x, y = batch would unpack the indices
    message = r"this Trainer has no LossValCallback: add LossValCallback\(\) to its .* wrapped BlobData itself"
    with pytest.raises(ConfigError, match=message):
        fit(tmp_path, Net(), [])


def test_label_aware_targets_of_another_kind_than_the_validation_targets_are_named(tmp_path):
    x, y = blobs(40, seed=2)
    cb = LossValCallback(val_data=(x, F.one_hot(y, 3).float()), objective={"label_weight": 0.5}, export=False)
    with pytest.raises(
        DataError, match=r"the batch's are class indices \[N\] and the validation set's numeric targets"
    ):
        fit(tmp_path, Net(), [cb])


def test_paper_weights_that_overflow_and_never_move_are_an_error(tmp_path):
    """Validation features a million times the training scale: L_w * S**2 overflows Adam's moments, so
    neither the network nor the weights move; the values would be all 1.0 and mean nothing."""
    x, y = blobs(40, seed=2)
    cb = LossValCallback(val_data=x * 1e6, objective="paper", export=False, show=0)
    with pytest.raises(
        DataError, match=r"did not move in epoch 0 although optimizer 0 stepped.*standardise the inputs"
    ):
        fit(tmp_path, Net(), [cb])


class Augments(Net):
    """Augments in on_after_batch_transfer while training, the idiom of Lightning's docs."""

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        self.stages = getattr(self, "stages", []) + [self.trainer.state.stage]
        return (x + 1000.0, y) if self.trainer.training else (x, y)

    def lossval_predict(self, batch):
        return self(batch[0]).argmax(1)


def test_validation_features_and_end_predictions_are_not_augmented(tmp_path):
    """The trusted validation side and the predictions of values.csv pass the hook as validation and
    prediction batches: not augmented; training batches are."""
    x, y = blobs(40, seed=2)
    cb = LossValCallback(val_data=(x, y), export=False, show=0)
    model = Augments()
    fit(tmp_path, model, [cb])
    torch.testing.assert_close(cb._validation.features, x)
    # LossVal's validation read, Lightning's sanity check, 3 training batches, Lightning's validation, the predictions
    stages = ["validate", "sanity_check", "train", "train", "train", "validate", "predict"]
    assert [s.value for s in model.stages] == stages


class DictData(L.LightningDataModule):
    """HuggingFace-style dict batches; 10% of the training rows are positives."""

    def __init__(self, widths=None):
        super().__init__()
        x, y = blobs(200, classes=2, seed=4)
        self.rows = [{"input": x[i], "labels": y[i]} for i in range(200)]
        self.widths = widths

    def train_dataloader(self):
        return DataLoader(self.rows[:160], batch_size=32, collate_fn=self.collate)

    def val_dataloader(self):
        return DataLoader(self.rows[160:], batch_size=40, collate_fn=self.collate)

    def collate(self, rows):
        batch = torch.utils.data.default_collate(rows)
        if self.widths:  # padded per batch to a width of its own
            batch["input"] = F.pad(batch["input"], (0, next(self.widths)))
        return batch


class DictNet(Net):
    def __init__(self):
        super().__init__(classes=2)

    def training_step(self, batch, batch_idx):
        return self.lossval_loss(F.cross_entropy(self(batch["input"][:, :8]), batch["labels"], reduction="none"))

    def validation_step(self, batch, batch_idx):
        pass

    def lossval_features(self, batch):
        return batch["input"]


def test_a_dict_batch_gives_its_labels_as_targets(tmp_path):
    targets = []

    class Spy(LossValCallback):
        def loss(self, pl_module, losses, features):
            targets.append(pl_module.lossval_targets(self._step.data))
            return super().loss(pl_module, losses, features)

    fit(tmp_path, DictNet(), [Spy(export=False, show=0)], data=IndexedDataModule(DictData()))
    assert len(targets) == 5 and all(t.dtype == torch.long and t.shape == (32,) for t in targets)


def test_features_padded_to_another_width_say_to_summarise_them(tmp_path):
    widths = iter([0, 0, 0, 2, 0])  # LossVal's validation read, the sanity check, then training batches
    with pytest.raises(DataError, match=r"every batch needs the same width \(inputs padded per batch: override"):
        fit(tmp_path, DictNet(), [LossValCallback(export=False, show=0)], data=IndexedDataModule(DictData(widths)))


class TokenNet(Net):
    def training_step(self, batch, batch_idx):
        x, y = batch
        tokens = F.cross_entropy(self(x), y, reduction="none").repeat(3)  # three "tokens" per sample, flattened
        return self.lossval_loss(tokens)


def test_flattened_per_token_losses_are_told_to_average_each_samples_own_tokens(tmp_path):
    with pytest.raises(
        DataError, match=r"\(losses \* mask\).sum\(1\) / mask.sum\(1\).clamp_min\(1\) with the \[32, T\] padding mask"
    ):
        fit(tmp_path, TokenNet(), [LossValCallback(export=False, show=0)])


@pytest.mark.parametrize("objective", ["default", "paper"])
def test_weight_averaging_works_with_the_default_and_is_refused_with_the_dense_weights(tmp_path, objective):
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    averaging = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1)
    cb = LossValCallback(objective=objective, export=False, show=0)
    if objective == "paper":
        with pytest.raises(ConfigError, match=r"StochasticWeightAveraging averages the module's parameters.*'default'"):
            fit(tmp_path, Net(), [cb, averaging], epochs=3)
        return
    fit(tmp_path, Net(), [cb, averaging], epochs=3)
    assert cb.values.std() > 0 and "lossval_weights" not in dict(averaging._average_model.named_parameters())


def test_a_users_own_batch_to_device_patch_runs_during_fit_and_stays(tmp_path):
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, logger=False, **TRAINER_ARGS)
    calls, original = [], trainer.strategy.batch_to_device

    def counted(batch, *args, **kwargs):
        calls.append(1)
        return original(batch, *args, **kwargs)

    trainer.strategy.batch_to_device = counted
    trainer.callbacks.append(LossValCallback(export=False, show=0))
    trainer.fit(Net(), IndexedDataModule(BlobData(n=96, n_val=40)))
    assert len(calls) >= 3 and vars(trainer.strategy)["batch_to_device"] is counted


def sort_by_length(samples):
    """The usual collate for recurrent networks: the batch sorted longest first (for pack_padded_sequence)."""
    samples = sorted(samples, key=lambda s: -len(s[0]))
    padded = nn.utils.rnn.pad_sequence([x for x, _ in samples], batch_first=True)
    return padded, torch.tensor([y for _, y in samples])


def sort_with_lengths(samples):
    """The same with the lengths pack_padded_sequence takes, in a dict with an attention mask."""
    padded, y = sort_by_length(samples)
    lengths = torch.tensor(sorted((len(x) for x, _ in samples), reverse=True))
    mask = torch.arange(padded.shape[1]) < lengths[:, None]
    return {"inputs": padded, "lengths": lengths, "attention_mask": mask, "labels": y}


def pad_in_order(samples):
    return nn.utils.rnn.pad_sequence([x for x, _ in samples], batch_first=True), torch.tensor([y for _, y in samples])


class Sequences(Dataset):
    """Item ``i``: a sequence of length ``1 + i % 7`` whose values encode ``i``, and class ``i % 2``."""

    def __len__(self):
        return 40

    def __getitem__(self, i):
        return torch.full((1 + i % 7,), float(i)), i % 2


def test_a_collate_that_reorders_the_batch_is_refused_and_one_that_keeps_the_order_passes():
    """LossVal credits row i of a batch to the i-th sample drawn: a collate that sorts (by length, say)
    would credit every loss to another row. The first batch tells it."""
    for collate in (sort_by_length, sort_with_lengths):  # tensors a collate adds do not hide the order
        with pytest.raises(DataError, match=r"order of its own .* enforce_sorted=False"):
            next(iter(index_dataloader(DataLoader(Sequences(), batch_size=8, shuffle=True, collate_fn=collate))))

    def sort_scores(samples):  # Python float targets, which default_collate stacks as float64
        samples = sorted(samples, key=lambda s: -len(s[0]))
        return nn.utils.rnn.pad_sequence([x for x, _ in samples], batch_first=True), default_collate(
            [y for _, y in samples]
        )

    def sort_as_float_targets(samples):  # integer classes made float targets (for BCE, say): widened, still matched
        padded, y = sort_by_length(samples)
        return padded, y.float()

    scores = [(x, y / 10) for x, y in (Sequences()[i] for i in range(40))]
    for data, collate in ((scores, sort_scores), (Sequences(), sort_as_float_targets)):
        with pytest.raises(DataError, match=r"order of its own"):
            next(iter(index_dataloader(DataLoader(data, batch_size=8, shuffle=True, collate_fn=collate))))
    for batch in index_dataloader(DataLoader(Sequences(), batch_size=8, shuffle=True, collate_fn=pad_in_order)):
        padded, _ = batch.data
        assert torch.equal(padded[:, 0], batch.index.float())  # row i is sample index[i]

    bits = [([float(i >> k & 1) for k in range(3)], i % 2) for i in range(40)]  # lists of numbers, stacked
    stacked = DataLoader(bits, batch_size=16, shuffle=True, collate_fn=lambda s: tuple(map(torch.tensor, zip(*s))))
    for seed in range(10):  # a sample's numbers outnumber the batch's tensors: not judged, not refused
        assert len(list(index_dataloader(stacked, seed=seed))) == 3

    calls = []

    def noisy(samples):  # a collate that changes the samples (augments) is not judged
        calls.append(len(samples))
        padded, y = pad_in_order(samples)
        return padded + torch.rand(padded.shape), y

    loader = DataLoader(Sequences(), batch_size=8, collate_fn=noisy)
    torch.manual_seed(3)
    first = next(iter(index_dataloader(loader))).data[0]
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(first, next(iter(loader))[0]) and torch.equal(after, torch.rand(3))
    assert calls == [8, 8]  # the check reads the batch: the user's collate runs once per batch, as without it


class Unreadable(Dataset):
    """Every fifth item cannot be read: ``None``, which the user's collate filters out."""

    def __len__(self):
        return 60

    def __getitem__(self, i):
        return None if i % 5 == 0 else (torch.full((8,), float(i)), i % 3)


def skip_unreadable(samples):
    return torch.utils.data.default_collate([s for s in samples if s is not None])


class Predicting(Net):
    def lossval_predict(self, batch):
        return self(batch[0]).argmax(1)


def test_items_that_are_none_are_left_out_with_their_indices(tmp_path):
    """The 'skip unreadable files' idiom: the indices stay with their rows, the skipped rows are never
    visited and get no prediction in values.csv."""
    for batch in index_dataloader(DataLoader(Unreadable(), batch_size=16, collate_fn=skip_unreadable)):
        x, _ = batch.data
        assert torch.equal(x[:, 0], batch.index.float()) and (batch.index % 5 != 0).all()
    train = index_dataloader(DataLoader(Unreadable(), batch_size=16, shuffle=True, collate_fn=skip_unreadable))
    x, y = blobs(40)
    cb = LossValCallback(val_data=(x, y), export=True, show=0)
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=2, logger=False, callbacks=[cb], **TRAINER_ARGS)
    trainer.fit(Predicting(), train_dataloaders=train)
    visits = cb.visits
    assert (visits[::5] == 0).all() and (visits[torch.arange(60) % 5 != 0] == 2).all()
    import csv

    rows = {int(r["index"]): r for r in csv.DictReader(open(cb.values_path))}
    assert all(rows[i]["prediction"] == "" for i in range(0, 60, 5))
    assert all(rows[i]["prediction"] in ("0", "1", "2") for i in range(60) if i % 5)


def test_a_collate_that_drops_samples_is_named_in_the_per_sample_loss_error(tmp_path):
    def drop_last_sample(samples):
        return torch.utils.data.default_collate(samples[:-1])

    x, y = blobs(96)
    train = index_dataloader(DataLoader(TensorDataset(x, y), batch_size=32, collate_fn=drop_last_sample))
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, logger=False, **TRAINER_ARGS,
                        callbacks=[LossValCallback(val_data=(x[:20], y[:20]), export=False, show=0)])  # fmt: skip
    with pytest.raises(DataError, match=r"got \(31,\): the batch held 32 samples .* collate_fn drops or adds"):
        trainer.fit(Net(), train_dataloaders=train)


def test_a_shuffling_generator_of_the_users_decides_the_order():
    """DataLoader(shuffle=True, generator=torch.Generator().manual_seed(s)): another s, another order."""
    x, y = blobs(64)

    def first(generator_seed, **args):
        loader = DataLoader(
            TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(generator_seed)
        )
        return next(iter(index_dataloader(loader, **args))).index.tolist()

    assert first(1) != first(2) and first(1) == first(1)
    assert first(1, seed=5) == first(2, seed=5)  # an explicit seed still decides


def test_a_subset_training_set_names_each_rows_place_in_the_dataset_it_came_from(tmp_path):
    """random_split's parts: values.csv's index counts positions in the subset, dataset_row the rows of
    the dataset the user split."""
    x, y = blobs(80)
    train, val = torch.utils.data.random_split(TensorDataset(x, y), [60, 20], torch.Generator().manual_seed(0))
    part = torch.utils.data.Subset(train, list(range(10, 50)))  # a subset of a subset
    cb = LossValCallback(val_data=val, export=True, show=0)
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, logger=False, callbacks=[cb], **TRAINER_ARGS)
    trainer.fit(Net(), train_dataloaders=index_dataloader(DataLoader(part, batch_size=16)))
    import csv

    rows = list(csv.DictReader(open(cb.values_path)))
    assert len(rows) == 40
    for row in rows:
        assert int(row["dataset_row"]) == train.indices[10 + int(row["index"])]


class LBFGSNet(Net):
    """A module trained with LBFGS, which evaluates its closure (the training step) several times per step."""

    def __init__(self, manual: bool):
        super().__init__()
        self.automatic_optimization = not manual

    def training_step(self, batch, batch_idx):
        if self.automatic_optimization:
            return super().training_step(batch, batch_idx)
        optimizer = self.optimizers()

        def closure():
            optimizer.zero_grad()
            loss = super(LBFGSNet, self).training_step(batch, batch_idx)
            self.manual_backward(loss)
            return loss

        optimizer.step(closure)

    def configure_optimizers(self):
        return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=4)


def test_a_half_precision_module_with_the_paper_objective_is_refused_saying_why(tmp_path):
    # its weights are a module parameter while it fits, which bf16-true would round to about 3 digits
    with pytest.raises(ConfigError, match=r"precision='bf16-true' makes the module's parameters torch.bfloat16"):
        fit(tmp_path, Net(), [LossValCallback(objective="paper", show=0)], precision="bf16-true")


def test_lbfgs_with_the_paper_objective_is_refused_saying_why(tmp_path):
    with pytest.raises(ConfigError, match=r"LBFGS takes one param group, and this objective's weights join"):
        fit(tmp_path, LBFGSNet(manual=False), [LossValCallback(objective="paper", show=0)])


@pytest.mark.parametrize("manual", [False, True])
def test_an_optimizer_that_evaluates_its_closure_again_steps_the_weights_once_per_batch(tmp_path, manual):
    data, callback, steps = BlobData(), LossValCallback(show=0), []

    class Evaluations(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            steps.append(trainer.fit_loop.epoch_loop.total_batch_idx)

    fit(tmp_path, LBFGSNet(manual), [callback, Evaluations()], IndexedDataModule(data), epochs=3)
    assert len(steps) > len(set(steps)) == 3 * 13  # LBFGS evaluated its closure again on some batches
    assert torch.equal(callback.visits, torch.full((400,), 3))  # one visit per batch, not per evaluation
    assert callback._store.state["loss_scale"][0] == 3 * 13  # the running scales too: one batch, one fold
    assert detection_report(callback.values, data.noisy)["auroc"] > 0.9


def test_the_bundled_cnn_takes_images_as_well_as_flat_rows():
    from lightning_lossval.models import CNN

    cnn, images = CNN(num_inputs=64, num_outputs=10, task="classification"), torch.randn(4, 1, 8, 8)
    assert torch.equal(cnn(images), cnn(images.flatten(1)))
    with pytest.raises(
        DataError, match=r"the CNN takes rows of 64 values, flat or as \[1, 8, 8\] images .* \(4, 1, 7, 7\)"
    ):
        cnn(torch.randn(4, 1, 7, 7))
    colour = CNN(image_shape=[3, 8, 8], num_inputs=192, num_outputs=10, task="classification")
    with pytest.raises(
        DataError, match=r"\(4, 8, 8, 3\); set image_shape .*channels first \(x.permute\(0, 3, 1, 2\)\)"
    ):
        colour(torch.randn(4, 8, 8, 3))  # channels last, as NumPy and PIL give them: refused, not scrambled


def test_integer_features_such_as_token_ids_are_warned_about(tmp_path):
    x, y = blobs(120)
    ids = (x.abs() * 10).long()  # what a text batch's first element is: token ids, not coordinates
    loader = index_dataloader(DataLoader(TensorDataset(ids, y), batch_size=30, shuffle=True))

    class Tokens(Net):
        def training_step(self, batch, batch_idx):
            ids, y = batch
            return self.lossval_loss(F.cross_entropy(self(ids.float()), y, reduction="none"))

    with pytest.warns(UserWarning, match=r"features are integers \(torch.int64\).*override lossval_features"):
        fit(tmp_path, Tokens(), [LossValCallback(val_data=(ids[:40], y[:40]), show=0)], loader)

    pixels = (x.abs() * 30).clamp_max(255).to(torch.uint8)  # 8-bit images: intensities, whose distances mean something
    loader = index_dataloader(DataLoader(TensorDataset(pixels, y), batch_size=30, shuffle=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path, Tokens(), [LossValCallback(val_data=(pixels[:40], y[:40]), show=0)], loader)
    assert not [w for w in caught if "are integers" in str(w.message)]


def test_a_batch_whose_first_element_is_not_a_tensor_is_named_in_the_features_error():
    with pytest.raises(TypeError, match=r"a batch of type tuple whose first element is a tuple; override lossval_f"):
        Net().lossval_features(((torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2)))


def test_the_wrapped_datamodules_hyperparameters_are_logged_as_without_the_wrapper(tmp_path):
    class Blobs(BlobData):
        def __init__(self, batch_size: int = 32, noise_rate: float = 0.2):
            super().__init__(n=96, n_val=40, noise_rate=noise_rate, batch_size=batch_size)
            self.save_hyperparameters()  # the usual form: the loggers get them

    logger = L.pytorch.loggers.CSVLogger(tmp_path)
    trainer = L.Trainer(max_epochs=1, logger=logger, callbacks=[LossValCallback(show=0)], **TRAINER_ARGS)
    trainer.fit(Net(), IndexedDataModule(Blobs(batch_size=16)))
    assert "batch_size: 16" in (tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").read_text()
    with pytest.raises(TypeError, match=r"got type: pass an instance, IndexedDataModule\(Blobs\(...\)\)"):
        IndexedDataModule(Blobs)


def test_a_finetuning_callback_that_restores_the_optimizer_groups_first_resumes_the_paper_objective(tmp_path):
    from lightning.pytorch.callbacks import BackboneFinetuning

    class Backboned(Net):  # BackboneFinetuning adds the backbone's group to the optimizer at epoch 1
        def __init__(self):
            super().__init__()
            self.backbone = self.net[0]

        def configure_optimizers(self):
            return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=0.01)

    def run(epochs, ckpt_path=None):
        last = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
        finetuning, callback = (
            BackboneFinetuning(unfreeze_backbone_at_epoch=1),
            LossValCallback(objective="paper", show=0),
        )
        return fit(tmp_path, Backboned(), [finetuning, callback, last], epochs=epochs, ckpt_path=ckpt_path)

    run(2)
    trainer = run(3, tmp_path / "last.ckpt")  # the finetuning callback re-creates the saved groups before ours
    assert trainer.current_epoch == 3
    assert [g.get("name") for g in trainer.optimizers[0].param_groups] == [None, "lossval_weights", None]


class SavedBlobs(BlobData):
    """A DataModule written the usual way: its options saved, and read back from ``self.hparams``."""

    def __init__(self, n: int = 96, batch_size: int = 32):
        super().__init__(n=n, n_val=40)
        self.save_hyperparameters()

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)


class OwnWrapper(IndexedDataModule):
    """A project's own subclass of the wrapper."""


@pytest.mark.parametrize("wrapper", ["lightning_lossval.IndexedDataModule", "test_user_projects.OwnWrapper"])
def test_a_plain_lightningcli_wraps_a_datamodule_in_indexed_datamodule_from_yaml(tmp_path, wrapper):
    """``data: class_path: lightning_lossval.IndexedDataModule`` around the user's DataModule: LightningCLI
    hands every DataModule it builds the config of ``data``; the wrapped one keeps its own options."""
    from lightning.pytorch.cli import LightningCLI

    config = {
        "trainer": {
            "max_epochs": 1,
            "default_root_dir": str(tmp_path),
            "callbacks": [{"class_path": "lightning_lossval.LossValCallback", "init_args": {"show": 0}}],
            **TRAINER_ARGS,
        },
        "model": {"class_path": "helpers.Net"},
        "data": {
            "class_path": wrapper,
            "init_args": {
                "datamodule": {"class_path": "test_user_projects.SavedBlobs", "init_args": {"batch_size": 16}}
            },
        },
    }
    cli = LightningCLI(args=["fit", "--config", json.dumps(config)], save_config_kwargs={"overwrite": True})
    inner = cli.datamodule.datamodule
    assert dict(inner.hparams) == {
        "_class_path": "test_user_projects.SavedBlobs",
        "n": 96,
        "batch_size": 16,
        "_instantiator": "lightning.pytorch.cli.instantiate_module",
    }
    assert cli.trainer.num_training_batches == 6  # 96 rows in batches of 16
    values = next(c for c in cli.trainer.callbacks if isinstance(c, LossValCallback)).values
    assert values.shape == (96,) and (values != 1).any()


class LogsThenReturns(Net):
    """Logs a LossVal loss and returns another of the same batch, as a user who logs what they return might."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        losses = F.cross_entropy(self(x), y, reduction="none")
        self.log("train_loss", self.lossval_loss(losses))
        return self.lossval_loss(losses)


def test_a_second_lossval_loss_in_a_step_leaves_the_values_as_one(tmp_path):
    once, twice = LossValCallback(export=False, show=0), LossValCallback(export=False, show=0)
    for model, callback in ((Net, once), (LogsThenReturns, twice)):
        L.seed_everything(0)  # the same network and batches
        fit(tmp_path, model(), [callback], epochs=2)
    assert (once.values != 1).any()
    torch.testing.assert_close(twice.values, once.values, rtol=0, atol=1e-6)
    assert torch.equal(twice.visits, once.visits)  # the same rows twice in a step are one visit
