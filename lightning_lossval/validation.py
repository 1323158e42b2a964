"""Turning ``val_data`` (or the fit's validation loaders) into the validation side's features and targets.

Where the validation set comes from, first match wins:

1. ``LossValCallback(val_data=...)``;
2. the loaders the fit validates on: ``trainer.fit(model, train_dataloaders=..., val_dataloaders=...)``,
   the DataModule's ``val_dataloader()``, or the LightningModule's own ``val_dataloader()``.

Several loaders (a list or dict of them, or a ``CombinedLoader``) are one validation set, their
rows concatenated in order: LossVal compares the training data with everything it validates on.
To compare with one of them only, pass that one as ``val_data``.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from lightning_lossval.errors import DataError

MIN_VALIDATION_ROWS = 2  # the transport distance to a single point ranks samples by their distance to it, no more
VALIDATION_HELP = (
    "pass LossValCallback(val_data=...) (a [V, D] feature tensor, an (inputs, targets) tuple or list of tensors, a "
    "Dataset or a DataLoader), give fit validation loaders (trainer.fit(model, train_dataloaders=..., "
    "val_dataloaders=...)), or define val_dataloader() on your DataModule or LightningModule"
)


@contextlib.contextmanager
def eval_mode(module: LightningModule, stage: RunningStage | None = RunningStage.VALIDATING):
    """The module in eval mode and its trainer in ``stage`` (``None``: left as it is) for a moment: no dropout,
    BatchNorm statistics untouched, and batch hooks that augment while ``trainer.training`` leave these
    batches alone."""
    modes = [(m, m.training) for m in module.modules()]
    state = getattr(module._trainer, "state", None) if stage else None
    saved = state.stage if state is not None else None
    module.eval()
    if state is not None:
        state.stage = stage
    try:
        yield
    finally:
        for submodule, training in modes:  # each as it was: a part the user froze in eval mode stays so
            submodule.training = training
        if state is not None:
            state.stage = saved


def training_features(pl_module: Any, batch: Any) -> Tensor:
    """``lossval_features(batch)`` of a training batch without a gradient and, when they come from the network
    (``lossval_refresh_validation``), in eval mode, as the validation side's are: running the network for
    them then neither updates BatchNorm statistics nor draws dropout masks from the training's generators."""
    # without the flag nothing of the network runs (its contract), and switching modes would only cost time
    modes = eval_mode(pl_module, None) if pl_module.lossval_refresh_validation else contextlib.nullcontext()
    with torch.no_grad(), modes:
        return pl_module.lossval_features(batch)


@contextlib.contextmanager
def random_state_kept(device: torch.device):
    """Every random generator as it was afterwards (Python's, NumPy's, torch's, the module's GPU's):
    reading the validation loaders (each new DataLoader iterator draws a seed, shuffles and augments)
    must not change the dropout masks, shuffles and augmentations of the user's training."""
    python, numpy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)


def fit_validation(trainer: Trainer) -> tuple[Any, str]:
    """The loader(s) the running fit validates on and where they come from, in words.

    Lightning keeps them in the fit loop's validation source: the ``val_dataloaders`` given to
    ``fit``, else the DataModule, else the LightningModule (whose ``val_dataloader`` hooks it calls).
    """
    source = trainer.fit_loop.epoch_loop.val_loop._data_source
    if source.instance is None or not source.is_defined():
        raise DataError(f"LossValCallback needs a validation set and this fit has none: {VALIDATION_HELP}")
    if isinstance(source.instance, (LightningModule, LightningDataModule)):
        origin = f"{type(source.instance).__name__}.val_dataloader()"
    else:
        origin = "the val_dataloaders given to trainer.fit"
    return source.dataloader(), origin


def validation_parts(data: Any, origin: str = "val_data") -> list[Tensor | Iterable]:
    """``data`` as a list of parts, each a feature tensor or an iterable of batches; their rows concatenated
    are the validation set.

    A tuple or list of tensors is ``(inputs, targets[, ...])`` with one row per sample; any other tuple or
    list, a dict's values and a ``CombinedLoader``'s loaders are several parts. NumPy arrays count as tensors.
    """
    if isinstance(data, np.ndarray) or (
        isinstance(data, (tuple, list)) and any(isinstance(t, np.ndarray) for t in data)
    ):
        arrays = [t for t in (data if isinstance(data, (tuple, list)) else [data]) if isinstance(t, np.ndarray)]
        kinds = sorted({str(a.dtype) for a in arrays if a.dtype.kind not in "biuf"})  # text, objects, dates
        if kinds:
            raise DataError(
                f"{origin} holds NumPy arrays of {', '.join(kinds)} (text or objects): give numbers, encoded as the "
                "training inputs are (categories as one-hot columns or class indices)"
            )
        data = [torch.as_tensor(t) for t in data] if isinstance(data, (tuple, list)) else torch.as_tensor(data)
    if isinstance(data, Tensor):
        return [data]
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, Tensor) for t in data):
        rows = [len(t) if t.dim() else 0 for t in data]
        if len(set(rows)) > 1:
            raise DataError(
                f"{origin} holds {len(data)} tensors with {rows} rows; as (inputs, targets) every tensor needs one row "
                "per validation sample"
            )
        return [DataLoader(TensorDataset(*data), batch_size=1024)]
    if isinstance(data, CombinedLoader):
        data = data.flattened
    elif isinstance(data, Mapping):
        data = list(data.values())
    if isinstance(data, (tuple, list)):
        if any(isinstance(t, Tensor) for t in data):
            raise DataError(
                f"{origin} holds tensors among {[type(t).__name__ for t in data]}: tensors go in alone, as one [V, D] "
                "feature tensor or an (inputs, targets) tuple or list; wrap the others in a Dataset or DataLoader"
            )
        return [part for item in data for part in validation_parts(item, origin)]
    if isinstance(data, Dataset):
        return [DataLoader(data, batch_size=1024, collate_fn=_collate_dataset)]
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        return [data]
    raise DataError(f"{origin} of type {type(data).__name__} cannot be read as a validation set: {VALIDATION_HELP}")


def _collate_dataset(items: list) -> Any:
    """``default_collate`` of a validation ``Dataset``'s items, refused with the fix when they cannot be stacked."""
    try:
        return default_collate(items)
    except (RuntimeError, TypeError) as error:
        raise DataError(
            f"the validation Dataset's items cannot be stacked into a batch by PyTorch's default collate ({error}): "
            "pass val_data=DataLoader(dataset, batch_size=..., collate_fn=...) with the collate_fn that pads or "
            "batches them, as your training loader's does"
        ) from error


def validation_data(
    val_data: Tensor | Dataset | DataLoader | tuple | list | None,
    trainer: Trainer,
    pl_module: LightningModule,
    with_labels: bool,
) -> tuple[Tensor, Tensor | None]:
    """The validation features ``[V, D]`` (float32, on the module's device) and, when ``with_labels``
    (label-aware transport), their targets.

    ``val_data`` is a feature tensor, an ``(inputs, targets)`` tuple or list of tensors, a ``Dataset``
    or a ``DataLoader`` (or a list of them) whose batches go through the module's
    ``lossval_features`` (and ``lossval_targets``), or ``None`` for the loaders the fit validates on
    (see the module docstring). Batches reach ``lossval_features`` as training batches reach
    ``training_step``: through the module's and the DataModule's batch-transfer hooks
    (``on_before_batch_transfer``, ``transfer_batch_to_device``, ``on_after_batch_transfer``), so
    both sides are compared in the same representation. At least :data:`MIN_VALIDATION_ROWS` rows.
    """
    with random_state_kept(pl_module.device):  # the user's training draws as without this read
        data, origin = fit_validation(trainer) if val_data is None else (val_data, "val_data")
        parts = validation_parts(data, origin)
        if pl_module.lossval_refresh_validation and any(isinstance(p, Tensor) for p in parts):
            raise DataError(
                f"{type(pl_module).__name__} computes its LossVal features with the network "
                "(lossval_refresh_validation), so val_data must hold inputs, not features: pass an (inputs, targets) "
                "tuple, a Dataset or a DataLoader"
            )
        features: list[Tensor] = []
        targets: list[Tensor | None] = []
        with eval_mode(pl_module), torch.no_grad():  # features from the network: no BatchNorm updates
            for loader_index, part in enumerate(parts):
                if isinstance(part, Tensor):
                    features.append(_rows(part))
                    targets.append(None)
                    continue
                for batch in part:
                    batch = as_step_batch(batch, trainer, pl_module, loader_index)
                    features.append(_rows(pl_module.lossval_features(batch)))
                    targets.append(pl_module.lossval_targets(batch) if with_labels else None)
        return _checked(features, targets, with_labels, origin, pl_module.device)


def as_step_batch(batch: Any, trainer: Trainer, pl_module: LightningModule, loader_index: int = 0) -> Any:
    """``batch`` as a step receives it: in the precision's dtype (``precision="64-true"``), through the
    module's and DataModule's batch-transfer hooks and onto the module's device, as Lightning's loops
    pass it on."""
    batch = trainer.precision_plugin.convert_input(batch)
    batch = pl_module._on_before_batch_transfer(batch, dataloader_idx=loader_index)
    return trainer.strategy.batch_to_device(batch, dataloader_idx=loader_index)


def _rows(features: Tensor) -> Tensor:
    """``features`` as ``[rows, D]``: a ``[V]`` tensor is one feature per row, ``[V, ...]`` is flattened per row."""
    return features.flatten(1) if features.dim() > 1 else features.reshape(-1, 1)


def one_class_per_row(targets: Tensor) -> bool:
    """Whether ``targets`` are integer classes, one per row: ``[N]`` or ``[N, 1]``."""
    return not targets.is_floating_point() and math.prod(targets.shape[1:]) == 1


def _checked(
    features: list[Tensor], targets: list[Tensor | None], with_labels: bool, origin: str, device: torch.device
) -> tuple[Tensor, Tensor | None]:
    """The parts' rows concatenated, refused when too few, not finite, or without the targets ``with_labels`` needs."""
    rows = sum(f.shape[0] for f in features)
    if rows == 0:
        raise DataError(
            f"the validation set for LossVal ({origin}) is empty; give it at least {MIN_VALIDATION_ROWS} samples"
        )
    if rows < MIN_VALIDATION_ROWS:
        raise DataError(
            f"the validation set for LossVal ({origin}) has {rows} row, but LossVal needs at least "
            f"{MIN_VALIDATION_ROWS}: the transport distance to a single point only says how far each training sample "
            "is from it, not how well it fits the validation distribution; give it more validation samples (a few "
            "hundred are typical)"
        )
    widths = sorted({f.shape[1] for f in features})
    if len(widths) > 1:
        raise DataError(
            f"the validation features of {origin} have different widths {widths} across batches or loaders; give "
            "every validation sample the same number of features"
        )
    joined = torch.cat([f.detach().to(device, torch.float32) for f in features])
    bad = (~torch.isfinite(joined)).any(dim=1).nonzero().flatten()
    if len(bad):
        raise DataError(
            f"{len(bad)} validation rows hold NaN or inf (first rows: {bad[:10].tolist()}); "
            "drop or impute them before training"
        )
    if not with_labels:
        return joined, None
    if any(t is None for t in targets):
        raise DataError(
            "the objective's label_weight > 0 compares labels, but the validation data has no targets: pass "
            "val_data=(inputs, targets), a Dataset/DataLoader of (input, target) batches, or set label_weight=0"
        )
    # integer targets hold one class per row ([V] or [V, 1]); float ones one or K numbers; int32 joins int64
    kinds = {("float" if t.is_floating_point() else "integer", tuple(t.shape[1:])) for t in targets}
    classes = all(t.is_floating_point() or one_class_per_row(t) for t in targets)
    counted = sum(len(t) for t in targets)
    if len(kinds) > 1 or not classes or counted != rows:
        found = ", ".join(f"{kind} [rows{''.join(f', {n}' for n in shape)}]" for kind, shape in sorted(kinds))
        if counted != rows:
            found += f" with {counted} rows for {rows} rows of features"
        raise DataError(
            f"label-aware transport (label_weight > 0) compares one target per validation row, integer classes [V] "
            f"or float numeric targets [V] / [V, K] of one width, but the targets of {origin} are {found}: return "
            "multi-hot targets as floats from lossval_targets(batch); per-token targets have no one label per row, "
            "so set label_weight=0"
        )
    return joined, torch.cat([t.reshape(len(t)) if one_class_per_row(t) else t for t in targets])  # classes: [V]
