"""LossVal data valuation for PyTorch Lightning: one weight per training sample, learned in one fit.

The surface a user needs: the callback and the module mixin, the data wrappers, the objective's
options (presets, :class:`Objective`, :class:`Sinkhorn`, the update rules) and the errors.
"""

from lightning_lossval.callback import LossValCallback
from lightning_lossval.data import index_dataloader
from lightning_lossval.datamodule import IndexedDataModule
from lightning_lossval.errors import ConfigError, DataError, LossValError, ResumeError
from lightning_lossval.mixin import LossValMixin
from lightning_lossval.objective import Objective, lossval_objective
from lightning_lossval.presets import PRESETS, Preset
from lightning_lossval.sinkhorn import Sinkhorn, sinkhorn_distance
from lightning_lossval.updates import Adam, Balanced, Normalized, UpdateRule

__all__ = [
    "PRESETS",
    "Adam",
    "Balanced",
    "ConfigError",
    "DataError",
    "IndexedDataModule",
    "LossValCallback",
    "LossValError",
    "LossValMixin",
    "Normalized",
    "Objective",
    "Preset",
    "ResumeError",
    "Sinkhorn",
    "UpdateRule",
    "index_dataloader",
    "lossval_objective",
    "sinkhorn_distance",
]
__version__ = "0.1.0"
