"""Per-step cost of LossVal as the training set grows: N = 1e4, 1e5, 1e6, dense and sparse weights.

Cheap synthetic rows (8 features, 3 classes), a tiny MLP, batch 32, 100 validation rows, the same
number of optimizer steps for every N, TensorBoard logging at Lightning's default cadence
(histograms of all N weights every 50 steps). Prints the mean and median time per step and the
ratio to N = 1e4 of the same path, all measured in this one run.

    python benchmarks/scale.py                  # about 3 minutes on 2 CPU cores
    python benchmarks/scale.py --steps 30 --sizes 1000 10000 --rounds 1    # a smoke run
    python benchmarks/scale.py --devices 2      # the same under 2-process DDP (gloo on CPU), one
                                                # fresh process group per configuration
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_lossval import IndexedDataModule, LossValCallback, LossValMixin


class Rows(L.LightningDataModule):
    def __init__(self, n: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        centers = torch.randn(3, 8, generator=g) * 3
        y = torch.randint(0, 3, (n + 100,), generator=g)
        x = centers[y] + torch.randn(n + 100, 8, generator=g)
        self.train_set, self.val_set = TensorDataset(x[:n], y[:n]), TensorDataset(x[n:], y[n:])

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=32, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=100)


class Tiny(LossValMixin, L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.lossval_loss(F.cross_entropy(self.net(x), y, reduction="none"))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


class StepClock(L.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.starts.append(time.perf_counter())


def step_times(n: int, sparse: bool, steps: int, devices: int, root: str) -> list[float]:
    L.seed_everything(0, verbose=False)
    clock = StepClock()
    trainer = L.Trainer(
        max_steps=steps + 1,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        limit_val_batches=0,
        default_root_dir=root,
        callbacks=[LossValCallback(objective="paper", sparse=sparse, export=False, show=0), clock],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(Tiny(), IndexedDataModule(Rows(n)))
    gaps = [b - a for a, b in zip(clock.starts, clock.starts[1:])]
    return gaps[len(gaps) // 10 :]  # drop the warm-up


def measure(n: int, sparse: bool, steps: int, devices: int) -> tuple[float, float]:
    """Mean and median ms/step; a DDP run gets a fresh process (strategy "ddp" re-runs argv)."""
    if devices == 1:
        with tempfile.TemporaryDirectory() as root:
            gaps = step_times(n, sparse, steps, devices, root)
        return statistics.fmean(gaps) * 1e3, statistics.median(gaps) * 1e3
    command = [
        sys.executable,
        __file__,
        "--one",
        str(n),
        str(int(sparse)),
        "--steps",
        str(steps),
        "--devices",
        str(devices),
    ]
    output = subprocess.run(
        command, capture_output=True, text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS="1")
    ).stdout
    mean, median = output.split("RESULT")[-1].split()[:2]
    return float(mean), float(median)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", nargs=2, type=int, metavar=("N", "SPARSE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # one DDP configuration, started by measure()
        with tempfile.TemporaryDirectory() as root:
            gaps = step_times(args.one[0], bool(args.one[1]), args.steps, args.devices, root)
        if torch.distributed.get_rank() == 0:
            print("RESULT", statistics.fmean(gaps) * 1e3, statistics.median(gaps) * 1e3)
        return
    # the sizes take turns for --rounds rounds, so that drift of a shared machine hits them alike;
    # each figure is the median over rounds
    runs = {(sparse, n): [] for sparse in (False, True) for n in args.sizes}
    for _ in range(args.rounds):
        for sparse, n in runs:
            runs[sparse, n].append(measure(n, sparse, args.steps, args.devices))
    print(f"\n{'path':<7}{'N':>10}{'ms/step (mean)':>16}{'median':>9}{'mean / N=' + str(args.sizes[0]):>16}")
    for (sparse, n), results in runs.items():
        mean, median = (statistics.median(r[i] for r in results) for i in (0, 1))
        base = statistics.median(r[0] for r in runs[sparse, args.sizes[0]])
        print(f"{'sparse' if sparse else 'dense':<7}{n:>10,}{mean:>16.2f}{median:>9.2f}{mean / base:>16.2f}")
    print(
        f"({args.rounds} rounds of {args.steps} steps, batch 32 per process, devices={args.devices}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    main()
