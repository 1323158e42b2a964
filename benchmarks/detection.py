"""Noisy-sample detection: LossVal against baselines on the same splits (OpenDataVal's protocol).

For every dataset, noise kind (label, feature, mixed), noise rate and seed: split train 1000 /
validation 100 / test the rest (smaller datasets: half / a tenth / the rest), standardise with
training statistics, corrupt that fraction of the training rows (and, as OpenDataVal does, of the
validation rows), then value the training rows with each method and score the values against
the known noisy rows: 2-means F1 (the noise rate unused), F1 at the noise rate, AUROC.

Methods: LossVal with the paper preset (reference MLP, batch 32, Adam 0.01, --epochs) and with
this project's default configuration (same network and epochs; computed once if it equals the paper preset), random
values, the per-sample training loss of the same network trained without LossVal (small-loss),
KNN-Shapley (Jia et al. 2019, classification), Data-OOB with bagged decision trees (Kwon & Zou
2023), and cleanlab's label-quality scores from 5-fold logistic-regression probabilities
(classification; if cleanlab is installed: pip install -e ".[bench]").

    python benchmarks/detection.py                    # the full protocol; rewrites its section of RESULTS.md
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
from torch.utils.data import DataLoader, TensorDataset

from lightning_lossval import LossValCallback, index_dataloader
from lightning_lossval.callback import LossValCallback as _Callback
from lightning_lossval.metrics import detection_report, discovery_curve
from lightning_lossval.models import MLP
from lightning_lossval.noise import inject_noise

HERE = Path(__file__).parent
KINDS = ("label", "feature", "mixed")
RATES = (0.05, 0.10, 0.15, 0.20)


# ----------------------------------------------------------------------------- datasets
def planes2d(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Breiman (1984): x1 in {-1, 1}, x2..x10 in {-1, 0, 1}; y depends on x2..x4 or x5..x7."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-1, 2, (n, 10), generator=g).float()
    x[:, 0] = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    upper = 3 + 3 * x[:, 1] + 2 * x[:, 2] + x[:, 3]
    lower = -3 + 3 * x[:, 4] + 2 * x[:, 5] + x[:, 6]
    return x, torch.where(x[:, 0] == 1, upper, lower) + torch.randn(n, generator=g)


def fried(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Friedman (1991): ten uniform inputs, five of them unused."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 10, generator=g)
    y = 10 * torch.sin(math.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2 + 10 * x[:, 3] + 5 * x[:, 4]
    return x, y + torch.randn(n, generator=g)


def binarised(make):
    """OpenML's classification versions: class 'P' (1) when the target is below its mean."""

    def load(n: int, seed: int):
        x, y = make(n, seed)
        return x, (y < y.mean()).long()

    return load


def sklearn_data(name: str):
    def load(n: int, seed: int):
        import sklearn.datasets as sk

        x, y = getattr(sk, f"load_{name}")(return_X_y=True)
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y)

    return load


def synthetic(n: int, seed: int):
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=n, n_features=10, n_informative=6, n_classes=2, random_state=seed)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


# name: (task, loader); the generated ones get 1000 + 100 + 3000 rows
DATASETS = {
    "2dplanes": ("classification", binarised(planes2d)),
    "fried": ("classification", binarised(fried)),
    "digits": ("classification", sklearn_data("digits")),
    "breast_cancer": ("classification", sklearn_data("breast_cancer")),
    "synthetic": ("classification", synthetic),
    "2dplanes_reg": ("regression", planes2d),
    "fried_reg": ("regression", fried),
    "diabetes": ("regression", sklearn_data("diabetes")),
}


def make_split(name: str, kind: str, rate: float, seed: int, noisy_val: bool) -> dict:
    task, load = DATASETS[name]
    x, y = load(4100, seed)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_train, n_val = min(1000, len(x) // 2), min(100, len(x) // 10)
    mean, std = x[:n_train].mean(0), x[:n_train].std(0).clamp_min(1e-6)
    x = (x - mean) / std
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
def mlp(d: dict) -> MLP:
    return MLP(preset="paper", task=d["task"], num_inputs=d["x"].shape[1], num_outputs=d["classes"] or 1)


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


def test_score(model: MLP, d: dict) -> float:
    """Test accuracy (classification) or R^2 (regression) of a trained network."""
    with torch.no_grad():
        out = model(d["xt"])
    if d["task"] == "classification":
        return (out.argmax(1) == d["yt"]).float().mean().item()
    return 1 - ((out - d["yt"]) ** 2).sum().item() / ((d["yt"] - d["yt"].mean()) ** 2).sum().item()


def lossval(d: dict, epochs: int, seed: int, objective) -> tuple[torch.Tensor, float]:
    L.seed_everything(seed, verbose=False)
    model = mlp(d)
    callback = LossValCallback(val_data=d["xv"], objective=objective, export=False, show=0)
    loader = index_dataloader(DataLoader(TensorDataset(d["x"], d["y"]), batch_size=32, shuffle=True), seed=seed)
    trainer(epochs, [callback]).fit(model, train_dataloaders=loader)
    return callback.values, test_score(model, d)


def small_loss(d: dict, epochs: int, seed: int) -> tuple[torch.Tensor, float]:
    """Train the same network without LossVal; a sample's value is minus its final training loss."""
    L.seed_everything(seed, verbose=False)
    model = mlp(d)
    trainer(epochs, []).fit(
        model, train_dataloaders=DataLoader(TensorDataset(d["x"], d["y"]), batch_size=32, shuffle=True)
    )
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


# ----------------------------------------------------------------------------- one job
def run_job(job: tuple) -> list[dict]:
    """Every method on one (dataset, kind, rate, seed); returns one record per method."""
    name, kind, rate, seed, epochs, noisy_val = job
    torch.set_num_threads(1)
    d = make_split(name, kind, rate, seed, noisy_val)
    paper = "paper"
    default = _Callback().config  # this project's default objective
    timings, values, scores = {}, {}, {}

    def timed(method, fn):
        start = time.perf_counter()
        result = fn()
        timings[method] = time.perf_counter() - start
        values[method], scores[method] = result if isinstance(result, tuple) else (result, None)

    timed("LossVal (paper)", lambda: lossval(d, epochs, seed, paper))
    if default == _Callback(objective=paper).config:
        values["LossVal (default)"], scores["LossVal (default)"] = values["LossVal (paper)"], scores["LossVal (paper)"]
        timings["LossVal (default)"] = timings["LossVal (paper)"]
    else:
        timed("LossVal (default)", lambda: lossval(d, epochs, seed, default))
    timed("random", lambda: torch.rand(len(d["x"]), generator=torch.Generator().manual_seed(seed)))
    timed("small-loss", lambda: small_loss(d, epochs, seed))
    timed("Data-OOB", lambda: data_oob(d, seed))
    if d["task"] == "classification":
        timed("KNN-Shapley", lambda: knn_shapley(d))
        if has_cleanlab():
            timed("cleanlab", lambda: cleanlab_scores(d, seed))
    records = []
    for method, v in values.items():
        report = detection_report(v, d["noisy"])
        curve = discovery_curve(v, d["noisy"])[1]
        records.append(
            dict(
                dataset=name,
                task=d["task"],
                kind=kind,
                rate=rate,
                seed=seed,
                method=method,
                f1=report["detection_f1"],
                f1_rate=report["f1_at_noise_rate"],
                auroc=report["auroc"],
                seconds=timings[method],
                test=scores[method],
                curve=curve[torch.linspace(0, len(curve) - 1, 101).long()].tolist(),
            )
        )
    return records


# ----------------------------------------------------------------------------- report
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


def default_vs_paper(rows: list[dict], task: str) -> list[str]:
    """The project's default against the paper preset and the best baseline, with paired differences."""
    baselines = [m for m in dict.fromkeys(r["method"] for r in rows) if not m.startswith(("LossVal", "random"))]
    if "LossVal (default)" not in {r["method"] for r in rows} or not baselines:
        return []
    best = max(baselines, key=lambda m: statistics.fmean(per_seed(rows, m, None).values()))
    lines = [
        f"### {task.capitalize()}: default vs paper preset (2-means F1)",
        "",
        "| | " + " | ".join(KINDS) + " | average |",
        "|---|" + "---:|" * (len(KINDS) + 1),
    ]
    kinds = [*KINDS, None]
    for method in ("LossVal (paper)", "LossVal (default)", best):
        cells = [mean_se(list(per_seed(rows, method, k).values())) for k in kinds]
        lines.append(f"| {method}{' (best baseline)' if method == best else ''} | " + " | ".join(cells) + " |")
    cells = []
    for k in kinds:
        paper, default = per_seed(rows, "LossVal (paper)", k), per_seed(rows, "LossVal (default)", k)
        cells.append(mean_se([default[s] - paper[s] for s in paper if s in default]))
    lines += ["| default − paper (paired by seed) | " + " | ".join(cells) + " |", ""]
    return lines


def summarise(records: list[dict], command: str, seconds: float) -> str:
    methods = list(dict.fromkeys(r["method"] for r in records))
    lines = [
        f"Command: `{command}`  ",
        f"Run: {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPU "
        f"cores, torch {torch.__version__}, {seconds / 60:.0f} min.  ",
        "Cells: mean ± standard error over seeds of the metric averaged over datasets and noise rates.",
        "",
    ]
    for task in ("classification", "regression"):
        rows = [r for r in records if r["task"] == task]
        if not rows:
            continue
        datasets = sorted({r["dataset"] for r in rows})
        methods = list(dict.fromkeys(r["method"] for r in rows))
        lines += default_vs_paper(rows, task)
        for metric, title in (("f1", "2-means detection F1"), ("auroc", "AUROC"), ("f1_rate", "F1 at the noise rate")):
            lines += [
                f"### {task.capitalize()}: {title} ({', '.join(datasets)})",
                "",
                "| method | " + " | ".join(KINDS) + " | average |",
                "|---|" + "---:|" * (len(KINDS) + 1),
            ]
            for method in methods:
                cells = [mean_se(list(per_seed(rows, method, k, metric).values())) for k in (*KINDS, None)]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
        for kind in KINDS:
            if not any(r["kind"] == kind for r in rows):
                continue
            lines += [
                f"### {task.capitalize()}: 2-means F1 per dataset, {kind} noise (all rates)",
                "",
                "| method | " + " | ".join(datasets) + " |",
                "|---|" + "---:|" * len(datasets),
            ]
            for method in methods:
                cells = []
                for name in datasets:
                    xs = [r["f1"] for r in rows if (r["method"], r["dataset"], r["kind"]) == (method, name, kind)]
                    cells.append(f"{statistics.fmean(xs):.3f}" if xs else "–")
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
        timing = {
            m: statistics.fmean([r["seconds"] for r in rows if r["method"] == m])
            for m in methods
            if any(r["method"] == m for r in rows)
        }
        lines += [
            "",
            "Seconds per valuation (one process, one thread): "
            + ", ".join(f"{m} {s:.1f}" for m, s in timing.items())
            + ".",
        ]
        tests = {m: [r["test"] for r in rows if r["method"] == m and r["test"] is not None] for m in methods}
        metric = "accuracy" if task == "classification" else "R²"
        lines += [
            f"Test {metric} of the trained network: "
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
        for method in dict.fromkeys(r["method"] for r in rows):
            curves = torch.tensor([r["curve"] for r in rows if r["method"] == method]).mean(0)
            axis.plot(torch.linspace(0, 1, 101).tolist(), curves.tolist(), label=method)
        axis.set(
            title=f"{task}, 20% label noise (all datasets, seeds)",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--rates", nargs="+", type=float, default=list(RATES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--clean-val", action="store_true", help="keep the validation rows clean")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    parser.add_argument("--section", default="detection", help="name of the RESULTS.md section to (re)write")
    args = parser.parse_args()

    jobs = [
        (n, k, r, s, args.epochs, not args.clean_val)
        for n in args.datasets
        for k in args.kinds
        for r in args.rates
        for s in args.seeds
    ]
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
        records = [r for job_records in pool.map(run_job, jobs) for r in job_records]
    command = "python benchmarks/detection.py " + " ".join(sys.argv[1:])
    text = summarise(records, command.strip(), time.perf_counter() - start)
    print(text)
    if not args.no_write:
        figure = f"{args.section}_discovery.png"
        plot(records, HERE / figure)
        raw = [{k: v for k, v in r.items() if k != "curve"} for r in records]
        (HERE / f"{args.section}_records.json").write_text(json.dumps(raw, indent=0))
        write_section(
            f"{text}\n\nPer-run records: `{args.section}_records.json`.\n\n![discovery curves]({figure})",
            HERE / "RESULTS.md",
            args.section,
        )


if __name__ == "__main__":
    main()
