"""LossVal data valuation for PyTorch Lightning: one weight per training sample, learned in one fit."""

from lightning_lossval.callback import LossValCallback
from lightning_lossval.data import Indexed, IndexedDataModule, IndexedDataset, index_dataloader
from lightning_lossval.functional import ObjectiveConfig, lossval_objective
from lightning_lossval.mixin import LossValMixin

__all__ = [
    "Indexed",
    "IndexedDataModule",
    "IndexedDataset",
    "LossValCallback",
    "LossValMixin",
    "ObjectiveConfig",
    "index_dataloader",
    "lossval_objective",
]
__version__ = "0.1.0"
