"""The checks that need a CUDA GPU, in one command: mixed precision, GPU = CPU, host syncs, cost.

    python benchmarks/gpu_check.py               # one CUDA GPU: about 2 minutes, under 4 (--budget)
    python benchmarks/gpu_check.py --device cpu  # dry run of the same code on the CPU, tiny sizes

Prints one line per check: PASS, FAIL (also when it raises, e.g. out of memory: the message, and
the next check runs), SKIP (needs CUDA, or the time budget is spent) or INFO (a figure):

- ``fp16-``/``bf16-sparse``/``-dense``: a fit under ``16-mixed`` (the GradScaler path) or
  ``bf16-mixed``, default objective (sparse store) or ``objective="paper"`` (dense store), on
  blobs with 20% flipped labels finishes; every weight is finite, 90% moved; the network's
  accuracy on clean rows is >= 0.9; the values' AUROC is at most 0.05 below the same fit in fp32.
- ``values-cuda-vs-cpu-*``: the seeded fp32 fit (``deterministic="warn"``) gives the same values
  on the GPU as on the CPU, within ``TOLERANCE`` (see there why).
- ``host-sync-*``: host syncs in training steps 1-10 (``on_train_batch_start`` to ``_end``; step 0
  holds one-off checks) by call site under ``torch.cuda.set_sync_debug_mode("warn")``, with
  LossVal and in plain training of the same module: PASS if LossVal adds none, else its sites.
- ``overhead-mlp-100``/``cnn-100``: time per epoch with LossVal (default, paper preset) over
  plain training, ``overhead.py``'s cases; ``step-val-100``/``100000``: ms per step of the default
  objective with that many validation rows, and the seconds before the first step.

On a GPU it writes ``benchmarks/gpu_check.json`` and the ``gpu-check`` section of
``benchmarks/RESULTS.md``; exit status 1 if a check failed. Without a GPU: one line, nothing
written, exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import io
import json
import logging
import os
import statistics
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import binary_auroc

from lightning_lossval import LossValCallback, index_dataloader
from lightning_lossval.models import MLP
from lightning_lossval.noise import flip_labels

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import overhead  # noqa: E402
from detection import write_section  # noqa: E402

# GPU and CPU sum in other orders (matmul tiling, the Sinkhorn log-sum-exp), ~1e-7 relative per
# op in fp32, and training feeds the differences back at every step. Measured on the CPU: scaling
# the initial network weights by 1 + 1e-6 (1e-4) noise moves the paper preset's values (dense
# Adam) by up to 0.008 (0.04, Spearman 0.995) and the default's by 1e-6 (0.009). The bounds admit
# rounding differences up to 1e-4 relative; a real fault (a wrong index, an unscaled or a missed
# step) moves weights by whole steps and scrambles the ranks, which are what users read.
TOLERANCE = {"spearman": 0.99, "max_abs_diff": 0.05}
SYNC = "called a synchronizing CUDA operation"
SYNC_STEPS = 10


class Sizes(NamedTuple):
    rows: int  # training rows of the precision and values fits
    epochs: int  # their epochs
    overhead_epochs: int  # epochs of an overhead fit (the first not timed)
    overhead_batches: int | float  # its limit_train_batches
    rounds: int  # interleaved rounds of the overhead fits (median)
    steps: int  # timed steps of the per-step check, after 10 warm-up steps
    val_rows: tuple[int, ...]  # validation rows of the per-step check


GPU = Sizes(rows=1000, epochs=5, overhead_epochs=4, overhead_batches=1.0, rounds=3, steps=50, val_rows=(100, 100_000))
DRY = Sizes(rows=400, epochs=5, overhead_epochs=3, overhead_batches=6, rounds=1, steps=10, val_rows=(100, 1000))


def blobs(n: int, n_val: int = 500, seed: int = 0):
    """8-d Gaussian blobs of 3 classes: ``(x, y, noisy, x_val, y_val)``, ``n`` training rows with
    20% of the labels flipped (``noisy``), ``n_val`` clean rows."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n + n_val,), generator=g)
    x = (torch.randn(3, 8, generator=g) * 3)[y] + torch.randn(n + n_val, 8, generator=g)
    y_train, noisy = flip_labels(y[:n], 0.2, num_classes=3, seed=seed)
    return x[:n], y_train, noisy, x[n:], y[n:]


def fit(device: str, x, y, lossval: dict | None, callbacks: list, epochs: int = 1, module=None, **trainer_args):
    """Train ``module`` (default: an MLP for the blobs) on ``(x, y)`` in batches of 32, with
    ``LossValCallback(**lossval)`` unless None; returns the trainer and the last callback."""
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    if lossval is not None:
        loader = index_dataloader(loader)
        callbacks = [*callbacks, LossValCallback(**lossval, export=False, show=0)]
    trainer = L.Trainer(
        accelerator=device, devices=1, max_epochs=epochs, callbacks=callbacks, logger=False, **trainer_args,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    L.seed_everything(0, verbose=False)
    module = MLP(task="classification", num_inputs=8, num_outputs=3) if module is None else module
    trainer.fit(module, train_dataloaders=loader)
    return trainer, callbacks[-1]


class Clock(L.Callback):
    """Wall times of epoch starts, the end and (``per_step``) step starts, after the GPU's queue drained."""

    def __init__(self, per_step: bool = True) -> None:
        self.per_step, self.epochs, self.steps = per_step, [], []

    @staticmethod
    def now() -> float:
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_epoch_start(self, *args) -> None:
        self.epochs.append(self.now())

    def on_train_batch_start(self, *args) -> None:
        if self.per_step:  # else no sync inside an epoch
            self.steps.append(self.now())

    def on_train_end(self, *args) -> None:
        self.epochs.append(self.now())


class SyncWatch(L.Callback):
    """Host synchronisations inside training steps ``1..SYNC_STEPS``, counted by call site."""

    def __init__(self) -> None:
        self.sites, self.show = Counter(), warnings.showwarning

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if 0 < batch_idx <= SYNC_STEPS:
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, *args) -> None:
        torch.cuda.set_sync_debug_mode("default")

    def record(self, message, category, filename, lineno, file=None, line=None) -> None:
        if SYNC not in str(message):
            return self.show(message, category, filename, lineno, file, line)
        for frame in reversed(traceback.extract_stack()[:-1]):  # innermost first: the op's caller
            path = frame.filename.replace("\\", "/")
            if "/torch/" not in path and not path.endswith("warnings.py"):
                for root in (f"{HERE.parent}/", "site-packages/"):
                    path = path.split(root)[-1]
                self.sites[f"{path}:{frame.lineno} {frame.line}"] += 1
                return


def value_fit(objective: str, device: str, sizes: Sizes, **trainer_args):
    """Values, accuracy on the clean rows, detection AUROC and the trainer of one seeded fit."""
    x, y, noisy, xv, yv = blobs(sizes.rows)
    trainer, callback = fit(
        device, x, y, dict(val_data=(xv, yv), objective=objective), [], sizes.epochs, **trainer_args
    )
    with torch.no_grad():
        accuracy = (trainer.lightning_module.cpu().eval()(xv).argmax(1) == yv).float().mean().item()
    return callback.values, accuracy, binary_auroc(-callback.values, noisy.int()).item(), trainer


@functools.cache
def fp32_fit(objective: str, device: str, sizes: Sizes):
    """The seeded fp32 fit the mixed-precision fits are held against, and the CPU fit too."""
    return value_fit(objective, device, sizes, deterministic="warn")


def check_precision(precision: str, objective: str, device: str, sizes: Sizes):
    values, accuracy, auroc, trainer = value_fit(objective, device, sizes, precision=precision)
    fp32_auroc = fp32_fit(objective, device, sizes)[2]
    moved, low, high = (values != 1).float().mean().item(), values.min().item(), values.max().item()
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    ok = bool(torch.isfinite(values).all()) and moved >= 0.9 and accuracy >= 0.9 and auroc >= fp32_auroc - 0.05
    ok = ok and (scaler is not None) == (precision == "16-mixed")  # fp16 must take the GradScaler path
    note = f"accuracy {accuracy:.3f}, AUROC {auroc:.3f} (fp32 {fp32_auroc:.3f}), {moved:.0%} moved, in [{low:.3f}, "
    note += f"{high:.3f}]" + (f", GradScaler scale {scaler.get_scale():.0f}" if scaler is not None else "")
    figures = dict(accuracy=accuracy, auroc=auroc, fp32_auroc=fp32_auroc, moved=moved, min=low, max=high)
    return ("PASS" if ok else "FAIL"), note, figures


def check_same_values(objective: str, device: str, sizes: Sizes):
    reference, *_ = value_fit(objective, "cpu", sizes, deterministic="warn")
    values, *_ = fp32_fit(objective, device, sizes)
    ranks = [v.argsort(stable=True).argsort(stable=True).double() for v in (reference, values)]
    rho, diff = torch.corrcoef(torch.stack(ranks))[0, 1].item(), (reference - values).abs().max().item()
    ok = rho >= TOLERANCE["spearman"] and diff <= TOLERANCE["max_abs_diff"]
    note = f"Spearman {rho:.5f} (>= {TOLERANCE['spearman']}), max |diff| {diff:.2e} (<= {TOLERANCE['max_abs_diff']})"
    return ("PASS" if ok else "FAIL"), note, dict(spearman=rho, max_abs_diff=diff)


def check_host_sync(objective: str, device: str, sizes: Sizes):
    x, y, _, xv, yv = blobs(1000)
    sites = {}
    for run, lossval in (("plain", None), ("lossval", dict(val_data=(xv, yv), objective=objective))):
        sites[run] = (watch := SyncWatch()).sites
        with warnings.catch_warnings():
            warnings.filterwarnings("always", message=SYNC)
            warnings.showwarning = watch.record
            try:
                fit(device, x, y, lossval, [watch], limit_train_batches=SYNC_STEPS + 1)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    added, per_step = sites["lossval"] - sites["plain"], {run: c.total() / SYNC_STEPS for run, c in sites.items()}
    note = f"syncs per step: plain {per_step['plain']:g}, with LossVal {per_step['lossval']:g}"
    sites_added = [f"{site} ({n / SYNC_STEPS:g}/step)" for site, n in added.most_common()]
    note += "; added: " * bool(added) + "; ".join(sites_added)
    return ("FAIL" if added else "PASS"), note, {run: dict(c) for run, c in sites.items()}


def epoch_seconds(case: str, objective: str | None, device: str, sizes: Sizes) -> float:
    """What ``overhead.lightning_fit`` measures, on ``device``: seconds per epoch, the first excluded."""
    x, y, xv, _ = overhead.CASES[case][0]()
    L.seed_everything(0, verbose=False)
    clock, lossval = Clock(per_step=False), None if objective is None else dict(val_data=xv, objective=objective)
    module, limit = overhead.CASES[case][1](None), sizes.overhead_batches
    fit(device, x, y, lossval, [clock], sizes.overhead_epochs, module, limit_train_batches=limit)
    gaps = [b - a for a, b in zip(clock.epochs, clock.epochs[1:])]
    return statistics.fmean(gaps[1:] or gaps)


def check_overhead(case: str, device: str, sizes: Sizes):
    runs = {objective: [] for objective in (None, "default", "paper")}
    for _ in range(sizes.rounds):  # interleaved, so that drift hits all three alike
        for objective, times in runs.items():
            times.append(epoch_seconds(case, objective, device, sizes))
    plain, default, paper = (statistics.median(times) for times in runs.values())
    note = f"default {default / plain:.2f}x, paper preset {paper / plain:.2f}x plain ({plain * 1e3:.0f} ms/epoch)"
    return "INFO", note, dict(plain_s=plain, default_s=default, paper_s=paper, default_ratio=default / plain)


def check_step_time(val_rows: int, device: str, sizes: Sizes):
    x, y, _, xv, _ = blobs(1000, val_rows)
    clock, start = Clock(), Clock.now()
    fit(device, x, y, dict(val_data=xv), [clock], -1, max_steps=sizes.steps + 10)
    gaps = [b - a for a, b in zip(clock.steps, clock.steps[1:] + clock.epochs[-1:])][10:]
    ms, first = statistics.median(gaps) * 1e3, clock.steps[0] - start
    note = f"{ms:.2f} ms/step (median of {len(gaps)}), first step after {first:.1f} s"
    return "INFO", note, dict(ms_per_step=ms, first_step_s=first)


def checks(device: str, sizes: Sizes) -> list[tuple]:
    """``(name, function, arguments, seconds it may take on an H200, needs CUDA)``, most important first."""
    stores = {"sparse": "default", "dense": "paper"}
    out = [
        (f"{short}-{store}", check_precision, (precision, objective), 15, precision == "16-mixed")
        for precision, short in (("16-mixed", "fp16"), ("bf16-mixed", "bf16"))
        for store, objective in stores.items()
    ]
    out += [(f"values-{device}-vs-cpu-{store}", check_same_values, (obj,), 20, False) for store, obj in stores.items()]
    out += [(f"host-sync-{store}", check_host_sync, (obj,), 15, True) for store, obj in stores.items()]
    out += [(f"overhead-{case}", check_overhead, (case,), 40, False) for case in ("mlp-100", "cnn-100")]
    return out + [(f"step-val-{v}", check_step_time, (v,), 10 if v <= 1000 else 45, False) for v in sizes.val_rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda",
        help="cpu: dry run of every check on the CPU, for development; fp16 checks are skipped",
    )  # fmt: skip
    parser.add_argument(
        "--budget", type=float, default=180.0, help="seconds; later checks that may overrun it are skipped"
    )
    parser.add_argument("--no-write", action="store_true", help="print only (a CPU dry run never writes)")
    args = parser.parse_args()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts: deterministic cuBLAS
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False), nothing checked or written; on one "
            "it checks fp16/bf16 fits on both weight stores, GPU-vs-CPU values, host syncs in a training step, the "
            "overhead ratios and the per-step time at 100 and 100,000 validation rows"
        )
        return 0
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available" per fit
    for noise in ("You defined a `validation_step`", "`isinstance\\(treespec, LeafSpec\\)`"):
        warnings.filterwarnings("ignore", message=noise)
    sizes, start, records = (GPU if args.device == "cuda" else DRY), time.monotonic(), []
    for name, function, arguments, needs, needs_cuda in checks(args.device, sizes):
        left = args.budget - (time.monotonic() - start)
        if needs_cuda and args.device != "cuda":
            status, note, figures = "SKIP", "needs CUDA", {}
        elif left < needs:
            status, note, figures = "SKIP", f"time budget: {left:.0f} of {args.budget:.0f} s left, needs ~{needs}", {}
        else:
            began = time.monotonic()
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the fits' own reports
                    status, note, figures = function(*arguments, args.device, sizes)
            except Exception as error:  # an out-of-memory or failed fit is this check's result
                status, note, figures = "FAIL", f"{type(error).__name__}: {' '.join(str(error).split())[:300]}", {}
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            note += f" [{time.monotonic() - began:.0f} s]"
        records.append(dict(check=name, status=status, note=note, figures=figures))
        print(f"{status:<5} {name:<26} {note}", flush=True)
    elapsed, counts = time.monotonic() - start, Counter(r["status"] for r in records)
    print(f"{elapsed:.0f} s: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if args.device == "cuda" and not args.no_write:
        write(records, elapsed)
    return 1 if counts["FAIL"] else 0


def write(records: list[dict], elapsed: float) -> None:
    run = dict(
        date=str(datetime.date.today()), gpu=torch.cuda.get_device_name(), torch=torch.__version__,
        cuda=torch.version.cuda, lightning=L.__version__, seconds=round(elapsed),
    )  # fmt: skip
    (HERE / "gpu_check.json").write_text(json.dumps(dict(run=run, tolerance=TOLERANCE, checks=records), indent=1))
    text = "\n".join(
        [
            f"Command: `{' '.join(['python benchmarks/gpu_check.py', *sys.argv[1:]])}`",
            f"Run: {run['date']}, {run['gpu']}, torch {run['torch']} (CUDA {run['cuda']}), lightning "
            f"{run['lightning']}, {run['seconds']} s; figures in `benchmarks/gpu_check.json`.",
            "",
            "| check | result | figures |",
            "|---|---|---|",
            *[f"| {r['check']} | {r['status']} | {r['note'].replace('|', '/')} |" for r in records],
        ]
    )
    write_section(text, HERE / "RESULTS.md", "gpu-check")


if __name__ == "__main__":
    sys.exit(main())
