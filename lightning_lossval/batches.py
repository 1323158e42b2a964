"""What LossValCallback checks of every training batch before it values it: the sample indices,
one loss per sample that trains the network, and finite losses and features."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lightning_lossval.errors import DataError, warn
from lightning_lossval.objective import Validation
from lightning_lossval.stores import diverged
from lightning_lossval.updates import UpdateRule
from lightning_lossval.validation import one_class_per_row, training_features

LOWER_LR = "the network has diverged: lower its learning rate"
INDEX_HELP = (
    "wrap your DataModule in IndexedDataModule(...) or your train DataLoader in index_dataloader(...) (a module "
    "serving its own loader: return index_dataloader(DataLoader(...)) from its train_dataloader)"
)


def batch_features(
    pl_module: Any, batch: Any, index: Tensor, losses: Tensor, features: Any, n: int, rule: UpdateRule
) -> Tensor:
    """The batch's ``[B, D]`` features, once ``losses`` are one value per row that the network's
    parameters can learn from, the indices lie in ``[0, n)``, and neither losses nor features hold NaN
    or inf (one such row makes the step's weights NaN; an fp16 loss overflow is the GradScaler's to
    skip); warn of a batch of one row under a rule that compares a batch's rows. One host sync per step."""
    if losses.dim() != 1 or losses.shape[0] != index.shape[0]:
        raise DataError(per_sample_loss_error(tuple(losses.shape), index.shape[0]))
    if not losses.is_floating_point():
        raise DataError(f"lossval_loss needs floating-point per-sample losses, got {losses.dtype}: pass losses.float()")
    if torch.is_grad_enabled() and not losses.requires_grad:
        raise DataError(
            "the per-sample losses given to lossval_loss carry no gradient (computed under torch.no_grad() or "
            "detached), so the network would not train: pass the losses as the loss function returns them"
        )
    if index.shape[0] == 1 and rule.relative:
        warn(
            "a training batch holds one row: the default update values a row against the rest of its batch, so the "
            "row is not valued there and that visit is not counted; use batches of at least 2 rows (drop_last=True "
            "when the last batch of an epoch is left with one)"
        )
    features = (training_features(pl_module, batch) if features is None else features).detach()
    features = features.reshape(features.shape[0], -1)
    scaled = getattr(pl_module.trainer.precision_plugin, "scaler", None) is not None
    bad_features, bad_losses = ~torch.isfinite(features).all(1), ~torch.isfinite(losses.detach()) & (not scaled)
    outside = (index < 0) | (index >= n)
    if bool((bad_features | bad_losses | outside.to(bad_losses.device)).any()):  # the one sync
        if bool(outside.any()):
            raise DataError(
                f"training rows {index[outside][:10].tolist()} are outside the {n} rows the training dataset had "
                "when the fit started: a dataset that changes its length during fit cannot be valued; build the "
                "dataset once, before fit (in the DataModule's setup), and keep its length"
            )
        where = bad_features if bool(bad_features.any()) else bad_losses
        rows, what = index[where.to(index.device)][:10].tolist(), "features: clean or drop those rows"
        if where is bad_losses:
            what = f"losses: check their inputs and targets; if it is all rows of the batch, {diverged(rule, LOWER_LR)}"
        raise DataError(
            f"training rows {rows} (dataset positions, {int(where.sum())} of the batch) have NaN or inf {what}"
        )
    return features


def per_sample_loss_error(shape: tuple[int, ...], batch_size: int) -> str:
    """Why losses of ``shape`` are not one loss per sample of a batch of ``batch_size``, and the fix."""
    got = f"lossval_loss expects one loss per sample, shape [{batch_size}], got {shape}"
    if len(shape) == 0:
        return f"{got}: the loss is already reduced; compute it with reduction='none'"
    reduce = (
        "reduce each sample's values to one, losses.flatten(1).mean(1) (per-token losses with padding: each "
        "sample's mean over its own tokens, (losses * mask).sum(1) / mask.sum(1).clamp_min(1))"
    )
    if shape == (batch_size, batch_size) and batch_size > 1:
        return (
            f"{got}: if a [B, 1] output met a [B] target in the loss function, they broadcast to [B, B] (each "
            "output against every target): give both the same shape, e.g. F.mse_loss(pred.squeeze(1), y, "
            f"reduction='none'); if these are several values per sample (per token or output), {reduce}"
        )
    if len(shape) > 1 and shape[0] == batch_size:
        if math.prod(shape[1:]) == 1:
            return (
                f"{got}: one value per sample with extra dimensions (e.g. F.mse_loss(pred, y.unsqueeze(1), "
                "reduction='none') on a [B, 1] output); pass losses.squeeze(1) or losses.flatten()"
            )
        return f"{got}: several values per sample (per output, label or token); {reduce}"
    if len(shape) == 1 and shape[0] % batch_size:  # not a whole number of values per sample
        return (
            f"{got}: the batch held {batch_size} samples when it left the DataLoader. Either the loss is not one "
            "per sample (compute it with reduction='none'), or the DataLoader's collate_fn drops or adds samples; "
            "it must return every sample it gets, in order (a dataset item that is None is left out for you, "
            "with its index)"
        )
    return (
        f"{got}: the first dimension must be the batch's samples; compute the loss with reduction='none' and "
        f"reduce anything else per sample (per-token losses: losses.view({batch_size}, -1), then each sample's "
        f"mean over its own tokens, (losses * mask).sum(1) / mask.sum(1).clamp_min(1) with the [{batch_size}, T] "
        "padding mask)"
    )


def check_first_batch(
    index: Tensor, features: Tensor, labels: Tensor | None, validation: Validation, rule: UpdateRule
) -> None:
    """Refuse indices that are no ``[B]`` long tensor, and features (and, for label-aware transport,
    targets) that differ in kind or width from the validation side's."""
    if index.dtype != torch.long or index.dim() != 1:
        raise DataError(
            f"sample indices must be a [B] long tensor, got {index.dtype} {tuple(index.shape)}: {INDEX_HELP}"
        )
    val_dim = validation.features.shape[1]
    if validation.labels is not None and labels is not None and _kind(labels) != _kind(validation.labels):
        raise DataError(
            f"label-aware transport compares each batch's targets with the validation targets, but the batch's "
            f"are {_kind(labels)} and the validation set's {_kind(validation.labels)}: give both the same way "
            "(class indices [N], or numeric [N, K] targets such as one-hot rows on both sides)"
        )
    if not features.is_floating_point() and features.dtype != torch.uint8:  # uint8: pixels, which have a scale
        warn(
            f"the training batch's features are integers ({features.dtype}): LossVal compares rows by their "
            "distances in feature space, which for token ids or category codes mean nothing; override "
            "lossval_features to return float features (an embedding, one-hot columns), or ignore this for counts"
        )
    if features.shape[1] != val_dim:
        raise DataError(
            f"the training batch has {features.shape[1]} features but the validation features have {val_dim}: "
            "pass val_data represented like the training inputs (or override lossval_features so both match)"
        )


def _kind(targets: Tensor) -> str:
    if one_class_per_row(targets):
        return "class indices [N]"
    return f"numeric targets with {targets[0].numel()} value(s) per row"
