"""LossValCallback: learns one weight per training sample during an ordinary ``fit``.

What it does, in hook order:

- ``setup``: refuses strategies it cannot keep correct (FSDP, DeepSpeed, ``ddp_spawn`` /
  ``ddp_fork``; ``lightning_lossval.ranks``). Right after the module's own ``setup`` (which
  Lightning calls after the callbacks', and where a module may build the datasets its loaders
  serve): creates ``N`` new weights (ones) in a store (``lightning_lossval.stores``) and
  patches the module (``lightning_lossval.patching``) so that ``training_step`` gets the batch
  without indices while :meth:`LossValMixin.lossval_loss` turns the per-sample losses into the
  batch's LossVal loss. ``teardown`` and ``on_exception`` undo every patch, so a failed fit
  leaves the module as it was and a later fit starts afresh.
- ``on_fit_start``: the dense store joins the user's optimizer; the validation features are computed
  once (in eval mode), or at every epoch start when the module sets ``lossval_refresh_validation``
  (features from the network). Training steps before it (a tuner's trial runs: ``Tuner.lr_find``,
  ``scale_batch_size``) train on the plain mean loss and leave the weights alone.
- every optimizer step: the sparse store moves the batch's samples (gathered from all ranks);
  both stores count each row's visits. Once per batch: an optimizer that evaluates its closure
  again (LBFGS) runs the training step again on the same indices, and its later evaluations'
  LossVal gradients are dropped. At the first epoch end, weights that no optimizer step
  ever moved are an error that names ``optimizer_index``.
- every ``log_every_n_steps`` and at each epoch end (rank zero): a weight histogram and the
  scalars ``lossval/weight_mean``, ``_std``, ``_min`` and ``_frac_below_init``; at epoch ends,
  when the noisy rows are known, the detection metrics (``lossval/auroc``, ...).
- ``on_fit_end`` (rank zero): writes ``values.csv`` and ``values.pt`` atomically into the
  logger's log directory (without one: a new ``<default_root_dir>/lossval/version_N``), prints
  the ``show`` lowest-valued rows (and the detection metrics), and puts the same table (and a
  clean-vs-noisy figure) into TensorBoard.

``values.csv`` lists the samples lowest value first: ``rank, index`` (position in the training
dataset), the DataModule's ``row_columns()`` if it has that method (e.g. ``row``, ``id``,
``target``), ``dataset_row`` for a ``Subset`` training set, ``prediction`` if the module has
``lossval_predict(batch)`` (decoded by the DataModule's ``format_target``; empty for a dataset item
that is ``None``), ``noisy`` when known (``yes``/``no``), ``visits`` (0: never measured), ``value``
and ``flagged`` (``yes``: the lower group of the 2-means split of the measured rows' values, a
suggested cut).
The callback's checkpoint state holds the weights, the visits and the update rule's state (the
module's own state dict stays free of them), so resuming, also mid-epoch, continues exactly;
``trainer.test`` / ``validate`` with a ``ckpt_path`` leave the values of the fit alone.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lightning_lossval import patching
from lightning_lossval.batches import INDEX_HELP, batch_features, check_first_batch
from lightning_lossval.data import Indexed, IndexedDataset, load_pending_state, several_loaders_error
from lightning_lossval.errors import ConfigError, DataError
from lightning_lossval.mixin import WEIGHTS, LossValMixin
from lightning_lossval.objective import Objective, Validation, lossval_objective, prepare_validation, validation_on
from lightning_lossval.presets import Preset, resolve
from lightning_lossval.ranks import check_strategy
from lightning_lossval.report import save_values, values_table, write_csv
from lightning_lossval.run_report import (
    log_detection,
    log_weights,
    noisy_mask,
    print_report,
    row_columns,
    save_interrupted,
    save_values_somewhere,
    values_dir,
)
from lightning_lossval.stores import (
    DenseWeights,
    SparseWeights,
    check_applied,
    check_dense_setup,
    check_finite,
    check_store,
    load_state,
    new_store,
    save_state,
)
from lightning_lossval.updates import UpdateRule
from lightning_lossval.validation import validation_data

NO_MIXIN = (
    "add LossValMixin as its first base class and reduce the per-sample losses in training_step with "
    "self.lossval_loss(losses)"
)
NOT_LOADED = (
    "the checkpoint's LossVal weights are not loaded outside fit, and validate, test and predict write no values "
    "(cb.values, if any, stay those of this callback's last fit); only a fit with the checkpoint continues them"
)
NOTHING_TRAINED = (
    "this fit trained on no batch (its max_epochs or max_steps was reached already, or its training loader has "
    "none: drop_last=True with a batch size above the dataset's rows?): it wrote no values files, and values stay "
    "those of this callback's fit before if it valued as many rows (otherwise cb.values raises)"
)
FRESH_WEIGHTS = (
    "holds no LossVal weights (written without this callback): they start at 1.0 and value the epochs from here on"
)
NOT_CALLED = (
    "training_step did not call self.lossval_loss(per_sample_losses): LossVal needs one loss per sample; compute "
    "the loss with reduction='none' and return self.lossval_loss(losses)"
)


class LossValCallback(Callback):
    """Values every training sample with LossVal (arXiv 2412.04158) while the model trains.

    Example::

        model = Net()                                   # a LossValMixin LightningModule
        dm = IndexedDataModule(MyDataModule())          # training batches carry sample indices
        cb = LossValCallback(val_data=(x_val, y_val))
        Trainer(callbacks=[cb], max_epochs=30).fit(model, dm)
        cb.values                                       # [N], low = harmful
        cb.to_csv("values.csv")

    Args:
        val_data: the validation set the batches are compared with: a ``[V, ...]`` feature tensor, an ``(inputs,
            targets)`` tuple or list of tensors, a ``Dataset`` or ``DataLoader`` whose batches go through the
            module's ``lossval_features``, or ``None`` for the fit's (``val_dataloaders``, ``val_dataloader()``).
        lr: the weights' step size, replacing the update rule's (0.05 for the default's balanced step,
            which moves a sample by at most ``2 * lr`` per visit; 0.01 for the paper's Adam).
        objective: a preset name (``"default"``, ``"labels"``, ``"paper"``), a mapping of single fields that
            starts from a preset (``"preset"``, default ``"default"``), an ``Objective`` or a ``Preset``
            (``lightning_lossval.objective``, ``.presets``).
        update: an update rule (``lightning_lossval.updates``) replacing the preset's.
        optimizer_index: which of the module's optimizers the weights' steps go with (under manual
            optimization: the one that steps after the LossVal loss's backward).
        log_every_n_steps: histogram and scalar cadence in optimizer steps (default: the Trainer's); 0: epoch ends.
        export: write ``values.csv`` and ``values.pt`` at the end of fit (``run_report.values_dir`` says where);
            a fit that trains no batch writes none, and its callback keeps the values of its fit before.
        noisy_mask: ``[N]`` bool, the rows known to be corrupted (default: the DataModule's
            ``noisy_mask`` attribute, if any); enables the detection metrics.
        show: how many of the lowest-valued rows to print and log as text at the end of fit.
        sparse: ``False``: dense store, the weights in the user's optimizer (the paper's way, Adam only);
            ``True``: sparse; ``None``: sparse from 100,000 samples on, or when the rule moves only the batch's.
    """

    def __init__(
        self,
        val_data: Tensor | Dataset | DataLoader | tuple | None = None,
        lr: float | None = None,
        objective: str | dict | Objective | Preset = "default",
        update: UpdateRule | None = None,
        optimizer_index: int = 0,
        log_every_n_steps: int | None = None,
        export: bool = True,
        noisy_mask: Tensor | None = None,
        show: int = 10,
        sparse: bool | None = None,
    ) -> None:
        self.preset = resolve(objective, update, lr)
        check_store(self.preset.update, sparse)
        _check_show(show)
        self.val_data, self.optimizer_index, self.log_every_n_steps = val_data, optimizer_index, log_every_n_steps
        self.export, self.noisy_mask, self.show, self.sparse = export, noisy_mask, show, sparse
        self.in_training_step, self.values_path = False, None  # values_path: where this fit's values.csv went
        self._store = self._previous = None  # DenseWeights | SparseWeights: this fit's, and the fit before's
        self._fitting = self._started = self._refresh = False  # in fit; after on_fit_start; features refreshed
        self._validation, self._validation_epoch, self._saved_validation = None, -1, None  # that epoch's; a ckpt's
        self._step: Indexed | None = None  # the running training step's indices and batch
        self._index: Tensor | None = None  # the indices of the batch the strategy moved last
        self._calls, self._checked_shapes, self._last_logged_step, self._noisy = 0, False, -1, None
        self._rank_zero = True  # global rank zero of the last fit: the one process that writes files

    # ------------------------------------------------------------------ values
    @property
    def values(self) -> Tensor:
        """The learned weights, ``[N]`` on the CPU, aligned with the training dataset's indices."""
        if self._store is None:
            raise RuntimeError("no values yet: no trainer.fit(...) with this callback has trained a batch")
        return self._store.values().detach().float().cpu().clone()

    @property
    def columns(self) -> dict[str, list]:
        """``values.csv``'s columns besides the values (``row``, ``id``, ``target``, ``visits``...), of the same fit."""
        return {} if self._store is None else self._store.columns

    @property
    def visits(self) -> Tensor:
        """How many times each sample was in a training batch, ``[N]`` long on the CPU (0: never measured)."""
        if self._store is None:
            raise RuntimeError("no visits yet: no trainer.fit(...) with this callback has trained a batch")
        return self._store.visits.cpu().clone()

    def table(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The rows of ``values.csv``, lowest value first, as Python values (``flagged``, ``noisy``: bools)."""
        return values_table(check_finite(self.values, "export", self.preset.update), self.columns, limit)

    def to_csv(self, path: str | os.PathLike) -> Path | None:
        """Write :meth:`table` as CSV atomically; after a DDP fit only on global rank zero (others: None)."""
        return write_csv(path, self.table()) if self._rank_zero else None

    def save_values(self, directory: str | os.PathLike) -> Path | None:
        """Write ``values.csv`` and ``values.pt`` (the ``[N]`` tensor) into ``directory``; rank zero only."""
        values = check_finite(self.values, "export", self.preset.update)
        return save_values(directory, values, self.columns) if self._rank_zero else None

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not isinstance(pl_module, LossValMixin):
            raise ConfigError(f"{type(pl_module).__name__} does not provide per-sample losses: {NO_MIXIN}")
        check_strategy(trainer)
        patching.after_setup(pl_module, lambda: self._new_store(trainer, pl_module))
        self._fitting, self._started, self._resumed, self._rank_zero = True, False, False, trainer.is_global_zero

    def _new_store(self, trainer: Trainer, pl_module: LightningModule) -> None:  # N new weights, module patched
        self._previous = self._store  # what a fit that trains no batch keeps (on_fit_end)
        self._store = new_store(_count_train_samples(trainer), self.preset.update, self.sparse, pl_module.device)
        step, self._batch = functools.partial(self._training_step, trainer), (-1, None)  # batch number, indices
        patching.patch(pl_module, self, step, None if self._store.sparse else self._store.weights)
        patching.take_indices(trainer.strategy, lambda index: setattr(self, "_index", index))

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self.on_exception(trainer, pl_module, None)

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException | None) -> None:
        if self._started and self.export:  # after Ctrl-C or SIGTERM rank zero writes the values learned so far
            self.values_path = save_interrupted(trainer, self._store, exception, self._noisy) or self.values_path
        patching.restore(pl_module)  # the module is the user's again: no patches, no weights parameter
        patching.release_indices(trainer.strategy)
        self._fitting, self._started, self._saved_validation = False, False, None

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        optimizer = _optimizer(trainer, self.optimizer_index)
        check_dense_setup(trainer, pl_module, self._store, optimizer)
        self._store.start(trainer, optimizer)
        self._prepare_validation(trainer, pl_module)
        self._noisy = noisy_mask(self.noisy_mask, trainer, self._store.numel())
        self._checked_shapes, self._last_logged_step, self._started = False, -1, True
        self._automatic, self._refresh = pl_module.automatic_optimization, pl_module.lossval_refresh_validation

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._refresh and trainer.current_epoch > self._validation_epoch:
            self._prepare_validation(trainer, pl_module)

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if optimizer is _optimizer(trainer, self.optimizer_index):
            self._store.step(trainer)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        every = trainer.log_every_n_steps if self.log_every_n_steps is None else self.log_every_n_steps
        if every and trainer.global_step % every == 0 and not trainer.fit_loop.epoch_loop._should_accumulate():
            check_finite(self._store.values(), f"step {trainer.global_step}", self.preset.update)
            self._log(trainer)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        check_finite(self._store.values(), f"epoch {trainer.current_epoch}", self.preset.update)  # no copy
        check_applied(self._store, self.optimizer_index, trainer, self.preset.update)
        self._log(trainer)
        if self._noisy is not None and trainer.is_global_zero:
            log_detection(trainer, self.values, self._noisy, self.visits > 0)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not (self._store.selected or self._store.visits.any()):  # alike on every rank: none trained, none resumed
            self._store = _kept(self._previous, self._store)
            return rank_zero_info(f"LossValCallback: {NOTHING_TRAINED}")
        directory = values_dir(trainer) if self.export else None  # a collective under DDP: every rank asks
        if not trainer.is_global_zero:
            return
        self._store.columns = row_columns(trainer, pl_module, self._noisy, self._store.visits)
        values = check_finite(self.values, "export", self.preset.update)
        if directory is not None:
            self.values_path = save_values_somewhere(directory, values, self.columns)
        print_report(trainer, values, self.columns, self.show, self._noisy, self.values_path)

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"].pop(WEIGHTS, None)  # the dense weights are in this callback's state

    @override
    def state_dict(self) -> dict[str, Any]:
        state = {} if self._store is None else save_state(self._store, self.preset)
        if self._refresh and self._validation is not None:  # features from the network as the epoch began
            state["validation"] = (self._validation_epoch, validation_on(self._validation, "cpu")._asdict())
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "store" not in state_dict:
            return
        if not self._fitting:  # trainer.test / validate / predict(ckpt_path=...)
            return rank_zero_info(f"LossValCallback: {NOT_LOADED}")
        load_state(self._store, state_dict, self.preset)
        self._resumed, self._saved_validation = True, state_dict.get("validation")

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        load_pending_state(trainer)
        restored = _restorable(self._saved_validation, trainer, self._validation, self._refresh)
        if restored is not None:  # a mid-epoch checkpoint's features, as its epoch began
            self._validation, self._validation_epoch = restored, trainer.current_epoch
        if trainer.ckpt_path and not self._resumed:  # after every strategy's restore
            rank_zero_info(f"LossValCallback: {trainer.ckpt_path} {FRESH_WEIGHTS}")

    # ------------------------------------------------------------------ the step
    def _training_step(self, trainer: Trainer, step: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(batch, Indexed):  # a batch that did not pass the strategy's batch_to_device
            self._index, batch = batch
        number, again = trainer.fit_loop.epoch_loop.total_batch_idx, self._index is None
        if not again:  # a new batch; an optimizer that evaluates its closure again (LBFGS) reuses it
            self._batch, self._index = (number, self._index), None
        elif self._batch[0] != number:
            raise DataError(f"the training batch carries no sample indices: {INDEX_HELP}")
        if not self._started:  # a tuner's trial fit before this fit's start: the plain loss, weights untouched
            return step(batch, *args, **kwargs)
        self._store.begin_batch(again)
        self._step, self._calls, self.in_training_step = Indexed(self._batch[1], batch), 0, True
        try:
            output = step(batch, *args, **kwargs)
        finally:
            self._step, self.in_training_step = None, False
        if output is None and self._automatic:  # the step skips this batch, as Lightning allows
            self._store.skip_batch()
        elif self._calls == 0 and output is not None:
            raise ConfigError(NOT_CALLED)
        return output

    def loss(self, pl_module: LightningModule, losses: Tensor, features: Tensor | None) -> Tensor:
        """The LossVal loss of the running training step's batch (what ``lossval_loss`` returns)."""
        index, batch = self._step
        features = batch_features(pl_module, batch, index, losses, features, self._store.numel(), self.preset.update)
        labels, state = pl_module.lossval_targets(batch), self._store.call_state(first=self._calls == 0)
        if not self._checked_shapes:
            check_first_batch(index, features, labels, self._validation, self.preset.update)
            self._checked_shapes = True
        self._calls += 1
        (objective, rule), weights = self.preset, self._store.select(index)
        kwargs = dict(labels=labels, update=rule, state=state)
        return lossval_objective(weights, losses, features, self._validation, objective, **kwargs)

    # ------------------------------------------------------------------ helpers
    def _prepare_validation(self, trainer: Trainer, pl_module: LightningModule) -> None:
        objective = self.preset.objective
        features, labels = validation_data(self.val_data, trainer, pl_module, objective.label_weight > 0)
        self._validation = prepare_validation(features, labels, objective)
        self._validation_epoch = trainer.current_epoch

    def _log(self, trainer: Trainer) -> None:
        if trainer.is_global_zero and trainer.loggers and trainer.global_step != self._last_logged_step:
            self._last_logged_step = trainer.global_step
            log_weights(trainer, self._store.values())


def _restorable(saved: Any, trainer: Trainer, current: Validation, refresh: bool) -> Validation | None:
    """A checkpoint's ``(epoch, Validation fields)``, if of this epoch and validation set's shape, on the device."""
    if refresh and saved and saved[0] == trainer.current_epoch and saved[1]["features"].shape == current.features.shape:
        return validation_on(saved[1], trainer.lightning_module.device)
    return None


def _count_train_samples(trainer: Trainer) -> int:
    """Length of the training dataset, read from the loader that fit will use."""
    source = trainer.fit_loop._data_source  # the loader or DataModule given to fit
    if not source.is_defined():
        raise DataError("LossValCallback found no train dataloader: give fit a training DataLoader or DataModule")
    loader = source.dataloader()
    if (several := several_loaders_error(loader)) is not None:
        raise DataError(several)
    if not isinstance(loader, DataLoader) or not isinstance(loader.dataset, IndexedDataset):
        raise DataError(f"the train dataloader does not carry sample indices: {INDEX_HELP}")
    return len(loader.dataset)


def _kept(previous: SparseWeights | DenseWeights | None, store: SparseWeights | DenseWeights) -> Any:
    """The store of the fit before, if it valued as many samples as ``store``; else none (no values: 1.0 for every
    row would look measured)."""
    return previous if previous is not None and previous.numel() == store.numel() else None


def _optimizer(trainer: Trainer, index: int) -> Any:
    if len(trainer.optimizers) <= index:
        raise ConfigError(
            f"LossVal uses optimizer {index} but configure_optimizers returned {len(trainer.optimizers)}; return an "
            "optimizer or set optimizer_index"
        )
    return trainer.optimizers[index]


def _check_show(show: Any) -> None:
    if isinstance(show, bool) or not isinstance(show, int) or show < 0:
        raise ConfigError(f"show is how many of the lowest-valued rows to print, a whole number >= 0; got {show!r}")
