"""Lightning glue of the report: weight logs during fit, the values table's columns, where the values
files go, the final printout."""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from lightning_lossval.errors import DataError, warn
from lightning_lossval.metrics import detection_report
from lightning_lossval.report import (
    OWN_COLUMNS,
    detection_figure,
    flagged_rows,
    format_metrics,
    format_table,
    next_version_dir,
    save_values,
    values_table,
    weight_histogram,
    weight_stats,
)
from lightning_lossval.validation import as_step_batch, eval_mode, random_state_kept


def log_step(trainer: Trainer) -> int:
    """The step Lightning logs the running batch's (and at an epoch's end, the epoch's) metrics at: the
    optimizer step just taken counts from 0 there, so that LossVal's curves line up with ``val_loss``'s."""
    return max(trainer.global_step - 1, 0)


def log_weights(trainer: Trainer, weights: Tensor) -> None:
    """The weights' scalars to every logger and their histogram to TensorBoard (call on rank zero)."""
    weights = weights.detach().float()  # where they live: no copy of all N weights to the CPU
    metrics = weight_stats(weights)
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=log_step(trainer))
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_histogram_raw(
                "lossval/weights", global_step=log_step(trainer), **weight_histogram(weights)
            )


def log_detection(trainer: Trainer, values: Tensor, noisy: Tensor, measured: Tensor) -> None:
    """The detection metrics of the ``measured`` rows' ``values`` against the known ``noisy`` rows, to every
    logger (a row no batch held keeps its value 1.0, which says nothing)."""
    metrics = detection_report(values[measured], noisy[measured])
    for logger in trainer.loggers:
        logger.log_metrics({f"lossval/{k}": v for k, v in metrics.items()}, step=log_step(trainer))


def row_columns(
    trainer: Trainer, pl_module: LightningModule, noisy: Tensor | None, visits: Tensor, predict: bool = True
) -> dict[str, list]:
    """The per-row columns of ``values.csv``: the DataModule's ``row_columns()``, the module's
    ``lossval_predict`` (decoded by the DataModule's ``format_target``; ``predict=False``: none),
    ``noisy`` when known, and ``visits``."""
    columns = _datamodule_columns(trainer)
    if predict and callable(getattr(pl_module, "lossval_predict", None)):
        index, predictions = _predict_training_set(trainer, pl_module)
        decode = getattr(trainer.datamodule, "format_target", None)
        decoded = decode(predictions) if callable(decode) else predictions.tolist()
        column = [None] * len(trainer.train_dataloader.dataset)  # items that are None get no prediction
        for i, prediction in zip(index.tolist(), decoded):
            column[i] = prediction
        columns["prediction"] = column
    if noisy is not None:
        columns["noisy"] = noisy.tolist()
    columns["visits"] = visits.cpu().tolist()
    return columns


def noisy_mask(mask: Tensor | None, trainer: Trainer, n: int) -> Tensor | None:
    """The rows known to be corrupted: ``mask``, or the DataModule's ``noisy_mask``; ``None`` if unknown."""
    mask = mask if mask is not None else getattr(trainer.datamodule, "noisy_mask", None)
    if mask is None:
        return None
    mask = torch.as_tensor(mask).bool().cpu().flatten()
    if mask.numel() != n:
        raise DataError(f"noisy_mask has {mask.numel()} entries but there are {n} training samples")
    return mask


def values_dir(trainer: Trainer) -> Path:
    """Where a fit's values files go: the first logger's ``log_dir`` (TensorBoard's, the CSV logger's
    ``version_N``); without one (``logger=False``, ``fast_dev_run``, loggers without a local run
    directory) a new ``<default_root_dir>/lossval/version_N``, and when the log dir holds an earlier
    fit's ``values.csv`` a new ``<log_dir>/lossval/version_N``, so no fit overwrites another's files.
    A collective under DDP: every rank calls it, rank zero decides."""
    return Path(trainer.strategy.broadcast(_run_dir(trainer)))


def holds_values(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a fit's values files already (so that another fit's go elsewhere)."""
    return (Path(directory) / "values.csv").exists()


def _run_dir(trainer: Trainer) -> str | None:
    """:func:`values_dir` as this process sees it, without the broadcast (``None`` off rank zero without a
    logger)."""
    directory = trainer.loggers[0].log_dir if trainer.loggers else None
    if not trainer.is_global_zero or (directory is not None and not holds_values(directory)):
        return directory
    # no logger folder, or one an earlier fit's values files are in (a second fit of this Trainer, a logger's fixed
    # version): a new folder, so no fit overwrites another's values
    root = Path(directory if directory is not None else trainer.default_root_dir) / "lossval"
    try:
        return str(next_version_dir(root))
    except OSError:  # writing there fails too, and the values go elsewhere (save_values_somewhere)
        return str(root)


def save_values_somewhere(directory: Path, values: Tensor, columns: dict[str, list]) -> Path:
    """:func:`~lightning_lossval.report.save_values` into ``directory``, or, when that cannot be written
    (a file in the way, no permission, a full disk), into a new temporary directory, with a warning: a
    finished fit never loses its values."""
    try:
        return save_values(directory, values, columns)
    except OSError as error:
        fallback = Path(tempfile.mkdtemp(prefix="lossval-values-"))
        path = save_values(fallback, values, columns)
        warn(
            f"LossVal could not write its values files into {directory} ({error.strerror or error}: "
            f"{error.filename or directory}); they are in {fallback} instead. Give a writable "
            "--trainer.default_root_dir (or logger save_dir) next time"
        )
        return path


def save_interrupted(
    trainer: Trainer, store: Any, exception: BaseException | None, noisy: Tensor | None
) -> Path | None:
    """After Ctrl-C or SIGTERM (``exception`` a ``KeyboardInterrupt``, or the ``SIGTERMException`` Lightning raises
    when a scheduler, ``timeout`` or ``docker stop`` ends the job), the values ``store`` holds so far into the
    run's folder, with the DataModule's row columns, ``noisy`` when known and the visits, and a line that says
    where; on rank zero and without a collective (the other ranks may be gone). The store keeps those
    columns (the callback's ``table()``). Anything else, or non-finite weights: nothing."""
    if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)) or not trainer.is_global_zero:
        return None
    values = store.values().detach().float().cpu()
    if not torch.isfinite(values).all():
        return None
    # no prediction: the network is not run again after an interrupt
    columns = row_columns(trainer, trainer.lightning_module, noisy, store.visits, predict=False)
    store.columns = columns  # the callback's table() and to_csv() now match the file
    path = save_values_somewhere(Path(_run_dir(trainer)), values, columns)  # no broadcast: rank zero alone
    print(f"\nLossVal: fit interrupted in epoch {trainer.current_epoch}; the values learned so far: {path}", flush=True)
    return path


def print_report(
    trainer: Trainer,
    values: Tensor,
    columns: dict[str, list],
    show: int,
    noisy: Tensor | None,
    values_path: Path | None,
) -> None:
    """Print the ``show`` lowest rows, the rows never trained on, the 2-means cut, the detection metrics,
    where the values went and how to open TensorBoard; put the table (and the clean-vs-noisy figure) into
    TensorBoard."""
    rows = values_table(values, columns, show)
    lines = []
    if rows:
        lines += [f"\nLossVal: the {len(rows)} lowest-valued of {len(values)} training samples (lowest first)"]
        lines += [format_table(rows)]
    measured = torch.as_tensor(columns.get("visits", [1] * len(values))) > 0  # unmeasured rows say nothing
    unseen = int((~measured).sum())
    if unseen:
        lines.append(
            f"{unseen} of {len(values)} rows were never measured (in no training batch, or alone in one); their "
            "value 1.0 means unmeasured (visits = 0 in values.csv)"
        )
    if rows:  # show=0: no rows, no cut
        flagged = flagged_rows(values, columns)
        lines += [_cut_line(values, flagged, unseen, values_path), *_whole_classes(flagged, measured, columns)]
    if noisy is not None:
        among = f" among the {len(values) - unseen} measured rows" if unseen else ""
        metrics = detection_report(values[measured], noisy[measured])
        known = f"{int(noisy[measured].sum())} known noisy samples{among}"
        lines.append(f"detection of the {known}: {format_metrics(metrics)}")
    if values_path is not None:
        lines.append(f"values of all samples: {values_path}")
    boards = [logger.root_dir for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
    lines += [f"TensorBoard: tensorboard --logdir {shlex.quote(str(root))}" for root in dict.fromkeys(boards)]
    print("\n".join(lines), flush=True)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and rows:
            logger.experiment.add_text("lossval/lowest_rows", format_table(rows, markdown=True), log_step(trainer))
            if noisy is not None:
                logger.experiment.add_figure(
                    "lossval/detection", detection_figure(values[measured], noisy[measured]), log_step(trainer)
                )
            logger.experiment.flush()


def _whole_classes(flagged: Tensor, measured: Tensor, columns: dict[str, list]) -> list[str]:
    """A line for each class (a ``target`` column of class names) the ``flagged`` cut takes almost whole of
    its ``measured`` rows: a rare or hard class whose clean rows all have higher losses lands low as a whole,
    and dropping the flagged rows would drop the class."""
    targets, flagged, measured = columns.get("target"), flagged.tolist(), measured.tolist()
    if not targets or not all(isinstance(t, str) for t in targets) or not any(flagged):
        return []
    share, lines = sum(flagged) / sum(measured), []
    for name in sorted(set(targets)):
        rows = [f for f, t, m in zip(flagged, targets, measured) if t == name and m]
        if len(rows) >= 3 and sum(rows) >= max(0.8, 2 * share) * len(rows):
            lines.append(
                f"the cut flags {sum(rows)} of the {len(rows)} rows of class {name!r}: a rare or hard class can land "
                "low as a whole without its rows being wrong; look at them before dropping any"
            )
    return lines


def _cut_line(values: Tensor, flagged: Tensor, unseen: int, values_path: Path | None) -> str:
    """The line on the ``flagged`` rows (:func:`~lightning_lossval.report.flagged_rows`): how many, below which
    value."""
    if not flagged.any():
        return "suggested cut: none; the measured rows' values do not split into a lower group below the start, 1.0"
    rows = f"the {len(values) - unseen} measured rows" if unseen else f"{len(values)} rows"
    where = "; flagged column in values.csv" if values_path is not None else ""
    most = (
        "; that is most of them: the values barely separate yet (a short run?), read values.csv from the top instead"
        if 2 * int(flagged.sum()) > len(values) - unseen
        else ""
    )
    return (
        f"suggested cut: the 2-means split of the values flags {int(flagged.sum())} of {rows} "
        f"(value <= {values[flagged].max().item():.4f}){where}{most}"
    )


def _datamodule_columns(trainer: Trainer) -> dict[str, list]:
    """The DataModule's ``row_columns()``, when it has that method; ``dataset_row`` when the training set
    is a ``Subset`` (``random_split``'s parts): a row's position in the dataset the subset was taken from."""
    datamodule = trainer.datamodule
    columns = dict(datamodule.row_columns()) if callable(getattr(datamodule, "row_columns", None)) else {}
    n = len(trainer.train_dataloader.dataset)
    for name in [name for name, column in columns.items() if name in OWN_COLUMNS or len(column) != n]:
        column = columns.pop(name)
        wrong = (
            "LossVal writes a column of that name; rename yours"
            if name in OWN_COLUMNS
            else f"it has {len(column)} entries for {n} training rows; return one per row, in dataset order"
        )
        warn(f"the DataModule's row_columns() column {name!r} is left out of values.csv: {wrong}")
    dataset = getattr(getattr(trainer.train_dataloader, "dataset", None), "dataset", None)  # inside IndexedDataset
    if isinstance(dataset, Subset) and "dataset_row" not in columns:
        rows = list(range(len(dataset)))
        while isinstance(dataset, Subset):
            rows, dataset = [int(dataset.indices[i]) for i in rows], dataset.dataset
        columns["dataset_row"] = rows
    return columns


@torch.no_grad()
def _predict_training_set(trainer: Trainer, pl_module: LightningModule, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """The indices and ``lossval_predict`` of the whole training set in index order, on this process."""
    train = trainer.train_dataloader
    loader = DataLoader(train.dataset, batch_size=batch_size, collate_fn=train.collate_fn)
    with (
        eval_mode(pl_module, RunningStage.PREDICTING),
        random_state_kept(pl_module.device),
    ):  # what runs next draws as without it
        batches = [
            (b.index, pl_module.lossval_predict(as_step_batch(b.data, trainer, pl_module)).cpu()) for b in loader
        ]
    return torch.cat([index for index, _ in batches]), torch.cat([part for _, part in batches])
