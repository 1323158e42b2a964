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
