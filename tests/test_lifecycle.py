"""What a fit leaves behind, with a real Trainer: failed fits, tuners, checkpoints, refits, visits, files."""

from __future__ import annotations

import csv
import logging
import shutil
import signal

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import TRAINER_ARGS, BlobData, Net, blobs
from lightning.pytorch.callbacks import LearningRateFinder, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.tuner import Tuner
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn
from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset

from lightning_lossval import IndexedDataModule, LossValCallback, index_dataloader, patching
from lightning_lossval.errors import ConfigError, DataError
from lightning_lossval.metrics import detection_report
from lightning_lossval.noise import flip_labels

STORES = pytest.mark.parametrize("objective", ["paper", "default"], ids=["dense", "sparse"])
PATCHABLE = {"training_step", "lr_scheduler_step", "clip_gradients", "on_load_checkpoint", "_lossval_callback"}


def trainer(tmp_path, callback, epochs=2, **args):
    base = dict(TRAINER_ARGS, max_epochs=epochs, default_root_dir=tmp_path, logger=False, enable_checkpointing=False)
    return L.Trainer(callbacks=[callback, *args.pop("callbacks", [])], **{**base, **args})


def fit(tmp_path, model, callback, data=None, epochs=2, **args):
    L.seed_everything(0, verbose=False)
    trained = trainer(tmp_path, callback, epochs, **args)
    trained.fit(model, data if data is not None else IndexedDataModule(BlobData()))
    return trained


def assert_unpatched(model):
    """Nothing of LossVal's left on the instance: no patched methods, no weights parameter."""
    assert not patching.is_patched(model)
    assert not (PATCHABLE | {"on_after_batch_transfer"}) & set(model.__dict__)
    assert "lossval_weights" not in model.state_dict()


class Flaky(Net):
    """Net with a batch hook (patched too) whose first fit fails as ``fail`` says."""

    def __init__(self, fail):
        super().__init__()
        self.fail = fail

    def on_after_batch_transfer(self, batch, dataloader_idx):
        return batch

    def training_step(self, batch, batch_idx):
        if self.fail == "bug" and batch_idx == 2:
            raise RuntimeError("a bug in training_step")
        if self.fail == "interrupt" and batch_idx == 2:
            raise KeyboardInterrupt
        if self.fail == "nan":
            x, y = batch
            return self.lossval_loss(F.cross_entropy(self(x), y, reduction="none") * float("nan"))
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize(
    "fail, objective, error",
    [
        ("bug", "paper", RuntimeError),
        ("bug", "default", RuntimeError),
        ("interrupt", "paper", SystemExit),  # Lightning turns Ctrl-C into exit status 1 after on_exception
        ("nan", "paper", DataError),  # the batch's NaN losses, before any weight takes them in
        ("nan", "default", DataError),
    ],
)
def test_a_failed_fit_leaves_the_module_as_it_was_and_a_refit_works(tmp_path, fail, objective, error):
    model = Flaky(fail)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    callback = LossValCallback(objective=objective, show=0)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(error):
            fit(tmp_path, model, callback)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores Ctrl-C after catching one
    assert_unpatched(model)
    model.fail = None  # the bug fixed; the NaN run's network is reset, which also needs the plain state dict
    model.load_state_dict(initial)
    fit(tmp_path, model, callback)
    assert torch.isfinite(callback.values).all() and (callback.values != 1).all()
    assert_unpatched(model)
    fit(tmp_path, model, LossValCallback(objective=objective, show=0))  # and with a new callback


@STORES
def test_only_what_the_store_needs_is_patched(tmp_path, objective):
    seen = {}

    class Spy(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen.update(patched=set(pl_module.__dict__[patching.PATCHED]), params=dict(pl_module.named_parameters()))

    model = Flaky(None)
    fit(tmp_path, model, LossValCallback(objective=objective, show=0), epochs=1, callbacks=[Spy()])
    dense = {"lr_scheduler_step", "clip_gradients", "on_load_checkpoint", "lossval_weights"}
    common = {"training_step", "_lossval_callback", "on_after_batch_transfer"}
    assert seen["patched"] == (common | dense if objective == "paper" else common)
    assert ("lossval_weights" in seen["params"]) == (objective == "paper")
    assert_unpatched(model)


@pytest.mark.parametrize("tune", ["lr_find", "scale_batch_size", "lr_finder_callback"])
@STORES
def test_tuners_leave_the_weights_alone_and_fit_then_learns(tmp_path, tune, objective):
    model, data = Net(), IndexedDataModule(BlobData(batch_size=4 if tune == "scale_batch_size" else 32))
    callback = LossValCallback(objective=objective, show=0)
    L.seed_everything(0, verbose=False)
    if tune == "lr_finder_callback":  # the finder's trial steps run inside the fit, before LossVal starts
        finder = LearningRateFinder(num_training_steps=20, early_stop_threshold=None)
        trainer(tmp_path, callback, callbacks=[finder]).fit(model, data)
        assert finder.optimal_lr is not None and len(finder.optimal_lr.results["loss"]) == 20
    else:
        tuned = trainer(tmp_path, callback)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        if tune == "lr_find":
            found = Tuner(tuned).lr_find(model, datamodule=data, num_training=20, early_stop_threshold=None)
            assert len(found.results["loss"]) == 20 and all(torch.isfinite(torch.tensor(found.results["loss"])))
        else:
            assert Tuner(tuned).scale_batch_size(model, datamodule=data, init_val=8, max_trials=3) == 32
            assert data.datamodule.batch_size == 32  # the wrapped module's loader takes the found size
        assert torch.equal(callback.values, torch.ones(400)) and int(callback.visits.sum()) == 0
        assert_unpatched(model)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the tuner restored it
        tuned.fit(model, data)
    assert (callback.values != 1).all() and torch.equal(callback.visits, torch.full((400,), 2))
    assert_unpatched(model)


class EvalNet(Net):
    def test_step(self, batch, batch_idx):
        return self.validation_step(batch, batch_idx)


@STORES
def test_test_and_validate_from_a_checkpoint_keep_the_values_of_the_fit(tmp_path, objective, caplog):
    data = IndexedDataModule(BlobData())
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=-1)
    callback = LossValCallback(objective=objective, show=0)
    model = EvalNet()
    trained = fit(tmp_path, model, callback, data, epochs=3, enable_checkpointing=True, callbacks=[checkpoints])
    exported = torch.load(callback.values_path.with_suffix(".pt"))
    first = next((tmp_path / "ckpt").glob("epoch=0*.ckpt"))
    at_first = torch.load(first, weights_only=False)["callbacks"]["LossValCallback"]["store"]["weights"]
    assert not torch.allclose(at_first, exported)  # loading that checkpoint's weights would show
    with caplog.at_level(logging.INFO):
        trained.validate(model, datamodule=data, ckpt_path=first)
        trained.test(model, dataloaders=data.val_dataloader(), ckpt_path="best")
    assert torch.equal(callback.values, exported)
    assert (
        caplog.text.count("LossVal weights are not loaded outside fit, and validate, test and predict write no values")
        == 2
    )
    assert_unpatched(model)


def test_fit_leaves_the_state_dict_and_checkpoints_the_users(tmp_path):
    every = ModelCheckpoint(dirpath=tmp_path / "full", save_top_k=-1)
    weights_only = ModelCheckpoint(dirpath=tmp_path / "weights", save_weights_only=True, every_n_epochs=2)
    model = Net()
    fit(tmp_path, model, LossValCallback(objective="paper"), enable_checkpointing=True, callbacks=[every, weights_only])
    Net().load_state_dict(model.state_dict())  # strict: no lossval_weights key
    paths = [*(tmp_path / "full").glob("*.ckpt"), *(tmp_path / "weights").glob("*.ckpt")]
    assert len(paths) == 3
    for path in paths:
        Net().load_state_dict(torch.load(path, weights_only=False)["state_dict"])


def test_a_refit_on_other_data_starts_new_weights(tmp_path):
    model, callback = Net(), LossValCallback(objective="paper", show=0)
    fit(tmp_path, model, callback, IndexedDataModule(BlobData(n=300)))
    assert callback.values.shape == (300,)
    fit(tmp_path, model, callback, IndexedDataModule(BlobData(n=200, seed=1)), epochs=1)
    assert callback.values.shape == (200,) and torch.equal(callback.visits, torch.ones(200, dtype=torch.long))


def test_an_older_dense_checkpoint_with_weights_in_the_state_dict_resumes_exactly(tmp_path):
    def run(epochs, root, ckpt_path=None):
        checkpoint = ModelCheckpoint(dirpath=root, save_last=True)
        callback = LossValCallback(objective="paper", show=0)
        args = dict(enable_checkpointing=True, callbacks=[checkpoint], deterministic=True)
        L.seed_everything(0, verbose=False)
        trainer(root, callback, epochs, **args).fit(Net(), IndexedDataModule(BlobData()), ckpt_path=ckpt_path)
        return callback

    run(2, tmp_path / "first")
    new = torch.load(tmp_path / "first" / "last.ckpt", weights_only=False)
    old = dict(new, callbacks={"LossValCallback": dict(new["callbacks"]["LossValCallback"], store={})})
    old["state_dict"] = dict(new["state_dict"], lossval_weights=new["callbacks"]["LossValCallback"]["store"]["weights"])
    torch.save(old, tmp_path / "old.ckpt")
    from_new = run(4, tmp_path / "new", tmp_path / "first" / "last.ckpt")
    from_old = run(4, tmp_path / "old", tmp_path / "old.ckpt")
    assert (from_new.values - 1).abs().max() > 0.05
    assert (from_new.values - from_old.values).abs().max().item() <= 1e-6
    assert torch.equal(from_new.visits, torch.full((400,), 4))  # the visits resume too
    assert torch.equal(from_old.visits, torch.full((400,), 2))  # the older file has none: counted from the resume


class TwoOptimizers(Net):
    """Manual optimization: optimizer 0 trains the classifier on the LossVal loss, optimizer 1 an auxiliary
    head on its own loss, in the order ``order`` says."""

    def __init__(self, order):
        super().__init__()
        self.automatic_optimization = False
        self.aux = nn.Linear(8, 1)
        self.order = order

    def training_step(self, batch, batch_idx):
        x, y = batch
        classifier, auxiliary = self.optimizers()

        def main():
            classifier.zero_grad()
            self.manual_backward(self.lossval_loss(F.cross_entropy(self(x), y, reduction="none")))
            if self.order != "no_step":
                classifier.step()

        def aux():
            auxiliary.zero_grad()
            self.manual_backward(self.aux(x).pow(2).mean())
            auxiliary.step()

        for part in (aux, main) if self.order == "aux_first" else (main, aux):
            part()

    def configure_optimizers(self):
        return torch.optim.Adam(self.net.parameters(), lr=self.lr), torch.optim.Adam(self.aux.parameters())


@pytest.mark.parametrize(
    "objective, order, index",
    [
        ("paper", "main_first", 1),  # optimizer 1's zero_grad clears the weights' gradient before its step
        ("paper", "aux_first", 1),
        ("default", "aux_first", 1),  # optimizer 1 would step each batch's gradients one step late
        ("default", "no_step", 0),  # the LossVal loss's optimizer never steps
    ],
)
def test_weights_no_step_moves_are_an_error_naming_optimizer_index(tmp_path, objective, order, index):
    callback = LossValCallback(objective=objective, optimizer_index=index, show=0)
    with pytest.raises(ConfigError, match=rf"never moved in epoch 0.*optimizer_index={index}.*optimizer_index=\.\.\."):
        fit(tmp_path, TwoOptimizers(order), callback)


class LogsOnly(Net):
    """Logs the LossVal loss and returns the plain mean: the weights would never get a gradient."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        losses = F.cross_entropy(self(x), y, reduction="none")
        self.log("train_loss", self.lossval_loss(losses))
        return losses.mean()


class SkipsOdd(Net):
    """Skips every other batch (returns None), the one an accumulated optimizer step falls on."""

    def training_step(self, batch, batch_idx):
        return None if batch_idx % 2 else super().training_step(batch, batch_idx)


@pytest.mark.parametrize("objective", ["default", "paper"])
def test_an_accumulated_step_whose_last_batch_is_skipped_still_moves_the_weights(tmp_path, objective):
    callback = LossValCallback(objective=objective, show=0)
    data = IndexedDataModule(BlobData(n=384))  # 12 batches: every optimizer step falls on a skipped one
    fit(tmp_path, SkipsOdd(), callback, data, epochs=1, accumulate_grad_batches=2)
    assert (callback.values != 1).any() and int(callback.visits.sum()) == 6 * 32  # batches 0, 2, ..., 10


@pytest.mark.parametrize("objective", ["default", "paper"])
def test_a_lossval_loss_that_is_only_logged_is_an_error_saying_so(tmp_path, objective):
    said = r"the loss training_step returned does not depend on self.lossval_loss\(...\).*return it, or a loss built"
    with pytest.raises(ConfigError, match=said):  # default: at the first step; paper: at the first epoch's end
        fit(tmp_path, LogsOnly(), LossValCallback(objective=objective, show=0), epochs=1)


@pytest.mark.parametrize("order", ["main_first", "aux_first"])
@STORES
def test_two_optimizers_with_the_right_index_learn(tmp_path, objective, order):
    callback = LossValCallback(objective=objective, optimizer_index=0, show=0)
    fit(tmp_path, TwoOptimizers(order), callback)
    assert (callback.values != 1).all()


@STORES
def test_rows_no_batch_visited_are_counted_and_reported(tmp_path, objective, capsys):
    L.seed_everything(0, verbose=False)  # the network is made before fit seeds
    x, y = blobs(500)
    labels, noisy = flip_labels(y[:400], 0.2, num_classes=3, seed=0)
    seen = torch.arange(0, 400, 2)
    loader = DataLoader(TensorDataset(x[:400], labels), batch_size=32, sampler=SubsetRandomSampler(seen.tolist()))
    callback = LossValCallback(val_data=x[400:], objective=objective, show=3, noisy_mask=noisy)
    fit(tmp_path, Net(), callback, index_dataloader(loader), epochs=2)
    visits = torch.zeros(400, dtype=torch.long)
    visits[seen] = 2
    assert torch.equal(callback.visits, visits)
    unseen = visits == 0
    assert torch.equal(callback.values[unseen], torch.ones(200)) and (callback.values[~unseen] != 1).all()
    with open(callback.values_path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["rank", "index", "noisy", "visits", "value", "flagged"]
    assert all(int(r["visits"]) == visits[int(r["index"])] for r in rows)
    flagged = [r for r in rows if r["flagged"] == "yes"]
    assert flagged and all(r["visits"] == "2" for r in flagged)  # the unmeasured 1.0s are never flagged
    assert torch.equal(torch.load(callback.values_path.with_suffix(".pt")), callback.values)  # still the [N] values
    printed = capsys.readouterr().out
    assert (
        "200 of 400 rows were never measured (in no training batch, or alone in one); their value 1.0 means unmeasured"
        in printed
    )
    assert f"flags {len(flagged)} of the 200 measured rows (value <= " in printed
    auroc = detection_report(callback.values[seen], noisy[seen])["auroc"]  # the unmeasured rows say nothing
    assert f"detection of the {int(noisy[seen].sum())} known noisy samples among the 200 measured rows: " in printed
    assert f"AUROC {auroc:.3f}" in printed and auroc > 0.8


def test_the_printout_gives_the_two_means_cut_of_values_csv_and_the_tensorboard_command(tmp_path, capsys):
    logger = TensorBoardLogger(tmp_path / "my runs", name="tb")
    callback = LossValCallback(show=3)
    fit(tmp_path, Net(), callback, epochs=2, logger=logger)
    with open(callback.values_path) as f:
        rows = list(csv.DictReader(f))
    flagged = [r for r in rows if r["flagged"] == "yes"]
    assert 0 < len(flagged) < 400 and rows[: len(flagged)] == flagged  # the lowest rows, and only they
    cut = callback.values[int(flagged[-1]["index"])].item()
    assert float(rows[len(flagged)]["value"]) > cut
    lines = capsys.readouterr().out.strip().splitlines()
    assert (
        f"suggested cut: the 2-means split of the values flags {len(flagged)} of 400 rows (value <= {cut:.4f}); "
        "flagged column in values.csv" in lines
    )
    assert lines[0] == "LossVal: the 3 lowest-valued of 400 training samples (lowest first)"
    assert lines[1].split()[-1] == "flagged" and lines[2].split()[-1] == "yes"  # the printed table shows it too
    assert lines[-1] == f"TensorBoard: tensorboard --logdir '{tmp_path / 'my runs' / 'tb'}'"


def test_runs_without_a_logger_keep_their_own_values_files(tmp_path, capsys):
    first, second, quick = (LossValCallback(show=0) for _ in range(3))
    fit(tmp_path, Net(), first, epochs=1)
    fit(tmp_path, Net(), second, epochs=2)
    fit(tmp_path, Net(), quick, fast_dev_run=True)  # Lightning's dummy logger has no directory either
    paths = [cb.values_path for cb in (first, second, quick)]
    assert paths == [tmp_path / "lossval" / f"version_{n}" / "values.csv" for n in range(3)]
    for cb in (first, second, quick):
        assert torch.equal(torch.load(cb.values_path.with_suffix(".pt")), cb.values)
    assert not torch.equal(first.values, second.values)
    assert not list(tmp_path.glob("values.*"))
    printed = capsys.readouterr().out
    assert all(f"values of all samples: {path}" in printed for path in paths)
    assert "TensorBoard" not in printed  # no TensorBoard logger, no command to open one


def test_a_first_fit_that_trains_no_batch_leaves_no_values_that_look_measured(tmp_path, caplog):
    callback = LossValCallback(show=0)
    data = BlobData()
    loader = index_dataloader(DataLoader(data.train_set, batch_size=512, shuffle=True, drop_last=True))
    with caplog.at_level(logging.INFO):  # 400 rows, batches of 512 without the last one: no batch at all
        L.Trainer(callbacks=[callback], max_epochs=1, logger=False, default_root_dir=tmp_path, **TRAINER_ARGS).fit(
            Net(), train_dataloaders=loader, val_dataloaders=DataLoader(data.val_set)
        )
    assert "trained on no batch (" in caplog.text and "drop_last=True with a batch size above" in caplog.text
    with pytest.raises(RuntimeError, match="no values yet"):
        callback.to_csv(tmp_path / "values.csv")
    assert not (tmp_path / "values.csv").exists()


@pytest.mark.parametrize("objective", ["default", "paper"])
def test_a_second_fit_of_one_trainer_keeps_the_first_fits_values_and_files(tmp_path, objective, caplog):
    callback, logger = LossValCallback(objective=objective, show=0), TensorBoardLogger(tmp_path, name="", version=0)
    model, data = Net(), IndexedDataModule(BlobData())
    run = fit(tmp_path, model, callback, data, logger=logger)
    first, first_file = callback.values, (tmp_path / "version_0" / "values.csv").read_text()
    with caplog.at_level(logging.INFO):
        run.fit(model, data)  # max_epochs is reached: this fit trains no batch (a notebook cell run twice)
    assert "this fit trained on no batch" in caplog.text
    assert torch.equal(callback.values, first) and torch.equal(callback.visits, torch.full((400,), 2))
    assert (tmp_path / "version_0" / "values.csv").read_text() == first_file and not (
        tmp_path / "version_0" / "lossval"
    ).exists()
    run.fit_loop.max_epochs = 3
    run.fit(model, data)  # one more epoch: new values, into a folder of their own
    assert callback.values_path == tmp_path / "version_0" / "lossval" / "version_0" / "values.csv"
    assert torch.equal(callback.visits, torch.ones(400, dtype=torch.long))
    assert (tmp_path / "version_0" / "values.csv").read_text() == first_file


class OwnData(Net):
    """Builds its datasets in ``setup`` and serves its own loaders: Lightning calls the module's
    ``setup`` after the callbacks', so the callback must not read the loaders before it."""

    def setup(self, stage):
        x, y = blobs(500)
        self.train_set, self.val_set = TensorDataset(x[:400], y[:400]), TensorDataset(x[400:], y[400:])

    def train_dataloader(self):
        return index_dataloader(DataLoader(self.train_set, batch_size=32, shuffle=True))

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=64)


@STORES
def test_a_module_that_builds_its_data_in_setup_fits(tmp_path, objective):
    model = OwnData()
    callback = LossValCallback(objective=objective, show=0)
    L.seed_everything(0, verbose=False)
    trainer(tmp_path, callback, epochs=1).fit(model)  # no data given: the module's own loaders
    assert callback.values.shape == (400,) and torch.isfinite(callback.values).all()
    assert int(callback.visits.sum()) == 400 and (callback.values != 1).any()
    assert_unpatched(model)
    assert "setup" not in model.__dict__


class SkipsBatchOne(Net):
    def training_step(self, batch, batch_idx):
        if batch_idx == 1:
            return None  # Lightning skips the batch: no backward, no LossVal loss
        return super().training_step(batch, batch_idx)


@STORES
@pytest.mark.filterwarnings("ignore:`training_step` returned `None`")
def test_a_training_step_returning_none_skips_its_batch(tmp_path, objective):
    x, y = blobs(500)
    loader = index_dataloader(DataLoader(TensorDataset(x[:400], y[:400]), batch_size=32))  # in order
    callback = LossValCallback(val_data=x[400:], objective=objective, show=0)
    fit(tmp_path, SkipsBatchOne(), callback, loader, epochs=1, limit_train_batches=3)
    visits = torch.zeros(400, dtype=torch.long)
    visits[:32] = visits[64:96] = 1  # batches 0 and 2; batch 1 was skipped
    assert torch.equal(callback.visits, visits)
    assert (callback.values[32:64] == 1).all() and (callback.values[:32] != 1).any()


def test_values_that_cannot_be_written_where_asked_go_to_a_temporary_directory(tmp_path, capsys):
    (tmp_path / "lossval").write_text("a file where the values directory would go")
    callback = LossValCallback(show=3)
    with pytest.warns(UserWarning, match=r"could not write its values files into .*lossval.*; they are in .* instead"):
        fit(tmp_path, Net(), callback, epochs=1)
    assert callback.values_path.parent.name.startswith("lossval-values-")
    with open(callback.values_path) as f:
        assert len(list(csv.DictReader(f))) == 400
    assert torch.equal(torch.load(callback.values_path.with_suffix(".pt")), callback.values)
    assert f"values of all samples: {callback.values_path}" in capsys.readouterr().out
    shutil.rmtree(callback.values_path.parent)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SIGTERMException])  # Ctrl-C; timeout, a scheduler's limit
@STORES
def test_ctrl_c_keeps_the_values_learned_so_far(tmp_path, objective, capsys, interrupt):
    class Interrupted(Net):
        def training_step(self, batch, batch_idx):
            if self.current_epoch == 1 and batch_idx == 3:
                raise interrupt
            return super().training_step(batch, batch_idx)

    noisy = BlobData().noisy
    callback = LossValCallback(objective=objective, show=0, noisy_mask=noisy)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into exit status 1 after on_exception; SIGTERM is one
            fit(tmp_path, Interrupted(), callback, epochs=3)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores Ctrl-C after catching one
    assert callback.values_path == tmp_path / "lossval" / "version_0" / "values.csv"
    with open(callback.values_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 400 and {int(r["visits"]) for r in rows} == {1, 2}  # all of epoch 0, three batches of 1
    assert list(rows[0]) == ["rank", "index", "noisy", "visits", "value", "flagged"]
    assert [r["noisy"] for r in rows] == ["yes" if noisy[int(r["index"])] else "no" for r in rows]
    flagged = [r for r in rows if r["flagged"] == "yes"]
    assert 0 < len(flagged) < 400 and rows[: len(flagged)] == flagged
    assert torch.equal(torch.load(callback.values_path.with_suffix(".pt")), callback.values)
    assert f"fit interrupted in epoch 1; the values learned so far: {callback.values_path}" in capsys.readouterr().out


def test_after_an_interrupted_or_failed_fit_the_table_describes_that_fits_values(tmp_path):
    class Failing(Net):
        def __init__(self, error):
            super().__init__()
            self.error = error

        def training_step(self, batch, batch_idx):
            if self.current_epoch == 1 and batch_idx == 3:
                raise self.error
            return super().training_step(batch, batch_idx)

    callback = LossValCallback(show=0)
    fit(tmp_path / "first", Net(), callback, epochs=2)
    assert {row["visits"] for row in callback.table()} == {2}
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):
            fit(tmp_path / "interrupted", Failing(KeyboardInterrupt), callback, epochs=3)
    finally:
        signal.signal(signal.SIGINT, handler)
    with open(callback.values_path) as f:
        written = {int(r["index"]): int(r["visits"]) for r in csv.DictReader(f)}
    shown = {row["index"]: row["visits"] for row in callback.table()}
    assert shown == written == dict(enumerate(callback.visits.tolist()))  # 1 or 2 visits, not the first fit's 2
    with pytest.raises(ValueError):
        fit(tmp_path / "failed", Failing(ValueError("a bug in the step")), callback, epochs=3)
    assert callback.columns == {}  # a failure writes no file: no columns, rather than another fit's
    assert list(callback.table()[0]) == ["rank", "index", "value", "flagged"]
