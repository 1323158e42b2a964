"""Detection with large validation sets: the summarised validation measure against the exact solve.

Above ``max_support`` (2000) validation rows the default compares each batch with a weighted
k-means summary of the validation set (``Objective.max_support``). This script runs the
detection benchmark's protocol (``detection.py``: 1000 training rows, noise in the training and
validation rows at the same rate, the shipped ``configs/csv.yaml`` recipe) on its generated
datasets with 1,000 and 10,000 validation rows, each split valued twice on the same seed: with
the default (summary) and with ``max_support=None`` (the exact solve). At 1,000 rows the
summary is not used, so the two must agree exactly; at 10,000 they are compared by 2-means F1,
F1 at the noise rate and AUROC, differences paired by seed.

    python benchmarks/validation_detection.py              # about 20 minutes on 2 CPU cores
    python benchmarks/validation_detection.py --sizes 1000 --datasets 2dplanes --kinds label \\
        --rates 0.2 --seeds 0 --epochs 1 --no-write        # a smoke run
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from detection import (  # noqa: E402
    KINDS,
    METRICS,
    csv_recipe,
    lossval,
    make_split,
    mean_se,
    run_header,
    split_record,
    write_section,
)

GENERATED = ("2dplanes", "fried", "synthetic", "2dplanes_reg", "fried_reg")
SOLVES = {"summary": 2000, "exact": None}  # max_support of each solve


def run_job(job: tuple) -> list[dict]:
    """Both solves on one (validation rows, dataset, kind, rate, seed); a record each."""
    val_rows, name, kind, rate, seed, epochs = job
    torch.set_num_threads(1)
    d = make_split(name, kind, rate, seed, noisy_val=True, val_rows=val_rows)
    records = []
    for solve, support in SOLVES.items():
        recipe = csv_recipe()
        objective = recipe["lossval"].get("objective", "default")
        objective = {"preset": objective} if isinstance(objective, str) else dict(objective)
        recipe["lossval"] = dict(recipe["lossval"], objective=dict(objective, max_support=support))
        if epochs is not None:
            recipe["epochs"] = epochs
        start = time.perf_counter()
        values, _ = lossval(d, seed, recipe)
        seconds = time.perf_counter() - start
        records.append(split_record(name, d, kind, rate, seed, values, val_rows=val_rows, solve=solve, seconds=seconds))
    return records


def summarise(records: list[dict], command: str, seconds: float) -> str:
    seeds = sorted({r["seed"] for r in records})
    lines = [
        *run_header(command, seconds),
        f"Datasets: {', '.join(sorted({r['dataset'] for r in records}))}; rates "
        f"{', '.join(str(r) for r in sorted({r['rate'] for r in records}))}; seeds {seeds}. Cells: mean ± "
        "standard error over seeds of the metric averaged over datasets and rates; the difference is "
        "summary minus exact, paired by seed.",
        "",
        "| validation rows | noise | metric | summary | exact | summary − exact | largest run difference |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for val_rows in sorted({r["val_rows"] for r in records}):
        for kind in [k for k in KINDS if any(r["kind"] == k for r in records)]:
            rows = [r for r in records if r["val_rows"] == val_rows and r["kind"] == kind]
            for metric, label in METRICS.items():
                by_seed = {
                    solve: [
                        sum(r[metric] for r in rows if r["solve"] == solve and r["seed"] == s)
                        / sum(1 for r in rows if r["solve"] == solve and r["seed"] == s)
                        for s in seeds
                    ]
                    for solve in SOLVES
                }
                exact = {(r["dataset"], r["rate"], r["seed"]): r[metric] for r in rows if r["solve"] == "exact"}
                summary = [r for r in rows if r["solve"] == "summary"]
                largest = max(abs(r[metric] - exact[(r["dataset"], r["rate"], r["seed"])]) for r in summary)
                diff = [a - b for a, b in zip(by_seed["summary"], by_seed["exact"])]
                lines.append(
                    f"| {val_rows:,} | {kind} | {label} | {mean_se(by_seed['summary'])} | {mean_se(by_seed['exact'])} "
                    f"| {mean_se(diff)} | {largest:.3f} |"
                )
    times = {
        (v, s): sum(r["seconds"] for r in records if r["val_rows"] == v and r["solve"] == s)
        / sum(1 for r in records if r["val_rows"] == v and r["solve"] == s)
        for v in sorted({r["val_rows"] for r in records})
        for s in SOLVES
    }
    lines += [
        "",
        "Seconds per valuation (one thread): "
        + "; ".join(f"{v:,} rows {s} {t:.1f}" for (v, s), t in times.items())
        + ".",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 10_000], help="validation rows")
    parser.add_argument("--datasets", nargs="+", default=list(GENERATED), choices=GENERATED)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--rates", nargs="+", type=float, default=[0.1, 0.2])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="train this many epochs instead of the recipe's (a quick run)")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    jobs = [
        (v, n, k, r, s, args.epochs)
        for v in args.sizes
        for n in args.datasets
        for k in args.kinds
        for r in args.rates
        for s in args.seeds
    ]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        records = [r for job_records in pool.map(run_job, jobs) for r in job_records]
    command = "python benchmarks/validation_detection.py " + " ".join(sys.argv[1:])
    text = summarise(records, command.strip(), time.perf_counter() - start)
    print(text)
    if not args.no_write:
        write_section(text, Path(__file__).parent / "RESULTS.md", "validation-detection")


if __name__ == "__main__":
    main()
