"""Training runs that tests/test_ddp.py starts in their own processes (strategy "ddp" re-runs argv).

    python ddp_script.py OUT [--store dense|sparse|default] [--nodes] [--kill-at STEP] [--resume] [--devices N]

Stores: dense = the paper objective in the user's Adam; sparse = the paper objective with the
sparse store's lazy Adam; default = the default objective (sparse store, balanced step).

Saves each rank's final weights to OUT/rank{r}.pt, its weights after steps 1, 4 and 9 to
OUT/rank{r}_step{s}.pt and the indices of its first batch to OUT/rank{r}_first_batch.pt.
"""

import argparse
import os
import signal
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).parent))
from helpers import TRAINER_ARGS, BlobData, Net  # noqa: E402

from lightning_lossval import IndexedDataModule, LossValCallback  # noqa: E402


class Record(L.Callback):
    """Saves weights after a few steps and the first batch's inputs; SIGKILLs the run at a step."""

    def __init__(self, out: Path, lossval: LossValCallback, kill_at: int | None) -> None:
        self.out, self.lossval, self.kill_at = out, lossval, kill_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0:
            x, _ = batch  # the batch the loader made: the indices stay with LossVal
            torch.save(x.cpu(), self.out / f"rank{trainer.global_rank}_first_batch.pt")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step in (1, 4, 9):
            torch.save(self.lossval.values, self.out / f"rank{trainer.global_rank}_step{trainer.global_step}.pt")
        if trainer.global_step == self.kill_at and trainer.is_global_zero:
            os.killpg(os.getpgrp(), signal.SIGKILL)  # the whole run, every rank, mid-epoch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--store", choices=["dense", "sparse", "default"], default="dense")
    parser.add_argument("--nodes", action="store_true", help="two 'nodes' of one process, from the environment")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    L.seed_everything(0)
    objective, sparse = {"dense": ("paper", False), "sparse": ("paper", True), "default": ("default", None)}[args.store]
    lossval = LossValCallback(log_every_n_steps=3, objective=objective, sparse=sparse)
    checkpoint = ModelCheckpoint(dirpath=args.out / "ckpt", every_n_train_steps=5, save_last=True, save_top_k=-1)
    layout = dict(num_nodes=2, devices=1) if args.nodes else dict(devices=args.devices)
    strategy = "ddp" if args.nodes or args.devices > 1 else "auto"
    trainer = L.Trainer(
        max_epochs=args.epochs,
        strategy=strategy,
        deterministic=True,
        default_root_dir=args.out,
        callbacks=[lossval, checkpoint, Record(args.out, lossval, args.kill_at)],
        **layout,
        **TRAINER_ARGS,
    )
    trainer.fit(Net(), IndexedDataModule(BlobData()), ckpt_path="last" if args.resume else None)
    torch.save(
        {
            "values": lossval.values,
            "state": getattr(lossval._store, "state", None),
            "global_step": trainer.global_step,
            "values_path": str(lossval.values_path),
            "to_csv": str(lossval.to_csv(args.out / "own.csv")),  # a script's own copy, written on every rank
        },
        args.out / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main()
