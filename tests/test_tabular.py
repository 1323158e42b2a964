"""TabularDataModule on real CSV files: encoding, row mapping, splits, noise, every user error, a real fit."""

from __future__ import annotations

import csv
import math
import re
import sys
import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import TRAINER_ARGS
from torch import nn

from lightning_lossval.errors import DataError
from lightning_lossval.noise import inject_noise, swap_targets
from lightning_lossval.tabular import TabularDataModule

HEADER = ["id", "size", "color", "label"]
COLORS = ["red", "green", "blue"]


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def animal_rows(n, seed=0):
    """Rows ``[id, size, color, label]``: size is numeric, color categorical, label 'cat' or 'dog'."""
    g = torch.Generator().manual_seed(seed)
    sizes = (torch.randn(n, generator=g) * 3 + 10).tolist()
    return [[f"r{i}", f"{s:.3f}", COLORS[i % 3], "dog" if s > 10 else "cat"] for i, s in enumerate(sizes)]


def prepared(**kwargs):
    dm = TabularDataModule(**kwargs)
    dm.prepare()
    return dm


def test_csv_with_val_file_is_encoded_with_training_statistics(tmp_path):
    rows = animal_rows(30)
    val_rows = [["v0", "12.5", "purple", "dog"], ["v1", "7.0", "green", "cat"]]
    dm = prepared(
        train_csv=write_csv(tmp_path / "train.csv", HEADER, rows),
        val_csv=write_csv(tmp_path / "val.csv", HEADER, val_rows),
        target="label",
        id_column="id",
    )

    assert dm.feature_names == ["size", "color=blue", "color=green", "color=red"]
    assert (dm.num_features, dm.num_outputs, dm.task, dm.classes) == (4, 2, "classification", ["cat", "dog"])
    x, y = dm.train_set.tensors
    assert x.shape == (30, 4) and x.dtype == torch.float32 and y.dtype == torch.long
    sizes = torch.tensor([float(r[1]) for r in rows], dtype=torch.float64)
    mean, std = sizes.mean(), sizes.std(correction=0)
    torch.testing.assert_close(x[:, 0], ((sizes - mean) / std).float())
    assert x[:, 0].mean().abs() < 1e-5 and (x[:, 0].std(correction=0) - 1).abs() < 1e-5
    for row, features in zip(rows, x):
        assert features[1:].tolist() == [float(row[2] == c) for c in ("blue", "green", "red")]
    assert y.tolist() == [dm.classes.index(r[3]) for r in rows]

    x_val, y_val = dm.val_set.tensors
    torch.testing.assert_close(x_val[:, 0], ((torch.tensor([12.5, 7.0], dtype=torch.float64) - mean) / std).float())
    assert x_val[:, 1:].tolist() == [[0, 0, 0], [0, 1, 0]]  # "purple" was never seen in training: all zeros
    assert y_val.tolist() == [1, 0]
    assert dm.noisy_mask is None
    assert dm.row_columns() == {"row": list(range(30)), "id": [r[0] for r in rows], "target": [r[3] for r in rows]}
    assert dm.format_target(torch.tensor([1, 0])) == ["dog", "cat"]


def test_val_split_is_seeded_disjoint_and_rows_map_back(tmp_path, caplog):
    rows = animal_rows(40)
    path = write_csv(tmp_path / "train.csv", HEADER, rows)
    with caplog.at_level("INFO"):
        dm = prepared(train_csv=path, target="label", id_column="id", val_fraction=0.25, seed=3)
    columns = dm.row_columns()
    assert len(dm.train_set) == 30 and len(dm.val_set) == 10
    assert columns["id"] == [rows[r][0] for r in columns["row"]]
    assert columns["target"] == [rows[r][3] for r in columns["row"]]

    # un-standardise the size feature of the training and validation samples to find their CSV rows
    sizes = [float(r[1]) for r in rows]
    train_sizes = torch.tensor([sizes[r] for r in columns["row"]], dtype=torch.float64)
    mean, std = train_sizes.mean(), train_sizes.std(correction=0)
    torch.testing.assert_close(dm.train_set.tensors[0][:, 0], ((train_sizes - mean) / std).float())
    val_sizes = (dm.val_set.tensors[0][:, 0].double() * std + mean).tolist()
    val_rows = [min(range(40), key=lambda r: abs(sizes[r] - s)) for s in val_sizes]
    assert set(val_rows).isdisjoint(columns["row"]) and set(val_rows) | set(columns["row"]) == set(range(40))
    said = re.search(
        r"val_fraction 0.25 holds out 10 row\(s\), trusted and not valued: row ([\d, ]+) \(as", caplog.text
    )
    assert {int(n) for n in said.group(1).split(", ")} == set(val_rows)  # numbered as values.csv's row column

    again = prepared(train_csv=path, target="label", id_column="id", val_fraction=0.25, seed=3)
    other = prepared(train_csv=path, target="label", id_column="id", val_fraction=0.25, seed=4)
    assert again.row_columns()["row"] == columns["row"]
    assert other.row_columns()["row"] != columns["row"]


def test_val_split_is_stratified_and_keeps_rare_classes_in_training(tmp_path):
    # 36 common rows, 3 of a rare class, 1 of a class seen once: every seed keeps each class's share
    labels = ["common"] * 36 + ["rare"] * 3 + ["once"]
    path = write_csv(tmp_path / "t.csv", ["x", "label"], [[str(i), label] for i, label in enumerate(labels)])
    splits = set()
    for seed in range(12):
        dm = prepared(train_csv=path, target="label", val_fraction=0.25, seed=seed)
        val_labels = [dm.classes[i] for i in dm.val_set.tensors[1].tolist()]
        assert sorted(val_labels) == ["common"] * 9 + ["rare"]  # 25 % of 36, and of 3 rounded by largest remainder
        assert sorted(dm.row_columns()["target"]) == ["common"] * 27 + ["once"] + ["rare"] * 2
        splits.add(tuple(dm.row_columns()["row"]))
    assert len(splits) > 1  # still a seeded random split within each class

    numbers = write_csv(tmp_path / "n.csv", ["x", "y"], [[str(i), ["1", "1.0", "2"][i % 3]] for i in range(30)])
    dm = prepared(train_csv=numbers, target="y", val_fraction=0.2)  # "1" and "1.0" are one stratum
    assert sorted(dm.val_set.tensors[1].tolist()) == [0, 0, 0, 0, 1, 1]

    singles = write_csv(tmp_path / "s.csv", ["x", "label"], [[str(i), f"c{i}"] for i in range(5)])
    with pytest.raises(DataError, match=r"no class of .*s.csv has two rows.*--data.val_csv"):
        prepared(train_csv=singles, target="label", task="classification", val_fraction=0.2)


def test_missing_values_error_or_drop(tmp_path):
    rows = animal_rows(12)
    rows[1][1] = ""
    rows[3][2] = "NA"
    rows[5][1] = " null "  # null counts as missing in a column of numbers
    rows[7][0] = ""  # a missing id is not a missing feature
    path = write_csv(tmp_path / "train.csv", HEADER, rows)
    val = write_csv(tmp_path / "val.csv", HEADER, [["v0", "n/a", "red", "cat"], ["v1", "9", "red", "cat"]])
    with pytest.raises(
        DataError,
        match=r"3 row\(s\) of .*train.csv \(lines 3, 5, 7\).*1 row\(s\) of .*val.csv "
        r"\(lines 2\).*--data.missing drop",
    ):
        prepared(train_csv=path, val_csv=val, target="label", id_column="id")

    dm = prepared(train_csv=path, val_csv=val, target="label", id_column="id", missing="drop")
    kept = [r for r in range(12) if r not in (1, 3, 5)]
    assert dm.row_columns()["row"] == kept
    assert dm.row_columns()["id"] == [rows[r][0] for r in kept]
    assert len(dm.val_set) == 1

    split = prepared(train_csv=path, target="label", id_column="id", missing="drop", val_fraction=0.2)
    columns = split.row_columns()
    assert len(columns["row"]) == 7 and set(columns["row"]) < set(kept)
    assert columns["id"] == [rows[r][0] for r in columns["row"]]


def test_regression_is_detected_standardised_and_formatted(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, generator=g)
    prices = (x * 30 + 200 + torch.randn(50, generator=g)).tolist()
    rows = [[f"{a:.4f}", f"{p:.2f}"] for a, p in zip(x.tolist(), prices)]
    val_rows = [["215.31", "0.5"]]
    dm = prepared(
        train_csv=write_csv(tmp_path / "t.csv", ["area", "price"], rows),
        val_csv=write_csv(tmp_path / "v.csv", ["price", "area"], val_rows),
        target="price",
    )
    assert (dm.task, dm.num_outputs, dm.classes) == ("regression", 1, None)
    y = dm.train_set.tensors[1]
    assert y.shape == (50, 1) and y.dtype == torch.float32
    assert y.mean().abs() < 1e-5 and (y.std(correction=0) - 1).abs() < 1e-5
    raw = [float(r[1]) for r in rows]
    assert dm.row_columns()["target"] == raw
    shown = dm.format_target(y)
    assert all(
        isinstance(s, float) and abs(s - v) < 1e-3 and len(f"{s:g}".replace(".", "")) <= 7 for s, v in zip(shown, raw)
    )
    assert dm.format_target(y[:, 0]) == dm.format_target(y)
    assert dm.format_target(dm.val_set.tensors[1]) == [215.31]  # columns in another order are matched by name
    torch.testing.assert_close(
        dm.val_set.tensors[0][0, 0],
        dm.train_set.tensors[0][:, 0].new_tensor((0.5 - x.mean().item()) / x.std(correction=0).item()),
        atol=1e-3,
        rtol=0,
    )


def test_task_override(tmp_path):
    rows = [[str(i), str(i % 3)] for i in range(30)]
    path = write_csv(tmp_path / "t.csv", ["x", "y"], rows)
    assert prepared(train_csv=path, target="y", val_fraction=0.2).task == "classification"  # 3 integer values
    dm = prepared(train_csv=path, target="y", val_fraction=0.2, task="regression")
    assert dm.task == "regression" and dm.train_set.tensors[1].shape == (24, 1)

    many = write_csv(tmp_path / "m.csv", ["x", "y"], [[str(i), str(i)] for i in range(30)])
    assert prepared(train_csv=many, target="y", val_csv=many).task == "regression"  # 30 distinct integers
    dm = prepared(train_csv=many, target="y", val_csv=many, task="classification")
    assert dm.num_outputs == 30 and dm.classes[:3] == ["0", "1", "2"] and dm.classes[10] == "10"  # numeric order

    words = write_csv(tmp_path / "w.csv", ["x", "y"], [["1", "a"], ["2", "b"], ["3", "a"]])
    with pytest.raises(DataError, match=r"line 2 of .*w.csv, column 'y': 'a' is not a number.*--data.task class"):
        prepared(train_csv=words, target="y", val_csv=words, task="regression")


def test_categorical_override_and_auto_detection(tmp_path):
    rows = [[str(i % 4), "x" if i % 2 else "7", str(i % 2)] for i in range(20)]
    path = write_csv(tmp_path / "t.csv", ["code", "mix", "y"], rows)
    auto = prepared(train_csv=path, target="y", val_csv=path)
    assert auto.feature_names == ["code", "mix=7", "mix=x"]  # half numbers is not "more than half"
    listed = prepared(train_csv=path, target="y", val_csv=path, categorical=["code", "mix"])
    assert listed.feature_names == ["code=0", "code=1", "code=2", "code=3", "mix=7", "mix=x"]
    assert listed.train_set.tensors[0][:4, :4].tolist() == torch.eye(4).tolist()
    with pytest.raises(DataError, match=r"line 3 of .*t.csv, column 'mix': 'x' is not a number"):
        prepared(train_csv=path, target="y", val_csv=path, categorical=["code"])  # listing some makes the rest numeric


def test_setup_reads_once(tmp_path):
    path = write_csv(tmp_path / "t.csv", HEADER, animal_rows(20))
    dm = TabularDataModule(train_csv=path, target="label")
    dm.setup("fit")
    train_set = dm.train_set
    dm.setup("validate")
    assert dm.train_set is train_set
    assert dm.hparams.train_csv == path and dm.hparams.target == "label"


def error_cases(tmp_path):
    ok = write_csv(tmp_path / "ok.csv", HEADER, animal_rows(20))
    other = write_csv(
        tmp_path / "other.csv", ["id", "size", "colour", "label", "extra"], [["a", "1", "red", "cat", "1"]]
    )
    one_class = write_csv(tmp_path / "one.csv", HEADER, [[f"r{i}", str(i), "red", "cat"] for i in range(20)])
    constant = write_csv(tmp_path / "constant.csv", HEADER, [[f"r{i}", str(i), "red", "5.5"] for i in range(20)])
    bad_rows = [[f"r{i}", "abc" if i == 2 else str(i), "red", "cat" if i % 2 else "dog"] for i in range(10)]
    bad_number = write_csv(tmp_path / "bad.csv", HEADER, bad_rows)
    unseen = write_csv(tmp_path / "unseen.csv", HEADER, [["r0", "1", "red", "cat"], ["r1", "1", "red", "bird"]])
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("id,size,color,label\n")
    (tmp_path / "ragged.csv").write_text("id,size,color,label\nr0,1,red,cat\nr1,2,red\nr2,3,blue,dog\n")
    return [
        (
            dict(train_csv=ok, target="species"),
            r"no target column 'species'; its columns are 'id', 'size', "
            r"'color', 'label'.*--data.target NAME",
        ),
        (dict(train_csv=one_class, target="label"), r"has one class, 'cat'.*at least two"),
        (dict(train_csv=constant, target="label"), r"target 'label' of .*constant.csv is 5.5 in every training row"),
        (
            dict(train_csv=ok, target="size", task="regression", val_fraction=0.05),
            r"0.05 holds out 1 row\(s\), too few.*val_csv",
        ),
        (dict(train_csv=ok, val_csv=other, target="label"), r"lacks 'color' and has extra 'colour', 'extra'"),
        (
            dict(train_csv=bad_number, target="label", val_fraction=0.2),
            r"line 4 of .*bad.csv, column 'size': 'abc' is not a number; fix it .*or list 'size' under data",
        ),
        (dict(train_csv=ok, val_csv=unseen, target="label"), r"line 3 of .*unseen.csv: target 'bird' is not one of"),
        (dict(train_csv=str(tmp_path / "empty.csv")), r"empty.csv is empty: expected a header line and data rows"),
        (dict(train_csv=str(tmp_path / "header.csv"), target="label"), r"header.csv has a header line but no data"),
        (
            dict(train_csv=str(tmp_path / "ragged.csv"), target="label"),
            r"line 3 of .*ragged.csv has 3 fields but the "
            r"header has 4",
        ),
        (dict(train_csv=str(tmp_path / "nope.csv")), r"nope.csv does not exist"),
        (dict(train_csv=ok, target="label", id_column="key"), r"data.id_column names 'key', which .*ok.csv does not"),
        (dict(train_csv=ok, target="label", categorical=["colour"]), r"data.categorical names 'colour'"),
        (
            dict(train_csv=ok, target="label", drop_columns=["label"]),
            r"target column 'label' cannot also be in "
            r"data.drop_columns",
        ),
        (dict(), r"no training data given: set --data.train_csv PATH"),
        (dict(train_csv=ok, builtin="iris"), r"exactly one training data source, got train_csv and builtin"),
        (dict(train_csv=ok, val_csv=ok, val_df=ok), r"one validation source, val_csv or val_df"),
        (dict(train_df=ok, target="label"), r"the training DataFrame must be a pandas DataFrame, got str"),
        (dict(builtin="mnist"), r"unknown builtin dataset 'mnist'"),
        (dict(train_csv=ok, target="label", noise="labels"), r"--data.noise must be one of none, label"),
        (dict(train_csv=ok, target="label", noise="label", noise_rate=1.5), r"--data.noise_rate .* in \[0, 1\]"),
        (dict(train_csv=ok, target="label", val_fraction=1.0), r"--data.val_fraction must be strictly between 0 and 1"),
        (dict(train_csv=ok, target="label", task="ranking"), r"--data.task must be one of auto"),
        (dict(train_csv=ok, target="label", batch_size=0), r"--data.batch_size is the number of rows .*; got 0"),
        (dict(train_csv=ok, target="label", batch_size=1), r"--data.batch_size .*>= 2 \(LossVal compares .*got 1"),
    ]


def test_user_errors_say_what_is_wrong(tmp_path):
    for kwargs, message in error_cases(tmp_path):
        with pytest.raises(DataError, match=message):
            prepared(**kwargs)


def test_builtin_without_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn` raise ImportError
    with pytest.raises(DataError, match=r'pip install "lightning-lossval\[examples\]"'):
        prepared(builtin="iris")


def noise_data(tmp_path, **kwargs):
    path = write_csv(tmp_path / "t.csv", HEADER, animal_rows(120))
    return prepared(train_csv=path, target="label", id_column="id", val_fraction=0.2, seed=1, **kwargs)


def test_label_noise_changes_exactly_the_masked_labels(tmp_path):
    clean = noise_data(tmp_path)
    dm = noise_data(tmp_path, noise="label", noise_rate=0.25)
    (x0, y0), (x, y) = clean.train_set.tensors, dm.train_set.tensors
    assert dm.noisy_mask.shape == (96,) and dm.noisy_mask.sum() == round(0.25 * 96)
    assert torch.equal(y != y0, dm.noisy_mask)
    assert torch.equal(x, x0)
    assert torch.equal(dm.val_set.tensors[1], clean.val_set.tensors[1])  # validation stays clean
    targets = dm.row_columns()["target"]
    assert all((targets[i] != clean.row_columns()["target"][i]) == dm.noisy_mask[i].item() for i in range(96))
    assert noise_data(tmp_path, noise="label", noise_rate=0.0).noisy_mask.sum() == 0  # allowed: an empty mask


def test_feature_noise_changes_only_masked_rows(tmp_path):
    clean = noise_data(tmp_path)
    dm = noise_data(tmp_path, noise="feature", noise_rate=0.1)
    (x0, y0), (x, y) = clean.train_set.tensors, dm.train_set.tensors
    assert dm.noisy_mask.sum() == round(0.1 * 96)
    assert torch.equal((x != x0).all(dim=1), dm.noisy_mask)  # every column of a noisy row, one-hot ones too
    assert torch.equal(x[~dm.noisy_mask], x0[~dm.noisy_mask])
    assert torch.equal(y, y0)


def test_mixed_noise_is_half_label_half_feature(tmp_path):
    clean = noise_data(tmp_path)
    dm = noise_data(tmp_path, noise="mixed", noise_rate=0.3)
    (x0, y0), (x, y) = clean.train_set.tensors, dm.train_set.tensors
    label_rows, feature_rows = y != y0, (x != x0).any(dim=1)
    assert dm.noisy_mask.sum() == round(0.3 * 96) == 29
    assert not (label_rows & feature_rows).any()
    assert torch.equal(label_rows | feature_rows, dm.noisy_mask)
    assert (label_rows.sum().item(), feature_rows.sum().item()) == (15, 14)


def test_regression_label_noise_swaps_targets(tmp_path):
    rows = [[str(i), f"{i * 1.5 + 0.25:.2f}"] for i in range(60)]
    path = write_csv(tmp_path / "t.csv", ["x", "y"], rows)
    clean = prepared(train_csv=path, target="y", val_fraction=0.1)
    dm = prepared(train_csv=path, target="y", val_fraction=0.1, noise="label", noise_rate=0.2)
    mask = dm.noisy_mask
    assert mask.sum() == round(0.2 * 54)
    before, after = torch.tensor(clean.row_columns()["target"]), torch.tensor(dm.row_columns()["target"])
    assert torch.equal(before != after, mask)
    assert sorted(after[mask].tolist()) == sorted(before[mask].tolist())  # values moved among the noisy rows
    torch.testing.assert_close(
        dm.train_set.tensors[1],
        clean.train_set.tensors[1][torch.tensor([before.tolist().index(v) for v in after.tolist()])],
    )

    mixed = prepared(train_csv=path, target="y", val_fraction=0.1, noise="mixed", noise_rate=0.2)
    assert mixed.noisy_mask.sum() == 11 and dm.num_outputs == 1


def test_noise_functions_directly():
    targets = torch.arange(10.0)[:, None]
    swapped, mask = swap_targets(targets, 0.5, seed=2)
    assert mask.sum() == 5 and torch.equal((swapped != targets).flatten(), mask)
    features = torch.zeros(10, 3)
    x, y, mask = inject_noise("none", features, targets, 0.5)
    assert x is features and y is targets and not mask.any()
    with pytest.raises(ValueError, match="noise kind must be one of"):
        inject_noise("gaussian", features, targets, 0.5)


@pytest.mark.parametrize("kind", ["label", "mixed"])
def test_regression_swaps_mark_only_the_rows_they_changed(kind):
    # integer targets with many ties (years of schooling, say): a swap among equal values changes nothing
    targets = (torch.arange(400) % 3).float()[:, None]
    features = torch.zeros(400, 2)
    x, y, mask = inject_noise(kind, features, targets, 0.2, seed=1)
    changed = (y != targets).flatten() | (x != features).any(1)
    assert torch.equal(mask, changed)
    chosen = 80 if kind == "label" else 80 // 2  # the rows drawn for a swap; about a third draw their own value
    assert 0 < chosen - int((y != targets).sum()) < chosen / 2
    lone, lone_mask = swap_targets(torch.arange(400.0)[:, None], 1 / 400, seed=0)  # one chosen row: nothing to swap
    assert not lone_mask.any() and torch.equal(lone, torch.arange(400.0)[:, None])


def test_builtin_digits_and_diabetes():
    digits = prepared(builtin="digits")
    assert len(digits.train_set) + len(digits.val_set) == 1797 and len(digits.val_set) == round(0.1 * 1797)
    assert (digits.num_features, digits.num_outputs, digits.task) == (64, 10, "classification")
    assert digits.feature_names[0] == "pixel_0_0" and digits.classes == [str(i) for i in range(10)]
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    diabetes = prepared(builtin="diabetes", id_column="age", val_fraction=0.2)
    assert (diabetes.task, diabetes.num_outputs, diabetes.num_features) == ("regression", 1, 9)
    columns = diabetes.row_columns()
    assert len(columns["row"]) + len(diabetes.val_set) == 442
    assert columns["target"] == [bunch.target[r] for r in columns["row"]]
    assert columns["id"] == [str(bunch.data[r, 0]) for r in columns["row"]]


class TinyNet(L.LightningModule):
    def __init__(self, num_features: int, num_outputs: int):
        super().__init__()
        self.net = nn.Linear(num_features, num_outputs)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.1)


@pytest.mark.parametrize("source", ["csv", "dataframe", "parquet"])
def test_fits_with_a_real_trainer(tmp_path, source):
    path = write_csv(tmp_path / "t.csv", HEADER, animal_rows(200))
    table = {"train_csv": path}
    if source == "dataframe":
        table = {"train_df": pytest.importorskip("pandas").read_csv(path)}
    elif source == "parquet":
        table = {"train_csv": write_parquet(tmp_path / "t.parquet", HEADER, animal_rows(200))}
    dm = TabularDataModule(**table, target="label", id_column="id", batch_size=16)
    dm.prepare()  # the shapes are known before the model is built
    model = TinyNet(dm.num_features, dm.num_outputs)
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, default_root_dir=tmp_path, **TRAINER_ARGS
    )
    trainer.fit(model, dm)
    assert trainer.state.finished
    assert trainer.global_step == math.ceil(180 / 16)
    assert trainer.callback_metrics["val_acc"] > 0.8  # size decides the label; one epoch learns it


def write_parquet(path, header, rows):
    """The rows as a Parquet file: numeric columns as float64, the others as strings."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    columns = {}
    for i, name in enumerate(header):
        values = [row[i] for row in rows]
        numeric = all(v.lstrip("-").replace(".", "", 1).isdigit() for v in values)
        columns[name] = [float(v) for v in values] if numeric else values
    pq.write_table(pa.table(columns), path)
    return str(path)


def assert_same_data(a, b):
    assert (a.feature_names, a.classes, a.task) == (b.feature_names, b.classes, b.task)
    for x, y in zip(a.train_set.tensors + a.val_set.tensors, b.train_set.tensors + b.val_set.tensors):
        assert torch.equal(x, y)
    assert a.row_columns() == b.row_columns()


def test_dataframes_are_encoded_and_mapped_back_like_the_csv(tmp_path):
    pd = pytest.importorskip("pandas")
    train = write_csv(tmp_path / "t.csv", HEADER, animal_rows(30))
    val = write_csv(tmp_path / "v.csv", HEADER, animal_rows(8, seed=1))
    from_csv = prepared(train_csv=train, val_csv=val, target="label", id_column="id")
    frames = prepared(train_df=pd.read_csv(train), val_df=pd.read_csv(val), target="label", id_column="id")
    assert_same_data(frames, from_csv)
    assert "train_df" not in frames.hparams  # a table is not a hyperparameter

    tail = pd.read_csv(train).iloc[10:]  # row numbers are positions, df.iloc[row], whatever the index
    columns = prepared(train_df=tail, target="label", id_column="id", val_fraction=0.25, seed=3).row_columns()
    assert columns["id"] == [tail.iloc[r]["id"] for r in columns["row"]] and max(columns["row"]) < 20

    gaps = pd.read_csv(train)
    gaps.loc[4, "size"] = None
    gaps.loc[7, "color"] = pd.NA
    with pytest.raises(DataError, match=r"2 row\(s\) of the training DataFrame \(rows 4, 7\)"):
        prepared(train_df=gaps, target="label", id_column="id")
    gaps["size"] = gaps["size"].astype(object)
    gaps.loc[4, "size"] = "big"
    with pytest.raises(DataError, match=r"row 4 of the training DataFrame, column 'size': 'big' is not a number"):
        prepared(train_df=gaps, target="label", id_column="id", missing="drop")


def test_parquet_files_round_trip_like_the_csv(tmp_path, monkeypatch):
    rows, val_rows = animal_rows(30), animal_rows(8, seed=1)
    train, val = write_csv(tmp_path / "t.csv", HEADER, rows), write_csv(tmp_path / "v.csv", HEADER, val_rows)
    from_csv = prepared(train_csv=train, val_csv=val, target="label", id_column="id")
    train, val = write_parquet(tmp_path / "t.parquet", HEADER, rows), write_parquet(tmp_path / "v.pq", HEADER, val_rows)
    assert_same_data(prepared(train_csv=train, val_csv=val, target="label", id_column="id"), from_csv)

    (tmp_path / "bad.parquet").write_text("id,size\n")
    with pytest.raises(DataError, match=r"cannot read .*bad.parquet as Parquet"):
        prepared(train_csv=str(tmp_path / "bad.parquet"), target="label")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # makes the import raise ImportError
    with pytest.raises(DataError, match=r'needs pyarrow, .*pip install "lightning-lossval\[parquet\]"'):
        prepared(train_csv=train, target="label")


def test_id_like_column_is_refused_with_the_fixes(tmp_path):
    rows = animal_rows(30)
    path = write_csv(tmp_path / "t.csv", HEADER, rows)
    with pytest.raises(DataError) as error:
        prepared(train_csv=path, target="label")  # 27 training rows after the validation split
    message = str(error.value)
    assert (
        message.startswith("column 'id' of ")
        and "(27 distinct values in its 27 training rows, e.g. 'r0', 'r1', 'r10'):" in message
    )
    assert "--data.id_column id" in message and "--data.categorical" in message
    assert """--data.drop_columns '["id"]'""" in message
    assert prepared(train_csv=path, target="label", id_column="id").feature_names[0] == "size"
    assert prepared(train_csv=path, target="label", drop_columns=["id"]).feature_names[0] == "size"
    assert prepared(train_csv=path, target="label", categorical=["id", "color"]).num_features == 27 + 1 + 3

    few = [[f"k{i % 15}", *row[1:]] for i, row in enumerate(rows)]  # at most 15 values: an ordinary category
    assert prepared(train_csv=write_csv(tmp_path / "few.csv", HEADER, few), target="label").feature_names[0] == "id=k0"


def test_long_lists_in_messages_are_cut(tmp_path):
    wide = [f"c{i}" for i in range(40)]
    path = write_csv(tmp_path / "wide.csv", wide, [[str(i) for i in range(40)]] * 3)
    with pytest.raises(DataError, match=r"its columns are 'c0', 'c1', .*'c9', \.\.\. and 30 more\. Name the target"):
        prepared(train_csv=path, target="label")

    train = write_csv(tmp_path / "t.csv", ["x", "y"], [[str(i), str(i % 25)] for i in range(50)])
    val = write_csv(tmp_path / "v.csv", ["x", "y"], [["1", "99"]])
    classes = r"\('0', '1', '2', '3', '4', '5', '6', '7', '8', '9', \.\.\. and 15 more\)"
    with pytest.raises(DataError, match=r"target '99' is not one of the 25 training classes " + classes):
        prepared(train_csv=train, val_csv=val, target="y", task="classification")

    gaps = write_csv(tmp_path / "g.csv", ["x", "y"], [[str(i), "" if i < 14 else str(i % 2)] for i in range(30)])
    with pytest.raises(DataError, match=r"14 row\(s\) of .*g.csv \(lines 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, \.\.\. and 4"):
        prepared(train_csv=gaps, target="y", val_fraction=0.2)


def test_numbers_spelled_two_ways_are_one_class_and_one_category(tmp_path):
    # concatenated exports write the same class or code as 1 and 1.0
    rows = [[f"r{i}", f"{i % 7}", ["2", "2.0", "3"][i % 3], ["0", "1", "0.0", "1.0"][i % 4]] for i in range(40)]
    val_rows = [["v0", "1", "2.00", "1.0"], ["v1", "2", "3", "0"]]
    dm = prepared(
        train_csv=write_csv(tmp_path / "t.csv", HEADER, rows),
        val_csv=write_csv(tmp_path / "v.csv", HEADER, val_rows),
        target="label",
        id_column="id",
        categorical=["color"],
    )
    assert dm.classes == ["0", "1"] and dm.feature_names == ["size", "color=2", "color=3"]
    y = dm.train_set.tensors[1]
    assert torch.equal(y, torch.tensor([[0, 1, 0, 1][i % 4] for i in range(40)]))
    x_val, y_val = dm.val_set.tensors
    assert torch.equal(y_val, torch.tensor([1, 0])) and torch.equal(
        x_val[:, 1:], torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    )


def test_a_noise_rate_without_a_kind_warns(tmp_path):
    with pytest.warns(UserWarning, match=r"--data.noise_rate 0.1 corrupts nothing with --data.noise none"):
        assert noise_data(tmp_path, noise_rate=0.1).noisy_mask is None  # no noise: no mask


def test_a_parquet_file_from_a_filtered_frame_has_no_index_column(tmp_path):
    import pandas as pd

    frame = pd.DataFrame(animal_rows(40), columns=HEADER)
    frame["size"] = frame["size"].astype(float)
    path = tmp_path / "t.parquet"
    frame[frame["size"] > 5].to_parquet(path)  # the row labels left after filtering: an unnamed index
    assert "__index_level_0__" in __import__("pyarrow.parquet").parquet.read_schema(path).names
    dm = prepared(train_csv=str(path), target="label", id_column="id")
    assert dm.feature_names == ["size", "color=blue", "color=green", "color=red"]


def test_a_csv_written_with_its_index_reads_its_data_columns_only(tmp_path, caplog):
    import pandas as pd

    frame = pd.DataFrame(animal_rows(40), columns=HEADER)
    frame["size"] = frame["size"].astype(float)
    path = tmp_path / "t.csv"
    frame[frame["size"] > 5].to_csv(path)  # to_csv writes the index first, under an empty name
    assert path.read_text().startswith(",id,size")
    with caplog.at_level("INFO"):
        dm = prepared(train_csv=str(path), target="label", id_column="id", val_fraction=0.2)
    assert dm.feature_names == ["size", "color=blue", "color=green", "color=red"]
    assert "the first 1 column(s) have no name in the header" in caplog.text
    kept = frame[frame["size"] > 5].reset_index(drop=True)
    columns = dm.row_columns()
    assert columns["id"] == [kept["id"][r] for r in columns["row"]]  # `row` is still read_csv(index_col=0)'s iloc

    short = tmp_path / "short.csv"
    short.write_text(",x,label\n0,1.5,a\n2.5,b\n")
    with pytest.raises(DataError, match=r"line 3 of .*short.csv has 2 fields but the header has 3"):
        prepared(train_csv=str(short), target="label")


def test_a_column_that_counts_the_rows_warns_and_the_inferred_task_is_said(tmp_path, caplog):
    # a DataFrame index saved twice through pandas comes back as a column "Unnamed: 0"; sorted by class it leaks
    rows = [[str(i), *row] for i, row in enumerate(sorted(animal_rows(40), key=lambda r: r[3]))]
    path = write_csv(tmp_path / "t.csv", ["Unnamed: 0", *HEADER], rows)
    with caplog.at_level("INFO"), pytest.warns(UserWarning, match=r"column 'Unnamed: 0' .* counts the rows"):
        dm = prepared(train_csv=path, target="label", id_column="id")
    assert "Unnamed: 0" in dm.feature_names  # still a feature until the user says otherwise
    assert "task classification (2 classes), inferred; set --data.task to change it" in caplog.text


def test_a_validation_file_needs_only_the_columns_that_are_used(tmp_path):
    header = [*HEADER, "note"]
    rows = [[*row, "x"] for row in animal_rows(30)]
    val_rows = [["12.5", "purple", "dog"], ["7.0", "green", "cat"]]  # no id, no dropped note; purple unseen
    with pytest.warns(UserWarning, match=r"column 'color': 1 validation rows hold categories no training row has"):
        dm = prepared(
            train_csv=write_csv(tmp_path / "t.csv", header, rows),
            val_csv=write_csv(tmp_path / "v.csv", ["size", "color", "label"], val_rows),
            target="label",
            id_column="id",
            drop_columns=["note"],
        )
    x_val, y_val = dm.val_set.tensors
    assert torch.equal(y_val, torch.tensor([1, 0])) and torch.equal(
        x_val[:, 1:], torch.tensor([[0.0, 0, 0], [0, 1, 0]])
    )


def test_a_numeric_target_with_a_broken_cell_is_refused_not_made_classes(tmp_path):
    rows = [[str(i), f"{100 + 7.5 * i:.2f}"] for i in range(60)]
    rows[9][1] = "?"
    path = write_csv(tmp_path / "t.csv", ["x", "price"], rows)
    with pytest.raises(DataError, match=r"'price' is a number in 59 of 60 rows but not in line 11 of .*t.csv: '\?'"):
        prepared(train_csv=path, target="price")
    with pytest.raises(DataError, match=r"line 11 of .*t.csv, column 'price': '\?' is not a number"):
        prepared(train_csv=path, target="price", task="regression")


def test_an_unseen_validation_value_of_an_inferred_integer_target_names_the_task_option(tmp_path, caplog):
    train = write_csv(tmp_path / "t.csv", ["x", "score"], [[str(i), str(i % 12)] for i in range(48)])
    val = write_csv(tmp_path / "v.csv", ["x", "score"], [["1", "13"]])
    with caplog.at_level("INFO"), pytest.raises(DataError, match=r"'13' is not one of .*set --data.task regression"):
        prepared(train_csv=train, val_csv=val, target="score")
    assert "task classification (12 classes), inferred" in caplog.text  # said before the error


def test_regression_targets_in_the_values_file_are_the_files_numbers(tmp_path):
    values = ["1248430123", "0.000676", "733555.72", "-3", "1e-07", "12.5"] * 5
    path = write_csv(tmp_path / "t.csv", ["x", "y"], [[str(i), v] for i, v in enumerate(values)])
    dm = prepared(train_csv=path, target="y", val_fraction=0.2)
    assert dm.row_columns()["target"] == [float(values[r]) for r in dm.row_columns()["row"]]
    from lightning_lossval.report import save_values

    path = save_values(tmp_path / "run", torch.ones(len(dm.train_set)), dm.row_columns())
    with open(path) as f:
        written = {int(r["row"]): r["target"] for r in csv.DictReader(f)}
    assert written == {r: values[r] for r in dm.row_columns()["row"]}  # the file's own spelling, all digits


def test_missing_values_name_their_columns_and_an_empty_column_the_way_out(tmp_path):
    rows = [[f"{i * 0.5}", "", str(i % 2)] for i in range(30)]
    rows[3][0] = "NA"
    path = write_csv(tmp_path / "t.csv", ["size", "notes", "label"], rows)
    empty = r"column\(s\) 'size' \(1 row\(s\)\), 'notes' \(30 row\(s\)\); empty in every row: 'notes', which "
    drop = r"""--data.drop_columns '\["notes"\]' leaves out"""
    with pytest.raises(DataError, match=empty + drop):
        prepared(train_csv=path, target="label")
    with pytest.raises(DataError, match=r"every row of .*t.csv has a missing value, in " + empty + drop):
        prepared(train_csv=path, target="label", missing="drop")
    dm = prepared(train_csv=path, target="label", missing="drop", drop_columns=["notes"], val_fraction=0.2)
    assert len(dm.train_set) + len(dm.val_set) == 29  # the way out works: only the row with NA is dropped
    rows[3][0] = "1.5"  # the empty column alone: dropping rows would drop them all, so that is not advised
    path = write_csv(tmp_path / "t.csv", ["size", "notes", "label"], rows)
    with pytest.raises(DataError, match=r"'notes' \(30 row\(s\)\); empty in every .*Leave those columns out$"):
        prepared(train_csv=path, target="label")


def test_files_that_are_not_plain_csv_say_what_they_are(tmp_path):
    import gzip
    import zipfile

    (tmp_path / "blank.csv").write_text("\n  \n\n")
    (tmp_path / "semi.csv").write_text("size;label\n1.5;a\n2.5;b\n")
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress(b"size,label\n1.5,a\n2.5,b\n" * 50))
    with zipfile.ZipFile(tmp_path / "book.xlsx", "w") as book:  # a workbook's parts, as Excel writes them
        book.writestr("[Content_Types].xml", "<Types/>")
        book.writestr("xl/workbook.xml", "<workbook/>")
    (tmp_path / "q.csv").write_text("size,label\n" + "".join(f"{i}.5,{'ab'[i % 2]}\n" for i in range(20)) + "?,a\n")
    for name, message in (
        ("blank.csv", r"blank.csv is empty: expected a header line"),
        ("semi.csv", r"header of .*semi.csv is one column, 'size;label': the file seems separated by ';'"),
        ("t.csv.gz", r"t.csv.gz is gzip-compressed; unpack it"),
        ("book.xlsx", r"book.xlsx is a zip archive: an Excel or OpenDocument workbook \(save its sheet as CSV UTF-8\)"),
        ("q.csv", r"'\?' is not a number; fix it \(an empty cell marks a missing value, see --data.missing\)"),
    ):
        with pytest.raises(DataError, match=message):
            prepared(train_csv=str(tmp_path / name), target="label")


def test_none_and_null_are_categories_in_text_columns_but_missing_in_numeric_ones(tmp_path):
    # a real category "none" (pandas keeps it too); in a column of numbers it marks a missing value
    allergies = ["none", "pollen", "dust", "None", "null"]
    rows = [[f"{i * 0.5}", allergies[i % 5], "none" if i % 3 else "mild"] for i in range(40)]
    rows[4][0], rows[6][1], rows[8][1] = "none", "NA", ""
    path = write_csv(tmp_path / "t.csv", ["age", "allergy", "reaction"], rows)
    with pytest.raises(
        DataError,
        match=r"missing values \(empty, NA, N/A or NaN in any case; in a column of numbers also null or none\) in "
        r"column\(s\) 'age' \(1 row\(s\)\), 'allergy' \(2 row\(s\)\): 3 row\(s\) of .*t.csv \(lines 6, 8, 10\)",
    ):
        prepared(train_csv=path, target="reaction")

    rows[4][0], rows[6][1], rows[8][1] = "2.0", "dust", "pollen"
    path = write_csv(tmp_path / "t.csv", ["age", "allergy", "reaction"], rows)
    dm = prepared(train_csv=path, target="reaction", val_fraction=0.2)
    categories = ["None", "dust", "none", "null", "pollen"]
    assert dm.feature_names == ["age", *(f"allergy={c}" for c in categories)]
    x, _ = dm.train_set.tensors
    for row, features in zip(dm.row_columns()["row"], x):
        assert features[1:].tolist() == [float(rows[row][1] == c) for c in categories]
    assert dm.classes == ["mild", "none"]
    from lightning_lossval.report import save_values

    columns = dm.row_columns()
    columns["prediction"] = dm.format_target(dm.train_set.tensors[1])
    with open(save_values(tmp_path / "run", torch.ones(len(dm.train_set)), columns)) as f:
        written = list(csv.DictReader(f))
    assert {r["target"] for r in written} == {r["prediction"] for r in written} == {"mild", "none"}
    assert all(r["target"] == rows[int(r["row"])][2] for r in written)


def test_dropping_rows_with_missing_values_says_which(tmp_path, caplog):
    rows = animal_rows(40)
    for i in (3, 8, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36):
        rows[i][1] = ""
    path = write_csv(tmp_path / "train.csv", HEADER, rows)
    val = write_csv(tmp_path / "val.csv", HEADER, [["v0", "NaN", "red", "cat"], ["v1", "9", "red", "cat"]])
    with caplog.at_level("INFO"):
        dm = prepared(train_csv=path, val_csv=val, target="label", id_column="id", missing="drop")
    assert len(dm.train_set) == 28 and len(dm.val_set) == 1
    dropped = [m for m in caplog.messages if "--data.missing drop" in m]
    assert dropped == [
        f"--data.missing drop: dropped 12 row(s) of {path} (lines 5, 10, 11, 14, 17, 20, 23, 26, 29, 32, ... and 2 "
        f"more); 1 row(s) of {val} (lines 2), for missing values in column(s) 'size' (13 row(s))"
    ]
    caplog.clear()
    ok = write_csv(tmp_path / "ok.csv", HEADER, animal_rows(40))
    with caplog.at_level("INFO"):
        prepared(train_csv=ok, target="label", id_column="id", missing="drop")
    assert not any("--data.missing drop" in m for m in caplog.messages)  # nothing dropped, nothing said


def test_an_unknown_column_name_suggests_the_closest(tmp_path):
    header = ["customer_id", "Age", "colour", "label", *(f"x{i}" for i in range(12))]
    path = write_csv(tmp_path / "t.csv", header, [["c0", "30", "red", "a", *["1"] * 12]] * 3)
    for kwargs, message in (
        (dict(target="Label"), r"no target column 'Label' \(did you mean 'label'\?\); its columns are 'customer_id'"),
        (dict(target="LABEL"), r"no target column 'LABEL' \(did you mean 'label'\?\); its columns"),
        (dict(target="species"), r"no target column 'species'; its columns are"),  # nothing close: no guess
        (dict(id_column="customerid"), r"names 'customerid', which .*t.csv does not have \(did you mean 'customer_id'"),
        (dict(categorical=["color", "age"]), r"does not have \(did you mean 'colour' for 'color', 'Age' for 'age'\?\)"),
        (
            dict(drop_columns=["x1", "zzz", "x_13"]),
            r"names 'zzz', 'x_13', .*\(did you mean 'x3' or 'x1' for 'x_13'\?\)",
        ),
    ):
        with pytest.raises(DataError, match=message + r".*\.\.\. and \d+ more"):
            prepared(**{"train_csv": path, "target": "label", **kwargs})


def test_tables_read_as_pandas_reads_them(tmp_path, recwarn):
    pd = pytest.importorskip("pandas")
    rows = animal_rows(40)
    lines = [" id , size , code , label "]  # header names with spaces around them, as pandas keeps them
    for i, (rid, size, _, label) in enumerate(rows):
        lines.append(f"{rid},{size},{i % 3 + 1}_000,{label}")  # codes like 1_000: text to pandas, not numbers
        if i == 5:
            lines.append("   ")  # a line of spaces: blank, skipped
    path = tmp_path / "t.csv"
    path.write_text("\n".join(lines) + "\n")
    frame = pd.read_csv(path)
    assert not pd.api.types.is_numeric_dtype(frame[" code "]) and len(frame) == 40
    dm = prepared(train_csv=str(path), target=" label ", id_column=" id ", categorical=None, val_fraction=0.2)
    assert dm.feature_names == ["size", "code=1_000", "code=2_000", "code=3_000"]
    columns = dm.row_columns()
    assert columns["id"] == [frame[" id "][r].strip() for r in columns["row"]]  # rows line up with pandas'
    for target in (None, ""):
        with pytest.raises(DataError, match=r"--data.target names the column to predict, got .*set --data.target NAME"):
            TabularDataModule(train_csv=str(path), target=target)


def test_a_column_that_counts_the_rows_down_warns_too(tmp_path):
    rows = [[str(40 - i), *row] for i, row in enumerate(animal_rows(40))]
    path = write_csv(tmp_path / "t.csv", ["index", *HEADER], rows)
    with pytest.warns(UserWarning, match=r"column 'index' .* counts the rows"):
        prepared(train_csv=path, target="label", id_column="id")


def test_numbers_written_with_a_comma_are_refused_and_classes_differing_in_case_warned(tmp_path):
    # a European export: "12,5" would be read as text, a feature one-hot per value, a target a class per value
    rows = [[f"r{i}", f"{10 + i % 7},{i % 10}", "red", f"{100 + 3 * i},0"] for i in range(30)]
    target = write_csv(tmp_path / "target.csv", HEADER, [[r[0], "12.5", r[2], r[3]] for r in rows])
    path = write_csv(tmp_path / "t.csv", HEADER, [[*r[:3], "cat" if i % 2 else "dog"] for i, r in enumerate(rows)])
    for name, file, listed in (("label", target, r"set --data.task classification"), ("size", path, r"list it under")):
        said = rf"column '{name}' of .* written with a comma \('1..?,.', .*'.' as the decimal mark.*\), or {listed}"
        with pytest.raises(DataError, match=said):
            prepared(train_csv=file, target="label", id_column="id")
    euro = write_csv(
        tmp_path / "e.csv", HEADER, [[r[0], ["1.000,50", "2.345,25"][i % 2], r[2], "cat"] for i, r in enumerate(rows)]
    )
    with pytest.raises(DataError, match=r"column 'size' .*\('1.000,50', '2.345,25'\): a decimal comma"):
        prepared(train_csv=euro, target="label", id_column="id")  # not two categories
    grouped = write_csv(tmp_path / "g.csv", HEADER, [[r[0], "12", r[2], "1,250"] for r in rows])  # thousands
    with pytest.raises(DataError, match=r"column 'label' .*\('1,250'\): a decimal comma or a thousands separator"):
        prepared(train_csv=grouped, target="label", id_column="id")
    dm = prepared(train_csv=path, target="label", id_column="id", categorical=["size", "color"])
    assert "size=10,0" in dm.feature_names  # categories if the user says so

    cased = [[r, s, c, label.capitalize() if i < 5 else label] for i, (r, s, c, label) in enumerate(animal_rows(40))]
    with pytest.warns(UserWarning, match=r"classes 'Cat', 'cat' differ only in case"):
        prepared(train_csv=write_csv(tmp_path / "c.csv", HEADER, cased), target="label", id_column="id")
    numbers = [[r, s, c, ["1.25E0", "1.25e0", "2.5e0"][i % 3]] for i, (r, s, c, _) in enumerate(animal_rows(40))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_csv(tmp_path / "n.csv", HEADER, numbers)
        assert prepared(train_csv=path, target="label", id_column="id").task == "regression"
    assert not [w for w in caught if "differ only in case" in str(w.message)]  # 1.25E0 and 1.25e0: one number


def test_ids_that_are_empty_or_repeated_are_warned_about(tmp_path):
    rows = animal_rows(40)
    rows[3][0], rows[7][0], rows[9][0] = "", "r1", "r2"
    with pytest.warns(UserWarning, match=r"id column 'id' .* is empty in 1 row\(s\) and repeats 'r1', 'r2', so value"):
        dm = prepared(train_csv=write_csv(tmp_path / "t.csv", HEADER, rows), target="label", id_column="id")
    columns = dm.row_columns()
    assert columns["id"] == [rows[r][0] for r in columns["row"]]  # kept as given: the row column tells them apart


def test_a_number_forced_to_classes_is_told_to_try_regression_and_predictions_keep_their_digits(tmp_path):
    rows = [[f"r{i}", f"{i * 0.37:.3f}", "red", f"{2642100 + i * 1.5}"] for i in range(30)]
    path = write_csv(tmp_path / "t.csv", HEADER, rows)
    with pytest.raises(
        DataError, match=r"\(30 classes in 30 rows: if the target is a number to predict, set --data.task"
    ):
        prepared(train_csv=path, target="label", id_column="id", task="classification")
    dm = prepared(train_csv=path, target="label", id_column="id", task="regression", val_fraction=0.2)
    standardised = (torch.tensor([2642101.5, 2642143.5], dtype=torch.float64) - dm._target_mean) / dm._target_std
    shown = dm.format_target(standardised.float())  # a float32's 7 digits, not 2.6421e+06
    assert all("e" not in repr(s) and abs(s - v) <= 1 for s, v in zip(shown, [2642101.5, 2642143.5])), shown


def test_a_built_network_refitted_on_data_of_another_shape_is_refused(tmp_path):
    from lightning_lossval import IndexedDataModule, LossValCallback
    from lightning_lossval.errors import ConfigError
    from lightning_lossval.models import MLP

    model = MLP()  # sized by the first DataModule it is fitted on

    def fit(builtin):
        trainer = L.Trainer(
            max_epochs=1, default_root_dir=tmp_path, callbacks=[LossValCallback(show=0)], **TRAINER_ARGS
        )
        trainer.fit(model, IndexedDataModule(TabularDataModule(builtin=builtin)))

    fit("wine")
    fit("wine")  # the same shape: fits again
    said = r"this MLP was built with num_inputs 13 \(the data: 4\): a network fits one shape of data; make a new"
    with pytest.raises(ConfigError, match=said):
        fit("iris")


def test_dataframe_columns_named_by_numbers_or_with_spaces(tmp_path):
    pd = pytest.importorskip("pandas")
    rows = animal_rows(40)
    numbered = pd.DataFrame([[i, float(r[1]), r[2], r[3]] for i, r in enumerate(rows)])  # columns 0, 1, 2, 3
    dm = prepared(train_df=numbered, target=3, id_column=0)  # the id column 0 is not "no id column"
    assert dm.row_columns()["id"] == [str(i) for i in dm.row_columns()["row"]] and dm.classes == ["cat", "dog"]
    spaced = numbered.set_axis([" id", "size ", " color ", "label "], axis=1)  # as pandas keeps a CSV's header
    dm = prepared(train_df=spaced, target="label ", id_column=" id", drop_columns=[" color"])
    assert dm.feature_names == ["size"] and dm.hparams.target == "label"


def test_an_infinite_cell_is_named_as_such(tmp_path):
    rows = animal_rows(40)
    rows[5][1] = "inf"
    with pytest.raises(DataError, match=r"line 7 of .*, column 'size': 'inf' is not a finite number"):
        prepared(train_csv=write_csv(tmp_path / "t.csv", HEADER, rows), target="label", id_column="id")
