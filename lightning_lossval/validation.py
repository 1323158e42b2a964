"""Turning ``val_data`` into the validation side's features (and targets), with the module's own hooks."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_lossval.errors import DataError


@contextlib.contextmanager
def eval_mode(module: LightningModule):
    """The module in eval mode for a moment (no dropout, BatchNorm statistics untouched)."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def validation_data(
    val_data: Tensor | Dataset | DataLoader | tuple | None,
    trainer: Trainer,
    pl_module: LightningModule,
    with_labels: bool,
) -> tuple[Tensor, Tensor | None]:
    """The validation features ``[V, D]`` (float32, on the module's device) and, when ``with_labels``
    (label-aware transport), their targets.

    ``val_data`` is a feature tensor, an ``(inputs, targets)`` tuple of tensors, a ``Dataset`` or a
    ``DataLoader`` whose batches go through the module's ``lossval_features`` (and
    ``lossval_targets``), or ``None`` for the DataModule's ``val_dataloader``.
    """
    data: Any = val_data
    if data is None:
        datamodule = trainer.datamodule
        if datamodule is None or not is_overridden("val_dataloader", datamodule):
            raise DataError(
                "LossValCallback needs validation data: pass val_data=... or use a DataModule with a val_dataloader"
            )
        data = datamodule.val_dataloader()
    if isinstance(data, tuple) and all(isinstance(t, Tensor) for t in data):
        data = TensorDataset(*data)
    if isinstance(data, Tensor) and pl_module.lossval_refresh_validation:
        raise DataError(
            f"{type(pl_module).__name__} computes its LossVal features with the network "
            "(lossval_refresh_validation), so val_data must hold inputs, not features: pass an (inputs, targets) "
            "tuple, a Dataset or a DataLoader"
        )
    labels = None
    if isinstance(data, Tensor):
        features = data
    else:
        loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=1024)
        parts, targets = [], []
        with eval_mode(pl_module), torch.no_grad():  # features from the network: no BatchNorm updates
            for batch in loader:
                batch = move_data_to_device(batch, pl_module.device)
                parts.append(pl_module.lossval_features(batch))
                if with_labels:
                    targets.append(pl_module.lossval_targets(batch))
        features = torch.cat(parts) if parts else torch.empty(0)
        if targets and all(t is not None for t in targets):
            labels = torch.cat(targets)
    features = features.detach().to(pl_module.device, torch.float32)
    if features.shape[0] == 0:
        raise DataError("the validation set for LossVal is empty; pass val_data with at least one sample")
    features = features.reshape(features.shape[0], -1)
    bad = (~torch.isfinite(features)).any(dim=1).nonzero().flatten()
    if len(bad):
        raise DataError(
            f"{len(bad)} validation rows hold NaN or inf (first rows: {bad[:10].tolist()}); "
            "drop or impute them before training"
        )
    if with_labels and labels is None:
        raise DataError(
            "the objective's label_weight > 0 compares labels, but the validation data has no targets: pass "
            "val_data=(inputs, targets), a Dataset/DataLoader of (input, target) batches, or set label_weight=0"
        )
    return features, labels
