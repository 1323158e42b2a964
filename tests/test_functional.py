"""Tests of the pure LossVal math in ``lightning_lossval.functional``."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from geomloss import SamplesLoss

from lightning_lossval.functional import (
    PRESETS,
    ObjectiveConfig,
    batch_diameter,
    cloud_diameter,
    cost_matrix,
    cross_entropy,
    epsilon_schedule,
    label_cost,
    lossval_objective,
    prepare_validation,
    resolve_config,
    self_potential,
    sinkhorn_distance,
    squared_error,
)

B, D, V, K = 6, 3, 5, 4


@pytest.fixture
def batch():
    """A fixed tiny batch: features, val features, softmax probabilities, one-hot targets, weights."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, D, generator=g)
    x_val = torch.randn(V, D, generator=g) + 0.5
    probs = torch.softmax(torch.randn(B, K, generator=g), dim=1)
    targets = F.one_hot(torch.randint(0, K, (B,), generator=g), K).float()
    weights = torch.rand(B, generator=g) * 1.5 + 0.2  # in [0.2, 1.7): not all ones, sum != V
    return x, x_val, probs, targets, weights


# --------------------------------------------------------------------------- paper preset


def test_paper_preset_matches_hand_written_reference(batch):
    x, x_val, probs, targets, w0 = batch
    assert not torch.allclose(w0, torch.ones_like(w0))

    # The package: per-sample losses from probabilities, then the paper objective.
    w = w0.clone().requires_grad_()
    losses = cross_entropy(probs, targets, probabilities=True)
    objective = lossval_objective(w, losses, x, x_val, PRESETS["paper"])
    (grad,) = torch.autograd.grad(objective, w)

    # The reference, spelled out by hand.
    w_ref = w0.clone().requires_grad_()
    l_ref = -(targets * torch.log(probs + 1e-8)).sum(dim=1)
    big_l = (w_ref * l_ref).sum()
    diameter = 1.1 * torch.cdist(x, x_val).max().item()
    s = SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.5, debias=True, diameter=diameter, backend="tensorized")(
        w_ref, x, torch.ones(V), x_val
    )
    reference = big_l * s**2
    (grad_ref,) = torch.autograd.grad(reference, w_ref)

    torch.testing.assert_close(losses, l_ref, rtol=1e-6, atol=1e-6)
    assert objective.dtype == torch.float32 and objective.dim() == 0
    assert reference.item() > 1.0  # non-trivial batch: the check would notice a wrong term
    assert objective.item() == pytest.approx(reference.item(), rel=1e-5)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-5)
    # the weights really matter: the gradient is not constant across samples
    assert grad.std() > 1e-2 * grad.abs().mean()


def test_paper_preset_defaults():
    cfg = PRESETS["paper"]
    assert cfg == ObjectiveConfig()
    assert (cfg.reduction, cfg.normalize_masses, cfg.ot_exponent) == ("sum", False, 2.0)
    assert (cfg.blur, cfg.scaling, cfg.p, cfg.debias, cfg.diameter) == (0.05, 0.5, 2, True, "batch")
    assert (cfg.mass, cfg.label_weight) == ("raw", 0.0)


def test_batch_diameter_is_1_1_times_max_distance(batch):
    x, x_val, *_ = batch
    assert batch_diameter(x, x_val) == pytest.approx(1.1 * torch.cdist(x, x_val).max().item(), rel=1e-6)


def test_mean_reduction_and_exponent(batch):
    x, x_val, probs, targets, w = batch
    losses = cross_entropy(probs, targets, probabilities=True)
    paper = lossval_objective(w, losses, x, x_val, PRESETS["paper"])
    mean = lossval_objective(w, losses, x, x_val, ObjectiveConfig(reduction="mean"))
    assert mean.item() == pytest.approx(paper.item() / B, rel=1e-5)
    linear = lossval_objective(w, losses, x, x_val, ObjectiveConfig(ot_exponent=1.0))
    s = sinkhorn_distance(x, x_val, w)
    assert linear.item() == pytest.approx((w * losses).sum().item() * s.item(), rel=1e-5)
    assert paper.item() == pytest.approx(linear.item() * s.item(), rel=1e-5)


# --------------------------------------------------------------------------- own Sinkhorn vs geomloss


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


def test_prepared_validation_equals_per_call_objective(batch):
    x, x_val, probs, targets, w = batch
    losses = cross_entropy(probs, targets, probabilities=True)
    for config in (PRESETS["paper"], ObjectiveConfig(normalize_masses=True, diameter="validation")):
        prepared = prepare_validation(x_val, None, config)
        assert (prepared.potential is None) == (config.diameter == "batch")
        once = lossval_objective(w, losses, x, prepared, config)
        # the same objective spelled out with sinkhorn_distance, which computes both debias terms itself
        diameter = None if config.diameter == "batch" else cloud_diameter(x_val)
        a, b = (w / w.sum(), torch.full((V,), 1.0 / V)) if config.normalize_masses else (w, torch.ones(V))
        direct = (w * losses).sum() * sinkhorn_distance(x, x_val, a, b, diameter=diameter) ** 2
        assert once.item() == pytest.approx(direct.item(), rel=1e-5)
    explicit = ObjectiveConfig(normalize_masses=True, diameter=cloud_diameter(x_val))
    validation = ObjectiveConfig(normalize_masses=True, diameter="validation")
    assert lossval_objective(w, losses, x, x_val, validation).item() == pytest.approx(
        lossval_objective(w, losses, x, x_val, explicit).item(), rel=1e-6
    )


def test_label_cost_classes_and_numeric_targets():
    classes = torch.tensor([0, 1, 2])
    torch.testing.assert_close(label_cost(classes, torch.tensor([1, 1]), 3.0), torch.tensor([[3.0, 3], [0, 0], [3, 3]]))
    numeric = torch.tensor([[0.0], [2.0]])
    torch.testing.assert_close(label_cost(numeric, torch.tensor([[1.0], [2.0]]), 4.0), torch.tensor([[2.0, 8], [2, 0]]))


def test_label_aware_transport_marks_the_mislabeled_sample():
    # Two well-separated classes; the batch copies validation points, one with the wrong class.
    g = torch.Generator().manual_seed(3)
    val_y = torch.arange(20) % 2
    val_x = torch.randn(20, 2, generator=g) * 0.3 + val_y.unsqueeze(1) * 0.5
    x, y = val_x[:8].clone(), val_y[:8].clone()
    y[5] = 1 - y[5]
    config = ObjectiveConfig(
        normalize_masses=True, reduction="normalized", mass="sigmoid", diameter="validation", label_weight=1.0
    )
    validation = prepare_validation(val_x, val_y, config)
    w = torch.ones(8, requires_grad=True)
    objective = lossval_objective(w, torch.ones(8), x, validation, config, labels=y)
    (grad,) = torch.autograd.grad(objective, w)
    assert grad.argmax().item() == 5  # descending the objective lowers its weight the most
    # without labels the transport cannot see it: the batch is a copy of validation points
    blind = ObjectiveConfig(normalize_masses=True, reduction="normalized", mass="sigmoid", diameter="validation")
    w2 = torch.ones(8, requires_grad=True)
    (grad2,) = torch.autograd.grad(lossval_objective(w2, torch.ones(8), x, val_x, blind), w2)
    assert grad2.argmax().item() != 5
    with pytest.raises(ValueError, match="validation targets"):
        prepare_validation(val_x, None, config)
    with pytest.raises(ValueError, match="batch's targets"):
        lossval_objective(w, torch.ones(8), x, validation, config)


def test_positive_weights_and_normalized_reduction(batch):
    x, x_val, probs, targets, w = batch
    losses = cross_entropy(probs, targets, probabilities=True)
    config = ObjectiveConfig(normalize_masses=True, reduction="normalized", mass="exp")
    raw = w - 1.5  # some raw weights negative: the masses exp(w - 1) stay positive
    assert (raw < 0).any()
    value = lossval_objective(raw, losses, x, x_val, config)
    masses = torch.exp(raw - 1)
    by_hand = (
        (masses * losses).sum()
        / masses.sum()
        * sinkhorn_distance(x, x_val, masses / masses.sum(), torch.full((V,), 1.0 / V)) ** 2
    )
    assert value.item() == pytest.approx(by_hand.item(), rel=1e-5)
    # scaling every mass together (a shift of the raw weights) changes nothing
    assert lossval_objective(raw + 0.7, losses, x, x_val, config).item() == pytest.approx(value.item(), rel=1e-5)


# --------------------------------------------------------------------------- closed forms


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
    objective = lossval_objective(torch.tensor([1.0]), torch.tensor([0.7]), x, y)
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


# --------------------------------------------------------------------------- per-sample losses


def test_cross_entropy_logits_integer_targets():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(B, K, generator=g) * 3
    y = torch.randint(0, K, (B,), generator=g)
    expected = F.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(cross_entropy(logits, y), expected)
    # int32 indices too
    torch.testing.assert_close(cross_entropy(logits, y.int()), expected)
    # one-hot float targets give the same numbers
    torch.testing.assert_close(cross_entropy(logits, F.one_hot(y, K).float()), expected)


def test_cross_entropy_soft_targets():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(B, K, generator=g)
    soft = torch.softmax(torch.randn(B, K, generator=g), dim=1)
    torch.testing.assert_close(cross_entropy(logits, soft), F.cross_entropy(logits, soft, reduction="none"))


def test_cross_entropy_probabilities():
    g = torch.Generator().manual_seed(4)
    probs = torch.softmax(torch.randn(B, K, generator=g), dim=1)
    probs[0] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # a zero probability on the target: eps keeps it finite
    y = torch.randint(0, K, (B,), generator=g)
    y[0] = 1
    expected = -torch.log(probs[torch.arange(B), y] + 1e-8)
    out = cross_entropy(probs, y, probabilities=True)
    torch.testing.assert_close(out, expected)
    assert torch.isfinite(out).all()
    assert out[0].item() == pytest.approx(-torch.log(torch.tensor(1e-8)).item(), rel=1e-5)
    torch.testing.assert_close(cross_entropy(probs, F.one_hot(y, K).float(), probabilities=True), expected)
    # a different eps is used
    torch.testing.assert_close(
        cross_entropy(probs, y, probabilities=True, eps=1e-3), -torch.log(probs[torch.arange(B), y] + 1e-3)
    )


@pytest.mark.parametrize(
    "targets",
    [
        torch.zeros(B, K + 1),  # wrong number of classes
        torch.zeros(B),  # float [B]: neither class indices nor one-hot
        torch.zeros(B + 1, K),  # wrong batch size
        torch.zeros(B, K, 1),
    ],
    ids=["classes", "float-1d", "batch", "3d"],
)
def test_cross_entropy_rejects_wrong_target_shape(targets):
    with pytest.raises(ValueError, match="targets"):
        cross_entropy(torch.randn(B, K), targets)


def test_cross_entropy_rejects_non_2d_outputs():
    with pytest.raises(ValueError, match="outputs"):
        cross_entropy(torch.randn(B), torch.zeros(B, dtype=torch.long))


def test_squared_error():
    g = torch.Generator().manual_seed(5)
    pred = torch.randn(B, 2, 3, generator=g)
    target = torch.randn(B, 2, 3, generator=g)
    out = squared_error(pred, target)
    assert out.shape == (B,)
    expected = torch.stack([((pred[i] - target[i]) ** 2).sum() for i in range(B)])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(squared_error(pred[:, 0, 0], target[:, 0, 0]), (pred[:, 0, 0] - target[:, 0, 0]) ** 2)
    with pytest.raises(ValueError, match="shape"):
        squared_error(torch.zeros(B, 2), torch.zeros(B, 3))
    with pytest.raises(ValueError):
        squared_error(torch.zeros(B, 1), torch.zeros(B))  # no silent broadcasting


# --------------------------------------------------------------------------- sinkhorn_distance hygiene


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


def test_objective_under_autocast_is_float32(batch):
    x, x_val, probs, targets, w = batch
    losses = cross_entropy(probs, targets, probabilities=True)
    reference = lossval_objective(w, losses, x, x_val)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lossval_objective(w, losses.bfloat16(), x.bfloat16(), x_val.bfloat16())
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(reference.item(), rel=5e-2)


# --------------------------------------------------------------------------- config knobs


def test_fixed_diameter_matches_per_batch_diameter_with_balanced_masses(batch):
    x, x_val, probs, targets, w = batch
    w = w * V / w.sum()  # balanced OT: sum(w) == V, the setting the annealing assumes
    losses = cross_entropy(probs, targets, probabilities=True)
    per_batch = lossval_objective(w, losses, x, x_val, PRESETS["paper"]).item()
    true_diameter = torch.cdist(x, x_val).max().item()
    for diameter in (true_diameter, 1.1 * true_diameter, 10.0, 50.0):
        fixed = lossval_objective(w, losses, x, x_val, ObjectiveConfig(diameter=diameter)).item()
        assert fixed == pytest.approx(per_batch, rel=1e-2), diameter


def test_fixed_diameter_changes_the_unbalanced_paper_objective(batch):
    # Documented in ObjectiveConfig.diameter: with unnormalised masses (sum(w) != V) the balanced
    # Sinkhorn value depends on where the annealing starts, so a fixed diameter is not a pure
    # speed option for the paper preset.
    x, x_val, probs, targets, w = batch
    losses = cross_entropy(probs, targets, probabilities=True)
    per_batch = lossval_objective(w, losses, x, x_val, PRESETS["paper"]).item()
    true_diameter = torch.cdist(x, x_val).max().item()
    fixed = lossval_objective(w, losses, x, x_val, ObjectiveConfig(diameter=1.5 * true_diameter)).item()
    assert fixed > 1.2 * per_batch


def test_normalize_masses(batch):
    x, x_val, probs, targets, w = batch
    losses = cross_entropy(probs, targets, probabilities=True)
    paper = lossval_objective(w, losses, x, x_val, PRESETS["paper"]).item()
    normalized = lossval_objective(w, losses, x, x_val, ObjectiveConfig(normalize_masses=True)).item()
    assert normalized > 0
    assert abs(normalized - paper) > 1e-2 * abs(paper)
    # equals L_w * S(w / sum w, 1 / V)^2 computed directly
    s = sinkhorn_distance(x, x_val, w / w.sum(), torch.full((V,), 1.0 / V))
    assert normalized == pytest.approx((w * losses).sum().item() * s.item() ** 2, rel=1e-5)

    # a batch equal to the validation set with uniform (not unit) weights: the same distribution
    w_uniform = torch.full((V,), 0.7)
    l_v = torch.rand(V, generator=torch.Generator().manual_seed(6)) + 0.5
    same = lossval_objective(w_uniform, l_v, x_val, x_val.clone(), ObjectiveConfig(normalize_masses=True))
    assert abs(same.item()) < 1e-5
    # without normalising, mass 0.7 * V against mass V is not zero
    unnormalized = lossval_objective(w_uniform, l_v, x_val, x_val.clone(), PRESETS["paper"])
    assert unnormalized.item() > 1.0


# --------------------------------------------------------------------------- resolve_config


def test_resolve_config_preset_and_passthrough():
    assert resolve_config("paper") is PRESETS["paper"]
    cfg = ObjectiveConfig(reduction="mean", diameter=3.0)
    assert resolve_config(cfg) is cfg


def test_resolve_config_dict():
    cfg = resolve_config({"reduction": "mean", "blur": 0.1, "normalize_masses": True})
    assert isinstance(cfg, ObjectiveConfig)
    assert (cfg.reduction, cfg.blur, cfg.normalize_masses) == ("mean", 0.1, True)
    # untouched fields keep the paper defaults
    assert cfg.scaling == 0.5 and cfg.ot_exponent == 2.0 and cfg.diameter == "batch"
    assert resolve_config({}) == PRESETS["paper"]


def test_resolve_config_errors():
    with pytest.raises(ValueError, match=r"unknown objective preset 'papr'.*paper"):
        resolve_config("papr")
    with pytest.raises(ValueError, match=r"unknown objective options \['blurr'\]"):
        resolve_config({"blurr": 0.1})
    with pytest.raises(TypeError, match="objective must be"):
        resolve_config(3)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"blur": 0.0}, "blur"),
        ({"blur": -0.1}, "blur"),
        ({"scaling": 0.0}, "scaling"),
        ({"scaling": 1.0}, "scaling"),
        ({"scaling": 1.5}, "scaling"),
        ({"reduction": "max"}, "reduction"),
        ({"diameter": 0.0}, "diameter"),
        ({"diameter": "auto"}, "diameter"),
        ({"p": 3}, "p must be"),
        ({"label_weight": -1.0}, "label_weight"),
        ({"reduction": "median"}, "normalized"),
        ({"diameter": None}, "'batch'"),
        ({"reduction": "normalized"}, "mass='exp' or mass='sigmoid'"),
        ({"update": "sgd"}, "'balanced'"),
        ({"update": "balanced"}, "normalize_masses=True and reduction='normalized'"),
        ({"ot_share": -0.1}, "ot_share"),
        ({"ot_share": "half"}, "ot_share"),
        ({"ot_share_max": 0.0}, "ot_share_max"),
    ],
)
def test_invalid_config_values(fields, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(fields)
    with pytest.raises(ValueError, match=message):
        ObjectiveConfig(**fields)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["paper"].blur = 1.0  # type: ignore[misc]


# --------------------------------------------------------------------------- sparse optimizer
def test_sparse_adam_matches_torch_adam_on_the_rows_it_touches():
    from lightning_lossval.functional import sparse_adam_step

    g = torch.Generator().manual_seed(0)
    n = 6
    reference = torch.nn.Parameter(torch.ones(n))
    adam = torch.optim.Adam([reference], lr=0.01)
    weights, m, v, steps = torch.ones(n), torch.zeros(n), torch.zeros(n), torch.zeros(n, dtype=torch.int32)
    for _ in range(5):  # every row in every step: plain Adam
        grad = torch.randn(n, generator=g)
        reference.grad = grad.clone()
        adam.step()
        sparse_adam_step(weights, m, v, steps, torch.arange(n), grad, lr=0.01)
    assert torch.allclose(weights, reference.detach(), atol=1e-6)


def test_sparse_adam_leaves_other_rows_alone_and_counts_steps_per_row():
    from lightning_lossval.functional import sparse_adam_step

    weights, m, v, steps = torch.ones(5), torch.zeros(5), torch.zeros(5), torch.zeros(5, dtype=torch.int32)
    sparse_adam_step(weights, m, v, steps, torch.tensor([1, 3]), torch.tensor([2.0, -2.0]), lr=0.1)
    sparse_adam_step(weights, m, v, steps, torch.tensor([3]), torch.tensor([-2.0]), lr=0.1)
    assert weights[[0, 2, 4]].tolist() == [1.0, 1.0, 1.0] and m[[0, 2, 4]].abs().sum() == 0
    assert steps.tolist() == [0, 1, 0, 2, 0]
    # Adam's first steps move by ~lr whatever the gradient's scale
    assert weights[1].item() == pytest.approx(0.9, abs=1e-5) and weights[3].item() == pytest.approx(1.2, abs=1e-5)


def test_coalesce_sums_duplicates():
    from lightning_lossval.functional import coalesce

    index, summed = coalesce(torch.tensor([4, 1, 4, 2]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert index.tolist() == [1, 2, 4] and summed.tolist() == [2.0, 4.0, 4.0]


def test_normalized_step_keeps_ratios_moves_only_the_batch_and_clips():
    from lightning_lossval.functional import normalized_step

    weights = torch.ones(6)
    grad = torch.tensor([1.0, -2.0, 0.5, 0.0])
    normalized_step(weights, torch.tensor([0, 2, 3, 5]), grad, lr=0.1, clip=10.0)
    rms = grad.pow(2).mean().sqrt()
    torch.testing.assert_close(
        weights, 1 - 0.1 * torch.tensor([1.0, 0, -2.0, 0.5, 0, 0.0]) / rms * torch.tensor([1, 0, 1, 1, 0, 1])
    )
    assert weights[[1, 4]].tolist() == [1.0, 1.0]  # not in the batch: untouched
    # scale-free: the same gradients times 1000 make the same step
    scaled = torch.ones(6)
    normalized_step(scaled, torch.tensor([0, 2, 3, 5]), grad * 1000, lr=0.1, clip=10.0)
    torch.testing.assert_close(scaled, weights)
    # one outlier among small gradients moves by at most lr * clip
    clipped = torch.ones(4)
    normalized_step(clipped, torch.arange(4), torch.tensor([100.0, 0.1, -0.1, 0.1]), lr=0.1, clip=1.5)
    assert clipped[0].item() == pytest.approx(1 - 0.15)
    # an all-zero gradient (e.g. every mass saturated) moves nothing and makes no NaN
    zero = torch.ones(3)
    normalized_step(zero, torch.arange(3), torch.zeros(3), lr=0.1)
    assert zero.tolist() == [1.0, 1.0, 1.0]


def test_weight_mass():
    from lightning_lossval.functional import weight_mass

    w = torch.tensor([-3.0, 1.0, 5.0])
    assert weight_mass(w, "raw").tolist() == w.tolist()
    torch.testing.assert_close(weight_mass(w, "exp"), torch.exp(w - 1))
    sig = weight_mass(w, "sigmoid")
    assert sig[1].item() == pytest.approx(1.0) and 0 < sig[0] < 1e-6 * 1e2 and 1.99 < sig[2] < 2


# --------------------------------------------------------------------------- balanced update
def _balanced_config(**fields):
    return dataclasses.replace(PRESETS["default"], **fields)


def test_balanced_objective_trains_the_network_on_the_weighted_mean_and_balances_the_weights():
    from lightning_lossval.functional import _potentials, balanced_state, weight_mass

    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(B, D, generator=g), torch.randn(V, D, generator=g)
    w0 = 1 + 0.3 * torch.randn(B, generator=g)
    raw = torch.rand(B, generator=g) + 0.1
    plain = _balanced_config(update="normalized")
    validation = prepare_validation(y, None, plain)

    def run(config, running=None):
        w, losses = w0.clone().requires_grad_(True), raw.clone().requires_grad_(True)
        value = lossval_objective(w, losses, x, validation, config, running=running)
        value.backward()
        return value.detach(), w.grad, losses.grad

    value, w_grad, loss_grad = run(plain)
    running = balanced_state()
    b_value, b_w_grad, b_loss_grad = run(_balanced_config(ot_share=0.5), running)
    masses = weight_mass(w0, "sigmoid")
    # the network's loss: the masses' weighted mean of its losses, not rescaled by the transport term
    torch.testing.assert_close(b_value, (masses * raw).sum() / masses.sum())
    torch.testing.assert_close(b_loss_grad, masses / masses.sum())
    assert not torch.allclose(b_value, value)  # the other updates return L_w * S**2
    assert running[0].item() == 1  # one batch folded into the loss scale

    # the weights' gradient: the balanced direction itself
    a = masses / masses.sum()
    cost = (cost_matrix(x, y, 2), cost_matrix(x, x, 2))
    f, _ = _potentials(a, validation.masses, *cost, None, validation.schedule, validation.potential)
    loss_dev, potential_dev = raw - (a * raw).sum(), f - (a * f).sum()
    expected = loss_dev / loss_dev.pow(2).mean().sqrt() + 0.5 * potential_dev / potential_dev.pow(2).mean().sqrt()
    torch.testing.assert_close(b_w_grad, expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(b_w_grad, w_grad)

    with pytest.raises(ValueError, match="running=balanced_state"):
        lossval_objective(w0, raw, x, validation, _balanced_config())


def test_balanced_direction_votes_by_running_scale_and_shares_automatically():
    from lightning_lossval.functional import balanced_direction, balanced_state

    running = balanced_state()
    outlier = torch.tensor([3.0, -1.0, -1.0, -1.0])
    potential = torch.tensor([1.0, -1.0, 1.0, -1.0])
    first = balanced_direction(outlier, potential, torch.tensor(0.2), running, share=0.0)
    # first batch: its own RMS is the scale
    torch.testing.assert_close(first, outlier / outlier.pow(2).mean().sqrt())
    # a later batch whose losses barely differ casts a small loss vote, in units of the running scale
    flat = torch.tensor([0.03, -0.01, -0.01, -0.01])
    second = balanced_direction(flat, potential, torch.tensor(0.2), running, share=0.0)
    assert second.abs().max().item() < 0.1 * first.abs().max().item()
    # the same losses scaled by 1000 give the same directions (units cancel)
    scaled = balanced_state()
    balanced_direction(outlier * 1000, potential, torch.tensor(0.2), scaled, share=0.0)
    torch.testing.assert_close(balanced_direction(flat * 1000, potential, torch.tensor(0.2), scaled, share=0.0), second)

    # "auto": the running mean of the objective's ratio, capped
    auto = balanced_state()
    zero = torch.zeros(4)
    for ratio in (0.1, 0.3):
        direction = balanced_direction(zero, potential, torch.tensor(ratio), auto, share="auto", share_max=0.6)
    expected_share = (0.99 * 0.01 * 0.1 + 0.01 * 0.3) / (1 - 0.99**2)
    torch.testing.assert_close(direction, expected_share * potential)
    capped = balanced_direction(zero, potential, torch.tensor(50.0), auto, share="auto", share_max=0.6)
    torch.testing.assert_close(capped, 0.6 * potential)
    # undefined ratios (all losses equal, or a non-positive divergence) are skipped, never NaN
    before = auto.clone()
    out = balanced_direction(zero, zero, torch.tensor(float("nan")), auto, share="auto")
    assert torch.isfinite(out).all() and out.abs().sum() == 0 and auto[2:4].tolist() == before[2:4].tolist()


def test_running_step_scales_by_the_running_rms_and_moves_only_the_batch():
    from lightning_lossval.functional import balanced_state, normalized_step, running_step

    running = balanced_state()
    weights, reference = torch.ones(6), torch.ones(6)
    grad = torch.tensor([1.0, -2.0, 0.5, 0.0])
    index = torch.tensor([0, 2, 3, 5])
    running_step(weights, index, grad, running, lr=0.1, clip=10.0)
    rms = grad.pow(2).mean().sqrt()
    reference[index] -= 0.1 * 10.0 * torch.tanh(grad / (rms * 10.0))
    torch.testing.assert_close(weights, reference)  # first step: the batch's own RMS, softly clipped
    normalized_step(reference, index, grad, lr=0.1, clip=10.0)  # a large clip: nearly the plain step
    torch.testing.assert_close(weights - 1, reference - weights, atol=2e-3, rtol=0)
    assert weights[[1, 4]].tolist() == [1.0, 1.0]
    # a later batch of small gradients moves little (the normalized step would move it fully)
    small, small_ref = torch.ones(4), torch.ones(4)
    running_step(small, torch.arange(4), grad * 0.01, running, lr=0.1, clip=10.0)
    normalized_step(small_ref, torch.arange(4), grad * 0.01, lr=0.1, clip=10.0)
    assert (small - 1).abs().max() < 0.05 * (small_ref - 1).abs().max()
    # clipped, and an all-zero first gradient moves nothing without NaN
    zero = torch.ones(3)
    running_step(zero, torch.arange(3), torch.zeros(3), balanced_state(), lr=0.1)
    assert zero.tolist() == [1.0, 1.0, 1.0]
    clipped = torch.ones(4)
    grad = torch.tensor([100.0, 10.0, -0.1, 0.1])
    running_step(clipped, torch.arange(4), grad, balanced_state(), lr=0.1, clip=1.5)
    rms = grad.pow(2).mean().sqrt().item()
    assert 1 - 0.15 < clipped[0].item() < 1 - 0.12  # bounded by lr * clip, close to it
    assert clipped[0].item() < clipped[1].item() < 1  # soft: the stronger gradient still moves further
    assert (1 - clipped[2:]).tolist() == pytest.approx([-0.1 * 0.1 / rms, 0.1 * 0.1 / rms], rel=1e-3)


def test_class_balanced_masses_keep_every_class_share():
    from lightning_lossval.functional import class_balanced

    masses = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.2, 0.0])
    classes = torch.tensor([0, 0, 7, 7, -100, 3])  # any integers; a class whose masses are all zero stays zero
    balanced = class_balanced(masses, classes)
    for c in (0, 7, -100):
        rows = classes == c
        assert balanced[rows].sum().item() == pytest.approx(rows.sum().item())  # the class keeps its count
    torch.testing.assert_close(balanced[:2] / balanced[:2].sum(), masses[:2] / masses[:2].sum())  # order kept
    assert balanced[5].item() == 0.0 and torch.isfinite(balanced).all()
