"""LossValCallback with a real Trainer: detection, optimizer group, logging, export, resume, misuse."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import TRAINER_ARGS, BlobData, Net
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.functional.classification import binary_auroc

from lightning_lossval import IndexedDataModule, LossValCallback, index_dataloader
from lightning_lossval.errors import ConfigError, DataError
from lightning_lossval.models import MLP
from lightning_lossval.stores import GROUP_NAME


def fit(tmp_path, model=None, data=None, epochs=3, callback=None, ckpt_path=None, **trainer_args):
    L.seed_everything(0)
    model = model or Net()
    data = data or IndexedDataModule(BlobData())
    callback = callback or LossValCallback()
    args = dict(TRAINER_ARGS, max_epochs=epochs, default_root_dir=tmp_path, logger=False, enable_checkpointing=False)
    args.update(trainer_args)
    trainer = L.Trainer(callbacks=[callback, *args.pop("callbacks", [])], **args)
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer, model, callback


def test_flipped_labels_get_low_values(tmp_path, recwarn):
    data = BlobData(noise_rate=0.2)
    trainer, _, cb = fit(tmp_path, data=IndexedDataModule(data), epochs=5)
    assert not [w for w in recwarn if "Indexed(index, data)" in str(w.message)]  # the callback takes them off
    values = cb.values
    assert values.shape == (400,)
    auroc = binary_auroc(-values, data.noisy.int()).item()
    assert auroc >= 0.8, auroc
    assert values[data.noisy].mean() < values[~data.noisy].mean()
    assert "train_loss" in trainer.callback_metrics  # the module's own logging still works


def test_weights_get_their_own_param_group(tmp_path):
    trainer, model, cb = fit(tmp_path, epochs=1, callback=LossValCallback(lr=0.03, objective="paper"))
    groups = trainer.optimizers[0].param_groups
    weights = cb._store.weights  # the module's parameter during fit, taken off again at its end
    owners = [g for g in groups if any(p is weights for p in g["params"])]
    assert len(owners) == 1 and owners[0]["name"] == GROUP_NAME
    assert owners[0]["params"] == [weights]
    assert owners[0]["lr"] == 0.03 and owners[0]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters())) + 1


@pytest.mark.parametrize("scheduler", ["lambda", "onecycle", "step", "plateau"])
def test_schedulers_leave_the_weights_lr_alone(tmp_path, scheduler):
    trainer, model, cb = fit(
        tmp_path, model=Net(scheduler=scheduler), epochs=2, callback=LossValCallback(objective="paper")
    )
    user, weights = trainer.optimizers[0].param_groups
    assert weights["name"] == GROUP_NAME and weights["lr"] == 0.01
    if scheduler in ("lambda", "step"):
        assert user["lr"] < 0.01  # the user's schedule still applies to the user's group
    assert torch.isfinite(cb.values).all()


def test_values_file_and_tensorboard(tmp_path, capsys):
    data = BlobData()
    logger = TensorBoardLogger(tmp_path, name="tb")
    callback = LossValCallback(log_every_n_steps=4, noisy_mask=data.noisy, show=5)
    trainer, model, cb = fit(tmp_path, data=IndexedDataModule(data), epochs=2, logger=logger, callback=callback)
    assert cb.values_path.parent == Path(logger.log_dir)
    with open(cb.values_path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["rank", "index", "noisy", "visits", "value", "flagged"]
    assert {r["visits"] for r in rows} == {"2"}  # two epochs over every row
    assert [int(r["rank"]) for r in rows] == list(range(1, 401))
    assert sorted(int(r["index"]) for r in rows) == list(range(400))
    file_values = torch.tensor([float(r["value"]) for r in rows])
    assert torch.equal(file_values, file_values.sort().values)  # lowest value first
    index = torch.tensor([int(r["index"]) for r in rows])
    assert torch.allclose(file_values, cb.values[index], atol=1e-6)
    assert [r["noisy"] == "yes" for r in rows] == data.noisy[index].tolist()
    assert torch.equal(torch.load(cb.values_path.with_suffix(".pt")), cb.values)
    assert not [p for p in cb.values_path.parent.iterdir() if p.name.endswith(".tmp")]
    printed = capsys.readouterr().out
    assert "the 5 lowest-valued of 400 training samples" in printed and "AUROC" in printed

    events = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0, "scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert "lossval/weights" in tags["histograms"]
    steps = [e.step for e in events.Histograms("lossval/weights")]
    steps_per_epoch = trainer.num_training_batches
    # at the steps Lightning logs the same batches' and epochs' metrics at (they count from 0)
    assert {3, 7, steps_per_epoch - 1, 2 * steps_per_epoch - 1} <= set(steps)
    last = events.Histograms("lossval/weights")[-1].histogram_value
    assert last.num == 400 and last.min == pytest.approx(cb.values.min().item(), abs=1e-5)
    for name in (
        "weight_mean",
        "weight_std",
        "weight_min",
        "weight_frac_below_init",
        "detection_f1",
        "f1_at_noise_rate",
        "auroc",
        "average_precision",
    ):
        assert f"lossval/{name}" in tags["scalars"], name
    final_mean = events.Scalars("lossval/weight_mean")[-1].value
    assert final_mean == pytest.approx(cb.values.mean().item(), abs=1e-5)
    aurocs = events.Scalars("lossval/auroc")
    assert [e.step for e in aurocs] == [steps_per_epoch - 1, 2 * steps_per_epoch - 1]
    assert [e.step for e in aurocs] == [e.step for e in events.Scalars("lossval/unweighted_loss")]
    assert aurocs[-1].value == pytest.approx(binary_auroc(-cb.values, data.noisy.int()).item(), abs=1e-6)
    assert "lossval/lowest_rows/text_summary" in tags["tensors"]
    assert "lossval/detection" in tags["images"]
    image = events.Images("lossval/detection")[-1]
    assert image.width > 500 and image.height > 200


class ColumnsData(BlobData):
    """A DataModule whose row_columns() has a good column, one a row short and one named like LossVal's."""

    def row_columns(self):
        n = len(self.train_set)
        return {"id": [f"s{i}" for i in range(n)], "short": list(range(n - 1)), "index": list(range(n))}


def test_a_datamodules_wrong_row_columns_are_left_out_with_a_warning(tmp_path):
    with pytest.warns(UserWarning) as caught:
        _, _, cb = fit(tmp_path, data=IndexedDataModule(ColumnsData()), epochs=1)
    said = " ".join(str(w.message) for w in caught)
    assert "column 'short' is left out of values.csv: it has 399 entries for 400 training rows" in said
    assert "column 'index' is left out of values.csv: LossVal writes a column of that name" in said
    with open(cb.values_path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["rank", "index", "id", "visits", "value", "flagged"]
    assert all(r["id"] == f"s{r['index']}" for r in rows)  # LossVal's index, aligned with the kept column
    assert torch.equal(torch.load(cb.values_path.with_suffix(".pt")), cb.values)


def test_tensorboard_steps_with_gradient_accumulation_are_lightnings(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb")
    fit(tmp_path, epochs=1, logger=logger, accumulate_grad_batches=2, log_every_n_steps=1, limit_train_batches=8)
    events = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    ours = [e.step for e in events.Histograms("lossval/weights")]
    assert ours == [e.step for e in events.Scalars("train_loss")] == [0, 1, 2, 3]  # once per optimizer step


@pytest.mark.parametrize("objective", ["default", "paper"], ids=["sparse", "dense"])
def test_resume_equals_uninterrupted_run(tmp_path, objective):
    def run(epochs, root, ckpt_path=None):
        checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_last=True)
        return fit(
            root,
            epochs=epochs,
            callback=LossValCallback(objective=objective),
            deterministic=True,
            enable_checkpointing=True,
            callbacks=[checkpoint],
            ckpt_path=ckpt_path,
        )

    _, straight, cb_straight = run(4, tmp_path / "straight")
    run(2, tmp_path / "first")
    last = tmp_path / "first" / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 1  # two epochs done, two to go
    trainer, resumed, cb_resumed = run(4, tmp_path / "second", ckpt_path=last)
    assert trainer.current_epoch == 4
    assert (cb_straight.values - 1).abs().max() > 0.05  # the weights did move
    assert (cb_straight.values - cb_resumed.values).abs().max().item() <= 1e-6
    assert torch.equal(cb_resumed.visits, torch.full((400,), 4))  # the visits before the checkpoint count too
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


class Crash(Exception):
    pass


class CrashingNet(Net):
    """Records the batches it trains on; raises at ``crash_at`` (a global step)."""

    def __init__(self, crash_at=None):
        super().__init__()
        self.crash_at, self.seen = crash_at, []

    def training_step(self, batch, batch_idx):
        if self.global_step == self.crash_at:
            raise Crash
        self.seen.append((self.current_epoch, batch[1].tolist()))
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "in-order"])
def test_resume_from_the_last_batch_a_limited_epoch_allows(tmp_path, shuffle):
    # the checkpoint at step 5 is taken on the last batch limit_train_batches lets epoch 0 have: the
    # resumed run must start epoch 1 from its first batch, not skip the 5 batches of epoch 0 again
    class Data(BlobData):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(self.train_set, batch_size=self.batch_size, shuffle=shuffle)

    def run(root, crash_at=None, ckpt_path=None):
        checkpoint = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=5, save_last=True)
        L.seed_everything(0)  # the same initial network in every run
        model = CrashingNet(crash_at)
        try:
            _, _, cb = fit(
                root,
                model=model,
                data=IndexedDataModule(Data()),
                callbacks=[checkpoint],
                enable_checkpointing=True,
                limit_train_batches=5,
                deterministic=True,
                ckpt_path=ckpt_path,
            )
        except Crash:
            return None, model
        return cb, model

    straight, seen = run(tmp_path / "straight")
    assert run(tmp_path / "first", crash_at=7)[0] is None
    resumed, seen_resumed = run(tmp_path / "second", ckpt_path=tmp_path / "first" / "ckpt" / "last.ckpt")
    assert seen_resumed.seen == [s for s in seen.seen if s[0] > 0]  # epochs 1 and 2, batch for batch
    assert torch.equal(resumed.visits, straight.visits) and int(straight.visits.sum()) == 3 * 5 * 32
    assert (straight.values - resumed.values).abs().max().item() <= 1e-6


class StepCountingNet(CrashingNet):
    """Reads ``trainer.estimated_stepping_batches`` in ``configure_optimizers``, as per-step schedules do
    (Lightning then builds the training loader before it restores a checkpoint)."""

    def configure_optimizers(self):
        assert self.trainer.estimated_stepping_batches == 3 * 13
        return super().configure_optimizers()


def test_mid_epoch_resume_when_configure_optimizers_counts_the_steps(tmp_path):
    def run(root, crash_at=None, ckpt_path=None):
        checkpoint = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=3, save_last=True)
        L.seed_everything(0)
        model = StepCountingNet(crash_at)
        args = dict(callbacks=[checkpoint], enable_checkpointing=True, deterministic=True, ckpt_path=ckpt_path)
        try:
            _, _, cb = fit(root, model=model, **args)
        except Crash:
            return None, model
        return cb, model

    straight, seen = run(tmp_path / "straight")
    assert run(tmp_path / "first", crash_at=17)[0] is None  # 13 batches an epoch: last.ckpt is epoch 1, batch 2
    resumed, seen_resumed = run(tmp_path / "second", ckpt_path=tmp_path / "first" / "ckpt" / "last.ckpt")
    assert seen_resumed.seen == seen.seen[15:]  # batch for batch from the first one not yet trained
    assert torch.equal(resumed.visits, straight.visits)
    assert (straight.values - resumed.values).abs().max().item() <= 1e-6


class EmbeddingCrashingNet(CrashingNet):
    """Compares rows by its hidden layer, which changes as it trains (``lossval_refresh_validation``)."""

    lossval_refresh_validation = True

    def lossval_features(self, batch):
        return self.net[:2](batch[0])


@pytest.mark.parametrize("crash_at", [5, 17], ids=["first-epoch", "second-epoch"])
def test_mid_epoch_resume_with_features_from_the_network_is_exact(tmp_path, crash_at):
    # the validation features of the resumed epoch are the network's as that epoch began, not as restored
    def run(root, crash_at=None, ckpt_path=None):
        checkpoint = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=3, save_last=True)
        args = dict(callbacks=[checkpoint], enable_checkpointing=True, deterministic=True, ckpt_path=ckpt_path)
        L.seed_everything(0)
        try:
            return fit(root, model=EmbeddingCrashingNet(crash_at), **args)[2]
        except Crash:
            return None

    straight = run(tmp_path / "straight")
    assert run(tmp_path / "first", crash_at=crash_at) is None  # last.ckpt: after step 3 or 15, mid-epoch
    resumed = run(tmp_path / "second", ckpt_path=tmp_path / "first" / "ckpt" / "last.ckpt")
    assert (straight.values - 1).abs().max() > 0.05
    assert (straight.values - resumed.values).abs().max().item() <= 1e-6


class FailingStart(L.Callback):
    def on_fit_start(self, trainer, pl_module):
        raise Crash


def test_a_failed_resume_leaves_the_next_fit_of_the_callback_alone(tmp_path):
    # the checkpoint's validation features are loaded before on_fit_start: a fit failing there must not hand
    # them to the callback's next fit
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_last=True)
    L.seed_everything(1)  # another network: the checkpoint's features are not the later fits' own
    with pytest.raises(Crash):
        fit(tmp_path, model=EmbeddingCrashingNet(5), callbacks=[checkpoint], enable_checkpointing=True)
    callback = LossValCallback()
    L.seed_everything(0)
    with pytest.raises(Crash):
        fit(
            tmp_path,
            model=EmbeddingCrashingNet(),
            callback=callback,
            callbacks=[FailingStart()],
            ckpt_path=tmp_path / "ckpt" / "last.ckpt",
        )
    L.seed_everything(0)
    reused = fit(tmp_path, model=EmbeddingCrashingNet(), callback=callback, epochs=1)[2].values
    L.seed_everything(0)
    assert torch.equal(reused, fit(tmp_path, model=EmbeddingCrashingNet(), epochs=1)[2].values)


class WorkerData(BlobData):
    def __init__(self, workers: int):
        super().__init__()
        self.workers = workers

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.train_set, batch_size=32, shuffle=True, num_workers=self.workers)


@pytest.mark.parametrize(
    "seeded, workers, every", [(False, 0, None), (True, 2, 3)], ids=["epoch-end-unseeded", "mid-epoch-2-workers"]
)
def test_resume_trains_on_the_batches_an_uninterrupted_run_does(tmp_path, monkeypatch, seeded, workers, every):
    """Without seed_everything the shuffling seed is drawn, and a resumed run (another process, another
    global random state) gets it back from the checkpoint, also from one written at an epoch's end; with
    workers the resumed epoch's order is drawn after Lightning set the epoch."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)

    def run(root, crash_at=None, ckpt_path=None, torch_seed=1):
        L.seed_everything(0, verbose=False) if seeded else torch.manual_seed(torch_seed)
        checkpoint = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=every, save_last=True)
        model = CrashingNet(crash_at)
        args = dict(TRAINER_ARGS, max_epochs=3, logger=False, default_root_dir=root, deterministic=True)
        trainer = L.Trainer(callbacks=[LossValCallback(show=0, export=False), checkpoint], **args)
        try:
            trainer.fit(model, IndexedDataModule(WorkerData(workers)), ckpt_path=ckpt_path)
        except Crash:
            return None, model
        return trainer.callbacks[0], model

    straight, seen = run(tmp_path / "straight")
    assert run(tmp_path / "first", crash_at=17)[0] is None  # 13 batches an epoch
    done = 15 if every else 13  # last.ckpt: after step 15 (epoch 1, batch 2), or at the end of epoch 0
    resumed, seen_resumed = run(tmp_path / "second", ckpt_path=tmp_path / "first" / "ckpt" / "last.ckpt", torch_seed=2)
    assert seen_resumed.seen == seen.seen[done:]
    assert torch.equal(resumed.visits, straight.visits)
    assert (straight.values - resumed.values).abs().max().item() <= 1e-6


STORES = pytest.mark.parametrize(
    "objective, sparse", [("paper", False), ("paper", True), ("default", None)], ids=["dense", "sparse", "default"]
)


@STORES
def test_gradient_accumulation_updates_every_micro_batch(tmp_path, objective, sparse):
    callback = LossValCallback(objective=objective, sparse=sparse)
    _, _, cb = fit(tmp_path, epochs=1, accumulate_grad_batches=2, limit_train_batches=2, callback=callback)
    # one optimizer step over two micro-batches of 32: it moves exactly the weights that had a gradient
    assert int((cb.values != 1).sum()) == 64


class ManualNet(Net):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(self.lossval_loss(F.cross_entropy(self(x), y, reduction="none")))
        optimizer.step()


def test_manual_optimization(tmp_path):
    data = BlobData()
    _, _, cb = fit(tmp_path, model=ManualNet(), data=IndexedDataModule(data), epochs=5)
    assert (cb.values != 1).all()
    assert binary_auroc(-cb.values, data.noisy.int()).item() >= 0.8


def test_indexed_data_without_the_callback_warns(tmp_path):
    # trainer.fit(model, index_dataloader(loader)), as a user may wire it by hand (an IndexedDataModule is
    # refused in its setup: test_an_indexed_datamodule_without_the_callback_says_what_is_missing)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, **TRAINER_ARGS)
    said = r"no module is being fitted with one.*To fit, add LossValCallback.*to predict, test or validate, give the"
    with pytest.warns(UserWarning, match=said):
        with pytest.raises(RuntimeError):
            trainer.fit(Net(), index_dataloader(BlobData().train_dataloader()))  # Net cannot unpack Indexed


def test_plain_training_and_inference_without_the_callback(tmp_path):
    _, model, _ = fit(tmp_path, epochs=1, enable_checkpointing=True, callback=LossValCallback(objective="paper"))
    checkpoint = next((tmp_path / "checkpoints").glob("*.ckpt"))
    saved = torch.load(checkpoint, weights_only=False)
    assert "lossval_weights" not in saved["state_dict"]  # the values live in the callback's state
    assert saved["callbacks"]["LossValCallback"]["store"]["weights"].shape == (400,)
    restored = Net.load_from_checkpoint(checkpoint)  # a model for inference, without LossVal weights
    assert "lossval_weights" not in dict(restored.named_parameters())
    assert torch.equal(restored.net[0].weight, model.net[0].weight)
    plain = Net()
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    losses = F.cross_entropy(plain(x), y, reduction="none")
    assert torch.equal(plain.lossval_loss(losses), losses.mean())
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, **TRAINER_ARGS)
    trainer.fit(plain, BlobData())  # the same module trains without LossVal on plain batches


class MeanLossNet(Net):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)


class ScalarLossNet(Net):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.lossval_loss(F.cross_entropy(self(x), y))


class NotAMixin(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters())


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("no indices", DataError, "IndexedDataModule"),
        ("not a mixin", ConfigError, "LossValMixin"),
        ("mean loss", ConfigError, r"lossval_loss\(per_sample_losses\)"),
        ("scalar loss", ValueError, "reduction='none'"),
        ("val dimension", ValueError, "batch has 8 features but the validation features have 5"),
        ("empty val", ValueError, "empty"),
        ("nan val", ValueError, r"2 validation rows hold NaN or inf \(first rows: \[3, 7\]\)"),
        ("labels without targets", ValueError, "label_weight > 0 compares labels, but the validation data has no"),
    ],
)
def test_misuse_gets_a_clear_error(tmp_path, case, error, message):
    val = torch.randn(20, 8)
    val[[3, 7], 2] = float("nan")
    model, data, callback = Net(), IndexedDataModule(BlobData()), LossValCallback()
    if case == "no indices":
        data = BlobData()
    elif case == "not a mixin":
        model = NotAMixin()
    elif case == "mean loss":
        model = MeanLossNet()
    elif case == "scalar loss":
        model = ScalarLossNet()
    elif case == "val dimension":
        callback = LossValCallback(val_data=torch.randn(20, 5))
    elif case == "empty val":
        callback = LossValCallback(val_data=torch.empty(0, 8))
    elif case == "nan val":
        callback = LossValCallback(val_data=val)
    elif case == "labels without targets":
        callback = LossValCallback(val_data=torch.randn(20, 8), objective={"label_weight": 1.0})
    with pytest.raises(error, match=message):
        fit(tmp_path, model=model, data=data, callback=callback, epochs=1)


def test_a_dict_batch_names_both_hooks_to_override():
    """Overriding only lossval_features would leave the default update without the classes it balances."""
    with pytest.raises(TypeError, match=r"override lossval_features\(batch\).*lossval_targets\(batch\)"):
        Net().lossval_features({"x": torch.zeros(2, 8), "y": torch.zeros(2, dtype=torch.long)})


def test_sparse_store_moves_only_the_batch_and_finds_the_noise(tmp_path):
    data = BlobData()
    _, model, cb = fit(
        tmp_path, data=IndexedDataModule(data), epochs=1, limit_train_batches=1, callback=LossValCallback(sparse=True)
    )
    assert "lossval_weights" not in dict(model.named_parameters())  # outside the module and DDP
    assert int((cb.values != 1).sum()) == 32  # one optimizer step: only that batch's samples moved
    _, _, cb = fit(tmp_path, data=IndexedDataModule(data), epochs=5, callback=LossValCallback(sparse=True, lr=0.05))
    assert binary_auroc(-cb.values, data.noisy.int()).item() >= 0.8


def test_sparse_is_chosen_automatically_for_large_n(tmp_path):
    from lightning_lossval.stores import DenseWeights, SparseWeights

    def store(n, **callback_args):
        data = IndexedDataModule(BlobData(n=n))
        _, _, cb = fit(tmp_path, data=data, epochs=1, limit_train_batches=2, callback=LossValCallback(**callback_args))
        return cb

    cb = store(100_000, objective="paper")
    assert isinstance(cb._store, SparseWeights) and int((cb.values != 1).sum()) == 64
    assert isinstance(store(99_999, objective="paper")._store, DenseWeights)
    # the default objective's balanced step moves only the batch: always the sparse store
    assert isinstance(store(1000)._store, SparseWeights)
    with pytest.raises(ValueError, match="update='balanced'.*sparse=False"):
        store(1000, sparse=False)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])  # on CPU Lightning runs 16-mixed as bf16-mixed
@STORES
def test_mixed_precision_keeps_the_weights_finite(tmp_path, precision, objective, sparse):
    data = BlobData()
    callback = LossValCallback(objective=objective, sparse=sparse)
    _, _, cb = fit(tmp_path, data=IndexedDataModule(data), epochs=5, precision=precision, callback=callback)
    assert torch.isfinite(cb.values).all()
    assert binary_auroc(-cb.values, data.noisy.int()).item() >= 0.8


def test_gradient_clipping_leaves_the_weights_gradient_alone(tmp_path):
    # a tiny clip value would shrink every update if the weights' gradient were clipped with the network's
    _, _, clipped = fit(tmp_path, epochs=1, limit_train_batches=1, gradient_clip_val=1e-6)
    _, _, free = fit(tmp_path, epochs=1, limit_train_batches=1)
    assert torch.equal(clipped.values, free.values)


def test_spawned_processes_are_refused(tmp_path):
    callback = LossValCallback()
    args = dict(TRAINER_ARGS, max_epochs=1, logger=False, enable_checkpointing=False, devices=1, strategy="ddp_spawn")
    with pytest.raises(Exception, match="ddp_spawn, ddp_fork, ddp_notebook.*Use strategy='ddp'"):
        L.Trainer(callbacks=[callback], **args).fit(Net(), IndexedDataModule(BlobData()))


def test_sharding_strategies_are_refused():
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    from lightning_lossval.ranks import check_strategy

    with pytest.raises(ValueError, match="does not support FSDPStrategy.*Use strategy='ddp'"):
        check_strategy(SimpleNamespace(strategy=FSDPStrategy()))  # FSDP itself needs a GPU to run


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from lightning_lossval.report import atomic_write

    path = tmp_path / "values.csv"
    path.write_text("index,value\n0,1.0\n")

    def crash(f):
        f.write(b"index,value\n0,")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert path.read_text() == "index,value\n0,1.0\n" and list(tmp_path.iterdir()) == [path]


def test_label_aware_transport_reads_targets_of_both_sides(tmp_path):
    data = BlobData(noise_rate=0.2)
    config = {
        "normalize_masses": True,
        "reduction": "normalized",
        "mass": "exp",
        "diameter": "validation",
        "label_weight": 1.0,
    }
    _, _, cb = fit(tmp_path, data=IndexedDataModule(data), epochs=3, callback=LossValCallback(objective=config))
    assert cb._validation.labels is not None and cb._validation.labels.tolist() == data.val_set.tensors[1].tolist()
    assert binary_auroc(-cb.values, data.noisy.int()).item() >= 0.8


def test_resume_with_another_objective_is_refused(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(tmp_path, epochs=1, enable_checkpointing=True, callbacks=[checkpoint])
    said = r"differs from this run's \(blur: 0.05 there, 0.1 here\); resume with objective='default' or start"
    with pytest.raises(ValueError, match=said):
        fit(
            tmp_path,
            epochs=2,
            callback=LossValCallback(objective={"blur": 0.1}),
            ckpt_path=tmp_path / "ckpt" / "last.ckpt",
        )


def test_resume_with_another_lr_says_so(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(tmp_path, epochs=1, enable_checkpointing=True, callbacks=[checkpoint])
    with pytest.warns(UserWarning, match=r"learned with lr=0.05 with lr=0.02"):
        fit(tmp_path, epochs=2, callback=LossValCallback(lr=0.02), ckpt_path=tmp_path / "ckpt" / "last.ckpt")


@pytest.mark.parametrize("objective", ["default", "paper"])
def test_a_nan_loss_stops_the_fit_naming_the_row_before_the_weights_take_it(tmp_path, objective):
    named = []

    class NanRow(Net):
        def training_step(self, batch, batch_idx):
            x, y = batch
            losses = F.cross_entropy(self(x), y, reduction="none")
            if batch_idx == 1:  # one row's loss: the balanced step would spread it over the whole batch
                named.append(int(callback._step.index[3]))
                losses = torch.where(torch.arange(len(losses)) == 3, float("nan"), losses)
            return self.lossval_loss(losses)

    callback = LossValCallback(objective=objective)
    with pytest.raises(DataError) as error:
        fit(tmp_path, model=NanRow(), epochs=1, limit_train_batches=3, callback=callback)
    said = f"training rows [{named[0]}] (dataset positions, 1 of the batch) have NaN or inf losses: check their inputs"
    assert said in str(error.value), str(error.value)
    assert torch.isfinite(callback.values).all() and int((callback.values != 1).sum()) == 32  # batch 0's rows


@STORES
def test_a_batch_whose_step_takes_two_lossval_losses_is_one_visit(tmp_path, objective, sparse):
    class TwoTerms(Net):
        def training_step(self, batch, batch_idx):
            x, y = batch
            plain = F.cross_entropy(self(x), y, reduction="none")
            smooth = F.cross_entropy(self(x), y, reduction="none", label_smoothing=0.1)
            return self.lossval_loss(plain) + 0.5 * self.lossval_loss(smooth)

    _, _, cb = fit(tmp_path, model=TwoTerms(), epochs=2, callback=LossValCallback(objective=objective, sparse=sparse))
    assert torch.equal(cb.visits, torch.full((400,), 2))  # two epochs, each row in one batch per epoch
    assert (cb.values != 1).all() and torch.isfinite(cb.values).all()


@STORES
def test_a_batch_skipped_after_its_lossval_loss_is_not_a_visit(tmp_path, objective, sparse):
    class Guarded(Net):
        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = self.lossval_loss(F.cross_entropy(self(x), y, reduction="none"))
            return None if (x[:, 0] == 1e3).any() else loss  # a guard after the LossVal loss skips the batch

    data = BlobData()
    data.train_set.tensors[0][7, 0] = 1e3  # the row the guard finds: its batch is skipped on every epoch
    callback = LossValCallback(objective=objective, sparse=sparse)
    _, _, cb = fit(tmp_path, model=Guarded(), data=IndexedDataModule(data), epochs=2, callback=callback)
    assert cb.visits[7] == 0 and cb.values[7] == 1  # never trained on: unmeasured, as values.csv says
    assert 400 - 2 * 32 <= int((cb.visits == 2).sum()) < 400  # its batch-mates lost that epoch's visit
    assert torch.isfinite(cb.values).all()


@pytest.mark.parametrize("objective", ["default", "paper"])
def test_non_finite_features_say_which_rows(tmp_path, objective):
    data = BlobData()
    data.train_set.tensors[0][7, 3] = float("nan")
    message = r"training rows \[7\] \(dataset positions, 1 of the batch\) have NaN or inf features: clean or drop"
    with pytest.raises(DataError, match=message):
        fit(tmp_path, data=IndexedDataModule(data), epochs=1, callback=LossValCallback(objective=objective))


def test_batches_of_one_row_are_said_to_teach_the_default_nothing(tmp_path):
    data = BlobData(n=40, batch_size=1)
    with pytest.warns(UserWarning, match=r"a training batch holds one row.*not valued there.*at least 2 rows"):
        _, _, cb = fit(tmp_path, data=IndexedDataModule(data), epochs=1)
    assert (cb.values == 1).all()  # what the warning is about: no row stands out from a batch of itself
    assert (cb.visits == 0).all()  # so none was measured: none is flagged, the printout says so


def test_a_last_batch_of_one_row_is_no_visit(tmp_path):
    # 33 rows in batches of 16: every epoch one row is alone in the last batch, and the default cannot value it
    with pytest.warns(UserWarning, match=r"drop_last=True when the last batch of an epoch is left with one"):
        _, _, cb = fit(tmp_path, data=IndexedDataModule(BlobData(n=33, batch_size=16)), epochs=3)
    assert int(cb.visits.sum()) == 3 * 32


class _ValidationSpy(L.Callback):
    """Records, at every epoch start after LossVal's refresh, its validation features and the network's."""

    def __init__(self, lossval: LossValCallback, x_val: torch.Tensor):
        self.lossval, self.x_val, self.seen = lossval, x_val, []

    def on_train_epoch_start(self, trainer, pl_module):
        training = pl_module.training
        pl_module.eval()  # dropout off, as for LossVal's validation features
        with torch.no_grad():
            expected = pl_module.embed(self.x_val) if pl_module.lossval_refresh_validation else self.x_val
        pl_module.train(training)
        self.seen.append((self.lossval._validation.features.clone(), expected, training))


@pytest.mark.parametrize("space", ["inputs", "embedding"])
def test_embedding_space_follows_the_network_every_epoch(tmp_path, space):
    data = BlobData()
    x_val = data.val_set.tensors[0]
    sizes = dict(task="classification", num_inputs=8, num_outputs=3)
    model = MLP(layers=3, width=16, dropout=0.5, lossval_space=space, **sizes)
    calls = []
    model.lossval_features = lambda batch, features=model.lossval_features: (
        calls.append(model.training) or features(batch)
    )
    callback = LossValCallback()
    spy = _ValidationSpy(callback, x_val)
    fit(tmp_path, model=model, data=IndexedDataModule(data), epochs=3, callback=callback, callbacks=[spy])
    features = [f for f, _, _ in spy.seen]
    validation_batches = len(data.val_dataloader())
    # every training batch's features come from lossval_features (the embedding in eval mode: dropout is on);
    # the validation rows' once per fit, or with the embedding at every epoch start
    refreshes = 3 if space == "embedding" else 1
    assert len(calls) == refreshes * validation_batches + 3 * len(data.train_dataloader())
    assert not any(calls) if space == "embedding" else any(calls)  # the network's features: in eval mode only
    for got, expected, training in spy.seen:  # eval-mode features of this epoch's network; training resumes after
        assert torch.allclose(got, expected, atol=1e-6) and training
    if space == "inputs":
        assert all(torch.equal(f, x_val) for f in features)
    else:
        assert features[0].shape == (len(x_val), 16)
        assert not torch.allclose(features[0], features[1]) and not torch.allclose(features[1], features[2])
    assert torch.isfinite(callback.values).all() and (callback.values != 1).any()


def test_embedding_space_needs_validation_inputs(tmp_path):
    data = BlobData()
    model = MLP(lossval_space="embedding", task="classification", num_inputs=8, num_outputs=3)
    with pytest.raises(DataError, match=r"val_data must hold inputs, not features: pass an \(inputs, targets\)"):
        callback = LossValCallback(val_data=data.val_set.tensors[0])
        fit(tmp_path, model=model, data=IndexedDataModule(data), callback=callback)


def test_unknown_lossval_space_is_refused():
    with pytest.raises(ConfigError, match=r"lossval_space must be one of \('inputs', 'embedding'\), got 'pixels'"):
        MLP(lossval_space="pixels")


def test_non_finite_weights_at_a_logged_step_get_the_error_that_names_the_cause(tmp_path):
    class NanFromStepTwo(Net):
        def training_step(self, batch, batch_idx):
            x, y = batch
            losses = F.cross_entropy(self(x), y, reduction="none")
            return self.lossval_loss(losses * 1e38 if batch_idx >= 1 else losses)  # finite, but L_w * S**2 is not

    # the paper's dense Adam takes the inf gradient; the histogram of the logged step is not drawn from NaN
    callback = LossValCallback(objective="paper", show=0)
    with pytest.raises(FloatingPointError, match=r"LossVal weights are NaN or inf \(step 2\): this objective trains"):
        fit(
            tmp_path,
            NanFromStepTwo(),
            epochs=1,
            callback=callback,
            logger=TensorBoardLogger(tmp_path),
            log_every_n_steps=1,
        )


@pytest.mark.parametrize("show", [-5, 2.5, True])
def test_show_must_be_a_whole_number_of_rows(show):
    with pytest.raises(ConfigError, match=rf"show is how many of the lowest-valued rows to print, .*; got {show!r}"):
        LossValCallback(show=show)


class ManualClipNet(ManualNet):
    """Manual optimization that clips (``self.clip_gradients``) and may step a scheduler, as Lightning's docs show."""

    def __init__(self, clip=None, scheduler=None):
        super().__init__()
        self.clip, self.scheduler = clip, scheduler

    def training_step(self, batch, batch_idx):
        x, y = batch
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(self.lossval_loss(F.cross_entropy(self(x), y, reduction="none")))
        if self.clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.clip, gradient_clip_algorithm="norm")
        optimizer.step()
        if self.scheduler is not None:
            self.lr_schedulers().step()

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        if self.scheduler is None:
            return optimizer
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]


def test_manual_clipping_leaves_the_dense_weights_gradient_alone(tmp_path):
    def values(clip):
        L.seed_everything(0)  # the same network both times
        model, callback = ManualClipNet(clip), LossValCallback(objective="paper", show=0)
        return fit(tmp_path, model=model, epochs=1, limit_train_batches=1, callback=callback)[2].values

    assert torch.equal(values(1e-6), values(None))  # a tiny clip would shrink the weights' step if it saw them


def test_manual_schedulers_of_the_dense_weights_optimizer_are_refused(tmp_path):
    callback = LossValCallback(objective="paper")
    with pytest.raises(
        ConfigError, match=r"manual optimization your StepLR steps the optimizer .* objective='default'"
    ):
        fit(tmp_path, model=ManualClipNet(scheduler="step"), epochs=1, callback=callback)
    default = fit(tmp_path, model=ManualClipNet(scheduler="step"), epochs=1, callback=LossValCallback(show=0))[2]
    assert torch.isfinite(default.values).all() and (default.values != 1).any()  # the default keeps its weights apart


class OwnCheckpointHooks(Net):
    """Overrides the checkpoint hooks without calling super(), as many projects do (LightningModule's are no-ops)."""

    def on_save_checkpoint(self, checkpoint):
        checkpoint["my_note"] = 1

    def on_load_checkpoint(self, checkpoint):
        assert checkpoint["my_note"] == 1


@pytest.mark.parametrize("objective", ["default", "paper"], ids=["sparse", "dense"])
def test_resume_when_the_checkpoint_hooks_skip_super(tmp_path, objective):
    def run(root, epochs, ckpt_path=None):
        checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_last=True)
        callback = LossValCallback(objective=objective, show=0)
        L.seed_everything(0)  # the same network in every run
        model = OwnCheckpointHooks()
        args = dict(enable_checkpointing=True, deterministic=True, callbacks=[checkpoint], ckpt_path=ckpt_path)
        return fit(root, model=model, epochs=epochs, callback=callback, **args)

    straight = run(tmp_path / "straight", 2)[2].values
    run(tmp_path / "first", 1)
    trainer, model, resumed = run(tmp_path / "second", 2, ckpt_path=tmp_path / "first" / "ckpt" / "last.ckpt")
    assert trainer.current_epoch == 2 and "lossval_weights" not in model.state_dict()
    assert (straight - resumed.values).abs().max().item() <= 1e-6
