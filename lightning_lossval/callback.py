"""LossValCallback: learns one weight per training sample during an ordinary ``fit``."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_lossval.data import BATCH_HOOKS, Indexed, IndexedDataset, on_inner_batch
from lightning_lossval.errors import DataError
from lightning_lossval.functional import (
    STEP_SIZES,
    ObjectiveConfig,
    Validation,
    lossval_objective,
    prepare_validation,
    resolve_config,
)
from lightning_lossval.metrics import detection_report
from lightning_lossval.mixin import LossValMixin
from lightning_lossval.report import (
    atomic_write,
    detection_figure,
    format_metrics,
    format_table,
    table_csv,
    values_table,
    weight_histogram,
    weight_stats,
)
from lightning_lossval.weights import GROUP_NAME, DenseWeights, SparseWeights

SPARSE_AUTO_THRESHOLD = 100_000  # sparse=None: the sparse store from this many training samples on
INDEX_HELP = "wrap your DataModule in IndexedDataModule(...) or your train DataLoader in index_dataloader(...)"


class LossValCallback(Callback):
    """Values every training sample with LossVal (arXiv 2412.04158) while the model trains.

    Example::

        model = Net()                                   # a LossValMixin LightningModule
        dm = IndexedDataModule(MyDataModule())          # training batches carry sample indices
        cb = LossValCallback(val_data=(x_val, y_val))
        Trainer(callbacks=[cb], max_epochs=30).fit(model, dm)
        cb.values                                       # [N], low = harmful
        cb.to_csv("values.csv")

    What it does, in hook order:

    - ``setup``: creates ``N`` weights (ones) in one of two stores (see ``sparse``); wraps the
      module's ``training_step`` so that it gets the batch without indices while
      :meth:`LossValMixin.lossval_loss` turns the per-sample losses into the LossVal objective.
      Refuses strategies it cannot keep correct (FSDP, DeepSpeed, ``ddp_spawn``/``ddp_fork``).
    - dense store (the paper's way): the weights are the module parameter ``lossval_weights``,
      registered before any strategy wraps the module, so DDP broadcasts it and all-reduces its
      gradient. ``on_fit_start`` moves it into the user's optimizer as its own param group named
      ``"lossval_weights"`` (learning rate ``lr``, no weight decay), out of the user's groups if
      ``self.parameters()`` swept it in. The user's LR schedulers and gradient clipping do not
      see this group: its learning rate stays ``lr`` and its gradient is not clipped.
    - sparse store (the default objective's): the callback holds the weights; at each optimizer
      step the batch's ``(index, gradient)`` pairs are gathered from all ranks and the
      objective's ``update`` (the balanced or normalized step, or per-sample Adam) moves those
      samples only. Per-step cost depends on the batch, not on ``N``.
    - ``on_fit_start`` also computes the validation features once (in eval mode), or at every
      epoch start when the module sets ``lossval_refresh_validation`` (features from the network).
    - every ``log_every_n_steps`` and at each epoch end (rank zero): a weight histogram and the
      scalars ``lossval/weight_mean``, ``_std``, ``_min`` and ``_frac_below_init``; at epoch ends,
      when the noisy rows are known, ``lossval/detection_f1``, ``f1_at_noise_rate``, ``auroc`` and
      ``average_precision``.
    - ``on_fit_end``: writes ``values.csv`` and ``values.pt`` atomically into the run's log
      directory, prints the ``show`` lowest-valued rows (and the detection metrics), and puts
      the same table (and a clean-vs-noisy figure) into TensorBoard.

    ``values.csv`` lists the samples lowest value first: ``rank, index`` (position in the
    training dataset), the DataModule's ``row_columns()`` if it has that method (e.g. ``row``,
    ``id``, ``target``), ``prediction`` if the module has ``lossval_predict(batch)`` (decoded by
    the DataModule's ``format_target`` if present), ``noisy`` when known, and ``value``.

    Checkpoints hold the weights and their optimizer state (dense: module parameter and optimizer
    group; sparse: this callback's state), so resuming, also mid-epoch, continues exactly.

    Args:
        val_data: the validation set the batches are compared with. A ``[V, ...]`` tensor of
            features, a ``Dataset`` or ``DataLoader`` whose batches go through the module's
            ``lossval_features``, a ``(inputs, targets)`` tuple of tensors, or ``None`` for the
            DataModule's ``val_dataloader``.
        lr: step size of the weights' update; ``None``: by the objective's ``update``
            (``functional.STEP_SIZES``): 0.05 for the default's balanced step, which moves a
            sample by at most ``2 * lr`` per visit, and 0.01 for the paper's Adam.
        objective: a preset name, an :class:`ObjectiveConfig` or a dict of its fields (unset
            fields take the paper's values). ``"default"``: this project's configuration
            (normalized masses and loss, saturating positive masses, the balanced sparse step;
            see ``PRESETS``). ``"paper"``: the reference code's objective and dense Adam.
        optimizer_index: which of the module's optimizers gets the weights.
        log_every_n_steps: histogram and scalar cadence in optimizer steps (default: the
            Trainer's ``log_every_n_steps``); 0 logs at epoch ends only.
        export: write ``values.csv`` and ``values.pt`` into the log directory at the end of fit.
        noisy_mask: ``[N]`` bool, the rows known to be corrupted (default: the DataModule's
            ``noisy_mask`` attribute, if any); enables the detection metrics.
        show: how many of the lowest-valued rows to print and log as text at the end of fit.
        sparse: ``False``: dense store in the user's optimizer (reproduces the paper, including
            Adam moving samples outside the batch); ``True``: sparse store with its own per-sample
            update (the objective's ``update``: lazy Adam with betas 0.9/0.999, or the balanced or
            normalized step); ``None``: sparse from 100,000 training samples on, or whenever the
            objective's ``update`` is ``"balanced"`` or ``"normalized"``.
    """

    def __init__(
        self,
        val_data: Tensor | Dataset | DataLoader | tuple | None = None,
        lr: float | None = None,
        objective: str | ObjectiveConfig | dict = "default",
        optimizer_index: int = 0,
        log_every_n_steps: int | None = None,
        export: bool = True,
        noisy_mask: Tensor | None = None,
        show: int = 10,
        sparse: bool | None = None,
    ) -> None:
        self.config = resolve_config(objective)
        lr = STEP_SIZES[self.config.update] if lr is None else lr
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.val_data = val_data
        self.lr = lr
        self.optimizer_index = optimizer_index
        self.log_every_n_steps = log_every_n_steps
        self.export = export
        self.noisy_mask = noisy_mask
        self.show = show
        self.sparse = sparse
        self.columns: dict[str, list] = {}
        self.in_training_step = False
        self.values_path: Path | None = None
        self._store: DenseWeights | SparseWeights | None = None
        self._validation: Validation | None = None
        self._validation_epoch = -1  # the epoch whose start computed the validation features
        self._step: Indexed | None = None
        self._objective_calls = 0
        self._checked_shapes = False
        self._last_logged_step = -1
        self._noisy: Tensor | None = None

    # ------------------------------------------------------------------ values
    @property
    def values(self) -> Tensor:
        """The learned weights, ``[N]`` on the CPU, aligned with the training dataset's indices."""
        if self._store is None:
            raise RuntimeError("no values yet: call trainer.fit(...) with this callback first")
        return self._store.values().detach().float().cpu().clone()

    def table(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The rows of ``values.csv``: lowest value first, with the known per-sample columns."""
        return values_table(_finite_or_raise(self.values, "export", self.config), self.columns, limit)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write :meth:`table` as CSV, atomically (a crash never leaves a truncated file)."""
        return _write_csv(path, self.table())

    def save_values(self, directory: str | os.PathLike) -> Path:
        """Write ``values.csv`` and ``values.pt`` (the ``[N]`` tensor) into ``directory``."""
        return self._save(directory, _finite_or_raise(self.values, "export", self.config))

    def _save(self, directory: str | os.PathLike, values: Tensor) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / "values.pt", lambda f: torch.save(values, f))
        return _write_csv(directory / "values.csv", values_table(values, self.columns))

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not isinstance(pl_module, LossValMixin):
            raise TypeError(
                f"{type(pl_module).__name__} does not provide per-sample losses: add LossValMixin as its first base "
                "class and reduce the per-sample losses in training_step with self.lossval_loss(losses)"
            )
        _check_strategy(trainer)
        n = _count_train_samples(trainer)
        sparse = self.sparse if self.sparse is not None else n >= SPARSE_AUTO_THRESHOLD
        if self.config.update in ("normalized", "balanced"):
            if self.sparse is False:
                raise ValueError(
                    f"the objective's update={self.config.update!r} moves only the batch's samples, which needs the "
                    "sparse weight store: drop sparse=False (or use update='adam')"
                )
            sparse = True
        self._store = SparseWeights(n, self.lr, self.config.update) if sparse else DenseWeights(pl_module, n, self.lr)
        pl_module._lossval_callback = self
        for name, wrapper in (
            ("training_step", self._training_step),
            ("lr_scheduler_step", _scheduler_step_alone),
            ("configure_gradient_clipping", _clipping_alone),
        ):
            method = getattr(pl_module, name)
            setattr(pl_module, name, functools.wraps(method)(functools.partial(wrapper, method)))
        for name in BATCH_HOOKS:
            if is_overridden(name, pl_module):
                setattr(pl_module, name, on_inner_batch(getattr(pl_module, name)))

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for name in (
            "training_step",
            "lr_scheduler_step",
            "configure_gradient_clipping",
            "_lossval_callback",
            *BATCH_HOOKS,
        ):
            pl_module.__dict__.pop(name, None)
        self._step = None
        self.in_training_step = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._store.start(trainer, self._optimizer(trainer))
        self._prepare_validation(trainer, pl_module)
        self._noisy = self._noisy_mask(trainer)
        self._checked_shapes = False
        self._last_logged_step = -1

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if pl_module.lossval_refresh_validation and trainer.current_epoch > self._validation_epoch:
            self._prepare_validation(trainer, pl_module)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if optimizer is self._optimizer(trainer):
            self._store.step(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        every = trainer.log_every_n_steps if self.log_every_n_steps is None else self.log_every_n_steps
        if every and trainer.global_step % every == 0:
            self._log(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _finite_or_raise(self._store.values(), f"epoch {trainer.current_epoch}", self.config)  # no copy
        self._log(trainer)
        if self._noisy is not None and trainer.is_global_zero:
            metrics = detection_report(self.values, self._noisy)
            for logger in trainer.loggers:
                logger.log_metrics({f"lossval/{k}": v for k, v in metrics.items()}, step=trainer.global_step)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        directory = trainer.log_dir or trainer.default_root_dir  # a collective under DDP: every rank asks
        if not trainer.is_global_zero:
            return
        self.columns = self._row_columns(trainer, pl_module)
        values = _finite_or_raise(self.values, "export", self.config)
        if self.export:
            self.values_path = self._save(directory, values)
        self._report(trainer, values)

    def state_dict(self) -> dict[str, Any]:
        if self._store is None:
            return {}
        return {
            "num_samples": self._store.numel(),
            "sparse": self._store.sparse,
            "lr": self.lr,
            "objective": dataclasses.asdict(self.config),
            "store": self._store.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._store is None or "store" not in state_dict:
            return
        current = dataclasses.asdict(self.config)
        saved = state_dict.get("objective", current)
        changed = {k: v for k, v in saved.items() if current.get(k) != v}
        if changed:
            raise ValueError(
                f"the checkpoint's weights were learned with an objective that differs from this run's in {changed}; "
                f"resume with objective={saved} or start a new fit"
            )
        if state_dict["sparse"] != self._store.sparse:
            kind = "sparse" if state_dict["sparse"] else "dense"
            raise ValueError(
                f"the checkpoint was trained with the {kind} weight store: resume with sparse={state_dict['sparse']}"
            )
        self._store.load_state_dict(state_dict["store"])

    # ------------------------------------------------------------------ the step
    def _training_step(self, step: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(batch, Indexed):
            raise TypeError(f"the training batch carries no sample indices: {INDEX_HELP}")
        self._step, self._objective_calls, self.in_training_step = batch, 0, True
        try:
            output = step(batch.data, *args, **kwargs)
        finally:
            self._step, self.in_training_step = None, False
        if self._objective_calls == 0:
            raise RuntimeError(
                "training_step did not call self.lossval_loss(per_sample_losses): LossVal needs one loss per "
                "sample; compute the loss with reduction='none' and return self.lossval_loss(losses)"
            )
        return output

    def objective(self, pl_module: LightningModule, losses: Tensor, features: Tensor | None) -> Tensor:
        """The LossVal objective of the current training batch (called by ``lossval_loss``)."""
        index, batch = self._step
        if losses.dim() != 1 or losses.shape[0] != index.shape[0]:
            raise ValueError(
                f"lossval_loss expects one loss per sample, shape [{index.shape[0]}], got {tuple(losses.shape)}; "
                "compute the loss with reduction='none'"
            )
        if features is None:
            features = pl_module.lossval_features(batch)
        features = features.detach().reshape(features.shape[0], -1)
        if not self._checked_shapes:
            self._check_batch(index, features)
        self._objective_calls += 1
        labels = pl_module.lossval_targets(batch)
        weights = self._store.select(index)
        running = getattr(self._store, "running", None)
        return lossval_objective(weights, losses, features, self._validation, self.config, labels, running)

    def _check_batch(self, index: Tensor, features: Tensor) -> None:
        n = self._store.numel()
        if index.dtype != torch.long or index.dim() != 1 or int(index.min()) < 0 or int(index.max()) >= n:
            raise DataError(f"sample indices must be a [B] long tensor within [0, {n}); got {index!r}: {INDEX_HELP}")
        if features.shape[1] != self._validation.features.shape[1]:
            raise DataError(
                f"the training batch has {features.shape[1]} features but the validation features have "
                f"{self._validation.features.shape[1]}: pass val_data represented like the training inputs "
                "(or override lossval_features so both match)"
            )
        self._checked_shapes = True

    # ------------------------------------------------------------------ fit start
    def _optimizer(self, trainer: Trainer) -> Any:
        if len(trainer.optimizers) <= self.optimizer_index:
            raise ValueError(
                f"LossVal uses optimizer {self.optimizer_index} but configure_optimizers returned "
                f"{len(trainer.optimizers)}; return an optimizer or set optimizer_index"
            )
        return trainer.optimizers[self.optimizer_index]

    def _prepare_validation(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The validation side of the objective from the module as it is now."""
        self._validation = prepare_validation(*self._validation_data(trainer, pl_module), self.config)
        self._validation_epoch = trainer.current_epoch

    def _validation_data(self, trainer: Trainer, pl_module: LightningModule) -> tuple[Tensor, Tensor | None]:
        """The validation features ``[V, D]`` and, for label-aware transport, their targets (else ``None``)."""
        data = self.val_data
        if data is None:
            datamodule = trainer.datamodule
            if datamodule is None or not is_overridden("val_dataloader", datamodule):
                raise DataError(
                    "LossValCallback needs validation data: pass val_data=... or use a DataModule with a val_dataloader"
                )
            data = datamodule.val_dataloader()
        if isinstance(data, tuple) and all(isinstance(t, Tensor) for t in data):
            data = torch.utils.data.TensorDataset(*data)
        if isinstance(data, Tensor) and pl_module.lossval_refresh_validation:
            raise DataError(
                f"{type(pl_module).__name__} computes its LossVal features with the network "
                "(lossval_refresh_validation), so val_data must hold inputs, not features: pass an (inputs, targets) "
                "tuple, a Dataset or a DataLoader"
            )
        labels = None
        if isinstance(data, Tensor):
            features = data
        else:
            loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=1024)
            parts, targets = [], []
            with _eval_mode(pl_module), torch.no_grad():  # features from the network: no BatchNorm updates
                for batch in loader:
                    batch = move_data_to_device(batch, pl_module.device)
                    parts.append(pl_module.lossval_features(batch))
                    if self.config.label_weight > 0:
                        targets.append(pl_module.lossval_targets(batch))
            features = torch.cat(parts) if parts else torch.empty(0)
            if targets and all(t is not None for t in targets):
                labels = torch.cat(targets)
        features = features.detach().to(pl_module.device, torch.float32)
        if features.shape[0] == 0:
            raise DataError("the validation set for LossVal is empty; pass val_data with at least one sample")
        features = features.reshape(features.shape[0], -1)
        bad = (~torch.isfinite(features)).any(dim=1).nonzero().flatten()
        if len(bad):
            raise DataError(
                f"{len(bad)} validation rows hold NaN or inf (first rows: {bad[:10].tolist()}); "
                "drop or impute them before training"
            )
        if self.config.label_weight > 0 and labels is None:
            raise DataError(
                "the objective's label_weight > 0 compares labels, but the validation data has no targets: pass "
                "val_data=(inputs, targets), a Dataset/DataLoader of (input, target) batches, or set label_weight=0"
            )
        return features, labels

    def _noisy_mask(self, trainer: Trainer) -> Tensor | None:
        mask = self.noisy_mask if self.noisy_mask is not None else getattr(trainer.datamodule, "noisy_mask", None)
        if mask is None:
            return None
        mask = torch.as_tensor(mask).bool().cpu().flatten()
        if mask.numel() != self._store.numel():
            raise DataError(
                f"noisy_mask has {mask.numel()} entries but there are {self._store.numel()} training samples"
            )
        return mask

    # ------------------------------------------------------------------ report
    def _row_columns(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, list]:
        datamodule = trainer.datamodule
        columns = dict(datamodule.row_columns()) if callable(getattr(datamodule, "row_columns", None)) else {}
        if callable(getattr(pl_module, "lossval_predict", None)):
            predictions = _predict_training_set(trainer, pl_module)
            decode = getattr(datamodule, "format_target", None)
            columns["prediction"] = decode(predictions) if callable(decode) else predictions.tolist()
        if self._noisy is not None:
            columns["noisy"] = self._noisy.tolist()
        return columns

    def _report(self, trainer: Trainer, values: Tensor) -> None:
        rows = values_table(values, self.columns, self.show)
        n = self._store.numel()
        lines = (
            [f"\nLossVal: the {len(rows)} lowest-valued of {n} training samples (lowest first)", format_table(rows)]
            if rows
            else []
        )
        metrics = detection_report(values, self._noisy) if self._noisy is not None else None
        if metrics:
            lines.append(f"detection of the {int(self._noisy.sum())} known noisy samples: {format_metrics(metrics)}")
        if self.values_path is not None:
            lines.append(f"values of all samples: {self.values_path}")
        if lines:
            print("\n".join(lines), flush=True)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and rows:
                logger.experiment.add_text(
                    "lossval/lowest_rows", format_table(rows, markdown=True), trainer.global_step
                )
                if self._noisy is not None:
                    figure = detection_figure(values, self._noisy)
                    logger.experiment.add_figure("lossval/detection", figure, trainer.global_step)
                logger.experiment.flush()

    # ------------------------------------------------------------------ logging
    def _log(self, trainer: Trainer) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or not trainer.loggers or step == self._last_logged_step:
            return
        self._last_logged_step = step
        w = self._store.values().detach().float()  # on its device: no copy of all N weights
        metrics = weight_stats(w)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_histogram_raw("lossval/weights", global_step=step, **weight_histogram(w))


def _count_train_samples(trainer: Trainer) -> int:
    """Length of the training dataset, read from the loader that fit will use."""
    source = trainer.fit_loop._data_source  # the loader or DataModule given to fit
    if not source.is_defined():
        raise ValueError("LossValCallback found no train dataloader: give fit a training DataLoader or DataModule")
    loader = source.dataloader()
    if not isinstance(loader, DataLoader) or not isinstance(loader.dataset, IndexedDataset):
        raise TypeError(f"the train dataloader does not carry sample indices: {INDEX_HELP}")
    return len(loader.dataset)


@torch.no_grad()
def _predict_training_set(trainer: Trainer, pl_module: LightningModule, batch_size: int = 256) -> Tensor:
    """``lossval_predict`` over the whole training set in index order, on this process."""
    train = trainer.train_dataloader
    loader = DataLoader(train.dataset, batch_size=batch_size, collate_fn=train.collate_fn)
    with _eval_mode(pl_module):
        parts = [pl_module.lossval_predict(move_data_to_device(b.data, pl_module.device)).cpu() for b in loader]
    return torch.cat(parts)


@contextlib.contextmanager
def _eval_mode(module: LightningModule):
    """The module in eval mode for a moment (no dropout, BatchNorm statistics untouched)."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@contextlib.contextmanager
def _weights_group_hidden(optimizer: Any):
    """Take the dense weights' param group out of ``optimizer.param_groups`` for a moment."""
    groups = optimizer.param_groups
    optimizer.param_groups = [g for g in groups if g.get("name") != GROUP_NAME]
    try:
        yield
    finally:
        optimizer.param_groups = groups


def _scheduler_step_alone(scheduler_step: Any, scheduler: Any, *args: Any, **kwargs: Any) -> Any:
    """``lr_scheduler_step`` without the weights' group: schedulers built before it existed
    neither crash on it (LambdaLR, OneCycleLR keep per-group lists) nor change its lr."""
    with _weights_group_hidden(scheduler.optimizer):
        return scheduler_step(scheduler, *args, **kwargs)


def _clipping_alone(configure_gradient_clipping: Any, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
    """``configure_gradient_clipping`` on the network's gradients only, not the weights'."""
    with _weights_group_hidden(optimizer):
        return configure_gradient_clipping(optimizer, *args, **kwargs)


def _check_strategy(trainer: Trainer) -> None:
    """Refuse the strategies whose wrapping or process model would silently break the weights."""
    strategy = trainer.strategy
    name = type(strategy).__name__
    if "FSDP" in name or "DeepSpeed" in name or "ModelParallel" in name:
        raise ValueError(
            f"LossValCallback does not support {name}: it shards or re-wraps parameters, so the per-sample weights "
            "would not stay one consistent tensor. Use strategy='ddp' (or a single device)."
        )
    if getattr(strategy, "_start_method", "popen") != "popen":
        raise ValueError(
            f"LossValCallback does not support {name} with start method '{strategy._start_method}' (ddp_spawn, "
            "ddp_fork, ddp_notebook): the weights learned in the worker processes would not reach this one. Use "
            "strategy='ddp', which re-runs your script for each process (or launch it with torchrun)."
        )


def _write_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    data = table_csv(rows)
    return atomic_write(path, lambda f: f.write(data))


def _finite_or_raise(values: Tensor, when: str, config: ObjectiveConfig) -> Tensor:
    bad = int((~torch.isfinite(values)).sum())
    if not bad:
        return values
    if config.update == "balanced":
        cause = (
            "the weights follow the per-sample losses, so NaN or inf losses reached them: check the training "
            "inputs for NaN or inf and whether the network itself diverges (its learning rate)"
        )
    else:
        cause = (
            "this objective trains the network on L_w * S**k, which multiplies the network's learning rate by a "
            "factor that changes every batch and grows with the features' scale, so with SGD or unscaled inputs "
            "the network and then the weights diverge; use objective='default' (the network trains on its own "
            "loss), standardise the inputs, or use Adam; also check the inputs for NaN or inf"
        )
    raise FloatingPointError(f"{bad} of {values.numel()} LossVal weights are NaN or inf ({when}): {cause}")
