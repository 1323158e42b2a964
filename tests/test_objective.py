"""The objective of a batch (``lightning_lossval.objective``), the per-sample losses, and the presets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from geomloss import SamplesLoss
from helpers import B, K, V, paper

from lightning_lossval import PRESETS
from lightning_lossval.losses import cross_entropy, squared_error
from lightning_lossval.objective import lossval_objective, prepare_validation
from lightning_lossval.sinkhorn import cloud_diameter, sinkhorn_distance

PAPER = PRESETS["paper"].objective


def test_paper_preset_matches_hand_written_reference(batch):
    x, x_val, probs, targets, w0 = batch
    assert not torch.allclose(w0, torch.ones_like(w0))

    # The package: per-sample losses from probabilities, then the paper objective.
    w = w0.clone().requires_grad_()
    losses = cross_entropy(probs, targets, probabilities=True)
    objective = lossval_objective(w, losses, x, x_val, PAPER)
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


def test_mean_reduction_and_exponent(batch):
    x, x_val, probs, targets, w = batch
    losses = cross_entropy(probs, targets, probabilities=True)
    reference = lossval_objective(w, losses, x, x_val, PAPER)
    mean = lossval_objective(w, losses, x, x_val, paper(reduction="mean"))
    assert mean.item() == pytest.approx(reference.item() / B, rel=1e-5)
    linear = lossval_objective(w, losses, x, x_val, paper(exponent=1.0))
    s = sinkhorn_distance(x, x_val, w)
    assert linear.item() == pytest.approx((w * losses).sum().item() * s.item(), rel=1e-5)
    assert reference.item() == pytest.approx(linear.item() * s.item(), rel=1e-5)


def test_prepared_validation_equals_per_call_objective(batch):
    x, x_val, probs, targets, w = batch
    losses = cross_entropy(probs, targets, probabilities=True)
    for config in (PAPER, paper(normalize_masses=True, diameter="validation")):
        prepared = prepare_validation(x_val, None, config)
        assert (prepared.potential is None) == (config.sinkhorn.diameter == "batch")
        once = lossval_objective(w, losses, x, prepared, config)
        # the same objective spelled out with sinkhorn_distance, which computes both debias terms itself
        diameter = None if config.sinkhorn.diameter == "batch" else cloud_diameter(x_val)
        a, b = (w / w.sum(), torch.full((V,), 1.0 / V)) if config.normalize_masses else (w, torch.ones(V))
        direct = (w * losses).sum() * sinkhorn_distance(x, x_val, a, b, diameter=diameter) ** 2
        assert once.item() == pytest.approx(direct.item(), rel=1e-5)
    explicit = paper(normalize_masses=True, diameter=cloud_diameter(x_val))
    validation = paper(normalize_masses=True, diameter="validation")
    assert lossval_objective(w, losses, x, x_val, validation).item() == pytest.approx(
        lossval_objective(w, losses, x, x_val, explicit).item(), rel=1e-6
    )


def test_label_aware_transport_marks_the_mislabeled_sample():
    # Two well-separated classes; the batch copies validation points, one with the wrong class.
    g = torch.Generator().manual_seed(3)
    val_y = torch.arange(20) % 2
    val_x = torch.randn(20, 2, generator=g) * 0.3 + val_y.unsqueeze(1) * 0.5
    x, y = val_x[:8].clone(), val_y[:8].clone()
    y[5] = 1 - y[5]
    config = paper(
        normalize_masses=True, reduction="normalized", mass="sigmoid", diameter="validation", label_weight=1.0
    )
    validation = prepare_validation(val_x, val_y, config)
    w = torch.ones(8, requires_grad=True)
    objective = lossval_objective(w, torch.ones(8), x, validation, config, labels=y)
    (grad,) = torch.autograd.grad(objective, w)
    assert grad.argmax().item() == 5  # descending the objective lowers its weight the most
    # without labels the transport cannot see it: the batch is a copy of validation points
    blind = paper(normalize_masses=True, reduction="normalized", mass="sigmoid", diameter="validation")
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
    config = paper(normalize_masses=True, reduction="normalized", mass="exp")
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


def test_objective_under_autocast_is_float32(batch):
    x, x_val, probs, targets, w = batch
    losses = cross_entropy(probs, targets, probabilities=True)
    reference = lossval_objective(w, losses, x, x_val)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lossval_objective(w, losses.bfloat16(), x.bfloat16(), x_val.bfloat16())
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(reference.item(), rel=5e-2)


def test_fixed_diameter_matches_per_batch_diameter_with_balanced_masses(batch):
    x, x_val, probs, targets, w = batch
    w = w * V / w.sum()  # balanced OT: sum(w) == V, the setting the annealing assumes
    losses = cross_entropy(probs, targets, probabilities=True)
    per_batch = lossval_objective(w, losses, x, x_val, PAPER).item()
    true_diameter = torch.cdist(x, x_val).max().item()
    for diameter in (true_diameter, 1.1 * true_diameter, 10.0, 50.0):
        fixed = lossval_objective(w, losses, x, x_val, paper(diameter=diameter)).item()
        assert fixed == pytest.approx(per_batch, rel=1e-2), diameter


def test_fixed_diameter_changes_the_unbalanced_paper_objective(batch):
    # Documented in ObjectiveConfig.diameter: with unnormalised masses (sum(w) != V) the balanced
    # Sinkhorn value depends on where the annealing starts, so a fixed diameter is not a pure
    # speed option for the paper preset.
    x, x_val, probs, targets, w = batch
    losses = cross_entropy(probs, targets, probabilities=True)
    per_batch = lossval_objective(w, losses, x, x_val, PAPER).item()
    true_diameter = torch.cdist(x, x_val).max().item()
    fixed = lossval_objective(w, losses, x, x_val, paper(diameter=1.5 * true_diameter)).item()
    assert fixed > 1.2 * per_batch


def test_normalize_masses(batch):
    x, x_val, probs, targets, w = batch
    losses = cross_entropy(probs, targets, probabilities=True)
    reference = lossval_objective(w, losses, x, x_val, PAPER).item()
    normalized = lossval_objective(w, losses, x, x_val, paper(normalize_masses=True)).item()
    assert normalized > 0
    assert abs(normalized - reference) > 1e-2 * abs(reference)
    # equals L_w * S(w / sum w, 1 / V)^2 computed directly
    s = sinkhorn_distance(x, x_val, w / w.sum(), torch.full((V,), 1.0 / V))
    assert normalized == pytest.approx((w * losses).sum().item() * s.item() ** 2, rel=1e-5)

    # a batch equal to the validation set with uniform (not unit) weights: the same distribution
    w_uniform = torch.full((V,), 0.7)
    l_v = torch.rand(V, generator=torch.Generator().manual_seed(6)) + 0.5
    same = lossval_objective(w_uniform, l_v, x_val, x_val.clone(), paper(normalize_masses=True))
    assert abs(same.item()) < 1e-5
    # without normalising, mass 0.7 * V against mass V is not zero
    unnormalized = lossval_objective(w_uniform, l_v, x_val, x_val.clone(), PAPER)
    assert unnormalized.item() > 1.0


def test_weight_mass():
    from lightning_lossval.objective import weight_mass

    w = torch.tensor([-3.0, 1.0, 5.0])
    assert weight_mass(w, "raw").tolist() == w.tolist()
    torch.testing.assert_close(weight_mass(w, "exp"), torch.exp(w - 1))
    sig = weight_mass(w, "sigmoid")
    assert sig[1].item() == pytest.approx(1.0) and 0 < sig[0] < 1e-6 * 1e2 and 1.99 < sig[2] < 2


def test_class_balanced_masses_keep_every_class_share():
    from lightning_lossval.objective import class_balanced

    masses = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.2, 0.0])
    classes = torch.tensor([0, 0, 7, 7, -100, 3])  # any integers; a class whose masses are all zero stays zero
    balanced = class_balanced(masses, classes)
    for c in (0, 7, -100):
        rows = classes == c
        assert balanced[rows].sum().item() == pytest.approx(rows.sum().item())  # the class keeps its count
    torch.testing.assert_close(balanced[:2] / balanced[:2].sum(), masses[:2] / masses[:2].sum())  # order kept
    assert balanced[5].item() == 0.0 and torch.isfinite(balanced).all()


def test_presets_are_objective_and_update_pairs():
    from lightning_lossval.objective import Objective
    from lightning_lossval.updates import Adam, Balanced

    objective, rule = PRESETS["paper"]
    assert (objective.reduction, objective.normalize_masses, objective.mass) == ("sum", False, "raw")
    assert (objective.exponent, objective.label_weight) == (2.0, 0.0)
    solver = objective.sinkhorn
    assert (solver.blur, solver.scaling, solver.p, solver.debias, solver.diameter) == (0.05, 0.5, 2, True, "batch")
    assert rule == Adam()
    assert PRESETS["default"] == (Objective(), Balanced())  # the dataclasses' defaults are the default preset


def test_a_mapping_of_fields_starts_from_the_default_preset():
    import dataclasses

    from lightning_lossval import LossValCallback
    from lightning_lossval.objective import Objective
    from lightning_lossval.presets import describe, resolve
    from lightning_lossval.updates import Adam, Balanced, Normalized

    expected = (dataclasses.replace(Objective(), label_weight=0.5), Balanced())
    assert resolve({"label_weight": 0.5}) == expected
    assert LossValCallback(objective={"label_weight": 0.5}).preset == expected
    paper_blur = resolve({"preset": "paper", "blur": 0.1, "lr": 0.02})
    assert paper_blur.objective.sinkhorn.blur == 0.1 and paper_blur.objective.reduction == "sum"
    assert paper_blur.update == Adam(lr=0.02)
    assert resolve({"update": "normalized", "clip": 3.0}) == (Objective(), Normalized(clip=3.0))
    assert resolve("paper") is PRESETS["paper"]
    assert resolve(Objective(label_weight=1.0)).update == Balanced()
    assert resolve("default", update=Normalized()).update == Normalized()
    assert LossValCallback(lr=0.2).preset.update == Balanced(lr=0.2)
    for name in PRESETS:  # describe() gives a mapping that resolve() reads back into the same preset
        assert resolve({"preset": name, **describe(PRESETS[name])}) == PRESETS[name]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("papr", r"unknown objective preset 'papr'.*paper"),
        ({"preset": "papr"}, r"unknown objective preset 'papr'"),
        (
            "{preset:paper}",
            r"unknown objective preset '{preset:paper}' \(a mapping in YAML needs a space after each colon",
        ),
        ({"blurr": 0.1}, r"unknown objective options \['blurr'\]"),
        ({"preset": "paper", "ot_share": 0.2}, r"ot_share: not an option of update='adam'"),
        ({"update": "sgd"}, r"update must be one of \['adam', 'balanced', 'normalized'\]"),
        (3, "objective must be a preset name"),
        ({"blur": 0.0}, "blur"),
        ({"blur": -0.1}, "blur"),
        ({"scaling": 0.0}, "scaling"),
        ({"scaling": 1.0}, "scaling"),
        ({"reduction": "max"}, "reduction must be one of"),
        ({"reduction": "summ"}, "reduction must be one of"),
        ({"mass": "sigmiod"}, "mass must be one of"),
        ({"diameter": 0.0}, "diameter"),
        ({"diameter": "auto"}, "diameter"),
        ({"diameter": None}, "'batch'"),
        ({"p": 3}, "p must be"),
        ({"label_weight": -1.0}, "label_weight"),
        ({"preset": "paper", "reduction": "normalized"}, "mass='exp' or mass='sigmoid'"),
        ({"reduction": "sum"}, "normalize_masses=True and reduction='normalized'"),
        ({"ot_share": -0.1}, "ot_share"),
        ({"ot_share": "half"}, "ot_share"),
        ({"ot_share_max": 0.0}, "ot_share_max"),
        ({"lr": -1}, r"learning rate \(lr, --lossval.lr .*\) must be a positive"),
    ],
)
def test_every_misspelt_or_invalid_option_is_refused(spec, message):
    from lightning_lossval import ConfigError, LossValCallback
    from lightning_lossval.presets import resolve

    with pytest.raises(ConfigError, match=message):
        resolve(spec)
    with pytest.raises(ConfigError, match=message):
        LossValCallback(objective=spec)


def test_option_strings_of_the_pure_functions_are_checked():
    from lightning_lossval import ConfigError
    from lightning_lossval.objective import weight_mass, weighted_loss

    with pytest.raises(ConfigError, match="mass must be one of"):
        weight_mass(torch.ones(2), "sigmiod")
    with pytest.raises(ConfigError, match="reduction must be one of"):
        weighted_loss(torch.ones(2), torch.ones(2), "summ")


def test_configs_are_frozen():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["paper"].objective.sinkhorn.blur = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["default"].update.lr = 1.0  # type: ignore[misc]
