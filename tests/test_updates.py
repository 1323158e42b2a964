"""The update rules (``lightning_lossval.updates``) and their kernels."""

from __future__ import annotations

import pytest
import torch

from lightning_lossval.objective import Objective, lossval_objective, prepare_validation
from lightning_lossval.sinkhorn import cost_matrix

B, D, V = 6, 3, 5


def test_sparse_adam_matches_torch_adam_on_the_rows_it_touches():
    from lightning_lossval.updates import sparse_adam_step

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
    from lightning_lossval.updates import sparse_adam_step

    weights, m, v, steps = torch.ones(5), torch.zeros(5), torch.zeros(5), torch.zeros(5, dtype=torch.int32)
    sparse_adam_step(weights, m, v, steps, torch.tensor([1, 3]), torch.tensor([2.0, -2.0]), lr=0.1)
    sparse_adam_step(weights, m, v, steps, torch.tensor([3]), torch.tensor([-2.0]), lr=0.1)
    assert weights[[0, 2, 4]].tolist() == [1.0, 1.0, 1.0] and m[[0, 2, 4]].abs().sum() == 0
    assert steps.tolist() == [0, 1, 0, 2, 0]
    # Adam's first steps move by ~lr whatever the gradient's scale
    assert weights[1].item() == pytest.approx(0.9, abs=1e-5) and weights[3].item() == pytest.approx(1.2, abs=1e-5)


def test_coalesce_sums_duplicates():
    from lightning_lossval.stores import coalesce

    index, summed = coalesce(torch.tensor([4, 1, 4, 2]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert index.tolist() == [1, 2, 4] and summed.tolist() == [2.0, 4.0, 4.0]


def test_normalized_step_keeps_ratios_moves_only_the_batch_and_clips():
    from lightning_lossval.updates import normalized_step

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


def test_balanced_objective_trains_the_network_on_the_weighted_mean_and_balances_the_weights():
    from lightning_lossval.errors import ConfigError
    from lightning_lossval.objective import weight_mass
    from lightning_lossval.presets import PRESETS
    from lightning_lossval.sinkhorn import debiased_potentials
    from lightning_lossval.updates import Balanced

    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(B, D, generator=g), torch.randn(V, D, generator=g)
    w0 = 1 + 0.3 * torch.randn(B, generator=g)
    raw = torch.rand(B, generator=g) + 0.1
    objective = Objective()
    validation = prepare_validation(y, None, objective)

    def run(update=None, state=None):
        w, losses = w0.clone().requires_grad_(True), raw.clone().requires_grad_(True)
        value = lossval_objective(w, losses, x, validation, objective, update=update, state=state)
        value.backward()
        return value.detach(), w.grad, losses.grad

    value, w_grad, loss_grad = run()  # no rule: L_w * S**2, followed by network and weights alike
    rule = Balanced(ot_share=0.5)
    state = rule.state(B)
    b_value, b_w_grad, b_loss_grad = run(rule, state)
    masses = weight_mass(w0, "sigmoid")
    # the network's loss: the masses' weighted mean of its losses, not rescaled by the transport term
    torch.testing.assert_close(b_value, (masses * raw).sum() / masses.sum())
    torch.testing.assert_close(b_loss_grad, masses / masses.sum())
    assert not torch.allclose(b_value, value)
    assert state["loss_scale"][0].item() == 1  # one batch folded into the loss scale

    # the weights' gradient: the balanced direction itself
    a = masses / masses.sum()
    cost = (cost_matrix(x, y, 2), cost_matrix(x, x, 2))
    f, _ = debiased_potentials(a, validation.masses, *cost, None, validation.schedule, validation.potential)
    loss_dev, potential_dev = raw - (a * raw).sum(), f - (a * f).sum()
    rms = lambda t: t.pow(2).mean().sqrt()  # noqa: E731
    # contrast=0.1: each row's potential deviation minus the Gaussian-kernel mean of the other rows'
    squared = torch.cdist(x, x) ** 2
    kernel = torch.exp(-squared / (0.1 * squared.sum() / (B * (B - 1)))).fill_diagonal_(0)
    contrasted = potential_dev - kernel @ potential_dev / kernel.sum(1)
    # the batch's transport vote: the part of its spread the contrast keeps
    kept = (rms(contrasted - (a * contrasted).sum()) / rms(potential_dev)).clamp_max(1)  # 1 in this batch
    far = (contrasted / rms(contrasted)).clamp_min(0)  # transport_side="far": only rows beyond average
    far = far - (a * far).sum()
    expected = loss_dev / rms(loss_dev) + kept * 0.5 * far / rms(far)
    torch.testing.assert_close(b_w_grad, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(b_w_grad, w_grad)
    # contrast=0: the potential deviations themselves
    plain = Balanced(ot_share=0.5, contrast=0)
    _, plain_grad, _ = run(plain, plain.state(B))
    far = (potential_dev / rms(potential_dev)).clamp_min(0)
    far = far - (a * far).sum()
    torch.testing.assert_close(plain_grad, loss_dev / rms(loss_dev) + 0.5 * far / rms(far), rtol=1e-4, atol=1e-6)
    # transport_side="both": every row's deviation counts, both ways
    both = Balanced(ot_share=0.5, transport_side="both", contrast=0)
    _, both_grad, _ = run(both, both.state(B))
    expected = loss_dev / rms(loss_dev) + 0.5 * potential_dev / rms(potential_dev)
    torch.testing.assert_close(both_grad, expected, rtol=1e-4, atol=1e-6)
    # the labels preset: the loss part alone
    labels = PRESETS["labels"].update
    _, labels_grad, labels_loss_grad = run(labels, labels.state(B))
    torch.testing.assert_close(labels_grad, loss_dev / rms(loss_dev), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(labels_loss_grad, b_loss_grad)  # the network trains as with the default

    with pytest.raises(ConfigError, match=r"state=Balanced\(\).state"):
        lossval_objective(w0, raw, x, validation, objective, update=rule)


def test_balanced_direction_votes_by_running_scale_and_shares_automatically():
    from lightning_lossval.updates import Balanced, balanced_direction

    running = Balanced().state(4)
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
    scaled = Balanced().state(4)
    balanced_direction(outlier * 1000, potential, torch.tensor(0.2), scaled, share=0.0)
    torch.testing.assert_close(balanced_direction(flat * 1000, potential, torch.tensor(0.2), scaled, share=0.0), second)

    # "auto": the running mean of the objective's ratio, capped
    auto = Balanced().state(4)
    zero = torch.zeros(4)
    for ratio in (0.1, 0.3):
        direction = balanced_direction(zero, potential, torch.tensor(ratio), auto, share="auto", share_max=0.6)
    expected_share = (0.99 * 0.01 * 0.1 + 0.01 * 0.3) / (1 - 0.99**2)
    torch.testing.assert_close(direction, expected_share * potential)
    capped = balanced_direction(zero, potential, torch.tensor(50.0), auto, share="auto", share_max=0.6)
    torch.testing.assert_close(capped, 0.6 * potential)
    # undefined ratios (all losses equal, or a non-positive divergence) are skipped, never NaN
    before = auto["ratio"].clone()
    out = balanced_direction(zero, zero, torch.tensor(float("nan")), auto, share="auto")
    assert torch.isfinite(out).all() and out.abs().sum() == 0 and auto["ratio"].tolist() == before.tolist()


def test_far_side_keeps_transport_evidence_for_rows_beyond_the_average_only():
    from lightning_lossval.errors import ConfigError
    from lightning_lossval.updates import Balanced, far_side

    deviation = torch.tensor([2.0, 0.5, -0.3, -0.7, -1.5])
    masses = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2])
    out = far_side(deviation, masses)
    assert (masses * out).sum().abs().item() < 1e-6  # centred under the masses: no drift of the whole batch
    assert out[0] > out[1] > out[2]  # the farther of the rows beyond average moves further
    assert out[2] == out[3] == out[4]  # rows closer than average: one common lift, whatever their density
    scaled = far_side(deviation * 100, masses)
    torch.testing.assert_close(scaled, out)  # in units of the batch's spread
    assert far_side(torch.zeros(5), masses).abs().sum().item() == 0  # an all-equal batch casts no vote
    with pytest.raises(ConfigError, match="transport_side must be 'far' or 'both'"):
        Balanced(transport_side="near")


def test_neighbour_contrast_keeps_what_a_row_has_beyond_its_neighbours():
    from lightning_lossval.updates import neighbour_contrast

    # two tight clusters, far apart, and one row off on its own
    features = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [5.1, 5.0], [5.0, 5.1], [2.0, 9.0]])
    # the second cluster is far from the validation data as a whole: all its rows share one deviation
    deviation = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 3.0])
    out = neighbour_contrast(deviation, features, 0.1)
    assert out[:6].abs().max().item() < 0.01  # a row as far as its neighbours keeps (almost) nothing
    assert out[6].item() > 1.5  # the lone row keeps most of what it has beyond the nearest rows
    # a common shift of every deviation cancels; the features' scale does not matter
    torch.testing.assert_close(neighbour_contrast(deviation + 7, features, 0.1), out)
    torch.testing.assert_close(neighbour_contrast(deviation, features * 100, 0.1), out, rtol=1e-4, atol=1e-4)
    # a wide kernel compares each row with the mean of the others
    wide = neighbour_contrast(deviation, features, 1e6)
    torch.testing.assert_close(wide, deviation - (deviation.sum() - deviation) / 6, rtol=1e-4, atol=1e-4)
    # one row has no neighbours; identical rows share the kernel evenly; nothing is NaN
    assert neighbour_contrast(torch.tensor([2.0]), torch.zeros(1, 2), 0.1).tolist() == [2.0]
    same = neighbour_contrast(torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3, 2), 0.1)
    torch.testing.assert_close(same, torch.tensor([-1.5, 0.0, 1.5]))


def test_a_batch_whose_rows_are_as_far_as_their_neighbours_casts_a_small_transport_vote():
    from lightning_lossval.updates import Balanced

    # two tight clusters; the second far from the validation data, all its rows alike
    features = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [5.1, 5.0], [5.0, 5.1]])
    validation = prepare_validation(torch.tensor([[0.0, 0.0], [0.05, 0.05], [0.1, 0.1]]), None, Objective())
    losses = torch.tensor([1.0, 1.2, 0.8, 1.1, 0.9, 1.0])

    def direction(features, contrast):
        rule = Balanced(ot_share=0.5, contrast=contrast)
        w = torch.ones(6, requires_grad=True)
        lossval_objective(w, losses, features, validation, Objective(), update=rule, state=rule.state(6)).backward()
        return w.grad

    plain, contrasted = direction(features, 0.0), direction(features, 0.1)
    loss_only = (losses - losses.mean()) / (losses - losses.mean()).pow(2).mean().sqrt()
    # without the contrast the far cluster takes a full transport vote; with it, almost none
    assert (plain - loss_only).abs().max() > 0.3
    assert (contrasted - loss_only).abs().max() < 0.05
    # a row that stands out from its neighbours keeps its vote
    outlier = features.clone()
    outlier[4] = torch.tensor([9.0, 1.0])
    assert direction(outlier, 0.1)[4] - loss_only[4] > 0.3


def test_running_step_scales_by_the_running_rms_and_moves_only_the_batch():
    from lightning_lossval.updates import normalized_step, running_step

    scale = torch.zeros(2)
    weights, reference = torch.ones(6), torch.ones(6)
    grad = torch.tensor([1.0, -2.0, 0.5, 0.0])
    index = torch.tensor([0, 2, 3, 5])
    running_step(weights, index, grad, scale, lr=0.1, clip=10.0)
    rms = grad.pow(2).mean().sqrt()
    reference[index] -= 0.1 * 10.0 * torch.tanh(grad / (rms * 10.0))
    torch.testing.assert_close(weights, reference)  # first step: the batch's own RMS, softly clipped
    normalized_step(reference, index, grad, lr=0.1, clip=10.0)  # a large clip: nearly the plain step
    torch.testing.assert_close(weights - 1, reference - weights, atol=2e-3, rtol=0)
    assert weights[[1, 4]].tolist() == [1.0, 1.0]
    # a later batch of small gradients moves little (the normalized step would move it fully)
    small, small_ref = torch.ones(4), torch.ones(4)
    running_step(small, torch.arange(4), grad * 0.01, scale, lr=0.1, clip=10.0)
    normalized_step(small_ref, torch.arange(4), grad * 0.01, lr=0.1, clip=10.0)
    assert (small - 1).abs().max() < 0.05 * (small_ref - 1).abs().max()
    # an all-zero first gradient moves nothing without NaN
    zero = torch.ones(3)
    running_step(zero, torch.arange(3), torch.zeros(3), torch.zeros(2), lr=0.1)
    assert zero.tolist() == [1.0, 1.0, 1.0]
    clipped = torch.ones(4)
    grad = torch.tensor([100.0, 10.0, -0.1, 0.1])
    running_step(clipped, torch.arange(4), grad, torch.zeros(2), lr=0.1, clip=1.5)
    rms = grad.pow(2).mean().sqrt().item()
    assert 1 - 0.15 < clipped[0].item() < 1 - 0.12  # bounded by lr * clip, close to it
    assert clipped[0].item() < clipped[1].item() < 1  # soft: the stronger gradient still moves further
    assert (1 - clipped[2:]).tolist() == pytest.approx([-0.1 * 0.1 / rms, 0.1 * 0.1 / rms], rel=1e-3)


def test_rules_own_their_options_state_and_store():
    from lightning_lossval.errors import ConfigError
    from lightning_lossval.updates import RULES, Adam, Balanced, Normalized

    assert RULES == {"adam": Adam, "normalized": Normalized, "balanced": Balanced}
    assert (Adam().lr, Normalized().lr, Balanced().lr) == (0.01, 0.01, 0.05)
    assert not Adam.sparse_only and Normalized.sparse_only and Balanced.sparse_only
    assert set(Adam().state(3)) == {"exp_avg", "exp_avg_sq", "steps"} and Adam().state(3)["steps"].shape == (3,)
    assert Normalized().state(3) == {}
    targets = {"target_mean", "target_var", "target_fit"}
    assert set(Balanced().state(3)) == {"loss_scale", "ratio", "step_scale"} | targets
    assert Balanced.synced == ("loss_scale", "ratio", "target_mean", "target_var", "target_fit")
    for bad, message in (
        (lambda: Balanced(lr=0), r"learning rate \(lr, --lossval.lr .*\) must be a positive"),
        (lambda: Balanced(ot_share=-0.1), "ot_share"),
        (lambda: Balanced(ot_share="half"), "ot_share"),
        (lambda: Balanced(ot_share_max=0.0), "ot_share_max"),
        (lambda: Balanced(clip=0), r"clip \(a weight's largest step, in units of lr\) must be a positive number"),
        (lambda: Normalized(clip=-1), r"clip .* must be a positive number, got -1"),
        (lambda: Balanced(clip=float("inf")), r"clip .* must be a positive number, got inf"),
        (lambda: Balanced(lr=float("inf")), r"learning rate .* must be a positive number, got inf"),
        (lambda: Balanced(contrast=-0.1), "contrast must be a number >= 0"),
        (lambda: Balanced(contrast="wide"), "contrast must be a number >= 0"),
        (lambda: Balanced(target_reference=1.5), "target_reference must be a number from 0"),
        (lambda: Balanced(target_reference=True), "target_reference must be a number from 0"),
        (lambda: Balanced().check(Objective(reduction="sum")), "reduction='normalized'"),
    ):
        with pytest.raises(ConfigError, match=message):
            bad()


def test_a_checkpoint_from_before_a_rule_field_existed_resumes_only_under_the_rule_it_learned_with():
    from lightning_lossval.errors import ResumeError
    from lightning_lossval.presets import PRESETS, check_resume, describe, resolve

    current = describe(PRESETS["default"])
    added = ("transport_side", "contrast", "target_reference")
    oldest = {k: v for k, v in current.items() if k not in added}
    said = r"\(transport_side: 'both' there, 'far' here; contrast: 0.0 there, 0.1 here; target_reference: 0.0 there"
    with pytest.raises(ResumeError, match=said):
        check_resume(oldest, PRESETS["default"])
    # the rule they were learned under
    check_resume(oldest, resolve({"transport_side": "both", "contrast": 0, "target_reference": 0}))
    older = {k: v for k, v in current.items() if k not in added[1:]}  # far side, before the contrast
    with pytest.raises(ResumeError, match=r"\(contrast: 0.0 there, 0.1 here; target_reference: 0.0 there, 0.35 here\)"):
        check_resume(older, PRESETS["default"])
    check_resume(older, resolve({"contrast": 0, "target_reference": 0}))
    # another rule: the fields both have, each with its value there and here, and the preset that matches
    said = r"\(reduction: 'normalized' there, 'sum' here; .*update: 'balanced' there, 'adam' here, and the fields of "
    said += r"each rule\); resume with "
    said += "objective='default'"
    with pytest.raises(ResumeError, match=said) as refused:
        check_resume(current, PRESETS["paper"])
    assert "ot_share" not in str(refused.value).split("; resume")[0]  # a field the paper's rule does not have
    check_resume(current, PRESETS["default"])


def test_target_reference_takes_off_what_an_extreme_target_explains_and_keeps_a_wrong_target():
    from lightning_lossval.updates import Balanced, target_reference

    # skewed, price-like targets whose squared errors grow with the target's distance from the mean,
    # and one row (0) with a moderate target and a large loss: the kind of row a wrong target makes
    generator = torch.Generator().manual_seed(0)
    masses = torch.full((32,), 1 / 32)
    moments = Balanced().state(32)

    def copy(state):
        return {k: v.clone() for k, v in state.items()}

    for _ in range(200):  # the running fit settles over the run
        y = torch.randn(32, generator=generator).exp()
        losses = 0.2 * (y - y.mean()) ** 2 * (0.5 + torch.rand(32, generator=generator))
        y[0], losses[0] = 1.0, 3.0
        raw = losses - (masses * losses).sum()
        out = target_reference(raw, y, masses, moments, 1.0)
    assert (masses * out).sum().abs().item() < 1e-5  # recentred
    extreme = (y - y.mean()).abs() > 2 * y.std()
    assert extreme.any()
    assert (out[extreme] < raw[extreme]).all()  # the extreme targets' large residuals are taken off
    assert out[0] == out.max() and raw[0] < raw.max()  # the wrong target now leads the batch
    half = target_reference(raw, y, masses, copy(moments), 0.5)
    assert ((half - raw).abs() < (out - raw).abs() + 1e-6).all()  # half the amount: a smaller correction
    # class targets (integer, or all 0/1 floats) and their rows are left alone, the running fit too
    before = copy(moments)
    for classes in (
        torch.randint(0, 3, (32,)),
        torch.randint(0, 2, (32,)).float(),
        torch.randint(0, 2, (32, 1)).float(),
    ):
        assert torch.equal(target_reference(raw, classes, masses, moments, 1.0), raw)
    assert all(torch.equal(moments[k], before[k]) for k in before)
    # [B, K] targets: each row counts by the mean of its target columns
    twice = target_reference(raw, torch.stack([y, y], 1), masses, copy(moments), 1.0)
    torch.testing.assert_close(twice, target_reference(raw, y, masses, copy(moments), 1.0))


def test_a_checkpoint_without_a_rules_newer_state_loads_with_that_state_fresh():
    from lightning_lossval.stores import SparseWeights
    from lightning_lossval.updates import Balanced

    saved = SparseWeights(4, Balanced(target_reference=0.0))
    saved.weights = torch.tensor([0.5, 1.0, 1.5, 2.0])
    saved.state["loss_scale"] += 3.0
    old = saved.state_dict()
    for name in ("target_mean", "target_var", "target_fit"):  # written before the rule kept them
        del old[name]
    store = SparseWeights(4, Balanced(target_reference=0.0))
    store.load_state_dict(old)
    assert torch.equal(store.weights, saved.weights) and torch.equal(
        store.state["loss_scale"], saved.state["loss_scale"]
    )
    fresh = Balanced().state(4)
    assert all(torch.equal(store.state[k], fresh[k]) for k in ("target_mean", "target_var", "target_fit"))


def test_a_first_batch_of_two_regression_rows_leaves_the_running_fit_finite():
    from lightning_lossval.updates import Balanced, target_reference

    # two rows are equally far from their mean: every q is 1, and the variance of q only rounding
    state, masses = Balanced().state(2), torch.full((2,), 0.5)
    for targets in ([1.0, 3.0], [0.37, 2.91], [1.1, 2.2]):
        state = Balanced().state(2)
        loss_dev = torch.tensor([0.2, -0.2])
        torch.testing.assert_close(target_reference(loss_dev, torch.tensor(targets), masses, state), loss_dev)
        assert all(torch.isfinite(t).all() for t in state.values())


def test_a_value_that_is_not_finite_leaves_a_running_mean_as_it_was():
    from lightning_lossval.updates import running_mean

    pair = torch.zeros(3)
    running_mean(pair, torch.tensor([1.0, 2.0]))
    before = pair.clone()  # an fp16 loss that overflowed once must not freeze the average for the whole fit
    torch.testing.assert_close(running_mean(pair, torch.tensor([float("inf"), 2.0])), torch.tensor([1.0, 2.0]))
    assert torch.equal(pair, before)


def test_float64_losses_alike_in_a_first_batch_give_the_weights_no_nan():
    from lightning_lossval.updates import Balanced

    # precision="64-true": float64 losses, all alike at the first step (a zero-initialised head), float32 state
    rule, g = Balanced(), torch.Generator().manual_seed(0)
    weights = torch.ones(8, requires_grad=True)
    losses = torch.full((8,), 0.6931, dtype=torch.float64, requires_grad=True)
    x, validation = torch.randn(8, D, generator=g), torch.randn(20, D, generator=g)
    loss = lossval_objective(weights, losses, x, validation, update=rule, state=rule.state(8))
    loss.backward()
    assert loss.dtype == torch.float64 and torch.isfinite(loss) and torch.isfinite(weights.grad).all()


def test_the_default_updates_statistics_are_float32_under_autocast():
    from lightning_lossval.updates import Balanced

    g = torch.Generator().manual_seed(0)
    x, losses = 10 + torch.randn(32, D, generator=g), torch.rand(32, generator=g)  # rows far from the origin
    labels = torch.randint(0, 3, (32,), generator=g)
    validation = prepare_validation(10 + torch.randn(V, D, generator=g), None, Objective())

    def weights_grad():
        weights, rule = torch.ones(32, requires_grad=True), Balanced()
        lossval_objective(weights, losses, x, validation, labels=labels, update=rule, state=rule.state(32)).backward()
        return weights.grad

    with torch.autocast("cpu", dtype=torch.bfloat16):  # the training step's autocast under bf16-mixed
        mixed = weights_grad()
    torch.testing.assert_close(mixed, weights_grad())


def test_a_saved_state_does_not_change_with_later_steps():
    from lightning_lossval.stores import SparseWeights
    from lightning_lossval.updates import Balanced

    store = SparseWeights(4, Balanced())
    saved = store.state_dict()
    store.weights[0] = 0.5
    store.visits[0] += 1
    store.state["step_scale"] += 1.0
    assert saved["weights"][0] == 1 and saved["visits"][0] == 0 and (saved["step_scale"] == 0).all()


def test_a_batch_on_top_of_the_validation_points_is_transported_at_the_blur():
    from lightning_lossval.presets import PRESETS

    # dead ReLUs: every embedding 0, on both sides, so the batch's diameter is 0
    paper = PRESETS["paper"].objective  # its schedule starts from each batch's diameter
    zeros = torch.zeros(B, D)
    assert torch.isfinite(lossval_objective(torch.ones(B), torch.rand(B), zeros, zeros[:V], paper))
