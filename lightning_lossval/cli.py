"""The ``lossval`` command: LightningCLI with LossValCallback under its own ``lossval:`` key.

    lossval fit --config configs/default.yaml
    lossval fit --config csv.yaml --data.train_csv train.csv --data.target label
    lossval fit --config configs/default.yaml --print_config
    lossval configs                      # the shipped configs; lossval configs --write DIR copies them

The DataModule is wrapped in ``IndexedDataModule`` automatically and the callback counts the
training samples itself. A ``LossValCallback`` listed under ``trainer.callbacks`` replaces the
``lossval:`` key (setting both is refused). Bad data, an unknown option or config key and a value
of the wrong type end with ``lossval: error: ...`` and exit status 2.

Your own model takes the data's sizes as init parameters: the CLI fills ``num_features``
(``num_inputs``), ``num_classes``, ``num_outputs`` and ``task`` from the DataModule's attributes
of those names (TabularDataModule has them all; ``num_classes`` is None for regression), like
LightningCLI's ``link_arguments(..., apply_on="instantiate")``: the DataModule is built (and
``prepare()``-d, if it has that method) first, and the values become the model's hyperparameters.
A value your config gives is kept, one that differs from the data's is refused.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import signal
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.cli import _InstantiatorFn as LightningInstantiator  # records the model's hparams
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_lossval.callback import LossValCallback
from lightning_lossval.datamodule import IndexedDataModule
from lightning_lossval.errors import ConfigError, LossValError, LossValWarning
from lightning_lossval.ranks import check_strategy
from lightning_lossval.run_report import holds_values

# model init parameter -> the DataModule attribute the CLI fills it from
DATA_SIZES = {
    "num_features": "num_features",
    "num_inputs": "num_features",  # the bundled MLP's and CNN's name
    "num_classes": "num_classes",
    "num_outputs": "num_outputs",
    "task": "task",
}


def data_size(attribute: str) -> Callable[[Any], Any]:
    """A link's compute function: ``datamodule.<attribute>`` after its ``prepare()``, None if it has none."""

    def read(datamodule: Any) -> Any:
        if callable(getattr(datamodule, "prepare", None)):
            datamodule.prepare()  # TabularDataModule reads its data here, once; its setup() then does nothing
        return getattr(datamodule, attribute, None)

    read.__name__ = attribute  # --help shows "num_features(data) --> model.init_args.num_inputs"
    return read


class SaveRunConfig(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` in the log folder, and beside the values files when they go to a folder of
    their own (``lossval/version_N``: no logger, or a log folder an earlier fit's values are in, whose
    ``config.yaml`` stays that fit's): every values file keeps the configuration that made it."""

    lossval: LossValCallback | None = None  # the fit's, found at setup (a fit may fail before it)
    earlier_values: Path | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        earlier = trainer.is_global_zero and log_dir is not None and holds_values(log_dir)
        self.save_to_log_dir = not trainer.strategy.broadcast(earlier)
        self.lossval = next((c for c in trainer.callbacks if isinstance(c, LossValCallback)), None)
        self.earlier_values = getattr(self.lossval, "values_path", None)
        super().setup(trainer, pl_module, stage)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        path = getattr(self.lossval, "values_path", None)  # LossValCallback's hooks ran before this one's
        if path is not None and path != self.earlier_values and trainer.is_global_zero:
            config = Path(path).parent / self.config_filename
            if not config.exists():
                self.parser.save(self.config, str(config), skip_none=False, multifile=self.multifile)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.on_fit_end(trainer, pl_module)  # the values an interrupted fit wrote


class LossValCLI(LightningCLI):
    """LightningCLI for LossVal runs; models and DataModules are given by ``class_path``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        description = (
            "Value every training sample with LossVal. The shipped configs: lossval configs. Options of the "
            "classes a config names: lossval fit --data.help lightning_lossval.tabular.TabularDataModule (or "
            "--model.help lightning_lossval.models.MLP)."
        )
        # a bad option or config key raises (main prints it as lossval: error:) instead of printing the whole usage
        quiet = {name: {"exit_on_error": False} for name in self.subcommands()}
        kwargs.setdefault("parser_kwargs", {"description": description, "exit_on_error": False, **quiet})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(LossValCallback, "lossval")
        for parameter, attribute in DATA_SIZES.items():  # a model without the parameter ignores its link
            target = f"model.init_args.{parameter}"
            parser.link_arguments("data", target, compute_fn=data_size(attribute), apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's reading of the checkpoint's hyperparameters, after checking that the file is one."""
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if subcommand in ("validate", "test", "predict") and ckpt is None:
            print(
                f"lossval: {subcommand} without --ckpt_path runs the network untrained; pass --ckpt_path PATH (or last)"
            )
        if ckpt in ("last", "best"):  # each run logs into a new version folder, where Lightning would look
            ckpt = self.config[subcommand]["ckpt_path"] = _newest_checkpoint(ckpt, self.config[subcommand])
        if isinstance(ckpt, str) and ckpt != "hpc" and not ckpt.startswith("registry"):
            if not Path(ckpt).is_file():
                raise ConfigError(
                    f"--ckpt_path {ckpt}: no such file; give a checkpoint a fit saved (lightning_logs/version_N/"
                    "checkpoints/*.ckpt under the run's folder)"
                )
            if not zipfile.is_zipfile(ckpt):
                raise ConfigError(f"--ckpt_path {ckpt} is not a checkpoint (not a file torch.save wrote)")
        super()._parse_ckpt_path()

    def before_fit(self) -> None:
        check_strategy(self.trainer)  # here, not in spawned workers whose error would come back as a traceback

    def before_test(self) -> None:
        self._check_step("test")

    def before_predict(self) -> None:
        self._check_step("predict")

    def _check_step(self, subcommand: str) -> None:
        """Refuse ``lossval test`` / ``predict`` of a model without that step (the bundled ones), saying what to use."""
        if not is_overridden(f"{subcommand}_step", self.model):
            raise ConfigError(
                f"lossval {subcommand} runs the model's {subcommand}_step on the data's {subcommand}_dataloader, and "
                f"{type(self.model).__name__} has no {subcommand}_step (the bundled models and TabularDataModule "
                "have neither): use lossval validate --ckpt_path PATH for the validation metrics, and values.csv "
                "(its prediction column) for each training row's prediction"
            )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if "lossval" in config and config["lossval"] is None:  # a later config's "lossval: null": the defaults,
            config["lossval"] = self._parser(self.subcommand).get_defaults()["lossval"]  # e.g. one under callbacks
        if self._get(self.config, "lr_scheduler") and not self._get(self.config, "optimizer"):
            raise ConfigError(  # LightningCLI would drop the scheduler silently
                "--lr_scheduler needs --optimizer too: the scheduler steps the optimizer the CLI builds "
                "(e.g. --optimizer Adam --optimizer.lr 0.01)"
            )
        root = (self._get(self.config, "trainer") or {}).get("default_root_dir")
        if root is not None:  # where the logger and the config file go, created if missing
            existing = next(p for p in (Path(root), *Path(root).parents) if p.exists())
            if not existing.is_dir():
                raise ConfigError(f"--trainer.default_root_dir {root}: {existing} is a file; give a folder's path")
        # replaces LightningCLI's model instantiator (same key), which _instantiate_model then calls
        self.parser.add_instantiator(self._instantiate_model, LightningModule, subclasses=True, prepend=True)

    def _instantiate_model(
        self, class_type: type, *args: Any, applied_instantiation_links: dict, **kwargs: Any
    ) -> LightningModule:
        """The model with the data's sizes in the size parameters it takes and its config leaves None."""
        configured = self._get(self.config, "model").get("init_args") or {}
        links = {k: v for k, v in applied_instantiation_links.items() if not k.startswith("model.init_args.")}
        for parameter in [p for p in DATA_SIZES if p in kwargs]:
            own, data = configured.get(parameter), kwargs[parameter]
            if own is not None:
                if data is not None and own != data:
                    ckpt = self._get(self.config, "ckpt_path")
                    if ckpt is not None:  # LightningCLI took the model's hyperparameters from the checkpoint
                        raise ConfigError(
                            f"the checkpoint {ckpt} holds a model with {parameter} = {own!r}, but the data has "
                            f"{DATA_SIZES[parameter]} = {data!r}: it was made on other data and does not fit "
                            "this; give the training data it was made with, or run without --ckpt_path"
                        )
                    raise ConfigError(
                        f"model.init_args.{parameter} is {own!r} (from your config or {class_type.__name__}'s "
                        f"default), but the data has {DATA_SIZES[parameter]} = {data!r}; remove it from the "
                        "config (or default it to None) and the CLI fills it from the data"
                    )
                kwargs[parameter] = own
            elif data is not None:
                links[f"model.init_args.{parameter}"] = data
            elif inspect.signature(class_type).parameters[parameter].default is inspect.Parameter.empty:
                attribute = DATA_SIZES[parameter]
                regression = ", as TabularDataModule's for regression" if attribute == "num_classes" else ""
                raise ConfigError(
                    f"{class_type.__name__} takes {parameter}, which the DataModule does not provide (its {attribute} "
                    f"is missing or None{regression}); give --model.init_args.{parameter} VALUE, or set "
                    f"{attribute} in your DataModule's __init__ or prepare()"
                )
        return LightningInstantiator(self, "model")(class_type, *args, applied_instantiation_links=links, **kwargs)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:  # LightningCLI builds --optimizer on model.parameters() right away
            if "empty parameter list" not in str(error):
                raise
            raise ConfigError(
                "--optimizer got a model without parameters: it builds its layers later. The bundled MLP and CNN "
                "build them at once from num_inputs, num_outputs and task: give those as --model.init_args.NAME, "
                "or use a DataModule with num_features, num_outputs and task attributes (see lossval --help)"
            ) from error
        if self.datamodule is not None and not isinstance(self.datamodule, IndexedDataModule):
            self.datamodule = IndexedDataModule(self.datamodule)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        listed = config.get("callbacks") or []
        listed = listed if isinstance(listed, list) else [listed]
        count = sum(isinstance(c, LossValCallback) for c in listed)
        if count > 1:
            raise ConfigError(f"trainer.callbacks lists LossValCallback {count} times; keep one")
        if count:
            parser = self._parser(self.subcommand)
            if self._get(self.config, "lossval") != parser.get_defaults().get("lossval"):
                raise ConfigError(
                    "LossValCallback is configured twice, under trainer.callbacks and under lossval:; keep one (to "
                    "drop the lossval: block of an earlier --config, add a later --config file saying lossval: null)"
                )
            callbacks = [c for c in callbacks if not isinstance(c, LossValCallback)]
        trainer = super()._instantiate_trainer(config, callbacks)
        saved = [logger.save_dir for logger in trainer.loggers]  # the run's folders; without them, the root's
        for folder in set(saved) if saved and all(saved) else {trainer.default_root_dir}:
            _check_writable(str(folder))
        return trainer


def _check_writable(folder: str) -> None:
    """Refuse a run folder (``default_root_dir``, a logger's ``save_dir``) that cannot be written, before the run
    writes its config, logs and checkpoints there (Lightning would fail with a traceback); remote ones pass."""
    if "://" in folder:
        return
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise ConfigError(
            f"the run's folder {folder} cannot be written ({error.strerror or error}); give a folder you can write "
            "to as --trainer.default_root_dir (or as the logger's save_dir)"
        ) from error


def configs_dir() -> Path:
    """The shipped configs: in the installed package, or the repository's ``configs/`` in a checkout."""
    package = Path(__file__).parent
    return package / "configs" if (package / "configs").is_dir() else package.parent / "configs"


def shipped_config(path: str) -> str:
    """``path``, or the shipped config it names when there is no such file (``csv.yaml``, ``configs/csv.yaml``)."""
    given = Path(path)
    shipped = configs_dir() / given.name
    if not given.exists() and str(given.parent) in (".", "configs") and shipped.is_file():
        return str(shipped)
    return path


def _resolve_configs(args: list[str]) -> list[str]:
    """``args`` with each ``--config NAME`` (``-c NAME``) that names a shipped config and no file made a path to it."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + shipped_config(arg[len("--config=") :])
        elif i > 0 and args[i - 1] in ("--config", "-c"):
            out[i] = shipped_config(arg)
    return out


def configs_command(args: list[str]) -> None:
    """``lossval configs``: list the shipped configs; ``--write DIR`` copies them into DIR."""
    parser = argparse.ArgumentParser(prog="lossval configs", description=configs_command.__doc__)
    parser.add_argument("--write", metavar="DIR", help="copy the shipped configs into DIR (created if needed)")
    options = parser.parse_args(args)
    configs = sorted(configs_dir().glob("*.yaml"))
    if options.write is None:
        print("Configs shipped with lightning-lossval; run one with lossval fit --config NAME:")
        for config in configs:
            summary = config.read_text().splitlines()[0].lstrip("# ")
            print(f"  {config.name:<18}{summary}")
        print(f"They are in {configs_dir()}; copy them with lossval configs --write DIR")
        return
    target = Path(options.write)
    existing = [target / c.name for c in configs if (target / c.name).exists()]
    if existing:
        names = ", ".join(str(p) for p in existing)
        raise ConfigError(f"{names} already exist(s); remove them or give another directory to --write")
    target.mkdir(parents=True, exist_ok=True)
    for config in configs:
        shutil.copyfile(config, target / config.name)
    print(f"wrote {', '.join(c.name for c in configs)} to {target}")


def _newest_checkpoint(name: str, config: Any) -> str:
    """``--ckpt_path last``: the newest checkpoint of the earlier runs under ``trainer.default_root_dir``
    (a new run's own folder has none yet); ``best`` is refused, as no run's best is known here."""
    root = Path(config["trainer"].get("default_root_dir") or ".")
    found = sorted(root.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)  # wherever the loggers put them
    where = f"{root} or its folders"
    if name == "best" or not found:
        said = "a new run knows no best checkpoint" if name == "best" else f"no checkpoint in {where}"
        raise ConfigError(f"--ckpt_path {name}: {said}; give the path of the checkpoint to start from")
    said = f"lossval: --ckpt_path last: {found[-1]}, the newest checkpoint in {where}"
    rank_zero_only(print)(said, flush=True)  # DDP runs this command once per process
    return str(found[-1])


def _user_error(error: BaseException | None) -> BaseException | None:
    """The LossValError (or Lightning's MisconfigurationException, e.g. ``lossval test`` of data without a
    ``test_dataloader``) behind ``error``, if any (jsonargparse wraps errors raised in ``__init__``)."""
    while error is not None and not isinstance(error, (LossValError, MisconfigurationException)):
        error = error.__cause__ or error.__context__
    return error


def _lossval_warnings(others: Any) -> Any:
    """A ``warnings.formatwarning`` that prints LossVal's warnings as ``lossval: warning: ...`` (the data's or the
    settings' problem, not a source line) and hands every other warning to ``others``."""

    def format_warning(message: Any, category: type[Warning], filename: str, lineno: int, line: Any = None) -> str:
        if issubclass(category, LossValWarning):
            return f"lossval: warning: {message}\n"
        return others(message, category, filename, lineno, line)

    return format_warning


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lossval`` console script."""
    formatter = warnings.formatwarning
    warnings.formatwarning = _lossval_warnings(formatter)
    given = sys.argv[1:] if args is None else list(args)
    if os.getcwd() not in sys.path:  # --model my_project.model.Net from the project's folder (after installed ones)
        sys.path.append(os.getcwd())
    try:
        if given[:1] == ["configs"]:
            configs_command(given[1:])
            return
        resolved = _resolve_configs(given)
        if args is None:  # LightningCLI reads the command line itself (it warns about args= with one)
            sys.argv[1:] = resolved
        LossValCLI(args=None if args is None else resolved)
    except SIGTERMException:  # Lightning's carries no exit status, and a job ended by SIGTERM did not succeed
        sys.exit(128 + signal.SIGTERM)
    except argparse.ArgumentError as error:  # an unknown option or config key, a value of the wrong type
        subcommand = given[0] if given and not given[0].startswith("-") else "fit"
        print(f"lossval: error: {error}\n(lossval {subcommand} --help lists the options)", file=sys.stderr)
        sys.exit(2)
    except Exception as error:
        user_error = _user_error(error)
        if user_error is None:
            raise
        print(f"lossval: error: {user_error}", file=sys.stderr)
        sys.exit(2)
    finally:
        warnings.formatwarning = formatter


if __name__ == "__main__":
    main()
