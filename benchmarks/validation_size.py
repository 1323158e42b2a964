"""Per-step cost and memory of the default objective as the validation set grows: 100 to 100,000 rows.

The same cheap rows and tiny MLP as ``scale.py`` (8 features, 3 classes, batch 32, 10,000
training rows), the default objective, one fresh process per configuration so that its peak
resident memory (``ru_maxrss``) is its own. Validation sets above ``max_support`` (2000) rows are
summarised once per fit; ``--exact`` adds the exact solve (``max_support=None``) where it fits in
memory. Prints ms per step (median after a warm-up), the ratio to 100 rows, the seconds before
the first step (the validation side's preparation), and the peak memory above the same process
before the fit.

    python benchmarks/validation_size.py                 # about 2 minutes on 2 CPU cores
    python benchmarks/validation_size.py --sizes 100 3000 --steps 20 --no-write    # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).parent))
from detection import write_section  # noqa: E402
from scale import Rows, StepClock, Tiny  # noqa: E402

from lightning_lossval import IndexedDataModule, LossValCallback  # noqa: E402

HERE = Path(__file__).parent


def one(val_rows: int, exact: bool, steps: int) -> dict:
    """Fit for ``steps`` steps against ``val_rows`` validation rows; the figures of this process."""
    L.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(1)
    val = (torch.randn(val_rows, 8, generator=g) * 3, torch.randint(0, 3, (val_rows,), generator=g))
    objective = {"max_support": None} if exact else "default"
    clock = StepClock()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        L.Trainer(
            max_steps=steps,
            accelerator="cpu",
            limit_val_batches=0,
            logger=False,
            default_root_dir=root,
            callbacks=[LossValCallback(val_data=val, objective=objective, export=False, show=0), clock],
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        ).fit(Tiny(), IndexedDataModule(Rows(10_000)))
    gaps = [b - a for a, b in zip(clock.starts, clock.starts[1:])]
    return {
        "ms_per_step": statistics.median(gaps[len(gaps) // 10 :]) * 1e3,
        "first_step_s": clock.starts[0] - start,
        "peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
    }


def measure(val_rows: int, exact: bool, steps: int) -> dict:
    command = [sys.executable, __file__, "--one", str(val_rows), str(int(exact)), "--steps", str(steps)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1_000, 10_000, 100_000])
    parser.add_argument("--exact", type=int, nargs="*", default=[1_000, 10_000], help="sizes also run exactly")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--one", nargs=2, type=int, metavar=("V", "EXACT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], bool(args.one[1]), args.steps)))
        return
    runs = [(v, False) for v in args.sizes] + [(v, True) for v in args.exact if v in args.sizes and v > 2000]
    results = {run: measure(*run, args.steps) for run in runs}
    base = results[args.sizes[0], False].get("ms_per_step")
    lines = [
        "| validation rows | solve | ms/step | / 100 rows | s before the first step | peak memory MB |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for (v, exact), r in results.items():
        solve = "exact" if exact or v <= 2000 else "summary (2000 points)"
        if "error" in r:
            lines.append(f"| {v:,} | {solve} | failed: {r['error']} | | | |")
            continue
        ratio = r["ms_per_step"] / base if base else float("nan")
        lines.append(
            f"| {v:,} | {solve} | {r['ms_per_step']:.2f} | {ratio:.2f} | {r['first_step_s']:.1f} | {r['peak_mb']:.0f} |"
        )
    text = "\n".join(
        [
            f"Command: `{' '.join(['python benchmarks/validation_size.py', *sys.argv[1:]])}`",
            f"Run: {datetime.date.today()}, torch {torch.__version__}, {args.steps} steps per configuration, "
            "one process each.",
            "",
            *lines,
        ]
    )
    print(text)
    if not args.no_write:
        write_section(text, HERE / "RESULTS.md", "validation-size")


if __name__ == "__main__":
    main()
