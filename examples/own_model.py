"""Your own LightningModule under the ``lossval`` command, sized by the data.

    PYTHONPATH=examples lossval fit --config configs/default.yaml --model own_model.Classifier
    PYTHONPATH=examples lossval fit --config configs/csv.yaml --model own_model.Classifier \\
        --data.train_csv train.csv --data.target label --optimizer torch.optim.SGD --optimizer.lr 0.05

Name the init parameters that the data decides ``num_features`` and ``num_classes`` (the CLI also
fills ``num_outputs`` and ``task``) and leave them out of the config: the CLI builds the
DataModule first and passes its sizes, so the layers exist in ``__init__`` (``--optimizer``
and ``--lr_scheduler`` work), and ``save_hyperparameters`` keeps them in the checkpoint
(``Classifier.load_from_checkpoint(path)`` needs no data). The module must be importable: run
``lossval`` from its folder (the command imports from the folder it runs in, after the installed
packages), or put that folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lightning_lossval import LossValMixin


class Classifier(LossValMixin, L.LightningModule):
    """A one-hidden-layer classifier: ``num_features`` inputs, ``num_classes`` logits."""

    def __init__(self, num_features: int, num_classes: int, hidden: int = 64, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.lossval_loss(F.cross_entropy(self(x), y, reduction="none"))
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def lossval_predict(self, batch) -> torch.Tensor:
        """Optional: the ``prediction`` column of values.csv."""
        return self(batch[0]).argmax(1)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
