"""The examples run as written: an ordinary Lightning project with LossVal added finds its corrupted rows."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

EXAMPLES = Path(__file__).parent.parent / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lightning_project_writes_values_and_its_corrupted_rows_score_low(tmp_path, capsys):
    pytest.importorskip("sklearn")
    lossval = load_example("lightning_project").main(["--epochs", "5", "--root", str(tmp_path)])
    assert lossval.values_path.is_relative_to(tmp_path)
    with open(lossval.values_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1000 and sorted(int(r["index"]) for r in rows) == list(range(1000))
    values = torch.tensor([float(r["value"]) for r in rows])
    noisy = torch.tensor([r["noisy"] == "yes" for r in rows])
    assert noisy.sum() == 150  # the example's 15% flipped labels, known to the callback through noisy_mask
    assert binary_auroc(-values, noisy.int()).item() > 0.8  # 0.89 at 5 epochs; random ranking: 0.5
    assert "AUROC of -value against the flipped labels" in capsys.readouterr().out
