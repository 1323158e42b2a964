"""Run by tests/test_ddp.py in its own process: strategy "ddp" re-runs this file for rank 1."""

import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import TRAINER_ARGS, BlobData, Net  # noqa: E402

from lightning_lossval import IndexedDataModule, LossValCallback  # noqa: E402

out = Path(sys.argv[1])
L.seed_everything(0)
callback = LossValCallback(log_every_n_steps=3)
trainer = L.Trainer(max_epochs=3, devices=2, strategy="ddp", callbacks=[callback], default_root_dir=out,
                    **TRAINER_ARGS)
trainer.fit(Net(), IndexedDataModule(BlobData()))
torch.save({"values": callback.values, "global_step": trainer.global_step}, out / f"rank{trainer.global_rank}.pt")
