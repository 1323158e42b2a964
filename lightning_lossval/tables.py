"""Tables as stripped strings, their checks and their encodings, for ``TabularDataModule``.

A table comes from a CSV file (the standard library's ``csv``), a Parquet file (pyarrow) or a pandas
DataFrame, and is checked and encoded the same way whatever its source. Every problem is a
:class:`~lightning_lossval.errors.DataError` naming the source, line (CSV) or row (Parquet, DataFrame) and
column, and what to do. Cells are stripped of surrounding spaces; blank CSV lines are skipped, as pandas
does, so ``row`` numbers match a ``pandas.read_csv`` index (a DataFrame's or Parquet file's positions).
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import re
import shlex
from typing import Any, NamedTuple

import torch
import yaml
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_lossval.errors import DataError, warn

# missing cells, in any case; "null" and "none" only in a column of numbers: in a text column they can be categories
MISSING_WORDS = frozenset({"", "na", "n/a", "nan"})
NUMERIC_MISSING_WORDS = MISSING_WORDS | {"null", "none"}
MISSING_TEXT = "empty, NA, N/A or NaN in any case; in a column of numbers also null or none"
MAX_SHOWN = 10  # names, values or lines listed in a message before "... and K more"
PARQUET_SUFFIXES = (".parquet", ".pq")
PACKED = "a zip archive: an Excel or OpenDocument workbook (save its sheet as CSV UTF-8), or a zipped CSV (unpack it)"
# a detected categorical column with more distinct values than this and than half its rows: an id or free text
MAX_AUTO_CATEGORIES = 20


class Table(NamedTuple):
    """Data rows of one source as stripped strings, each with its place for messages and its data row number."""

    source: str  # path, builtin name or "the training DataFrame", for messages
    header: list[str]
    rows: list[list[str]]
    lines: list[int]  # each row's place: 1-based file line (CSV, header = line 1), else its row number
    numbers: list[int]  # 0-based data row number of each row
    unit: str = "line"  # what ``lines`` count: "line" (CSV) or "row" (Parquet, DataFrame)

    def at(self, line: int) -> str:
        """Where a row is, for messages: "line 7 of train.csv" or "row 5 of the training DataFrame"."""
        return f"{self.unit} {line} of {self.source}"

    def column(self, name: str) -> list[str]:
        i = self.header.index(name)
        return [row[i] for row in self.rows]

    def take(self, keep: list[int]) -> Table:
        rows, lines, numbers = ([values[i] for i in keep] for values in (self.rows, self.lines, self.numbers))
        return self._replace(rows=rows, lines=lines, numbers=numbers)


def listing(items: list, limit: int = MAX_SHOWN, quote: bool = True) -> str:
    """``'a', 'b', 'c'``; past ``limit`` items the first ``limit`` then ``... and K more``."""
    shown = ", ".join(repr(i) if quote else str(i) for i in items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def read_table(path: str) -> Table:
    """A CSV file, or a Parquet file by its suffix (``.parquet``, ``.pq``)."""
    return read_parquet(path) if path.lower().endswith(PARQUET_SUFFIXES) else read_csv(path)


def read_csv(path: str) -> Table:
    line = 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: drop the byte-order mark Excel writes
            reader = csv.reader(f)
            header: list[str] | None = None
            rows, lines = [], []
            skip = 0  # leading nameless columns: the index a DataFrame's to_csv writes
            for record in reader:
                line = reader.line_num
                if not record:
                    continue
                record = [cell.strip() for cell in record]
                if record == [""]:  # a line of spaces: blank, as pandas reads it
                    continue
                if header is None:
                    if len(record) == 1 and (sep := next((c for c in ";\t|" if c in record[0]), None)):
                        raise DataError(
                            f"the header of {path} is one column, {record[0]!r}: the file seems separated by "
                            f"{sep!r} rather than commas; save it as comma-separated CSV"
                        )
                    skip = _index_columns(record, path)
                    header = record[skip:]
                    check_header(header, path)
                    continue
                if len(record) != len(header) + skip:
                    raise DataError(
                        f"line {line} of {path} has {len(record)} fields but the header has {len(header) + skip}; give "
                        "every row one value per column (quote values that contain commas)"
                    )
                rows.append(record[skip:])
                lines.append(line)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; check the path given as --data.train_csv / --data.val_csv") from None
    except UnicodeDecodeError as e:
        with open(path, "rb") as f:
            packed = {b"\x1f\x8b": "gzip-compressed; unpack it and give the CSV inside", b"PK": PACKED}.get(f.read(2))
        if packed:
            raise DataError(f"{path} is {packed}") from None
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8 CSV") from None
    except csv.Error as e:
        raise DataError(f"line {line + 1} of {path} is not valid CSV ({e}); fix the quoting there") from None
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror}); give the path of a readable CSV file") from None
    if header is None:
        raise DataError(f"{path} is empty: expected a header line and data rows")
    if not rows:
        raise DataError(f"{path} has a header line but no data rows; add the data below the header")
    return Table(path, header, rows, lines, list(range(len(rows))))


def _index_columns(header: list[str], path: str) -> int:
    """How many columns at the start of ``header`` have no name before a named one: the index (row
    labels) that a DataFrame's ``to_csv`` writes, which ``read_csv(index_col=0)`` reads back as such."""
    skip = next((i for i, name in enumerate(header) if name), 0)
    if skip:
        rank_zero_info(
            f"{path}: the first {skip} column(s) have no name in the header, like the index a DataFrame's to_csv "
            "writes; they are row labels, not data, and are not read (values.csv numbers the data rows in `row`)"
        )
    return skip


def read_parquet(path: str) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f'reading {path} needs pyarrow, which is not installed: pip install "lightning-lossval[parquet]"'
        ) from None
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; check the path given as --data.train_csv / --data.val_csv") from None
    except Exception as e:  # pyarrow's ArrowInvalid and kin: not a Parquet file
        raise DataError(
            f"cannot read {path} as Parquet ({e}); give a Parquet file, or a CSV without that suffix"
        ) from None
    # pandas writes an unnamed index (a filtered frame's row labels) as __index_level_N__ columns: not data
    kept = [name for name in table.column_names if not re.fullmatch(r"__index_level_\d+__", name)]
    return _from_columns(path, table.select(kept).to_pydict())


def read_frame(frame: Any, source: str) -> Table:
    """A pandas DataFrame as a table; ``row`` numbers are positions (``frame.iloc[row]``)."""
    if not (hasattr(frame, "columns") and hasattr(frame, "to_dict")):
        raise DataError(
            f"{source} must be a pandas DataFrame, got {type(frame).__name__}; give a file path with "
            "--data.train_csv / --data.val_csv instead"
        )
    import pandas as pd  # a DataFrame was given, so pandas is installed

    header = [str(name).strip() for name in frame.columns]  # as a CSV file's
    check_header(header, source)  # before to_dict, which would keep one of two equal names
    values = frame.to_dict("list").values()
    return _from_columns(source, dict(zip(header, ([None if pd.isna(v) else v for v in c] for c in values))))


def _from_columns(source: str, columns: dict[Any, list]) -> Table:
    """Column lists of Python values (None or NaN where missing) as a table of stripped strings."""
    header = [str(name) for name in columns]
    if not header:
        raise DataError(f"{source} has no columns: expected named columns and data rows")
    check_header(header, source)
    cells = [["" if _missing(v) else str(v).strip() for v in values] for values in columns.values()]
    rows = [list(row) for row in zip(*cells)]
    if not rows:
        raise DataError(f"{source} has columns but no data rows")
    numbers = list(range(len(rows)))
    return Table(source, header, rows, numbers, numbers, unit="row")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def check_header(header: list[str], source: str) -> None:
    if "" in header:
        raise DataError(f"column {header.index('') + 1} of the header of {source} has no name; name it or remove it")
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise DataError(f"{source} has more than one column named {listing(duplicated)}; rename them")


def same_columns(val: Table, train: Table, needed: list[str]) -> Table:
    """``val`` with its columns in the order of ``train``'s. It must have the ``needed`` ones (features and
    target) and no column ``train`` lacks; the others (an id, dropped columns) may be absent, left empty."""
    lacking = [c for c in needed if c not in val.header]
    extra = [c for c in val.header if c not in train.header]
    if lacking or extra:
        problems = [f"lacks {listing(lacking)}"] if lacking else []
        problems += [f"has extra {listing(extra)}"] if extra else []
        raise DataError(
            f"the validation data ({val.source}) must have the same columns as {train.source}, but it "
            f"{' and '.join(problems)}; add or remove those columns"
        )
    order = [val.header.index(c) if c in val.header else None for c in train.header]
    rows = [["" if i is None else row[i] for i in order] for row in val.rows]
    return val._replace(header=train.header, rows=rows)


def handle_missing(train: Table, val: Table | None, columns: list[str], mode: str) -> tuple[Table, Table | None]:
    """Refuse (``mode="error"``) or drop (``"drop"``) the rows with a missing cell (``MISSING_TEXT``) in ``columns``."""
    tables = [t for t in (train, val) if t is not None]
    words = {c: _missing_words(tables, c) for c in columns}
    bad = [_missing_rows(t, words) for t in tables]
    if not any(bad):
        return train, val
    where, only_empty = _missing_columns(tables, words)
    places = [listing([t.lines[i] for i in rows], quote=False) for t, rows in zip(tables, bad)]
    reports = [f"{len(r)} row(s) of {t.source} ({t.unit}s {p})" for t, r, p in zip(tables, bad, places) if r]
    if mode == "error":
        raise DataError(
            f"missing values ({MISSING_TEXT}) in {where}: {'; '.join(reports)}. "
            + ("Leave those columns out" if only_empty else "Fill them in, or drop those rows with --data.missing drop")
        )
    for table, rows in zip(tables, bad):
        if len(rows) == len(table.rows):
            raise DataError(f"every row of {table.source} has a missing value, in {where}")
    kept = [t.take(sorted(set(range(len(t.rows))) - set(rows))) for t, rows in zip(tables, bad)]
    rank_zero_info(f"--data.missing drop: dropped {'; '.join(reports)}, for missing values in {where}")
    return kept[0], kept[1] if val is not None else None


def _missing_words(tables: list[Table], column: str) -> frozenset[str]:
    """What marks a missing cell of ``column``: null and none too when all its other cells are numbers."""
    cells = [v for t in tables for v in t.column(column) if v.lower() not in NUMERIC_MISSING_WORDS]
    return NUMERIC_MISSING_WORDS if all(to_float(v) is not None for v in cells) else MISSING_WORDS


def _missing_columns(tables: list[Table], words: dict[str, frozenset[str]]) -> tuple[str, bool]:
    """Which columns hold the missing cells, for messages (a column empty in every row is named with the way
    out), and whether those are all such columns."""
    counts = {c: sum(len(_missing_rows(t, {c: w})) for t in tables) for c, w in words.items()}
    total = sum(len(t.rows) for t in tables)
    named = [f"{c!r} ({n} row(s))" for c, n in counts.items() if n]
    text = f"column(s) {listing(named, quote=False)}"
    empty = [c for c, n in counts.items() if n == total]
    if empty:
        text += f"; empty in every row: {listing(empty)}, which {drop_option(empty)} leaves out"
    return text, len(empty) == len(named)


def _missing_rows(table: Table, words: dict[str, frozenset[str]]) -> list[int]:
    """The rows with a missing cell in a column of ``words`` (each column's missing words)."""
    at = [(table.header.index(c), w) for c, w in words.items()]
    return [r for r, row in enumerate(table.rows) if any(row[i].lower() in w for i, w in at)]


def did_you_mean(names: list[str], header: list[str]) -> str:
    """`` (did you mean 'label'?)``: for each of ``names`` (not in ``header``) its closest columns, the same name
    in another case first (difflib on lowercase names); empty when none is close."""
    lower = {c.lower(): c for c in header}
    close = {n: [lower[c] for c in difflib.get_close_matches(n.lower(), lower, n=3)] for n in names}
    hints = [" or ".join(map(repr, c)) + (f" for {n!r}" if len(names) > 1 else "") for n, c in close.items() if c]
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


def encode_features(
    train: Table, val: Table, features: list[str], categorical: list[str] | None
) -> tuple[Tensor, Tensor, list[str]]:
    """Standardised numeric and one-hot categorical features, ``[N, F]`` float32 each, and their names."""
    blocks: list[tuple[Tensor, Tensor]] = []
    names: list[str] = []
    for column in features:
        values = train.column(column)
        if categorical is None:
            is_categorical = 2 * sum(to_float(v) is not None for v in values) <= len(values)
        else:
            is_categorical = column in categorical
        if is_categorical:
            columns = category_names([values, val.column(column)])
            categories = sorted_values(set(columns[0]))
            if categorical is None and len(categories) > max(MAX_AUTO_CATEGORIES, len(values) // 2):
                raise DataError(
                    f"column {column!r} of {train.source} looks like an id or free text ({len(categories)} distinct "
                    f"values in its {len(values)} training rows, e.g. {listing(categories[:3])}): one-hot encoding "
                    f"would make a feature of each value. {column_hints(column)}, or list it under --data.categorical "
                    "to encode it"
                )
            index = {c: i for i, c in enumerate(categories)}
            unseen = [v for v in columns[1] if v not in index]
            if unseen:
                warn(
                    f"column {column!r}: {len(unseen)} validation rows hold categories no training row has "
                    f"({listing(sorted_values(set(unseen))[:5])}); they are encoded as all zeros for that column"
                )
            blocks.append(tuple(_one_hot(c, index) for c in columns))
            names += [f"{column}={c}" for c in categories]
        else:
            advice = (
                "fix it (an empty cell marks a missing value, see --data.missing), or list "
                f"{column!r} under data.categorical if its values are categories"
            )
            x_train, x_val = parse_numbers(train, column, advice), parse_numbers(val, column, advice)
            mean, std = mean_std(x_train)
            blocks.append(((x_train[:, None] - mean) / std, (x_val[:, None] - mean) / std))
            names.append(column)
    x_train, x_val = (torch.cat([b[i] for b in blocks], dim=1).float() for i in (0, 1))
    return x_train, x_val, names


def _one_hot(values: list[str], index: dict[str, int]) -> Tensor:
    """``[N, K]`` one-hot rows; a value not in ``index`` (unseen in training) is all zeros."""
    out = torch.zeros(len(values), len(index), dtype=torch.float64)
    for row, value in enumerate(values):
        if value in index:
            out[row, index[value]] = 1.0
    return out


def parse_numbers(table: Table, column: str, advice: str) -> Tensor:
    """The column as a float64 tensor ``[N]``; a cell that is not a finite number is a DataError."""
    values = table.column(column)
    numbers = [to_float(v) for v in values]
    for value, number, line in zip(values, numbers, table.lines):
        if number is None:  # an infinity is a number, but not one a network can learn from
            finite = " finite" if value.lower().lstrip("+-") in ("inf", "infinity") else ""
            raise DataError(f"{table.at(line)}, column {column!r}: {value!r} is not a{finite} number; {advice}")
    return torch.tensor(numbers, dtype=torch.float64)


def to_float(text: str) -> float | None:
    if "_" in text or not text.isascii():  # Python's float() reads "1_000" and other scripts' digits, pandas does not
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def row_counters(table: Table, columns: list[str]) -> list[str]:
    """The ``columns`` that count the rows (consecutive integers in file order, up or down, like a DataFrame's
    index saved under a name, ``Unnamed: 0`` after a second round trip through pandas): an index, not a
    feature, and one that leaks the target when the rows are sorted by it."""
    found = []
    for column in columns:
        numbers = [to_float(v) for v in table.column(column)]
        if len(numbers) > 2 and None not in numbers and {b - a for a, b in zip(numbers, numbers[1:])} in ({1}, {-1}):
            found.append(column)
    return found


def column_hints(column: str) -> str:
    """The two ways out for a column that is not a feature (the id column, or dropped), as options that
    can be pasted into a shell. A name the command line would read as YAML other than itself
    (``Unnamed: 0`` is a mapping there) can only be named as the id column in a config file."""
    try:
        plain = isinstance(yaml.safe_load(column), (str, int, float, bool))
    except yaml.YAMLError:
        plain = False
    as_id = f"--data.id_column {shlex.quote(column)}"
    if not plain:
        as_id = f"id_column: {json.dumps(column)} under data.init_args in a config file"
    return f"Name it with {as_id} (copied into values.csv) or leave it out with {drop_option([column])}"


def drop_option(columns: list[str]) -> str:
    """``--data.drop_columns`` naming ``columns``, ready to paste into a shell."""
    return f"--data.drop_columns {shlex.quote(json.dumps(columns, ensure_ascii=False))}"


def category_names(columns: list[list[str]]) -> list[list[str]]:
    """Columns of one variable (training first) as category or class names: as written, or one spelling
    per number when the training column is all numbers (codes "2" and "2.0" are one category)."""
    if all(to_float(v) is not None for v in columns[0]):
        return [number_names(c) for c in columns]
    return columns


def number_names(values: list[str]) -> list[str]:
    """One spelling per number (``"1.0"``, ``"1e0"`` -> ``"1"``; ``"2.50"`` -> ``"2.5"``), so numeric classes and
    category codes written in several ways stay one; a value that is not a number is kept as it is."""
    numbers = [to_float(v) for v in values]
    return [v if x is None else str(int(x)) if x.is_integer() else repr(x) for v, x in zip(values, numbers)]


def mean_std(values: Tensor) -> tuple[float, float]:
    """Mean and population std of ``values``; a std of 0 (a constant column) becomes 1."""
    std = values.std(correction=0).item()
    return values.mean().item(), std if std > 0 else 1.0


def sorted_values(values: set[str]) -> list[str]:
    """Numeric order if every value is a number, else string order."""
    if all(to_float(v) is not None for v in values):
        return sorted(values, key=lambda v: (float(v), v))
    return sorted(values)
