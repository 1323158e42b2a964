"""What the masses do to the network: test accuracy with and without LossVal, on clean and noisy labels.

The main job's network (``models.MLP``: 3 layers of 100, Adam lr 0.01, batch 32) on scikit-learn's
digits (1300 training rows, 200 clean validation rows that LossVal compares with, 297 test rows),
with clean labels or 20% of the training labels flipped, for 10 and 40 epochs, seeds 0-2, the same
batches in every fit: test accuracy trained plainly, with the default objective, and with the
default at the weights' ``lr=0.01``; and, with flipped labels, the AUROC of the values on the
flipped rows. Options change the network's learning rate, the batch size and the inputs' scale.

    python benchmarks/accuracy.py                                # about 5 minutes on 2 CPU cores
    python benchmarks/accuracy.py --network-lr 0.001 --batch-size 64        # a slower network
    python benchmarks/accuracy.py --network-lr 0.001 --batch-size 64 --pixels --epochs 40
    python benchmarks/accuracy.py --epochs 1 --seeds 0           # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import binary_auroc

sys.path.insert(0, str(Path(__file__).parent))
from detection import trainer  # noqa: E402  the detection benchmark's quiet CPU Trainer

from lightning_lossval import LossValCallback, index_dataloader  # noqa: E402
from lightning_lossval.data import EpochRandomSampler
from lightning_lossval.models import MLP
from lightning_lossval.noise import flip_labels

METHODS = {"plain": None, "default": {}, "default, lr=0.01": {"lr": 0.01}}


def split(seed: int, noise_rate: float, pixels: bool):
    """Digits, standardised (or pixels / 16): (train x, train y as given, flipped mask), validation x, (test x, y)."""
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    x = x / 16 if pixels else (x - x[:1300].mean(0)) / (x[:1300].std(0) + 1e-6)
    given, flipped = flip_labels(y[:1300], noise_rate, num_classes=10, seed=seed)
    return (x[:1300], given, flipped), x[1300:1500], (x[1500:], y[1500:])


def run(args: argparse.Namespace, seed: int, noise_rate: float, epochs: int, lossval: dict | None):
    """Test accuracy of one fit, and the values' AUROC on the flipped rows (None without LossVal or noise)."""
    (x, y, flipped), val_x, (test_x, test_y) = split(seed, noise_rate, args.pixels)
    L.seed_everything(seed, verbose=False)
    model = MLP(num_inputs=64, num_outputs=10, task="classification", lr=args.network_lr)
    dataset = TensorDataset(x, y)
    sampler = EpochRandomSampler(dataset, seed=seed)  # the same batches with and without LossVal
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)
    callbacks = []
    if lossval is not None:
        callback = LossValCallback(val_data=val_x, export=False, show=0, **lossval)
        loader, callbacks = index_dataloader(loader), [callback]
    trainer(epochs, callbacks).fit(model, loader)
    model.eval()
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    if lossval is None or not flipped.any():
        return accuracy, None
    return accuracy, binary_auroc(-callbacks[0].values, flipped.int()).item()


def mean_se(values: list[float]) -> str:
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {se:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise-rates", type=float, nargs="+", default=[0.0, 0.2])
    parser.add_argument("--network-lr", type=float, default=0.01, help="the network's Adam learning rate")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pixels", action="store_true", help="inputs in [0, 1] (pixels / 16), not standardised")
    args = parser.parse_args()
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")  # Lightning's notes on the missing val loop and deprecations
    names = list(METHODS)
    inputs = "pixels / 16" if args.pixels else "standardised"
    print(f"network: Adam lr {args.network_lr}, batch {args.batch_size}; inputs {inputs}; seeds {args.seeds}")
    print("test accuracy and AUROC: mean ± standard error over the seeds\n")
    print("| labels flipped | epochs | " + " | ".join(f"test accuracy, {n}" for n in names), end="")
    print(" | " + " | ".join(f"AUROC, {n}" for n in names[1:]) + " |")
    print("|---" * (2 + 2 * len(names) - 1) + "|")
    for rate in args.noise_rates:
        for epochs in args.epochs:
            results = {n: [run(args, s, rate, epochs, METHODS[n]) for s in args.seeds] for n in names}
            accuracy = [mean_se([a for a, _ in results[n]]) for n in names]
            auroc = ["–" if rate == 0 else mean_se([u for _, u in results[n]]) for n in names[1:]]
            print(f"| {rate:.0%} | {epochs} | " + " | ".join(accuracy + auroc) + " |", flush=True)


if __name__ == "__main__":
    main()
