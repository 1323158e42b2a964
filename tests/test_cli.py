"""The `lossval` command end to end: configs, the user's own CSV, the run's outputs, bad input."""

from __future__ import annotations

import contextlib
import csv
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.functional.classification import binary_auroc

from lightning_lossval import LossValCallback, cli
from lightning_lossval.cli import LossValCLI, _newest_checkpoint, configs_dir, main, shipped_config
from lightning_lossval.models import MLP

CONFIGS = Path(__file__).parent.parent / "configs"
EXAMPLES = Path(__file__).parent.parent / "examples"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def run(tmp_path, config, *args):
    main(["fit", "--config", str(CONFIGS / config), "--trainer.default_root_dir", str(tmp_path), *QUIET, *args])
    (log_dir,) = (tmp_path / "lightning_logs").iterdir()
    return log_dir


def read_values(log_dir):
    with open(log_dir / "values.csv") as f:
        return list(csv.DictReader(f))


def test_default_job_leaves_values_and_a_tensorboard_to_look_at(tmp_path, capsys):
    log_dir = run(tmp_path, "default.yaml", "--trainer.max_epochs", "2")
    rows = read_values(log_dir)
    assert len(rows) == 1617 and list(rows[0]) == [
        "rank",
        "index",
        "row",
        "target",
        "prediction",
        "noisy",
        "visits",
        "value",
        "flagged",
    ]
    assert {r["noisy"] for r in rows} == {r["flagged"] for r in rows} == {"yes", "no"}
    printed = capsys.readouterr().out
    assert "lowest-valued of 1617 training samples" in printed and "F1 (2-means)" in printed
    assert "suggested cut: the 2-means split of the values flags" in printed
    assert printed.rstrip().endswith(f"TensorBoard: tensorboard --logdir {log_dir.parent}")

    events = EventAccumulator(str(log_dir), size_guidance={"histograms": 0, "scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert "lossval/weights" in tags["histograms"]
    assert {"lossval/weight_mean", "lossval/auroc", "lossval/detection_f1", "train_loss", "val_loss"} <= set(
        tags["scalars"]
    )
    assert "lossval/lowest_rows/text_summary" in tags["tensors"]
    assert "lossval/detection" in tags["images"]
    assert (log_dir / "config.yaml").exists()  # the resolved config, saved by LightningCLI
    # the trained model comes back from its checkpoint without the data (sizes in its hyperparameters)
    model = MLP.load_from_checkpoint(next((log_dir / "checkpoints").glob("*.ckpt")))
    assert model(torch.randn(2, 64)).shape == (2, 10)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def customer_rows(n, seed, corrupt=()):
    """Two well separated classes; `corrupt` rows get the wrong label. Columns: id, x1, x2, color, target."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.choice(["churn", "stay"])
        center = 2.5 if label == "churn" else -2.5
        color = rng.choice(["red", "green", "blue"])
        if i in corrupt:
            label = "stay" if label == "churn" else "churn"
        rows.append(
            [f"cust-{seed}-{i}", f"{center + rng.gauss(0, 1):.4f}", f"{center + rng.gauss(0, 1):.4f}", color, label]
        )
    return rows


HEADER = ["id", "x1", "x2", "color", "target"]


def run_csv(tmp_path, target, *args):
    """configs/csv.yaml on tmp_path/train.csv and tmp_path/val.csv, as the README shows it."""
    train, val = str(tmp_path / "train.csv"), str(tmp_path / "val.csv")
    return run(
        tmp_path,
        "csv.yaml",
        "--data.train_csv",
        train,
        "--data.val_csv",
        val,
        "--data.target",
        target,
        "--trainer.accelerator",
        "cpu",
        *args,
    )


def test_own_csv_with_categorical_and_id_columns_maps_values_back(tmp_path):
    corrupt = set(random.Random(1).sample(range(300), 30))
    train_rows = customer_rows(300, seed=0, corrupt=corrupt)
    write_csv(tmp_path / "train.csv", HEADER, train_rows)
    write_csv(tmp_path / "val.csv", HEADER, customer_rows(60, seed=1))
    log_dir = run_csv(tmp_path, "target", "--data.id_column", "id", "--trainer.max_epochs", "5")
    rows = read_values(log_dir)
    assert len(rows) == 300 and sorted(int(r["row"]) for r in rows) == list(range(300))
    for r in rows:  # every value row names the CSV row it came from
        csv_row = train_rows[int(r["row"])]
        assert r["id"] == csv_row[0] and r["target"] == csv_row[4]
    by_row = {int(r["row"]): float(r["value"]) for r in rows}
    values = torch.tensor([by_row[i] for i in range(300)])
    noisy = torch.tensor([i in corrupt for i in range(300)])
    assert binary_auroc(-values, noisy.int()).item() >= 0.8


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing target", "target column 'label'"),
        ("one class", "one class"),
        ("other columns", "validation"),
        ("unparsable", "'abc' is not a number"),
        ("empty file", "empty"),
        ("id not declared", "column 'id' of"),
    ],
)
def test_bad_csv_gets_a_clear_message_and_exit_status_2(tmp_path, capsys, case, message):
    train, val = customer_rows(40, seed=0), customer_rows(10, seed=1)
    header, val_header, target = HEADER, HEADER, "target"
    if case == "missing target":
        target = "label"
    elif case == "one class":
        train = [r[:4] + ["stay"] for r in train]
    elif case == "other columns":
        val_header = ["id", "x1", "x3", "color", "target"]
    elif case == "unparsable":
        train[7][1] = "abc"
    write_csv(tmp_path / "train.csv", header, train)
    write_csv(tmp_path / "val.csv", val_header, val)
    if case == "empty file":
        (tmp_path / "train.csv").write_text("")
    declared = [] if case == "id not declared" else ["--data.id_column", "id"]
    with pytest.raises(SystemExit) as exit_info:
        run_csv(tmp_path, target, "--trainer.max_epochs", "1", *declared)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lossval: error: ") and message.lower() in err.lower(), err
    assert "Traceback" not in err
    if case == "id not declared":  # the fixes, named
        assert "--data.id_column id" in err and """--data.drop_columns '["id"]'""" in err


@pytest.mark.parametrize("name", ["my id", "Unnamed: 0", "x, y", "[x]", "it's"])
def test_the_options_a_column_hint_names_can_be_pasted(tmp_path, name):
    import shlex

    from lightning_lossval.tables import column_hints

    write_csv(tmp_path / "t.csv", [name, "x", "y"], [[f"r{i}", str(i % 7), str(i % 2)] for i in range(20)])
    hint = column_hints(name)
    as_id, drop = hint.split(" (copied into values.csv) or leave it out with ")
    base = ["--config", str(CONFIGS / "csv.yaml"), "--data.train_csv", str(tmp_path / "t.csv"), "--data.target", "y"]
    if "in a config file" in as_id:  # the command line reads this name as YAML: the hint names a config key
        key = as_id.removeprefix("Name it with ").removesuffix(" under data.init_args in a config file")
        (tmp_path / "id.yaml").write_text(f"data:\n  init_args:\n    {key}\n")
        id_args = ["--config", str(tmp_path / "id.yaml")]
    else:
        id_args = shlex.split(as_id.removeprefix("Name it with "))
    built = LossValCLI(args=[*base, *id_args, *one_epoch(tmp_path)], run=False)
    assert built.datamodule.hparams.id_column == name
    built = LossValCLI(args=[*base, *shlex.split(drop), *one_epoch(tmp_path)], run=False)
    assert built.datamodule.hparams.drop_columns == [name]


def test_a_checkpoint_that_cannot_resume_this_run_says_why(tmp_path, capsys):
    def fit_csv(name, columns, *args):
        rows = [[str((i * (c + 3)) % 11) for c in range(columns)] + [str(i % 2)] for i in range(60)]
        path = str(tmp_path / f"{name}.csv")
        write_csv(path, [f"x{c}" for c in range(columns)] + ["y"], rows)
        with pytest.raises(SystemExit) if args else contextlib.nullcontext() as exit_info:
            run(
                tmp_path / name,
                "csv.yaml",
                "--data.train_csv",
                path,
                "--data.target",
                "y",
                *one_epoch(tmp_path / name),
                *args,
            )
        return exit_info

    fit_csv("wide", 5)
    saved = next((tmp_path / "wide").rglob("*.ckpt"))
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    for ckpt, message in (
        (tmp_path / "nope.ckpt", r"--ckpt_path .*nope.ckpt: no such file; give a checkpoint a fit saved"),
        (tmp_path / "notes.ckpt", r"--ckpt_path .*notes.ckpt is not a checkpoint"),
        (saved, r"holds a model with num_inputs = 5, but the data has num_features = 3: it was made on other data"),
    ):
        assert fit_csv("narrow", 3, "--ckpt_path", str(ckpt)).value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("lossval: error: ") and "Traceback" not in err
        assert re.search(message, err), err


def test_ckpt_path_last_resumes_the_newest_checkpoint_of_the_earlier_runs(tmp_path, capsys, monkeypatch):
    args = ["fit", "--config", str(CONFIGS / "default.yaml"), "--trainer.default_root_dir", str(tmp_path), *QUIET]
    args += ["--trainer.limit_train_batches", "5", "--trainer.limit_val_batches", "1"]
    for name in ("last", "best"):  # no earlier run yet; a best checkpoint no new run knows
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--ckpt_path", name])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"lossval: error: --ckpt_path {name}: " in err, err
    assert not list(tmp_path.rglob("*.ckpt"))
    main([*args, "--trainer.max_epochs", "1"])
    (first,) = tmp_path.rglob("*.ckpt")
    saved = tmp_path / "tb" / "mine" / "version_0" / "checkpoints" / first.name  # where a configured logger puts it
    saved.parent.mkdir(parents=True)
    first.rename(saved)
    capsys.readouterr()
    main([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])  # Lightning alone would start afresh
    assert f"--ckpt_path last: {saved}, the newest checkpoint in" in capsys.readouterr().out
    (second,) = set(tmp_path.rglob("*.ckpt")) - {saved}
    assert torch.load(second, weights_only=False)["epoch"] == 1  # one more epoch, not two from scratch
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # DDP's other processes run the command too: they say nothing
    assert _newest_checkpoint("last", {"trainer": {"default_root_dir": str(tmp_path)}}) == str(second)
    assert "--ckpt_path last" not in capsys.readouterr().out


def test_csv_config_without_data_says_which_option_to_set(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "csv.yaml")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lossval: error: no training data given: set --data.train_csv PATH"), err


def test_bad_option_value_raised_while_instantiating(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path, "default.yaml", "--data.noise", "bogus")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lossval: error: --data.noise must be one of none, label, feature, mixed")
    assert "Traceback" not in err


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_notebook"])
def test_a_spawning_strategy_is_refused_before_any_process_starts(tmp_path, capsys, strategy):
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path, "default.yaml", "--trainer.devices", "2", "--trainer.strategy", strategy)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lossval: error: LossValCallback does not support") and "Use strategy='ddp'" in err


def test_a_subcommand_the_model_cannot_run_and_a_root_under_a_file_end_with_one_error_line(tmp_path, capsys):
    for subcommand in ("test", "predict"):  # the shipped models have no test_step or predict_step
        with pytest.raises(SystemExit) as exit_info:
            main([subcommand, "--config", str(CONFIGS / "default.yaml"), "--trainer.default_root_dir", str(tmp_path)])
        err = capsys.readouterr().err
        said = f"lossval: error: lossval {subcommand} runs the model's {subcommand}_step on the data's {subcommand}"
        assert exit_info.value.code == 2 and err.startswith(said) and "use lossval validate --ckpt_path" in err, err
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path / "notes.txt" / "runs", "default.yaml")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"{tmp_path / 'notes.txt'} is a file; give a folder's path" in err, err


def test_validate_without_a_checkpoint_says_the_network_is_untrained(tmp_path, capsys):
    main(["validate", "--config", str(CONFIGS / "default.yaml"), "--trainer.default_root_dir", str(tmp_path), *QUIET])
    out = capsys.readouterr().out
    assert "lossval: validate without --ckpt_path runs the network untrained; pass --ckpt_path PATH (or last)" in out


def test_unknown_config_key_and_the_console_script(tmp_path):
    (tmp_path / "bad.yaml").write_text("lossval:\n  learning_rate: 0.1\n")
    command = [
        sys.executable,
        "-m",
        "lightning_lossval.cli",
        "fit",
        "--config",
        str(CONFIGS / "default.yaml"),
        "--config",
        str(tmp_path / "bad.yaml"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("lossval: error: ") and "learning_rate" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr


@pytest.mark.parametrize(
    "option, message",
    [(["--data.noise_rat", "0.1"], "noise_rat"), (["--lossval.show", "many"], "show"), (["--bogus", "1"], "bogus")],
)
def test_unknown_options_and_wrong_types_end_with_one_error_line(tmp_path, capsys, option, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "default.yaml"), *option, *one_epoch(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lossval: error: ") and message in err and "usage:" not in err, err
    assert err.rstrip().endswith("(lossval fit --help lists the options)")


def test_print_config_shows_the_lossval_key(capsys):
    with pytest.raises(SystemExit) as exit_info:
        LossValCLI(args=["fit", "--config", str(CONFIGS / "default.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "lossval:" in printed and "objective: default" in printed and "builtin: digits" in printed


@pytest.mark.parametrize("config", ["regression.yaml", "paper.yaml", "digits_cnn.yaml"])
def test_shipped_configs_run(tmp_path, config):
    log_dir = run(tmp_path, config, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "5")
    assert read_values(log_dir)


LISTED = """
trainer:
  max_epochs: 1
  callbacks:
    - class_path: lightning_lossval.LossValCallback
      init_args:
        show: 3
model:
  class_path: lightning_lossval.models.MLP
data:
  class_path: lightning_lossval.tabular.TabularDataModule
  init_args:
    builtin: iris
"""


def test_callback_listed_under_trainer_callbacks(tmp_path, capsys):
    (tmp_path / "listed.yaml").write_text(LISTED)
    args = ["fit", "--config", str(tmp_path / "listed.yaml"), "--trainer.default_root_dir", str(tmp_path), *QUIET]
    cli = LossValCLI(args=args)
    assert [c.show for c in cli.trainer.callbacks if isinstance(c, LossValCallback)] == [3]
    assert "the 3 lowest-valued" in capsys.readouterr().out

    with pytest.raises(SystemExit):  # options under lossval: too would be ambiguous
        main([*args, "--lossval.lr", "0.05"])
    said = capsys.readouterr().err
    assert "configured twice" in said and "a later --config file saying lossval: null" in said
    listed_once = "    - class_path: lightning_lossval.LossValCallback\n      init_args:\n        show: 3\n"
    (tmp_path / "twice.yaml").write_text(LISTED.replace(listed_once, 2 * listed_once))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(tmp_path / "twice.yaml"), "--trainer.default_root_dir", str(tmp_path), *QUIET])
    assert "lossval: error: trainer.callbacks lists LossValCallback 2 times; keep one" in capsys.readouterr().err

    # a shipped config has a lossval: block; a later config's "lossval: null" hands the callback to the listed one
    (tmp_path / "null.yaml").write_text("lossval: null\n" + LISTED.split("model:")[0])
    shipped = ["fit", "--config", str(CONFIGS / "default.yaml"), "--config", str(tmp_path / "null.yaml")]
    cli = LossValCLI(args=[*shipped, "--trainer.default_root_dir", str(tmp_path), *QUIET])
    assert [c.show for c in cli.trainer.callbacks if isinstance(c, LossValCallback)] == [3]


def test_own_model_is_found_in_the_folder_lossval_runs_in(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() adds the folder it runs in
    monkeypatch.delitem(sys.modules, "own_model", raising=False)  # imported by another test: import it afresh
    monkeypatch.chdir(EXAMPLES)
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / "default.yaml"),
            "--model",
            "own_model.Classifier",
            *one_epoch(tmp_path),
            *QUIET,
        ]
    )
    assert (tmp_path / "lightning_logs" / "version_0" / "values.csv").is_file()


def test_own_model_gets_the_data_sizes_as_init_args(tmp_path, monkeypatch):
    """examples/own_model.py: a module on sys.path whose __init__ takes num_features and num_classes."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    own = ["--model", "own_model.Classifier", "--data.builtin", "wine", "--data.noise_rate", "0.1"]
    cli_run = LossValCLI(args=["fit", "--config", str(CONFIGS / "default.yaml"), *own, *one_epoch(tmp_path), *QUIET])
    model = cli_run.model
    assert type(model).__name__ == "Classifier" and cli_run.trainer.state.finished
    assert (model.hparams.num_features, model.hparams.num_classes) == (13, 3)
    assert {"num_outputs", "task", "num_inputs"}.isdisjoint(model.hparams)  # only the sizes it takes
    (log_dir,) = (tmp_path / "lightning_logs").iterdir()
    rows = read_values(log_dir)
    assert len(rows) == len(cli_run.datamodule.train_set) and {r["prediction"] for r in rows} <= {"0", "1", "2"}
    rebuilt = type(model).load_from_checkpoint(next((log_dir / "checkpoints").glob("*.ckpt")))  # no data needed
    assert rebuilt(torch.randn(2, 13)).shape == (2, 3)


def one_epoch(tmp_path):
    return ["--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path)]


USER_MODULE = """
import lightning as L
from torch import nn


class Sized(L.LightningModule):
    def __init__(self, num_features: int, num_classes: int, task: str = "classification"):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Linear(num_features, num_classes)


class Plain(L.LightningDataModule):
    \"\"\"A DataModule without size attributes.\"\"\"
"""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.builtin", "diabetes"], "Sized takes num_classes, which the DataModule does not provide"),
        (
            ["--model.num_classes", "5"],
            "model.init_args.num_classes is 5 (from your config or Sized's default), but the data has num_classes = 10",
        ),
        (["--data.builtin", "diabetes", "--model.num_classes", "1"], "model.init_args.task is 'classification'"),
        (["--data", "user_module.Plain"], "Sized takes num_features, which the DataModule does not provide"),
    ],
)
def test_sizes_the_data_cannot_give_are_explained(tmp_path, monkeypatch, capsys, args, message):
    (tmp_path / "user_module.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                str(CONFIGS / "default.yaml"),
                "--model",
                "user_module.Sized",
                *args,
                *one_epoch(tmp_path),
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lossval: error: ") and message in err, err


def test_sizes_given_in_the_config_are_kept_where_the_data_has_none(tmp_path, monkeypatch, capsys):
    (tmp_path / "user_module.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = ["--model", "user_module.Sized", "--model.num_features", "4", "--model.num_classes", "3"]
    built = LossValCLI(args=["--data", "user_module.Plain", *model, *one_epoch(tmp_path)], run=False)
    assert (built.model.net.in_features, built.model.net.out_features) == (4, 3)
    assert (built.model.hparams.num_features, built.model.hparams.num_classes) == (4, 3)

    # the bundled MLP without sizes builds its layers in configure_model: too late for --optimizer
    with pytest.raises(SystemExit):
        main(["fit", "--model", "lightning_lossval.models.MLP", "--data", "user_module.Plain", "--optimizer", "SGD"])
    assert "--optimizer got a model without parameters" in capsys.readouterr().err


@pytest.mark.parametrize("config", ["default.yaml", "digits_cnn.yaml"])
def test_optimizer_option_trains_the_bundled_models(tmp_path, config):
    args = [
        "fit",
        "--config",
        str(CONFIGS / config),
        *one_epoch(tmp_path),
        "--trainer.limit_train_batches",
        "3",
        *QUIET,
    ]
    cli_run = LossValCLI(args=[*args, "--optimizer", "torch.optim.SGD", "--optimizer.lr", "0.05"])
    (optimizer,) = cli_run.trainer.optimizers
    assert type(optimizer) is torch.optim.SGD and optimizer.param_groups[0]["lr"] == 0.05
    assert cli_run.trainer.global_step == 3
    assert optimizer.param_groups[0]["params"] == list(cli_run.model.parameters())


def test_lr_scheduler_option_steps_the_learning_rate(tmp_path, capsys):
    args = ["fit", "--config", str(CONFIGS / "default.yaml"), *one_epoch(tmp_path), "--trainer.max_epochs", "2", *QUIET]
    options = "--trainer.limit_train_batches 2 --optimizer torch.optim.SGD --optimizer.lr 0.1 "
    options += "--lr_scheduler torch.optim.lr_scheduler.StepLR --lr_scheduler.step_size 1 --lr_scheduler.gamma 0.5"
    cli_run = LossValCLI(args=[*args, *options.split()])
    (config,) = cli_run.trainer.lr_scheduler_configs
    assert type(config.scheduler) is torch.optim.lr_scheduler.StepLR
    assert cli_run.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)  # stepped each epoch

    with pytest.raises(SystemExit) as exit_info:  # without --optimizer LightningCLI would ignore it
        main([*args, "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "1"])
    assert exit_info.value.code == 2 and "--lr_scheduler needs --optimizer too" in capsys.readouterr().err


def test_shipped_configs_are_listed_written_and_found_by_name(tmp_path, monkeypatch, capsys):
    shipped = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert sorted(p.name for p in configs_dir().glob("*.yaml")) == shipped  # in a checkout: configs/
    main(["configs"])
    listed = capsys.readouterr().out
    assert all(name in listed for name in shipped) and "Your own table (CSV or Parquet)" in listed

    main(["configs", "--write", str(tmp_path / "mine")])
    for name in shipped:
        assert (tmp_path / "mine" / name).read_text() == (CONFIGS / name).read_text()
    with pytest.raises(SystemExit):  # nothing is overwritten
        main(["configs", "--write", str(tmp_path / "mine")])
    assert "already exist" in capsys.readouterr().err

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no configs/ here: a bare name or configs/NAME means the shipped file
    assert shipped_config("csv.yaml") == shipped_config("configs/csv.yaml") == str(configs_dir() / "csv.yaml")
    assert shipped_config("other/csv.yaml") == "other/csv.yaml"
    (elsewhere / "csv.yaml").write_text("{}")
    assert shipped_config("csv.yaml") == "csv.yaml"  # a file of that name wins
    resolved = cli._resolve_configs(["--config=default.yaml", "-c", "paper.yaml", "--data.train_csv", "paper.yaml"])
    shipped_paper = str(configs_dir() / "paper.yaml")
    assert resolved == ["--config=" + str(configs_dir() / "default.yaml"), "-c", shipped_paper] + resolved[3:]
    assert resolved[3:] == ["--data.train_csv", "paper.yaml"]  # only config options are resolved
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/default.yaml", "--print_config"])
    assert exit_info.value.code == 0 and "builtin: digits" in capsys.readouterr().out

    with monkeypatch.context() as m:  # installed: the configs lie in the package, next to cli.py
        package = tmp_path / "site-packages" / "lightning_lossval"
        (package / "configs").mkdir(parents=True)
        m.setattr(cli, "__file__", str(package / "cli.py"))
        assert configs_dir() == package / "configs"


def test_a_fit_ended_by_sigterm_exits_with_a_failure_status(monkeypatch):
    def terminated(*args, **kwargs):
        raise SIGTERMException  # what Lightning raises after a SIGTERM, once on_exception has saved the values

    monkeypatch.setattr(cli, "LossValCLI", terminated)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "default.yaml")])
    assert exit_info.value.code == 143  # 128 + SIGTERM, as a shell reports a process the signal ended


def test_every_values_folder_keeps_the_config_that_made_it(tmp_path):
    import yaml

    def seeds(configs):
        return [yaml.safe_load(path.read_text())["seed_everything"] for path in configs]

    def fit(root, seed, *args):
        base = ["--config", str(CONFIGS / "default.yaml"), "--trainer.default_root_dir", str(root)]
        main(
            [
                "fit",
                *base,
                *QUIET,
                "--trainer.max_epochs",
                "1",
                "--trainer.limit_train_batches",
                "4",
                "--seed_everything",
                str(seed),
                *args,
            ]
        )

    # a logger with a fixed version: the second fit's values and config go to lossval/version_0 inside its folder
    fixed = ["--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger", "--trainer.logger.version", "0"]
    for seed in (0, 7):
        fit(tmp_path, seed, *fixed, "--trainer.logger.save_dir", str(tmp_path))
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert seeds([run_dir / "config.yaml", run_dir / "lossval" / "version_0" / "config.yaml"]) == [0, 7]
    # no logger: every run's values folder of its own, each with its config
    for seed in (1, 2):
        fit(tmp_path / "plain", seed, "--trainer.logger", "false")
    assert seeds(sorted((tmp_path / "plain" / "lossval").glob("version_*/config.yaml"))) == [1, 2]


def test_a_fit_failing_before_the_config_callbacks_setup_keeps_its_own_error():
    # a DataModule's setup raising: Lightning calls on_exception of callbacks whose setup never ran
    unset = object.__new__(cli.SaveRunConfig)
    assert unset.on_exception(None, None, ValueError("my data is broken")) is None


def test_the_cli_shows_lossvals_warnings_without_a_source_line(tmp_path, capsys):
    import warnings

    rows = [[f"c{i % 20}", f"{(i * 7) % 11}.5", str(i % 2)] for i in range(60)]  # ids repeat: a LossVal warning
    write_csv(tmp_path / "t.csv", ["customer_id", "x1", "label"], rows)
    data = ["--data.train_csv", "t.csv", "--data.target", "label", "--data.id_column", "customer_id"]
    command = [sys.executable, "-m", "lightning_lossval.cli", "fit", "--config", str(CONFIGS / "csv.yaml"), *data]
    done = subprocess.run([*command, *QUIET, "--trainer.max_epochs", "1"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "\nlossval: warning: the id column 'customer_id' of t.csv repeats" in done.stderr
    assert "cells.py" not in done.stderr  # no source line for the data's problem
    before = warnings.formatwarning
    main(["configs"])
    assert warnings.formatwarning is before  # the caller's formatter is back


def test_a_folder_the_run_cannot_write_is_a_user_error_naming_it(tmp_path, monkeypatch, capsys):
    # a read-only default_root_dir (root ignores file modes here, so the refusal to create a file is simulated)
    def denied(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", dir)

    monkeypatch.setattr(cli.tempfile, "TemporaryFile", denied)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "default.yaml"), *one_epoch(tmp_path / "runs")])
    assert exit_info.value.code == 2
    said = capsys.readouterr().err
    assert f"lossval: error: the run's folder {tmp_path / 'runs'} cannot be written (Permission denied); " in said
    assert "give a folder you can write to as --trainer.default_root_dir" in said
    assert not list((tmp_path / "runs").iterdir())  # refused before the run wrote anything


@pytest.mark.parametrize("precision, space", [("64-true", "inputs"), ("bf16-true", "embedding")])
def test_a_true_precision_values_and_predicts_every_row(tmp_path, precision, space):
    # the rows read at fit end (predictions) and at its start (embedded validation rows) take the precision's dtype
    args = ["--trainer.max_epochs", "1", "--trainer.precision", precision, "--model.init_args.lossval_space", space]
    rows = read_values(run(tmp_path, "default.yaml", *args))
    assert len(rows) == 1617 and all(r["prediction"] != "" for r in rows)
    assert all(math.isfinite(float(r["value"])) for r in rows)


def test_column_names_given_with_the_spaces_pandas_keeps_are_found(tmp_path):
    # pandas keeps " target " from a header written with spaces; the CLI hands the name over as typed
    write_csv(tmp_path / "train.csv", [" id ", "x1", "x2", "color", " target "], customer_rows(120, seed=0))
    args = ["--data.train_csv", str(tmp_path / "train.csv"), "--data.target", " target ", "--data.id_column", " id "]
    rows = read_values(run(tmp_path, "csv.yaml", *args, "--trainer.max_epochs", "1"))
    assert len(rows) == 108 and rows[0]["id"].startswith("c")
