"""What a table's cells say before they are encoded: columns that count the rows, numbers written
with a comma (a reader cannot tell a decimal comma from a thousands separator), and class names
that differ only in case."""

from __future__ import annotations

import re
from collections import Counter

from lightning_lossval.errors import DataError, warn
from lightning_lossval.tables import Table, column_hints, listing, row_counters, sorted_values, to_float

# 12,5 or 1,250 (or 1,250,000); 1.250,5 (a dot between thousands, a decimal comma); 1,250.5
COMMA_NUMBER = re.compile(r"[+-]?(\d+(,\d+)+|\d{1,3}(\.\d{3})+,\d+|\d{1,3}(,\d{3})+\.\d+)([eE][+-]?\d+)?")


def comma_numbers(values: list[str]) -> list[str]:
    """The cells of a column of numbers some of which are written with a comma (``'10,03'``, ``'1,000'``):
    every cell a number or of that form; empty when the column is anything else."""
    commas = [v for v in values if to_float(v) is None]
    return commas if commas and all(COMMA_NUMBER.fullmatch(v) for v in commas) else []


def case_twins(names: list[str]) -> list[list[str]]:
    """Groups of distinct ``names`` that are the same name in another case (``'Benign'``, ``'benign'``), but
    not numbers (``'1E5'``, ``'1e5'``)."""
    groups: dict[str, set[str]] = {}
    for name in names:
        groups.setdefault(name.casefold(), set()).add(name)
    return [sorted(group) for group in groups.values() if len(group) > 1 and to_float(min(group)) is None]


def check_cells(
    train: Table, features: list[str], target: str, task: str, categorical: list[str] | None, id_column: str | None
) -> None:
    """Warn of feature columns that count the rows, of target classes that differ only in case and of ids
    that are empty or repeated; refuse numbers written with a comma (in a column not listed as categorical,
    or the target unless ``task`` is classification), which would otherwise be read as categories: one
    class per value for a target."""
    ids = Counter(train.column(id_column) if id_column is not None else [])
    repeated, empty = sorted_values({i for i, count in ids.items() if count > 1 and i}), ids[""]
    if repeated or empty:
        said = [f"is empty in {empty} row(s)"] * bool(empty) + [f"repeats {listing(repeated)}"] * bool(repeated)
        warn(
            f"the id column {id_column!r} of {train.source} {' and '.join(said)}, so values.csv's id does not "
            "name each row alone; its row column does (the row's number in the file)"
        )
    for column in row_counters(train, features):
        warn(
            f"column {column!r} of {train.source} counts the rows (consecutive integers): an index, not a feature, "
            f"which tells the target when the rows are sorted by it. {column_hints(column)}"
        )
    for column in [*features, target]:
        kept = column in (categorical or []) if column != target else task == "classification"
        commas = [] if kept else comma_numbers(train.column(column))
        if commas:
            way_out = "list it under --data.categorical if its values are categories"
            if column == target:
                way_out = "set --data.task classification if its values are class names"
            raise DataError(
                f"column {column!r} of {train.source} holds numbers written with a comma "
                f"({listing(list(dict.fromkeys(commas))[:3])}): a decimal comma or a thousands separator, which this "
                "reader does not guess. Save the file with '.' as the decimal mark and no thousands separator "
                f"(pandas: df.to_csv(path, index=False)), or {way_out}"
            )
    if task != "regression":
        for twins in case_twins(train.column(target)):
            warn(
                f"the target's classes {listing(twins)} differ only in case, so they are different classes: if they "
                "are one, write them alike in the file (a rare spelling is a class of its own and its rows land low)"
            )
