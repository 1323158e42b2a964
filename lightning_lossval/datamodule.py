"""``IndexedDataModule``: any ``LightningDataModule`` whose training batches carry global sample indices."""

from __future__ import annotations

import copy
import sys
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.parsing import AttributeDict
from torch.utils.data import DataLoader

from lightning_lossval.data import BATCH_HOOKS, index_dataloader, on_inner_batch
from lightning_lossval.errors import ConfigError
from lightning_lossval.mixin import LossValMixin

EVAL_LOADERS = ("val_dataloader", "test_dataloader", "predict_dataloader")


class IndexedDataModule(LightningDataModule):
    """Wraps a ``LightningDataModule`` so that its training batches carry global sample indices.

    Example::

        dm = IndexedDataModule(MyDataModule(...))
        Trainer(callbacks=[LossValCallback()]).fit(model, dm)

    ``prepare_data``, ``setup``, ``teardown``, ``state_dict`` and ``load_state_dict`` go to the
    wrapped module, as do attribute look-ups (``dm.num_classes``) and writes to its attributes
    (``dm.batch_size = 64``, as the batch-size tuner does). Its validation, test and
    predict loaders pass through unchanged, and those it does not define stay undefined. Its
    batch-transfer hooks see the inner batch of an ``Indexed`` batch.

    Args:
        datamodule: the module to wrap.
        seed: seed of the epoch-wise shuffling order (default: as :func:`~lightning_lossval.data.index_dataloader`).
    """

    def __init__(self, datamodule: LightningDataModule, seed: int | None = None) -> None:
        if not isinstance(datamodule, LightningDataModule):
            loader = (
                " (a training DataLoader goes in index_dataloader(loader))"
                if isinstance(datamodule, DataLoader)
                else ""
            )
            if isinstance(datamodule, type) and issubclass(datamodule, LightningDataModule):
                loader = f": pass an instance, IndexedDataModule({datamodule.__name__}(...))"
            raise TypeError(f"IndexedDataModule wraps a LightningDataModule, got {type(datamodule).__name__}{loader}")
        super().__init__()
        _own_hyperparameters(datamodule)
        self.seed = seed  # before datamodule: from then on, writes of names the wrapped module has go there
        self.datamodule = datamodule
        for name in EVAL_LOADERS:
            if is_overridden(name, datamodule, LightningDataModule):
                setattr(self, name, getattr(datamodule, name))
        for name in BATCH_HOOKS:
            if is_overridden(name, datamodule, LightningDataModule):
                setattr(self, name, on_inner_batch(getattr(datamodule, name)))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "datamodule":
            raise AttributeError(name)
        return getattr(self.datamodule, name)

    def __setattr__(self, name: str, value: Any) -> None:
        """Attributes the wrapped module owns are set there (e.g. the batch-size tuner's ``batch_size``)."""
        inner = self.__dict__.get("datamodule")
        owned = name in self.__dict__ or name.startswith("_") or hasattr(type(self), name)
        if inner is not None and not owned and hasattr(inner, name):
            setattr(inner, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def hparams(self):  # type: ignore[override]
        return self.datamodule.hparams

    @property
    def hparams_initial(self):  # type: ignore[override]
        return self.datamodule.hparams_initial

    @property
    def _log_hyperparams(self) -> bool:  # whether the loggers get the wrapped module's hyperparameters
        return self.__dict__["datamodule"]._log_hyperparams if "datamodule" in self.__dict__ else False

    @_log_hyperparams.setter
    def _log_hyperparams(self, value: bool) -> None:  # LightningDataModule.__init__ sets it on the wrapper
        pass

    def prepare_data(self) -> None:
        self.datamodule.trainer = self.trainer
        self.datamodule.prepare_data()

    def setup(self, stage: str) -> None:
        from lightning_lossval.callback import LossValCallback  # here: the callback's module imports the data's

        trainer = self.trainer
        if stage == "fit" and isinstance(getattr(trainer, "lightning_module", None), LossValMixin):
            if not any(isinstance(c, LossValCallback) for c in trainer.callbacks):  # or x, y = batch gets the index
                raise ConfigError(
                    "IndexedDataModule's training batches carry sample indices for LossValCallback, which takes them "
                    "off, but this Trainer has no LossValCallback: add LossValCallback() to its callbacks, or fit "
                    f"on the wrapped {type(self.datamodule).__name__} itself to train without LossVal"
                )
        self.datamodule.trainer = self.trainer
        self.datamodule.setup(stage)

    def teardown(self, stage: str) -> None:
        self.datamodule.teardown(stage)

    def train_dataloader(self) -> DataLoader:
        return index_dataloader(self.datamodule.train_dataloader(), self.seed)

    def state_dict(self) -> dict[str, Any]:
        return self.datamodule.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.datamodule.load_state_dict(state_dict)


def _own_hyperparameters(datamodule: LightningDataModule) -> None:
    """Give a DataModule that LightningCLI built inside ``IndexedDataModule`` (``data: class_path:
    lightning_lossval.IndexedDataModule, init_args: datamodule: ...``) its own saved hyperparameters:
    LightningCLI hands every DataModule it builds the config of ``data``, here the wrapper's."""
    saved = datamodule.hparams
    inner, path = saved.get("datamodule"), str(saved.get("_class_path", ""))
    module, _, name = path.rpartition(".")
    built = getattr(sys.modules.get(module), name, None)  # imported already, by the CLI that built it
    if not (isinstance(inner, dict) and isinstance(built, type) and issubclass(built, IndexedDataModule)):
        return
    own = {"_class_path": inner.get("class_path"), **(inner.get("init_args") or {})}
    if "_instantiator" in saved:
        own["_instantiator"] = saved["_instantiator"]
    datamodule._hparams = AttributeDict(own)
    datamodule._hparams_initial = copy.deepcopy(datamodule._hparams)
