"""Where LossVal's validation set comes from, and the messages for data it cannot use, with a real Trainer."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TRAINER_ARGS, BlobData, Net
from torch.utils.data import ConcatDataset, DataLoader, TensorDataset
from torchmetrics.functional.classification import binary_auroc

from lightning_lossval import LossValCallback, index_dataloader
from lightning_lossval.errors import DataError

# the tests that pass val_data to a module with a validation_step give fit no val loader, on purpose
pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # fits write values.csv into the working directory


def train_loader(data: BlobData) -> DataLoader:
    return index_dataloader(DataLoader(data.train_set, batch_size=32, shuffle=True))


def fit(model=None, callback=None, epochs=1, **fit_args):
    """``trainer.fit(model, **fit_args)`` with a LossValCallback; the callback."""
    L.seed_everything(0)
    callback = callback or LossValCallback(export=False, show=0)
    trainer = L.Trainer(
        callbacks=[callback], max_epochs=epochs, logger=False, enable_checkpointing=False, **TRAINER_ARGS
    )
    trainer.fit(model or Net(), **fit_args)
    return callback


# --------------------------------------------------------------------------- the fit's validation loaders


def test_val_dataloaders_given_to_fit_are_the_validation_set():
    data = BlobData(noise_rate=0.2)
    val = DataLoader(data.val_set, batch_size=64)
    cb = fit(epochs=5, train_dataloaders=train_loader(data), val_dataloaders=val)
    assert torch.equal(cb._validation.features, data.val_set.tensors[0])
    values = cb.values
    assert binary_auroc(-values, data.noisy.int()).item() >= 0.8
    assert values[data.noisy].mean() < values[~data.noisy].mean()


class ValNet(Net):
    """Defines its own val_dataloader."""

    def __init__(self, val_set):
        super().__init__()
        self.val_set = val_set

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=16)


def test_the_modules_own_val_dataloader_is_the_validation_set():
    data = BlobData()
    cb = fit(model=ValNet(data.val_set), train_dataloaders=train_loader(data))
    assert torch.equal(cb._validation.features, data.val_set.tensors[0])
    assert (cb.values != 1).any()


class MultiValNet(Net):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        super().validation_step(batch, batch_idx)


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_several_val_loaders_are_concatenated(kind):
    data = BlobData()
    x, y = data.val_set.tensors
    loaders = [DataLoader(TensorDataset(x[:30], y[:30]), batch_size=8), DataLoader(TensorDataset(x[30:], y[30:]))]
    val = loaders if kind == "list" else {"first": loaders[0], "second": loaders[1]}
    callback = LossValCallback(export=False, show=0, objective={"label_weight": 1.0})
    cb = fit(model=MultiValNet(), callback=callback, train_dataloaders=train_loader(data), val_dataloaders=val)
    assert torch.equal(cb._validation.features, x)
    assert torch.equal(cb._validation.labels, y)


def test_val_data_comes_before_the_fits_val_dataloaders():
    data = BlobData()
    other = torch.randn(40, 8)
    cb = fit(
        callback=LossValCallback(val_data=other, export=False, show=0),
        train_dataloaders=train_loader(data),
        val_dataloaders=DataLoader(data.val_set),
    )
    assert torch.equal(cb._validation.features, other)


def test_no_validation_set_names_every_way_to_give_one():
    message = r"has none: pass LossValCallback\(val_data=.*val_dataloaders=.*val_dataloader\(\) on your DataModule"
    with pytest.raises(DataError, match=message):
        fit(train_dataloaders=train_loader(BlobData()))


# --------------------------------------------------------------------------- val_data's forms and sizes


def test_val_data_as_a_list_of_tensors_is_inputs_and_targets():
    data = BlobData()
    x, y = data.val_set.tensors
    callback = LossValCallback(val_data=[x, y], objective={"label_weight": 1.0}, export=False, show=0)
    cb = fit(callback=callback, train_dataloaders=train_loader(data))
    assert torch.equal(cb._validation.features, x) and torch.equal(cb._validation.labels, y)


@pytest.mark.parametrize(
    "case, message",
    [
        ("rows differ", r"val_data holds 2 tensors with \[100, 99\] rows; as \(inputs, targets\) every tensor"),
        ("mixed", r"val_data holds tensors among \['Tensor', 'DataLoader'\]: tensors go in alone"),
        ("not data", r"val_data of type int cannot be read as a validation set: pass LossValCallback\(val_data="),
        ("text", r"val_data holds NumPy arrays of <U1 \(text or objects\): give numbers, encoded as the training"),
    ],
)
def test_unusable_val_data_is_refused(case, message):
    data = BlobData()
    x, y = data.val_set.tensors
    text = np.array([["a", "b"]] * len(x))
    val_data = {"rows differ": [x, y[:-1]], "mixed": [x, DataLoader(data.val_set)], "not data": 3, "text": text}[case]
    with pytest.raises(DataError, match=message):
        fit(callback=LossValCallback(val_data=val_data), train_dataloaders=train_loader(data))


class Ragged(torch.utils.data.Dataset):
    """Items of two lengths, as token sequences are: PyTorch's default collate cannot stack them."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i, : 1 + i % 2]


def test_a_validation_dataset_the_default_collate_cannot_batch_names_the_fix():
    data = BlobData()
    message = r"validation Dataset's items cannot be stacked .*stack expects.*pass val_data=DataLoader\(dataset"
    with pytest.raises(DataError, match=message):
        fit(callback=LossValCallback(val_data=Ragged(data.val_set.tensors[0])), train_dataloaders=train_loader(data))


@pytest.mark.parametrize("form", ["int32 and int64 loaders", "[V, 1]"])
def test_label_aware_transport_takes_class_targets_of_other_integer_types_and_shapes(form):
    data = BlobData()
    x, y = data.val_set.tensors
    parts = [DataLoader(TensorDataset(x[:50], y[:50].int())), DataLoader(TensorDataset(x[50:], y[50:]))]
    val_data = parts if form == "int32 and int64 loaders" else (x, y[:, None])
    callback = LossValCallback(val_data=val_data, objective={"label_weight": 1.0}, export=False, show=0)
    cb = fit(callback=callback, train_dataloaders=train_loader(data))  # the training targets are [B] classes
    assert torch.equal(cb._validation.labels, y) and (cb.values != 1).any()


def test_label_aware_transport_refuses_integer_targets_of_several_values_per_row():
    data = BlobData()
    x, y = data.val_set.tensors
    multi_hot = F.one_hot(y, 3)  # integer [V, 3]: per-row label sets, or per-token classes, not one class each
    callback = LossValCallback(val_data=[x, multi_hot], objective={"label_weight": 1.0})
    with pytest.raises(DataError, match=r"targets of val_data are integer \[rows, 3\]: return multi-hot targets as"):
        fit(callback=callback, train_dataloaders=train_loader(data))


@pytest.mark.parametrize("source", ["val_data", "val_dataloaders"])
def test_one_validation_row_is_refused(source):
    data = BlobData()
    x, y = data.val_set.tensors
    if source == "val_data":
        origin, callback, fit_args = "val_data", LossValCallback(val_data=x[:1]), {}
    else:
        origin, callback = "the val_dataloaders given to trainer.fit", LossValCallback()
        fit_args = {"val_dataloaders": DataLoader(TensorDataset(x[:1], y[:1]))}
    message = rf"validation set for LossVal \({origin}\) has 1 row, but LossVal needs at least 2: the transport"
    with pytest.raises(DataError, match=message):
        fit(callback=callback, train_dataloaders=train_loader(data), **fit_args)


def test_two_validation_rows_are_enough():
    data = BlobData()
    cb = fit(callback=LossValCallback(val_data=data.val_set.tensors[0][:2]), train_dataloaders=train_loader(data))
    assert cb._validation.features.shape == (2, 8) and torch.isfinite(cb.values).all()


# --------------------------------------------------------------------------- training loaders


@pytest.mark.parametrize("count", [1, 2])
def test_a_collection_of_training_loaders_is_refused(count):
    data = BlobData()
    loaders = [train_loader(data) for _ in range(count)]
    message = (
        r"LossVal values the samples of one training DataLoader, but got 2 in a list; join their datasets.*"
        r"ConcatDataset"
        if count == 2
        else r"inside a list.*pass the DataLoader itself"
    )
    with pytest.raises(DataError, match=message):
        fit(train_dataloaders=loaders, val_dataloaders=DataLoader(data.val_set))


def test_a_concat_dataset_is_valued_as_one_training_set():
    a, b = BlobData(n=200, seed=1), BlobData(n=100, seed=2)
    loader = index_dataloader(DataLoader(ConcatDataset([a.train_set, b.train_set]), batch_size=32, shuffle=True))
    cb = fit(train_dataloaders=loader, val_dataloaders=DataLoader(a.val_set))
    assert cb.values.shape == (300,) and (cb.values[:200] != 1).any() and (cb.values[200:] != 1).any()


# --------------------------------------------------------------------------- per-sample losses


class Regressor(Net):
    """Predicts the class number as a float from a [B, 1] output; ``shape`` picks what it hands lossval_loss."""

    def __init__(self, shape: str):
        super().__init__(classes=1)
        self.shape = shape

    def training_step(self, batch, batch_idx):
        x, y = batch
        losses = F.mse_loss(self(x), y.float().unsqueeze(1), reduction="none")  # [B, 1]
        losses = {
            "[B, B]": F.mse_loss(self(x), y.float(), reduction="none") if self.shape == "[B, B]" else None,
            "[B, 1]": losses,
            "[B, 3]": losses.expand(-1, 3),
            "[2B]": torch.cat([losses, losses]).flatten(),
            "scalar": losses.mean(),
            "squeezed": losses.squeeze(1),
        }[self.shape]
        return self.lossval_loss(losses)

    def validation_step(self, batch, batch_idx):
        pass


@pytest.mark.parametrize(
    "shape, message",
    [
        (
            "[B, 1]",
            r"shape \[32\], got \(32, 1\): one value per sample.*pass losses.squeeze\(1\) or losses.flatten\(\)",
        ),
        (
            "[B, 3]",
            r"got \(32, 3\): several values per sample.*; reduce each sample's values to one, "
            r"losses.flatten\(1\).mean\(1\) \(per-token.*mask",
        ),
        (
            "[B, B]",
            r"got \(32, 32\): if a \[B, 1\] output met a \[B\] target.*broadcast to \[B, B\].*pred.squeeze\(1\)"
            r".*if these are several values per sample \(per token or output\), reduce each sample's values",
        ),
        ("[2B]", r"got \(64,\): the first dimension must be.*losses.view\(32, -1\), then.*mask.sum\(1\)"),
        ("scalar", r"got \(\): the loss is already reduced; compute it with reduction='none'"),
    ],
)
def test_losses_of_the_wrong_shape_name_the_shape_and_the_fix(shape, message):
    data = BlobData()
    with pytest.raises(DataError, match=message):
        fit(model=Regressor(shape), train_dataloaders=train_loader(data), val_dataloaders=DataLoader(data.val_set))


def test_squeezed_regression_losses_train():
    data = BlobData()
    cb = fit(
        model=Regressor("squeezed"), train_dataloaders=train_loader(data), val_dataloaders=DataLoader(data.val_set)
    )
    assert torch.isfinite(cb.values).all() and (cb.values != 1).any()


# --------------------------------------------------------------------------- batch-transfer hooks


class RawUnits(Net):
    """Standardises its raw inputs in a batch hook, as many projects do: the training step, the
    validation features and the predictions must all see the standardised rows."""

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return (x - 50) / 10, y

    def lossval_predict(self, batch):
        return self(batch[0]).argmax(1)


class RawUnitsData(BlobData):
    def __init__(self):
        super().__init__(noise_rate=0.0)
        for name in ("train_set", "val_set"):
            x, y = getattr(self, name).tensors
            setattr(self, name, TensorDataset(x * 10 + 50, y))


def test_validation_batches_and_predictions_pass_the_batch_hooks_like_training_batches():
    data = RawUnitsData()
    callback = fit(RawUnits(), epochs=3, train_dataloaders=train_loader(data), val_dataloaders=data.val_dataloader())
    x_val = data.val_set.tensors[0]
    assert torch.allclose(callback._validation.features, (x_val - 50) / 10, atol=1e-5)
    predictions = torch.tensor(callback.columns["prediction"])
    assert (predictions == data.train_set.tensors[1]).float().mean() > 0.9  # raw rows would be predicted at chance
