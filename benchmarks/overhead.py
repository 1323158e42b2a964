"""What valuation costs on top of training: plain Lightning vs Lightning with LossVal, same process.

Each case trains the same module on the same data for the same epochs three times: without
LossVal, with LossValCallback's default objective and with its paper preset, and reports wall
time per epoch (first epoch excluded) and the peak growth of resident memory during the fit
(sampled every 5 ms). A plain PyTorch loop written the way the paper's reference code works (one
Adam over network and weights, one geomloss call per batch) is timed as a peer. The paper
preset and the reference loop are skipped with 10,000 validation rows (their per-step
validation-to-validation term makes an epoch take minutes).

Cases: the paper's classification MLP on 1000 rows of 10 features with 100, 1000 and 10,000
validation rows; a small CNN on 1000 synthetic 3x32x32 images with 100 validation images.

    python benchmarks/overhead.py                                       # about 10 minutes on 2 CPU cores
    python benchmarks/overhead.py --epochs 2 --rounds 1 --cases mlp-100 --no-write     # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import lightning as L
import torch
from geomloss import SamplesLoss
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_lossval import LossValCallback, index_dataloader
from lightning_lossval.models import CNN, MLP
from lightning_lossval.sinkhorn import Sinkhorn, cloud_diameter, cost_matrix, self_potential, transport_potentials

sys.path.insert(0, str(Path(__file__).parent))
from detection import trainer as quiet_trainer  # noqa: E402
from detection import write_section  # noqa: E402

HERE = Path(__file__).parent
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakMemory:
    """Peak resident memory above the level at entry, sampled by a thread."""

    def __enter__(self):
        self.base = self.peak = rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.growth_mb = (self.peak - self.base) / 2**20


class EpochClock(L.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_epoch_start(self, *args) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, *args) -> None:
        self.starts.append(time.perf_counter())

    def per_epoch(self) -> float:
        gaps = [b - a for a, b in zip(self.starts, self.starts[1:])]
        return statistics.fmean(gaps[1:] if len(gaps) > 1 else gaps)


def tabular(n_val: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1000 + n_val, 10, generator=g)
    y = (x[:, :3].sum(1) > 0).long()
    return x[:1000], y[:1000], x[1000:], y[1000:]


def images(n_val: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (1000 + n_val,), generator=g)
    x = torch.randn(1000 + n_val, 3, 32, 32, generator=g) * 0.5
    for c in range(4):  # a brighter quadrant per class
        rows = y == c
        x[rows, :, (c // 2) * 16 : (c // 2) * 16 + 16, (c % 2) * 16 : (c % 2) * 16 + 16] += 1.0
    x = x.flatten(1)
    return x[:1000], y[:1000], x[1000:], y[1000:]


CASES = {
    "mlp-100": (
        lambda: tabular(100),
        lambda d: MLP(preset="paper", task="classification", num_inputs=10, num_outputs=2),
    ),
    "mlp-1000": (
        lambda: tabular(1000),
        lambda d: MLP(preset="paper", task="classification", num_inputs=10, num_outputs=2),
    ),
    "mlp-10000": (
        lambda: tabular(10_000),
        lambda d: MLP(preset="paper", task="classification", num_inputs=10, num_outputs=2),
    ),
    "cnn-100": (
        lambda: images(100),
        lambda d: CNN(
            image_shape=[3, 32, 32],
            channels=[32, 64, 128],
            task="classification",
            num_inputs=3 * 32 * 32,
            num_outputs=4,
        ),
    ),
}


def lightning_fit(case: str, epochs: int, objective: str | None) -> tuple[float, float]:
    """Seconds per epoch (first excluded) and peak RSS growth (MB) of plain training (``objective``
    None) or training with LossValCallback and that objective preset."""
    x, y, xv, _ = CASES[case][0]()
    L.seed_everything(0, verbose=False)
    model = CASES[case][1](None)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    clock = EpochClock()
    callbacks = [clock]
    if objective is not None:
        loader = index_dataloader(loader)
        callbacks.append(LossValCallback(val_data=xv, objective=objective, export=False, show=0))
    with PeakMemory() as memory:
        quiet_trainer(epochs, callbacks).fit(model, train_dataloaders=loader)
    return clock.per_epoch(), memory.growth_mb


def reference_loop(case: str, epochs: int) -> float:
    """The paper's reference training loop, in plain PyTorch: seconds per epoch (first excluded)."""
    x, y, xv, _ = CASES[case][0]()
    torch.manual_seed(0)
    model = CASES[case][1](None).net  # the same network, without Lightning
    weights = nn.Parameter(torch.ones(len(x)))
    optimizer = torch.optim.Adam([*model.parameters(), weights], lr=0.01)
    targets = torch.nn.functional.one_hot(y).float()
    loader = DataLoader(TensorDataset(torch.arange(len(x)), x, targets), batch_size=32, shuffle=True)
    probabilities = isinstance(model[-1], nn.Softmax)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for index, xb, yb in loader:
            optimizer.zero_grad()
            out = model(xb)
            log_p = torch.log(out + 1e-8) if probabilities else torch.log_softmax(out, 1)
            losses = -(yb * log_p).sum(1)
            w = weights[index]
            diameter = torch.cdist(xb, xv).max().item() * 1.1
            ot = SamplesLoss("sinkhorn", diameter=diameter, backend="tensorized")(w, xb, torch.ones(len(xv)), xv)
            ((w @ losses) * ot**2).backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.fmean(times[1:] if len(times) > 1 else times)


def component_ms(fn, calls: int = 500) -> float:
    """Median milliseconds of ``fn()`` over ``calls`` calls after a warm-up."""
    for _ in range(50):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def breakdown(extra_ms: float, batch: int = 32) -> list[str]:
    """Where the default's extra time per step goes in the mlp-100 case: its Sinkhorn parts timed
    alone on the case's shapes, the rest (weights, masses, the update, Lightning hooks) by difference."""
    x, _, xv, _ = tabular(100)
    xb, a, b = x[:batch], torch.full((batch,), 1 / batch), torch.full((len(xv),), 1 / len(xv))
    schedule = Sinkhorn().schedule(cloud_diameter(xv))
    c_xy, c_xx = cost_matrix(xb, xv, 2), cost_matrix(xb, xb, 2)
    parts = {
        f"cost matrices ({batch} x {len(xv)}, {batch} x {batch})": component_ms(
            lambda: (cost_matrix(xb, xv, 2), cost_matrix(xb, xb, 2))
        ),
        f"transport potentials, batch to validation ({len(schedule) + 2} half-steps per side)": component_ms(
            lambda: transport_potentials(c_xy, a, b, schedule)
        ),
        "the batch's debias potential": component_ms(lambda: self_potential(c_xx, a, schedule)),
    }
    parts["the rest: weights, masses, balanced update, hooks (by difference)"] = extra_ms - sum(parts.values())
    lines = ["| part of a default step's extra time (mlp-100) | ms per step | share |", "|---|---:|---:|"]
    lines += [f"| {name} | {ms:.3f} | {ms / extra_ms:.0%} |" for name, ms in parts.items()]
    return lines + [f"| total extra per step (default minus plain) | {extra_ms:.3f} | 100% |"]


PAPER_TOO_SLOW = {"mlp-10000"}  # the paper preset's per-step 10,000 x 10,000 debias term: minutes per epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    lines = [
        "| case | plain s/epoch | default s/epoch | default / plain | paper s/epoch | paper / plain | default / paper "
        "| reference loop s/epoch | default / reference | RSS growth MB plain / default / paper |",
        "|---|" + "---:|" * 9,
    ]
    nan = float("nan")
    extra = {}
    for objective in (None, "default", "paper"):  # warm-up, not measured: the first fits of a process run slower
        lightning_fit("mlp-100", 2, objective)
    for case in args.cases:
        runs = []  # the runs take turns for --rounds rounds; each figure is the median over rounds
        for _ in range(args.rounds):
            plain, plain_mb = lightning_fit(case, args.epochs, None)
            default, default_mb = lightning_fit(case, args.epochs, "default")
            paper, paper_mb = (nan, nan) if case in PAPER_TOO_SLOW else lightning_fit(case, args.epochs, "paper")
            reference = nan if case in PAPER_TOO_SLOW else reference_loop(case, args.epochs)
            runs.append((plain, default, paper, reference, plain_mb, default_mb, paper_mb))
        plain, default, paper, reference, plain_mb, default_mb, paper_mb = (
            statistics.median(r[i] for r in runs) for i in range(7)
        )
        extra[case] = (default - plain) / math.ceil(1000 / 32) * 1e3  # every case trains 1000 rows, batch 32
        lines.append(
            f"| {case} | {plain:.3f} | {default:.3f} | {default / plain:.2f} | {paper:.3f} | {paper / plain:.2f} | "
            f"{default / paper:.2f} | {reference:.3f} | {default / reference:.2f} | "
            f"{plain_mb:.0f} / {default_mb:.0f} / {paper_mb:.0f} |".replace("nan", "–")
        )
        print(lines[-1], flush=True)
    text = "\n".join(
        [
            f"Command: `python benchmarks/overhead.py {' '.join(sys.argv[1:])}`",
            f"Run: {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPU cores, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads, {args.epochs} epochs (first excluded), batch 32, "
            f"median of {args.rounds} interleaved rounds.",
            "",
            *lines,
            *(["", *breakdown(extra["mlp-100"])] if "mlp-100" in extra else []),
        ]
    )
    print(text)
    if not args.no_write:
        write_section(text, HERE / "RESULTS.md", "overhead")


if __name__ == "__main__":
    main()
