"""An ordinary Lightning project, with LossVal added in four places (marked ``# LossVal``).

The project: a classifier on generated tabular data (scikit-learn's ``make_classification``, no
download) with its own LightningDataModule, AdamW with a cosine learning-rate schedule, and
EarlyStopping on the validation loss. 15% of its training labels are corrupted on purpose, so
the run can check that the lowest-valued rows are the corrupted ones.

LossVal needs: LossValMixin first in the module's bases, one loss per sample reduced with
``self.lossval_loss``, the DataModule wrapped in ``IndexedDataModule``, and ``LossValCallback``.
Nothing else changes: the scheduler, EarlyStopping and the logged losses work as without it.

    python examples/lightning_project.py             # well under a minute on 2 CPU cores
    tensorboard --logdir runs/lightning_project
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping
from sklearn.datasets import make_classification
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import binary_auroc

from lightning_lossval import IndexedDataModule, LossValCallback, LossValMixin
from lightning_lossval.noise import flip_labels


class SyntheticTable(L.LightningDataModule):
    """1500 generated rows of 20 features and 4 classes: 1000 for training (``noise_rate`` of their
    labels flipped, marked in ``noisy_mask``), 250 clean for validation, 250 for testing."""

    def __init__(self, noise_rate: float = 0.15, seed: int = 0, batch_size: int = 64) -> None:
        super().__init__()
        self.noise_rate, self.seed, self.batch_size = noise_rate, seed, batch_size
        self.num_features, self.num_classes = 20, 4

    def setup(self, stage: str) -> None:
        x, y = make_classification(
            n_samples=1500, n_features=20, n_informative=10, n_classes=4, class_sep=1.5, random_state=self.seed
        )
        x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
        x = (x - x[:1000].mean(0)) / x[:1000].std(0)
        y_train, self.noisy_mask = flip_labels(y[:1000], self.noise_rate, num_classes=4, seed=self.seed)
        self.train_set = TensorDataset(x[:1000], y_train)
        self.val_set = TensorDataset(x[1000:1250], y[1000:1250])
        self.test_set = TensorDataset(x[1250:], y[1250:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=250)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=250)


class Classifier(LossValMixin, L.LightningModule):  # LossVal: the mixin first in the bases
    def __init__(self, num_features: int, num_classes: int, width: int = 128, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(num_features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        losses = F.cross_entropy(self(x), y, reduction="none")  # one loss per sample, [B]
        loss = self.lossval_loss(losses)  # LossVal: the weighted loss under the callback, else the mean
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def main(argv: list[str] | None = None) -> LossValCallback:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--noise-rate", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="runs/lightning_project", help="log directory (TensorBoard, values.csv)")
    args = parser.parse_args(argv)

    L.seed_everything(args.seed)
    data = SyntheticTable(args.noise_rate, args.seed)
    model = Classifier(data.num_features, data.num_classes)
    lossval = LossValCallback(show=10)  # LossVal: validation side = the DataModule's val_dataloader
    trainer = L.Trainer(
        max_epochs=args.epochs,
        callbacks=[EarlyStopping(monitor="val_loss", patience=5), lossval],
        default_root_dir=args.root,
        log_every_n_steps=10,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, IndexedDataModule(data))  # LossVal: training batches carry their sample indices
    test_acc = trainer.test(model, data, verbose=False)[0]["test_acc"]

    values, noisy = lossval.values, data.noisy_mask
    auroc = binary_auroc(-values, noisy.int()).item()
    print(f"AUROC of -value against the flipped labels: {auroc:.3f}; test accuracy {test_acc:.3f}")
    return lossval


if __name__ == "__main__":
    main()
