"""TabularDataModule: a table of your own (CSV, Parquet, a DataFrame, a scikit-learn toy set) to value.

Everything is read, checked and encoded once, in :meth:`TabularDataModule.prepare` (called by
``setup``), the same way whatever the source (see :mod:`lightning_lossval.tables`). Every problem
in the data is a :class:`~lightning_lossval.errors.DataError` that names the file, line (or row)
and column and says what to do. ``row`` numbers match a ``pandas.read_csv`` index, a DataFrame's
positions (``df.iloc[row]``) and a Parquet file's rows.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_lossval.cells import check_cells
from lightning_lossval.errors import DataError, warn
from lightning_lossval.noise import NOISE_KINDS, inject_noise
from lightning_lossval.tables import (
    Table,
    category_names,
    did_you_mean,
    encode_features,
    handle_missing,
    listing,
    mean_std,
    parse_numbers,
    read_frame,
    read_table,
    same_columns,
    sorted_values,
    to_float,
)
from lightning_lossval.validation import MIN_VALIDATION_ROWS

BUILTINS = ("digits", "breast_cancer", "wine", "iris", "diabetes")
TASKS = ("auto", "classification", "regression")
MISSING_MODES = ("error", "drop")
MAX_AUTO_CLASSES = 20  # task="auto": integer targets with at most this many values are classes


def load_builtin(name: str) -> Table:
    try:
        from sklearn import datasets
    except ImportError:
        raise DataError(
            f"--data.builtin {name} needs scikit-learn, which is not installed: "
            'pip install "lightning-lossval[examples]"'
        ) from None
    bunch = getattr(datasets, f"load_{name}")()
    header = [str(n) for n in bunch.feature_names] + ["target"]
    rows = [[str(v) for v in x] + [str(t)] for x, t in zip(bunch.data.tolist(), bunch.target.tolist())]
    return Table(f"builtin dataset {name!r}", header, rows, [r + 2 for r in range(len(rows))], list(range(len(rows))))


def split_rows(train: Table, fraction: float, seed: int, strata: list[str] | None = None) -> tuple[Table, Table]:
    """Split ``fraction`` of the rows off for validation, at random (``seed``). With ``strata`` (a class
    per row) each class gives its share, by largest remainder, and keeps at least one training row,
    so a rare class is not lost to the validation side."""
    n = len(train.rows)
    n_val = max(1, round(fraction * n))
    if n_val >= n:
        raise DataError(
            f"{train.source} has {n} usable row(s), too few to split off --data.val_fraction {fraction} for "
            "validation; add rows or give a validation file with --data.val_csv"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    if strata is None:
        held = order[:n_val]
    else:
        groups: dict[str, list[int]] = {}
        for row in order:
            groups.setdefault(strata[row], []).append(row)
        held = [row for group, k in zip(groups.values(), _quotas(groups, fraction, n_val)) for row in group[:k]]
        if not held:
            raise DataError(
                f"no class of {train.source} has two rows, so none can spare one for validation ({len(groups)} classes "
                f"in {n} rows: if the target is a number to predict, set --data.task regression); add rows or give a "
                "validation file with --data.val_csv"
            )
    kept = set(held)
    return train.take([r for r in range(n) if r not in kept]), train.take(sorted(held))


def _quotas(groups: dict[str, list[int]], fraction: float, total: int) -> list[int]:
    """Validation rows per group: ``fraction`` of each, rounded by largest remainder to ``total`` in
    all (or fewer, when the groups run out), at most all but one of a group's rows."""
    sizes = [len(g) for g in groups.values()]
    caps = [size - 1 for size in sizes]
    quotas = [min(int(fraction * size), cap) for size, cap in zip(sizes, caps)]
    for i in sorted(range(len(sizes)), key=lambda i: fraction * sizes[i] - quotas[i], reverse=True):
        if sum(quotas) < total and quotas[i] < caps[i]:
            quotas[i] += 1
    return quotas


class TabularDataModule(LightningDataModule):
    """Training and validation data from a table, for classification or regression.

    Numeric features are standardised with the training mean and std, categorical ones one-hot
    encoded with the training categories; a regression target is standardised too (see
    :meth:`format_target`). ``noise`` corrupts a known ``noise_rate`` fraction of the training
    rows (``noisy_mask``), so that a valuation run can be scored. Example::

        dm = TabularDataModule(train_csv="houses.csv", target="price", id_column="house_id")
        dm.prepare()  # optional: setup() does it; afterwards dm.num_features, dm.num_outputs are known
        Trainer(callbacks=[LossValCallback()]).fit(model, IndexedDataModule(dm))

        dm = TabularDataModule(train_df=houses, val_df=trusted, target="price")  # pandas DataFrames

    Args:
        train_csv: path of the training table: a CSV (comma separated, header line first), or a
            Parquet file when it ends in ``.parquet`` or ``.pq`` (needs pyarrow:
            ``pip install "lightning-lossval[parquet]"``).
        target: name of the target column.
        val_csv: validation table (CSV or Parquet) with the same feature and target columns (the id and
            dropped columns may be left out); None (and no ``val_df``) splits ``val_fraction`` of the
            training rows off, drawn with ``seed``.
        val_fraction: share of training rows used for validation when there is no validation table;
            for classification that share of each class, every class keeping a training row.
        builtin: instead of ``train_csv``, a scikit-learn dataset: ``digits``, ``breast_cancer``,
            ``wine``, ``iris`` or ``diabetes`` (regression); its target column is ``target``.
        train_df, val_df: instead of ``train_csv`` / ``val_csv``, pandas DataFrames (Python only;
            not saved in the hyperparameters). Missing cells (None, NaN, NA) count as missing
            values; ``row`` numbers are positions, ``df.iloc[row]``.
        task: ``auto``, ``classification`` or ``regression``. ``auto``: classification for text targets
            and for at most 20 distinct integers; a target that is a number in 95 % or more of the
            rows but not all is refused.
        categorical: columns to one-hot encode; None treats a column as numeric when more than
            half of its training values are numbers, else as categorical, and refuses a
            categorical column that looks like an id (more than 20 distinct values, and more than
            half of its rows): name it as ``id_column``, drop it, or list it here.
        id_column: a column naming each row; not a feature, reported by :meth:`row_columns`.
        drop_columns: columns to ignore.
        missing: ``error`` or ``drop`` (naming the dropped lines) for rows with a missing feature or target:
            an empty cell, NA, N/A or NaN (any case), and in a column of numbers also null or none.
        noise: ``none``, ``label``, ``feature`` or ``mixed``: corrupt training rows on purpose.
        noise_rate: fraction of training rows to corrupt, in [0, 1].
        seed: seed of the validation split and of the noise.
        batch_size: training batch size, at least 2 (a row is compared with the rest of its batch).
        num_workers: training DataLoader workers.
    """

    def __init__(
        self,
        train_csv: str | None = None,
        target: str = "target",
        val_csv: str | None = None,
        val_fraction: float = 0.1,
        builtin: str | None = None,
        train_df: Any = None,
        val_df: Any = None,
        task: str = "auto",
        categorical: list[str] | None = None,
        id_column: str | None = None,
        drop_columns: list[str] | None = None,
        missing: str = "error",
        noise: str = "none",
        noise_rate: float = 0.0,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if target is None or isinstance(target, (bool, list, tuple, dict)) or not str(target).strip():
            raise DataError(f"--data.target names the column to predict, got {target!r}; set --data.target NAME")
        # not for the loggers: the model's task (resolved) would clash with task "auto" (config.yaml has them all)
        self.save_hyperparameters(ignore=["train_df", "val_df"], logger=False)
        names = [None if c is None else [str(n).strip() for n in c] for c in (categorical, drop_columns)]
        # stripped, as the header's names are (LightningCLI's hparams are its config's raw values)
        self.hparams.update(target=str(target).strip(), id_column=None if id_column is None else str(id_column).strip())
        self.hparams.update(categorical=names[0], drop_columns=names[1])
        self._frames = (train_df, val_df)
        sources = {"train_csv": train_csv, "train_df": train_df, "builtin": builtin}
        given = [name for name, value in sources.items() if value is not None]
        if not given:
            raise DataError(
                "no training data given: set --data.train_csv PATH (your CSV or Parquet file; configs/csv.yaml "
                f"leaves it empty), or --data.builtin NAME for a scikit-learn dataset ({', '.join(BUILTINS)})"
            )
        if len(given) > 1:
            raise DataError(f"give exactly one training data source, got {' and '.join(given)}; remove the others")
        if val_csv is not None and val_df is not None:
            raise DataError("give one validation source, val_csv or val_df, not both")
        if builtin is not None and builtin not in BUILTINS:
            raise DataError(f"unknown builtin dataset {builtin!r}; --data.builtin must be one of {', '.join(BUILTINS)}")
        choices = (("task", task, TASKS), ("missing", missing, MISSING_MODES), ("noise", noise, NOISE_KINDS))
        for option, value, allowed in choices:
            if value not in allowed:
                raise DataError(f"--data.{option} must be one of {', '.join(allowed)}, got {value!r}")
        if not 0.0 <= noise_rate <= 1.0:
            raise DataError(f"--data.noise_rate is the fraction of rows to corrupt, in [0, 1]; got {noise_rate}")
        if noise == "none" and noise_rate > 0:
            warn(
                f"--data.noise_rate {noise_rate} corrupts nothing with --data.noise none; name a kind: "
                "--data.noise label, feature or mixed"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
            raise DataError(
                f"--data.batch_size is the number of rows per training batch, >= 2 (LossVal compares each row with "
                f"the rest of its batch); got {batch_size!r}"
            )
        if val_csv is None and val_df is None and not 0.0 < val_fraction < 1.0:
            raise DataError(
                f"--data.val_fraction must be strictly between 0 and 1, got {val_fraction}; "
                "or give a validation file with --data.val_csv"
            )
        self.train_set = self.val_set = None  # TensorDatasets, made by prepare()
        self.num_features: int | None = None
        self.num_outputs: int | None = None  # output units: the number of classes, or 1 for regression
        self.num_classes: int | None = None  # None for regression
        self.task: str | None = None  # resolved by prepare(): "classification" or "regression"
        self.classes: list[str] | None = None
        self.feature_names: list[str] | None = None
        self.noisy_mask: Tensor | None = None

    def setup(self, stage: str) -> None:
        self.prepare()

    def prepare(self) -> None:
        """Read, check and encode the data; a second call does nothing."""
        if self.train_set is not None:
            return
        hp = self.hparams
        train_df, val_df = self._frames
        if hp.builtin is not None:
            train = load_builtin(hp.builtin)
        else:
            train = read_table(hp.train_csv) if train_df is None else read_frame(train_df, "the training DataFrame")
        features = self._feature_columns(train)
        val = None
        if hp.val_csv is not None:
            val = same_columns(read_table(hp.val_csv), train, [*features, hp.target])
        elif val_df is not None:
            val = same_columns(read_frame(val_df, "the validation DataFrame"), train, [*features, hp.target])

        train, val = handle_missing(train, val, [*features, hp.target], hp.missing)
        check_cells(train, features, hp.target, hp.task, hp.categorical, hp.id_column)
        self.task = self._resolve_task(train)
        names = category_names([train.column(hp.target)])[0] if self.task == "classification" else None
        if hp.task == "auto":
            kind = f"{len(set(names))} classes" if names is not None else "a numeric target"
            rank_zero_info(f"TabularDataModule: task {self.task} ({kind}), inferred; set --data.task to change it")
        if val is None:
            train, val = split_rows(train, hp.val_fraction, hp.seed, names)
            held = f"--data.val_fraction {hp.val_fraction} holds out {len(val.rows)} row(s)"
            if len(val.rows) < MIN_VALIDATION_ROWS:
                raise DataError(f"{held}, too few to compare batches with: raise it, or give --data.val_csv")
            rank_zero_info(f"{held}, trusted and not valued: row {listing(val.numbers, quote=False)} (as values.csv)")

        x_train, x_val, self.feature_names = encode_features(train, val, features, hp.categorical)
        y_train, y_val = self._encode_target(train, val)

        num_classes = len(self.classes) if self.task == "classification" else None
        x_train, y_train, mask = inject_noise(hp.noise, x_train, y_train, hp.noise_rate, hp.seed, num_classes)
        self.noisy_mask = None if hp.noise == "none" else mask
        if self.task == "classification":
            self._readable_targets: list[Any] = [self.classes[i] for i in y_train.tolist()]
        else:
            # noise swapped raw targets, so the file shows exact values in original units
            self._readable_targets = y_train.flatten().tolist()
            y_train, y_val = [((y - self._target_mean) / self._target_std).float() for y in (y_train, y_val)]

        self._rows = list(train.numbers)
        self._ids = train.column(hp.id_column) if hp.id_column is not None else None
        self.train_set = TensorDataset(x_train, y_train)
        self.val_set = TensorDataset(x_val, y_val)
        self.num_features = x_train.shape[1]
        self.num_outputs = num_classes or 1
        self.num_classes = num_classes

    def row_columns(self) -> dict[str, list]:
        """Per training sample (aligned with ``train_set``): ``row``, ``id`` (with ``id_column``), ``target``.

        ``row`` is the 0-based data row of the training table (CSV: line ``row + 2`` without blank
        lines; DataFrame: ``df.iloc[row]``),
        ``target`` the target trained on (after noise): a class name, or a value in original units.
        """
        self._check_prepared()
        columns: dict[str, list] = {"row": list(self._rows)}
        if self._ids is not None:
            columns["id"] = list(self._ids)
        columns["target"] = list(self._readable_targets)
        return columns

    def format_target(self, t: Tensor) -> list[str] | list[float]:
        """Targets like the training ones (``row_columns``'s): class names for class indices ``[B]``, numbers in
        original units for standardised regression values ``[B]`` / ``[B, 1]`` (7 significant digits: a float32's)."""
        self._check_prepared()
        if self.task == "classification":
            if t.is_floating_point():
                raise TypeError("format_target takes class indices, not scores: pass logits.argmax(-1)")
            return [self.classes[i] for i in t.reshape(-1).tolist()]
        values = t.detach().reshape(-1).double().cpu() * self._target_std + self._target_mean
        return [float(f"{v:.7g}") for v in values.tolist()]

    def train_dataloader(self) -> DataLoader:
        self._check_prepared()
        return DataLoader(
            self.train_set, batch_size=self.hparams.batch_size, shuffle=True, num_workers=self.hparams.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        self._check_prepared()
        return DataLoader(self.val_set, batch_size=1024)

    def _check_prepared(self) -> None:
        if self.train_set is None:
            raise RuntimeError("TabularDataModule has no data yet: call prepare() (or let the Trainer call setup)")

    def _feature_columns(self, train: Table) -> list[str]:
        hp = self.hparams
        available = listing(train.header)
        if hp.target not in train.header:
            raise DataError(
                f"{train.source} has no target column {hp.target!r}{did_you_mean([hp.target], train.header)}; "
                f"its columns are {available}. Name the target column with --data.target NAME"
            )
        for option, names in (
            ("id_column", [] if hp.id_column is None else [hp.id_column]),
            ("categorical", hp.categorical or []),
            ("drop_columns", hp.drop_columns or []),
        ):
            unknown = [n for n in names if n not in train.header]
            if unknown:
                raise DataError(
                    f"data.{option} names {listing(unknown)}, which {train.source} does not have"
                    f"{did_you_mean(unknown, train.header)}; its columns are {available}"
                )
            if hp.target in names:
                raise DataError(f"the target column {hp.target!r} cannot also be in data.{option}; remove it there")
        ignored = {hp.target, hp.id_column, *(hp.drop_columns or [])}
        features = [c for c in train.header if c not in ignored]
        if not features:
            raise DataError(f"{train.source} has no feature columns left besides the target, id and dropped columns")
        not_features = [c for c in hp.categorical or [] if c not in features]
        if not_features:
            raise DataError(f"data.categorical lists {listing(not_features)}, the id or a dropped column: remove it")
        return features

    def _resolve_task(self, train: Table) -> str:
        """The declared task, or with ``task="auto"`` classification for text targets and for integer
        targets with at most ``MAX_AUTO_CLASSES`` values, regression otherwise."""
        if self.hparams.task != "auto":
            return self.hparams.task
        values = train.column(self.hparams.target)
        numbers = [to_float(v) for v in values]
        bad = [i for i, x in enumerate(numbers) if x is None]
        if bad and len(bad) <= 0.05 * len(values):  # a numeric column with a few broken cells, not class names
            shown = listing([f"{train.at(train.lines[i])}: {values[i]!r}" for i in bad], quote=False)
            raise DataError(
                f"the target {self.hparams.target!r} is a number in {len(values) - len(bad)} of {len(values)} rows but "
                f"not in {shown}; fix those cells (an empty cell is a missing value, see --data.missing), or set "
                "--data.task classification if the target's values are class names"
            )
        if bad or (all(v.is_integer() for v in numbers) and len(set(numbers)) <= MAX_AUTO_CLASSES):
            return "classification"
        return "regression"

    def _encode_target(self, train: Table, val: Table) -> tuple[Tensor, Tensor]:
        """Class indices ``[N]`` (long), or raw regression values ``[N, 1]`` (float64, original units)."""
        name = self.hparams.target
        if self.task == "regression":
            advice = "fix it, or set --data.task classification if the target is a class"
            y_train = parse_numbers(train, name, advice)
            y_val = parse_numbers(val, name, advice)
            if bool((y_train == y_train[0]).all()):
                raise DataError(
                    f"the target {name!r} of {train.source} is {y_train[0].item():g} in every training row: there is "
                    "nothing to learn, so no row can be valued; check that --data.target names the right column"
                )
            self._target_mean, self._target_std = mean_std(y_train)
            return y_train[:, None], y_val[:, None]

        values, val_values = category_names([train.column(name), val.column(name)])
        self.classes = sorted_values(set(values))
        if len(self.classes) < 2:
            raise DataError(
                f"the target {name!r} of {train.source} has one class, {self.classes[0]!r}, in the training rows; "
                "classification needs at least two: check that --data.target names the right column"
            )
        index = {c: i for i, c in enumerate(self.classes)}
        numeric = "; or, if the target is a number, set --data.task regression" if self.hparams.task == "auto" else ""
        for value, line in zip(val_values, val.lines):
            if value not in index:
                raise DataError(
                    f"{val.at(line)}: target {value!r} is not one of the {len(self.classes)} training classes "
                    f"({listing(self.classes)}); remove such validation rows or add training rows of that "
                    f"class{numeric}"
                )
        return tuple(torch.tensor([index[v] for v in t], dtype=torch.long) for t in (values, val_values))
