"""Real multi-process runs on CPU (gloo): DDP, two 'nodes', SIGKILL and resume.

Strategy "ddp" re-runs argv for the other ranks, so every run is tests/ddp_script.py in a
subprocess of its own session (a SIGKILL of its process group takes all of its ranks down).
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import BlobData
from torchmetrics.functional.classification import binary_auroc

SCRIPT = Path(__file__).parent / "ddp_script.py"
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def launch(out: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), *args],
        env=env or ENV,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, expect: int = 0) -> None:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == expect, output[-4000:]


def read_values_csv(out: Path) -> tuple[torch.Tensor, torch.Tensor]:
    (path,) = out.rglob("values.csv")  # written once, by global rank zero
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return torch.tensor([int(r["index"]) for r in rows]), torch.tensor([float(r["value"]) for r in rows])


@pytest.mark.parametrize("store", ["dense", "sparse", "default"])
def test_ddp_ranks_stay_identical(tmp_path, store):
    finish(launch(tmp_path, "--store", store))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["global_step"] == rank1["global_step"] == 3 * 7  # 400 samples, 200 per rank, batch 32
    for step in (1, 4, 9):
        a, b = (torch.load(tmp_path / f"rank{r}_step{step}.pt") for r in (0, 1))
        assert (a - b).abs().max().item() == 0, step
    assert (rank0["values"] - rank1["values"]).abs().max().item() == 0
    if store == "default":  # the balanced step's running scales are averaged over the ranks
        assert set(rank0["state"]) == {"loss_scale", "ratio", "step_scale", "target_mean", "target_var", "target_fit"}
        assert rank0["state"]["loss_scale"][0] > 0
        assert all(torch.equal(rank0["state"][k], rank1["state"][k]) for k in rank0["state"])

    # after the first optimizer step exactly the samples of the two ranks' batches have moved
    inputs, rows = (
        torch.cat([torch.load(tmp_path / f"rank{r}_first_batch.pt") for r in (0, 1)]),
        BlobData().train_set[:][0],
    )
    seen = (inputs[:, None, :] == rows[None]).all(-1).nonzero()[:, 1]  # the dataset positions of those rows
    moved = (torch.load(tmp_path / "rank0_step1.pt") != 1).nonzero().flatten()
    assert sorted(moved.tolist()) == sorted(set(seen.tolist())) and len(seen) == 64

    assert binary_auroc(-rank0["values"], BlobData().noisy.int()).item() >= 0.8
    index, values = read_values_csv(tmp_path)
    assert sorted(index.tolist()) == list(range(400))
    assert torch.allclose(values, rank0["values"][index], atol=1e-6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_one_values_file(tmp_path):
    common = dict(ENV, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2", LOCAL_RANK="0")
    nodes = [launch(tmp_path, "--nodes", env=dict(common, NODE_RANK=str(rank))) for rank in (0, 1)]
    for node in nodes:
        finish(node)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert (rank0["values"] - rank1["values"]).abs().max().item() == 0 and (rank0["values"] != 1).all()
    assert rank1["values_path"] == "None"  # only global rank zero writes
    assert rank0["to_csv"] == str(tmp_path / "own.csv") and rank1["to_csv"] == "None"  # no race for the path
    with open(tmp_path / "own.csv") as f:
        assert next(csv.reader(f)) == ["rank", "index", "visits", "value", "flagged"]  # rank zero's columns
    index, values = read_values_csv(tmp_path)
    assert len(values) == 400 and torch.allclose(values, rank0["values"][index], atol=1e-6)


@pytest.mark.parametrize(
    "layout",
    [
        ["--devices", "1", "--store", "dense"],
        ["--devices", "1", "--store", "default"],
        ["--devices", "2", "--store", "dense"],
        ["--devices", "2", "--store", "sparse"],
        ["--devices", "2", "--store", "default"],
    ],
    ids=["single-dense", "single-default", "ddp-dense", "ddp-sparse", "ddp-default"],
)
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, layout):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    finish(launch(straight, *layout))
    # steps per epoch: 13 on one process, 7 on two; step 17 is mid-epoch either way, the last
    # checkpoint (every 5 steps) is from step 15
    finish(launch(crashed, *layout, "--kill-at", "17"), expect=-signal.SIGKILL)
    assert not list(crashed.rglob("values.csv"))
    assert torch.load(crashed / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 15
    finish(launch(crashed, *layout, "--resume"))
    a, b = torch.load(straight / "rank0.pt"), torch.load(crashed / "rank0.pt")
    assert a["global_step"] == b["global_step"]
    assert (a["values"] - 1).abs().max() > 0.02  # sparse stores: a few lr per visit, 3 visits
    assert (a["values"] - b["values"]).abs().max().item() <= 1e-6


def test_the_lossval_command_runs_under_ddp(tmp_path):
    # the CLI's own callbacks (the config saved beside the values, the writable check) take part in the collectives
    config = Path(__file__).parents[1] / "configs" / "default.yaml"
    args = ["--config", str(config), "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator"]
    args += ["cpu", "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path)]
    process = subprocess.Popen(
        [sys.executable, "-m", "lightning_lossval.cli", "fit", *args, "--trainer.enable_progress_bar", "false"],
        env=ENV,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        finish(process)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    (values,) = tmp_path.rglob("values.csv")  # written once, by global rank zero
    assert (values.parent / "config.yaml").exists() and len(values.read_text().splitlines()) == 1618
