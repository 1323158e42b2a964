"""Two-process DDP on CPU (gloo), driven through a subprocess since strategy "ddp" re-runs argv."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers import BlobData
from torchmetrics.functional.classification import binary_auroc


def test_ddp_ranks_hold_identical_weights_and_one_values_file(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    script = Path(__file__).parent / "ddp_script.py"
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["global_step"] == rank1["global_step"] == 3 * 7  # 400 samples, 200 per rank, batch 32
    assert (rank0["values"] - rank1["values"]).abs().max().item() == 0
    assert (rank0["values"] != 1).all()  # every sample's weight was updated by the rank that saw it
    assert binary_auroc(-rank0["values"], BlobData().noisy.int()).item() >= 0.8

    files = list(tmp_path.rglob("values.csv"))
    assert len(files) == 1
    with open(files[0]) as f:
        rows = list(csv.DictReader(f))
    index = torch.tensor([int(r["index"]) for r in rows])
    assert len(rows) == 400 and sorted(index.tolist()) == list(range(400))
    assert torch.allclose(torch.tensor([float(r["value"]) for r in rows]), rank0["values"][index], atol=1e-6)
