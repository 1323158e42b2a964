"""The default objective leaves the user's training alone: only the per-sample masses reweight it."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import TRAINER_ARGS, blobs
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import binary_auroc

from lightning_lossval import LossValCallback, LossValMixin, index_dataloader
from lightning_lossval.data import EpochRandomSampler
from lightning_lossval.noise import flip_labels
from lightning_lossval.objective import class_balanced, weight_mass


class SGDNet(LossValMixin, L.LightningModule):
    """A 2-layer MLP trained with plain SGD; records what ``lossval_loss`` returned and the plain mean."""

    def __init__(self, l2: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
        self.l2 = l2
        self.returned: list[float] = []
        self.plain_means: list[float] = []
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        losses = F.cross_entropy(self(x), y, reduction="none")
        loss = self.lossval_loss(losses)
        self.returned.append(loss.item())
        self.returned_dtype = loss.dtype
        self.plain_means.append(losses.mean().item())
        self.batches.append((losses.detach(), loss.detach()))
        return loss + self.l2 * sum(p.pow(2).sum() for p in self.net.parameters())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def train(x, y, *, callback: LossValCallback | None, epochs=10, l2=0.0, max_steps=-1, logger=False, **args):
    L.seed_everything(0, verbose=False)
    model = SGDNet(l2)
    dataset = TensorDataset(x, y)
    loader = DataLoader(dataset, batch_size=32, sampler=EpochRandomSampler(dataset, seed=0))  # same batches
    callbacks = []
    if callback is not None:
        loader, callbacks = index_dataloader(loader), [callback]
    trainer = L.Trainer(
        max_epochs=epochs,
        max_steps=max_steps,
        logger=logger,
        enable_checkpointing=False,
        callbacks=callbacks,
        **TRAINER_ARGS,
        **args,
    )
    trainer.fit(model, loader)
    return model


@pytest.mark.parametrize("noise", [0.0, 0.2])
@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0])
def test_sgd_trains_as_without_the_callback_at_any_feature_scale(scale, noise):
    x, y = blobs(500, seed=0)  # 300 training rows, 200 clean validation rows
    x = x * scale
    y_train, _ = flip_labels(y[:300], noise, num_classes=3, seed=0)
    accuracy = {}
    for name, callback in (("plain", None), ("lossval", LossValCallback(val_data=x[300:], export=False, show=0))):
        model = train(x[:300], y_train, callback=callback)
        with torch.no_grad():
            accuracy[name] = (model(x[300:]).argmax(1) == y[300:]).float().mean().item()
        if callback is None:
            continue
        assert all(torch.isfinite(torch.tensor(model.returned)))
        if noise == 0:
            # the loss keeps its scale: without harmful rows to down-weight, what lossval_loss returns over
            # the last epoch adds up to about the plain mean losses (the paper's S**2 made it 150-4500 times)
            epoch = len(model.returned) // 10
            returned, plain = sum(model.returned[-epoch:]), sum(model.plain_means[-epoch:])
            assert plain / 2 <= returned <= 2 * plain, (returned, plain)
    assert accuracy["lossval"] >= accuracy["plain"] - 0.02, accuracy


def test_the_returned_loss_is_the_masses_weighted_mean_and_extra_terms_keep_their_weight():
    """Every step returns sum(m l) / sum(m) with the masses the weights give (rescaled within each class
    so that every class keeps its share); the first step, with all masses 1, moves the network exactly
    as plain training does, an extra loss term included."""
    x, y = blobs(200, seed=1)
    l2 = 1e-2
    plain = train(x[:160], y[:160], callback=None, l2=l2, max_steps=1)
    callback = LossValCallback(val_data=x[160:], export=False, show=0)
    with_cb = train(x[:160], y[:160], callback=callback, l2=l2, max_steps=1)
    for p, q in zip(plain.parameters(), with_cb.net.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)
    assert with_cb.returned[0] == pytest.approx(with_cb.plain_means[0], rel=1e-6)

    seen = []

    class Spy(LossValCallback):
        def loss(self, pl_module, losses, features):
            index, (_, targets) = self._step
            masses = weight_mass(self._store.values()[index].float(), "sigmoid")
            seen.append((losses.detach(), class_balanced(masses, targets)))
            return super().loss(pl_module, losses, features)

    model = train(x[:160], y[:160], callback=Spy(val_data=x[160:], export=False, show=0), epochs=3)
    assert len(seen) == len(model.returned) == 15
    moved = 0
    for (losses, masses), returned in zip(seen, model.returned):
        assert returned == pytest.approx(((masses * losses).sum() / masses.sum()).item(), rel=1e-5)
        moved += int((masses != 1).any())
    assert moved > 0  # later steps do reweight the samples


def test_a_float64_loss_stays_float64():
    """Under precision="64-true" the returned loss keeps the network's dtype: with every mass at 1 it is
    the plain mean to the last bit, and so is the step."""
    x, y = blobs(200, seed=1)
    plain = train(x[:160], y[:160], callback=None, max_steps=2, precision="64-true")
    callback = LossValCallback(val_data=x[160:], export=False, show=0, lr=1e-30)  # the masses stay 1
    with_cb = train(x[:160], y[:160], callback=callback, max_steps=2, precision="64-true")
    assert plain.returned_dtype == with_cb.returned_dtype == torch.float64
    assert with_cb.returned == plain.returned
    for p, q in zip(plain.parameters(), with_cb.net.parameters()):
        assert torch.equal(p, q)


def test_the_unweighted_training_loss_is_logged_beside_the_weighted_one(tmp_path):
    """``lossval/unweighted_loss`` is each epoch's plain mean of the per-sample losses, which the weighted
    loss (what the network trains on) falls below as mislabeled rows lose mass."""
    x, y = blobs(500, seed=0)
    y_train, _ = flip_labels(y[:300], 0.2, num_classes=3, seed=0)
    logger = TensorBoardLogger(tmp_path, name="tb")
    callback = LossValCallback(val_data=x[300:], export=False, show=0)
    model = train(x[:300], y_train, callback=callback, epochs=6, logger=logger)
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    logged = [e.value for e in events.Scalars("lossval/unweighted_loss")]
    per_epoch = len(model.batches) // 6
    for epoch, value in enumerate(logged):
        losses = torch.cat([losses for losses, _ in model.batches[epoch * per_epoch : (epoch + 1) * per_epoch]])
        assert value == pytest.approx(losses.mean().item(), rel=1e-5), epoch
    assert len(logged) == 6
    weighted = sum(loss.item() * len(losses) for losses, loss in model.batches[-per_epoch:]) / 300
    assert weighted < 0.8 * logged[-1]  # the masses moved off the mislabeled rows: the two differ


class DropoutNet(SGDNet):
    """SGDNet with dropout, which draws from the global random generator at every training step."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))


def test_reading_the_validation_set_leaves_the_random_generators_alone():
    """With weights that cannot move, a dropout network trains exactly as without the callback: reading
    the validation loaders (each DataLoader iterator draws a seed) happens on forked generators."""
    x, y = blobs(240, seed=2)
    parameters = []
    for callback in (None, LossValCallback(lr=1e-30, export=False, show=0)):  # 1 - 1e-30 == 1 in float32
        L.seed_everything(0, verbose=False)
        model = DropoutNet()
        train_set = TensorDataset(x[:160], y[:160])
        loader = DataLoader(train_set, batch_size=32, sampler=EpochRandomSampler(train_set, seed=0))
        val_loader = DataLoader(TensorDataset(x[160:], y[160:]), batch_size=40, shuffle=True)
        callbacks = []
        if callback is not None:
            loader, callbacks = index_dataloader(loader), [callback]
        trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, callbacks=callbacks, **TRAINER_ARGS)
        trainer.fit(model, loader, val_loader)
        if callback is not None:
            assert (callback.values == 1).all()
        parameters.append(torch.cat([p.detach().flatten() for p in model.net.parameters()]))
    assert torch.equal(parameters[0], parameters[1])


class EmbeddingNet(LossValMixin, L.LightningModule):
    """Compares rows by its own encoder's output, which has BatchNorm and dropout (the README's recipe)."""

    lossval_refresh_validation = True

    def __init__(self):
        super().__init__()
        self.frozen = nn.BatchNorm1d(8)  # a part the user keeps in eval mode while the rest trains
        self.encoder = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(16, 3)
        self.draws: list[torch.Tensor] = []

    def on_train_epoch_start(self):
        self.frozen.eval()

    def lossval_features(self, batch):
        return self.encoder(self.frozen(batch[0]))

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.draws.append(torch.rand(1))  # what the user's step draws from the global generator
        return self.lossval_loss(F.cross_entropy(self.head(self.encoder(self.frozen(x))), y, reduction="none"))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def test_features_from_the_network_leave_its_batchnorm_statistics_and_random_draws_alone(tmp_path):
    x, y = blobs(400, seed=0)
    labels, noisy = flip_labels(y[:300], 0.2, num_classes=3, seed=0)
    rows = TensorDataset(x[:300], labels)
    train = DataLoader(rows, batch_size=30, sampler=EpochRandomSampler(rows, seed=0))  # draws nothing global
    runs = {}
    for valued in (False, True):
        L.seed_everything(0, verbose=False)
        model, callback = EmbeddingNet(), LossValCallback(val_data=(x[300:], y[300:]), show=0)
        trainer = L.Trainer(
            max_epochs=2, logger=False, enable_checkpointing=False, callbacks=[callback] if valued else [],
            default_root_dir=tmp_path, **TRAINER_ARGS,
        )  # fmt: skip
        trainer.fit(model, index_dataloader(train) if valued else train)
        runs[valued] = model, callback
    (plain, _), (model, callback) = runs[False], runs[True]
    assert model.encoder[1].num_batches_tracked == plain.encoder[1].num_batches_tracked == 20  # one update per step
    assert model.frozen.num_batches_tracked == plain.frozen.num_batches_tracked == 0  # the frozen part stayed frozen
    assert torch.equal(torch.cat(model.draws), torch.cat(plain.draws))  # the features drew no random numbers
    assert binary_auroc(-callback.values, noisy.int()) > 0.8
