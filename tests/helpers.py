"""Small real data and modules shared by the tests."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_lossval import LossValMixin
from lightning_lossval.noise import flip_labels

B, D, V, K = 6, 3, 5, 4  # the tiny fixed batch of conftest.batch: samples, features, validation rows, classes

TRAINER_ARGS = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)


def blobs(n: int, classes: int = 3, dim: int = 8, seed: int = 0):
    """Well separated Gaussian blobs: (x [n, dim], y [n])."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 3
    y = torch.randint(0, classes, (n,), generator=g)
    return centers[y] + torch.randn(n, dim, generator=g), y


class BlobData(L.LightningDataModule):
    """Noisy training blobs and clean validation blobs from the same centers."""

    def __init__(self, n: int = 400, n_val: int = 100, noise_rate: float = 0.2, batch_size: int = 32, seed: int = 0):
        super().__init__()
        x, y = blobs(n + n_val, seed=seed)
        y_train, self.noisy = flip_labels(y[:n], noise_rate, num_classes=3, seed=seed)
        self.train_set = TensorDataset(x[:n], y_train)
        self.val_set = TensorDataset(x[n:], y[n:])
        self.batch_size = batch_size
        self.num_classes = 3

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=64)


class Net(LossValMixin, L.LightningModule):
    """A small classifier whose training_step reduces per-sample losses with lossval_loss."""

    def __init__(self, dim: int = 8, classes: int = 3, lr: float = 0.01, scheduler: str | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, classes))
        self.lr = lr
        self.scheduler = scheduler

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.lossval_loss(F.cross_entropy(self(x), y, reduction="none"))
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", self.lossval_loss(F.cross_entropy(self(x), y, reduction="none")))

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        if self.scheduler is None:
            return optimizer
        schedulers = {
            "lambda": lambda: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5**epoch),
            "onecycle": lambda: torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=200),
            "step": lambda: torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1),
            "plateau": lambda: torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0),
        }
        interval = "step" if self.scheduler == "onecycle" else "epoch"
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedulers[self.scheduler](), "interval": interval, "monitor": "val_loss"},
        }


def paper(**fields):
    """The paper preset's objective with some fields replaced (Sinkhorn settings by their own names)."""
    import dataclasses

    from lightning_lossval import PRESETS

    objective = PRESETS["paper"].objective
    solver = {k: fields.pop(k) for k in list(fields) if k in {"blur", "scaling", "p", "debias", "diameter"}}
    return dataclasses.replace(objective, sinkhorn=dataclasses.replace(objective.sinkhorn, **solver), **fields)
