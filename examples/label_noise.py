"""Find mislabeled digits with LossVal.

scikit-learn's bundled handwritten digits (no download), 20% of the training labels moved to a
wrong class on purpose, one ordinary Lightning fit with LossValCallback, then the lowest-valued
samples: most of them should be the ones we corrupted.

    python examples/label_noise.py --epochs 10
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import binary_auroc

from lightning_lossval import IndexedDataModule, LossValCallback, LossValMixin
from lightning_lossval.noise import flip_labels


class Digits(L.LightningDataModule):
    """8x8 digits, standardised: 1000 train (with label noise), 200 clean validation, the rest test."""

    def __init__(self, noise_rate: float = 0.2, seed: int = 0, batch_size: int = 32):
        super().__init__()
        x, y = load_digits(return_X_y=True)
        x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        x, y = x[order], y[order]
        x = (x - x[:1000].mean(0)) / (x[:1000].std(0) + 1e-6)
        self.clean_labels = y[:1000]
        noisy_labels, self.noisy = flip_labels(self.clean_labels, noise_rate, num_classes=10, seed=seed)
        self.train_set = TensorDataset(x[:1000], noisy_labels)
        self.val_set = TensorDataset(x[1000:1200], y[1000:1200])
        self.test_set = TensorDataset(x[1200:], y[1200:])
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=256)


class MLP(LossValMixin, L.LightningModule):
    def __init__(self, inputs: int = 64, classes: int = 10, width: int = 100, lr: float = 0.01):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, classes)
        )
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.lossval_loss(F.cross_entropy(self(x), y, reduction="none"))  # one loss per sample
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--noise-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=15, help="how many of the lowest-valued samples to print")
    parser.add_argument("--root", default="runs/label_noise", help="log directory (TensorBoard, values.csv)")
    args = parser.parse_args()

    L.seed_everything(args.seed)
    data = Digits(args.noise_rate, args.seed)
    model = MLP()
    # validation features: the DataModule's val_dataloader; the flipped rows, so that TensorBoard shows how
    # well they are found; show=0: the table below, with the true labels, replaces the callback's
    lossval = LossValCallback(noisy_mask=data.noisy, show=0)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        callbacks=[lossval],
        default_root_dir=args.root,
        log_every_n_steps=10,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, IndexedDataModule(data))
    test_acc = trainer.test(model, data, verbose=False)[0]["test_acc"]

    values, noisy = lossval.values, data.noisy
    lowest = values.argsort()[: args.show]
    print(f"\nthe {args.show} lowest-valued training samples (label given / true label):")
    print(f"{'index':>6} {'value':>9} {'label':>6} {'true':>5}  noisy")
    for i in lowest.tolist():
        given, true = int(data.train_set.tensors[1][i]), int(data.clean_labels[i])
        print(f"{i:>6} {values[i]:>9.4f} {given:>6} {true:>5}  {'yes' if noisy[i] else ''}")
    k = int(noisy.sum())
    found = int(noisy[values.argsort()[:k]].sum())
    print(
        f"\n{int(noisy[lowest].sum())} of the {args.show} lowest-valued samples are noisy "
        f"({100 * args.noise_rate:.0f}% of all samples are)"
    )
    print(
        f"{found} of the {k} noisy samples are among the {k} lowest-valued "
        f"(precision {found / k:.2f}; random: {args.noise_rate:.2f})"
    )
    print(f"AUROC of -value vs noisy: {binary_auroc(-values, noisy.int()).item():.3f}; test accuracy {test_acc:.3f}")
    print(f"values: {lossval.values_path}")


if __name__ == "__main__":
    main()
