"""Smoke runs of the benchmark scripts on tiny settings, so they cannot rot."""

import subprocess
import sys
from pathlib import Path

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
