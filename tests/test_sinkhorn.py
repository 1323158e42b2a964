"""The Sinkhorn solver (``lightning_lossval.sinkhorn``): equal to geomloss, closed forms, hygiene."""

from __future__ import annotations

import pytest
import torch
from geomloss import SamplesLoss
from helpers import V

from lightning_lossval import PRESETS
from lightning_lossval.objective import lossval_objective
from lightning_lossval.sinkhorn import (
    batch_diameter,
    cost_matrix,
    epsilon_schedule,
    label_cost,
    self_potential,
    sinkhorn_distance,
)

PAPER = PRESETS["paper"].objective


def test_batch_diameter_is_1_1_times_max_distance(batch):
    x, x_val, *_ = batch
    assert batch_diameter(x, x_val) == pytest.approx(1.1 * torch.cdist(x, x_val).max().item(), rel=1e-6)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("debias", [True, False])
@pytest.mark.parametrize("masses", ["unit", "normalized", "zero mass"])
@pytest.mark.parametrize("diameter", [None, 0.01, 25.0])
def test_sinkhorn_equals_geomloss(p, debias, masses, diameter):
    # Same algorithm as geomloss's tensorized SamplesLoss: value and gradient in the masses agree.
    g = torch.Generator().manual_seed(p * 7 + debias)
    x, y = torch.randn(32, 10, generator=g), torch.randn(100, 10, generator=g) * 1.3 + 0.2
    w0, b = torch.rand(32, generator=g) + 0.5, torch.ones(100)
    if masses == "zero mass":
        w0[:3] = torch.tensor([0.0, -0.5, 0.0])

    def run(fn):
        w = w0.clone().requires_grad_()
        a, bb = (w / w.sum(), b / 100) if masses == "normalized" else (w, b)
        value = fn(a, bb)
        return value.detach(), torch.autograd.grad(value, w)[0]

    d = diameter if diameter is not None else batch_diameter(x, y)
    loss = SamplesLoss("sinkhorn", p=p, blur=0.05, scaling=0.5, debias=debias, diameter=d, backend="tensorized")
    ref, ref_grad = run(lambda a, bb: loss(a, x, bb, y))
    own, own_grad = run(lambda a, bb: sinkhorn_distance(x, y, a, bb, p=p, debias=debias, diameter=diameter))
    assert ref.abs() > 1e-2
    torch.testing.assert_close(own, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(own_grad, ref_grad, rtol=1e-4, atol=1e-5 * ref_grad.abs().max().item())


def test_epsilon_schedule_matches_geomloss():
    from geomloss._legacy.sinkhorn_divergence import epsilon_schedule as geomloss_schedule

    for args in [(2, 7.3, 0.05, 0.5), (2, 0.01, 0.05, 0.5), (1, 30.0, 0.01, 0.7), (2, 3.0, 0.05, 0.9)]:
        assert epsilon_schedule(*args) == pytest.approx([float(e) for e in geomloss_schedule(*args)], rel=1e-9)


def test_precomputed_validation_potential_changes_nothing(batch):
    x, x_val, _, _, w = batch
    eps_list = epsilon_schedule(2, 12.0, 0.05, 0.5)
    potential = self_potential(cost_matrix(x_val, x_val, 2), torch.ones(V), eps_list)
    direct = sinkhorn_distance(x, x_val, w, diameter=12.0)
    cached = sinkhorn_distance(x, x_val, w, diameter=12.0, y_potential=potential)
    assert cached.item() == pytest.approx(direct.item(), rel=1e-6)
    # the potential passed in is the one used: shifting it by 0.5 shifts the value by -0.5 * sum(b)
    shifted = sinkhorn_distance(x, x_val, w, diameter=12.0, y_potential=potential + 0.5)
    assert shifted.item() == pytest.approx(direct.item() - 0.5 * V, rel=1e-5)


def test_label_cost_classes_and_numeric_targets():
    classes = torch.tensor([0, 1, 2])
    torch.testing.assert_close(label_cost(classes, torch.tensor([1, 1]), 3.0), torch.tensor([[3.0, 3], [0, 0], [3, 3]]))
    numeric = torch.tensor([[0.0], [2.0]])
    torch.testing.assert_close(label_cost(numeric, torch.tensor([[1.0], [2.0]]), 4.0), torch.tensor([[2.0, 8], [2, 0]]))


@pytest.mark.parametrize("blur", [0.05, 0.5])
def test_sinkhorn_two_diracs_closed_form(blur):
    # One point against one point with unit masses: the only plan moves all the mass, the entropic
    # term and the debiasing self-terms vanish, and the divergence is the cost |x - y|^2 / 2.
    x = torch.tensor([[0.3, -1.2, 2.0]])
    y = torch.tensor([[1.0, 0.5, -0.5]])
    expected = ((x - y) ** 2).sum().item() / 2  # 4.815
    value = sinkhorn_distance(x, y, blur=blur)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    # the whole objective in closed form: w * l * (|x-y|^2/2)^2
    objective = lossval_objective(torch.tensor([1.0]), torch.tensor([0.7]), x, y, PAPER)
    assert objective.item() == pytest.approx(0.7 * expected**2, rel=1e-5)


def test_sinkhorn_identical_clouds_is_zero():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 3, generator=g)
    w = torch.rand(7, generator=g) + 0.5
    # geomloss returns exactly 0 here (debiasing cancels the terms); allow float32 round-off.
    assert abs(sinkhorn_distance(x, x.clone()).item()) < 1e-5
    assert abs(sinkhorn_distance(x, x.clone(), w, w.clone()).item()) < 1e-5
    # and a shifted copy is clearly not zero (the check above can fail)
    assert sinkhorn_distance(x, x + 1.0).item() > 1.0


def test_sinkhorn_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same D"):
        sinkhorn_distance(torch.zeros(3, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError):
        sinkhorn_distance(torch.zeros(3), torch.zeros(4, 3))


def test_sinkhorn_restores_grad_mode(batch):
    x, x_val, _, _, w = batch
    with torch.no_grad():
        value = sinkhorn_distance(x, x_val, w)
        assert torch.is_grad_enabled() is False
        # also with an explicit diameter (no host sync path)
        sinkhorn_distance(x, x_val, w, diameter=10.0)
        assert torch.is_grad_enabled() is False
    assert not value.requires_grad
    assert torch.is_grad_enabled() is True

    wg = w.clone().requires_grad_()
    out = sinkhorn_distance(x, x_val, wg)
    assert torch.is_grad_enabled() is True
    assert out.requires_grad
    (grad,) = torch.autograd.grad(out, wg)
    assert torch.isfinite(grad).all()


def test_sinkhorn_autocast_bf16(batch):
    x, x_val, _, _, w = batch
    reference = sinkhorn_distance(x, x_val, w)
    rounded = sinkhorn_distance(x.bfloat16().float(), x_val.bfloat16().float(), w.bfloat16().float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sinkhorn_distance(x.bfloat16(), x_val.bfloat16(), w.bfloat16(), torch.ones(V, dtype=torch.bfloat16))
    assert out.dtype == torch.float32
    # computed in float32 from the bf16-rounded inputs
    assert out.item() == pytest.approx(rounded.item(), rel=1e-5)
    # bf16 has ~3 significant digits: the input rounding moves the value by well under 2 %
    assert out.item() == pytest.approx(reference.item(), rel=2e-2)
