"""Large validation sets (issue 15): summarised to ``Objective.max_support`` weighted points, exact below it."""

from __future__ import annotations

import dataclasses

import lightning as L
import pytest
import torch
from helpers import TRAINER_ARGS, BlobData, Net, blobs

from lightning_lossval import ConfigError, IndexedDataModule, LossValCallback
from lightning_lossval.objective import Objective, lossval_objective, prepare_validation, summarize_validation
from lightning_lossval.presets import resolve
from lightning_lossval.sinkhorn import cloud_diameter, quantize, sinkhorn_distance


def _two_clusters(v: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(2, dim, generator=g) * 3
    y = centers[torch.randint(0, 2, (v,), generator=g)] + torch.randn(v, dim, generator=g)
    x = centers[torch.randint(0, 2, (32,), generator=g)] + torch.randn(32, dim, generator=g) * 1.3
    return x, y, torch.rand(32, generator=g) + 0.5


def test_a_summary_with_as_many_points_as_rows_is_the_measure_itself():
    x, y, w = _two_clusters(300, 3)
    b = torch.full((300,), 1 / 300)
    centroids, masses = quantize(y, b, 300)
    assert torch.equal(centroids, y) and torch.equal(masses, b)
    a = w / w.sum()
    assert torch.equal(sinkhorn_distance(x, centroids, a, masses), sinkhorn_distance(x, y, a, b))
    # below the threshold prepare_validation is the exact path, bit for bit
    for fields in (
        {},
        {"label_weight": 0.5},
        {"sinkhorn": dataclasses.replace(Objective().sinkhorn, diameter="batch")},
    ):
        exact, summarised = Objective(max_support=None, **fields), Objective(max_support=300, **fields)
        labels = torch.arange(300) % 3
        one, two = prepare_validation(y, labels, exact), prepare_validation(y, labels, summarised)
        assert torch.equal(one.features, two.features) and one.schedule == two.schedule
        assert (one.potential is None and two.potential is None) or torch.equal(one.potential, two.potential)
        values = [
            lossval_objective(w, torch.ones(32), x, p, o, labels=labels[:32])
            for p, o in ((one, exact), (two, summarised))
        ]
        assert torch.equal(*values)


@pytest.mark.parametrize("dim", [2, 8])
def test_the_summary_of_two_clusters_is_close_to_the_exact_divergence(dim):
    # 6,000 rows (the exact side's 6,000 x 6,000 costs take 150 MB; 20,000 rows would take 1.6 GB) to
    # the default 2,000 points. The summary's error is set by the number of points, not by V: the
    # k-means distortion falls as K ** (-2 / D), and at 2,000 points the divergence to a batch of 32
    # moved by 2.6 to 4.3 % on 2 and 8 features for V from 6,000 to 20,000 (by hand), so 8 % is twice
    # the largest measured. The weights' gradient (what LossVal learns) moves less.
    x, y, w = _two_clusters(6000, dim)
    a = (w / w.sum()).requires_grad_()
    b = torch.full((6000,), 1 / 6000)
    diameter = cloud_diameter(y)
    centroids, masses = quantize(y, b, 2000)
    assert len(masses) <= 2000 and masses.sum().item() == pytest.approx(1.0, rel=1e-5)
    exact = sinkhorn_distance(x, y, a, b, scaling=0.3, diameter=diameter)
    summary = sinkhorn_distance(x, centroids, a, masses, scaling=0.3, diameter=diameter)
    (grad_exact,) = torch.autograd.grad(exact, a)
    (grad_summary,) = torch.autograd.grad(summary, a)
    assert summary.item() == pytest.approx(exact.item(), rel=0.08)
    assert torch.corrcoef(torch.stack([grad_exact, grad_summary]))[0, 1] > 0.99
    # and deterministically so: the same seed gives the same summary
    again, again_masses = quantize(y, b, 2000)
    assert torch.equal(again, centroids) and torch.equal(again_masses, masses)


def test_label_aware_summaries_keep_each_class_and_the_mean_targets():
    x, y, _ = _two_clusters(3000, 4)
    classes = (torch.arange(3000) % 10 == 0).long()  # a 10 % class keeps its share
    objective = Objective(label_weight=1.0, max_support=200, normalize_masses=False)
    features, labels, masses = summarize_validation(y, classes, objective)
    assert len(masses) <= 201 and masses.sum().item() == pytest.approx(3000)
    assert masses[labels == 1].sum().item() == pytest.approx(300)
    targets = y[:, :1] * 2 + 1  # numeric: each centroid carries its rows' mean target
    features, labels, masses = summarize_validation(y, targets, objective, label_scale=0.5)
    assert labels.shape == (len(masses), 1) and len(masses) <= 200
    mean_target = (labels.squeeze(1) * masses).sum() / masses.sum()
    assert mean_target.item() == pytest.approx(targets.mean().item(), rel=1e-4)
    torch.testing.assert_close(labels, features[:, :1] * 2 + 1, rtol=1e-4, atol=1e-4)
    prepared = prepare_validation(y, classes, objective)
    assert prepared.features.shape[0] <= 201 and prepared.potential is not None
    assert torch.isfinite(
        lossval_objective(torch.ones(32), torch.ones(32), x, prepared, objective, labels=classes[:32])
    )


@pytest.mark.parametrize("bad", [0, 1, 2.5, True, "2000"])
def test_max_support_is_checked_and_reachable_by_name(bad):
    with pytest.raises(ConfigError, match="max_support"):
        Objective(max_support=bad)
    assert resolve({"max_support": None}).objective.max_support is None
    assert resolve({"max_support": 500}).objective.max_support == 500
    assert Objective().max_support == 2000


def test_a_fit_validates_against_100_000_rows(tmp_path):
    # Exact, the debias term alone would be a 100,000 x 100,000 cost matrix (40 GB); summarised, the
    # fit holds the rows (3 MB) and a 2,000-point summary.
    val_x, val_y = blobs(100_000, seed=1)
    data = IndexedDataModule(BlobData())
    callback = LossValCallback(val_data=(val_x, val_y))
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        limit_train_batches=5,
        logger=False,
        enable_checkpointing=False,
        callbacks=[callback],
        **TRAINER_ARGS,
    )
    trainer.fit(Net(), datamodule=data)
    assert callback._validation.features.shape[0] <= 2000
    assert torch.isfinite(callback.values).all() and (callback.values != 1).any()  # learned, finite
