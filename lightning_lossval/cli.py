"""The ``lossval`` command: LightningCLI with LossValCallback under its own ``lossval:`` key.

    lossval fit --config configs/default.yaml
    lossval fit --config configs/csv.yaml --data.train_csv train.csv --data.target label
    lossval fit --config configs/default.yaml --print_config

The DataModule is wrapped in ``IndexedDataModule`` automatically and the callback counts the
training samples itself. A ``LossValCallback`` listed under ``trainer.callbacks`` replaces the
``lossval:`` key (setting both is refused). Bad data ends with ``lossval: error: ...`` and
exit status 2.
"""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_lossval.callback import LossValCallback
from lightning_lossval.data import IndexedDataModule
from lightning_lossval.errors import ConfigError, LossValError


class LossValCLI(LightningCLI):
    """LightningCLI for LossVal runs; models and DataModules are given by ``class_path``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"description": "Value every training sample with LossVal."})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(LossValCallback, "lossval")

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if self.datamodule is not None and not isinstance(self.datamodule, IndexedDataModule):
            self.datamodule = IndexedDataModule(self.datamodule)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        listed = config.get("callbacks") or []
        listed = listed if isinstance(listed, list) else [listed]
        if any(isinstance(c, LossValCallback) for c in listed):
            parser = self._parser(self.subcommand)
            if self._get(self.config, "lossval") != parser.get_defaults().get("lossval"):
                raise ConfigError(
                    "LossValCallback is configured twice, under trainer.callbacks and under lossval:; keep one"
                )
            callbacks = [c for c in callbacks if not isinstance(c, LossValCallback)]
        return super()._instantiate_trainer(config, callbacks)


def _user_error(error: BaseException | None) -> LossValError | None:
    """The LossValError behind ``error``, if any (jsonargparse wraps errors raised in ``__init__``)."""
    while error is not None and not isinstance(error, LossValError):
        error = error.__cause__ or error.__context__
    return error


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lossval`` console script."""
    try:
        LossValCLI(args=args)
    except Exception as error:
        user_error = _user_error(error)
        if user_error is None:
            raise
        print(f"lossval: error: {user_error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
