"""Pure tensor math of LossVal: per-sample losses, the Sinkhorn term and the objective.

Nothing here imports Lightning. Shapes: ``B`` training samples in a batch, ``V`` validation
samples, ``D`` feature dimensions, ``K`` classes.

The objective of one batch is ``L_w * OT_w ** ot_exponent`` where ``L_w`` combines the per-sample
losses with the masses the batch's weights give them and ``OT_w`` is the (debiased) Sinkhorn
divergence between the batch features carrying those masses and the validation features
(``ObjectiveConfig`` says how; ``PRESETS`` holds the paper's and this project's choices).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class ObjectiveConfig:
    """How the LossVal objective of a batch is computed. The defaults are the paper preset.

    Args:
        reduction: how ``L_w`` combines the losses: ``"sum"`` (paper) or ``"mean"`` of
            ``w_n * l_n``, or ``"normalized"``: ``sum(w_n * l_n) / sum(w_n)``, a weighted mean
            that does not change when all weights scale together.
        normalize_masses: paper ``False``: the batch carries mass ``sum(w)`` and the validation
            set mass ``V``. ``True`` turns both into probability distributions.
        mass: how a sample's learned weight ``w`` (initially 1) becomes the mass it carries in
            both terms: ``"raw"`` (paper) ``w`` itself, unbounded; ``"exp"``: ``exp(w - 1)``;
            ``"sigmoid"``: ``2 * sigmoid(4 * (w - 1))``, in (0, 2). The last two never go
            negative; the sigmoid also saturates, so clearly good samples gather near 2 and
            clearly harmful ones near 0.
        label_weight: ``0`` (paper): the transport compares features only. ``> 0``: the ground
            cost between two samples adds ``label_weight * c`` when their classes differ (integer
            targets) or ``label_weight * c * (y - y')**2 / (2 var(y_val))`` for numeric targets,
            ``c`` being the mean cost between validation samples; a mislabeled sample is then far
            from the validation samples of its class.
        update: how the weights learn from their gradients. ``"adam"`` (paper): Adam, in the
            user's optimizer (dense store) or per sample (sparse store). ``"normalized"``: each
            step moves the batch's samples only, by ``lr * grad / rms(grad)`` over the batch
            (:func:`normalized_step`), so samples whose gradient stands out move further.
            ``"balanced"``: the weights do not follow the objective's gradient as it is, but a
            direction that balances its two parts (:func:`balanced_direction`): a sample's loss
            deviation from the batch, in units of the running RMS of such deviations, plus
            ``ot_share`` times its transport potential's deviation, in units of the batch's; the
            batch's samples then move by that direction divided by its running RMS, softly
            clipped (:func:`running_step`). The network then trains on the weighted mean of its
            losses alone (:func:`lossval_objective`). It needs normalized masses and the
            ``"normalized"`` reduction. ``"normalized"`` and ``"balanced"`` need the sparse store.
        ot_share: ``"balanced"`` only: the weight of the transport part against the loss part.
            ``"auto"``: the running mean of the ratio of the two parts in the objective's own
            gradient, at most ``ot_share_max``; a number fixes it.
        ot_share_max: the cap of ``ot_share="auto"``.
        ot_exponent: power of the Sinkhorn term (paper: 2).
        blur: entropic blur, a length in feature units (``eps = blur ** p``).
        scaling: ratio between successive blur scales of the annealing (closer to 1: slower,
            more accurate).
        p: exponent of the ground cost ``|x - y| ** p / p`` (1 or 2).
        debias: use the debiased Sinkhorn divergence (paper: ``True``).
        diameter: the distance scale the annealing starts from (``eps = diameter ** p`` first).
            ``"batch"`` (paper) recomputes ``1.1 * max |x_batch - x_val|`` every step (one host
            sync per step); ``"validation"`` takes the validation set's bounding-box diagonal
            (with the label cost added) once, so training outliers beyond it start the
            annealing a little cold, which only costs accuracy of the first iterations; a float
            fixes it. A fixed diameter fixes the annealing schedule, so the validation set's
            debias term is computed once per fit instead of every step. With balanced masses
            (``normalize_masses``) the value barely depends on the diameter; with the paper's
            unequal masses the balanced Sinkhorn value depends on where the annealing starts,
            so a fixed diameter changes the objective itself (by a factor ~2 at 1.5x the true
            diameter).
    """

    reduction: Literal["sum", "mean", "normalized"] = "sum"
    normalize_masses: bool = False
    mass: Literal["raw", "exp", "sigmoid"] = "raw"
    label_weight: float = 0.0
    update: Literal["adam", "normalized", "balanced"] = "adam"
    ot_share: float | Literal["auto"] = "auto"
    ot_share_max: float = 0.5
    ot_exponent: float = 2.0
    blur: float = 0.05
    scaling: float = 0.5
    p: int = 2
    debias: bool = True
    diameter: float | Literal["batch", "validation"] = "batch"

    def __post_init__(self) -> None:
        if self.reduction not in ("sum", "mean", "normalized"):
            raise ValueError(f"reduction must be 'sum', 'mean' or 'normalized', got {self.reduction!r}")
        if self.blur <= 0 or not 0 < self.scaling < 1:
            raise ValueError(f"need blur > 0 and 0 < scaling < 1, got blur={self.blur}, scaling={self.scaling}")
        if self.mass not in ("raw", "exp", "sigmoid"):
            raise ValueError(f"mass must be 'raw', 'exp' or 'sigmoid', got {self.mass!r}")
        if self.update not in ("adam", "normalized", "balanced"):
            raise ValueError(f"update must be 'adam', 'normalized' or 'balanced', got {self.update!r}")
        share = self.ot_share
        if share != "auto" and not (isinstance(share, (int, float)) and not isinstance(share, bool) and share >= 0):
            raise ValueError(f"ot_share must be 'auto' or a number >= 0, got {share!r}")
        if not self.ot_share_max > 0:
            raise ValueError(f"ot_share_max must be > 0, got {self.ot_share_max}")
        if self.update == "balanced" and not (self.normalize_masses and self.reduction == "normalized"):
            raise ValueError(
                "update='balanced' balances the loss and transport parts of a weighted mean over probability "
                "masses: set normalize_masses=True and reduction='normalized' with it"
            )
        if self.p not in (1, 2):
            raise ValueError(f"p must be 1 or 2, got {self.p}")
        if self.label_weight < 0:
            raise ValueError(f"label_weight must be >= 0, got {self.label_weight}")
        number = isinstance(self.diameter, (int, float)) and not isinstance(self.diameter, bool)
        if self.diameter not in ("batch", "validation") and not (number and self.diameter > 0):
            raise ValueError(
                f"diameter must be 'batch' (per step, the paper's), 'validation' or a positive number, "
                f"got {self.diameter!r}"
            )
        if self.reduction == "normalized" and self.mass == "raw":
            raise ValueError(
                "reduction='normalized' divides by the sum of the masses, which raw weights can drive to zero or "
                "below: use mass='exp' or mass='sigmoid' with it"
            )


PRESETS: dict[str, ObjectiveConfig] = {
    # The reference code of arXiv 2412.04158, quirks included (README, "Objective").
    "paper": ObjectiveConfig(),
    # This project's default, measured against "paper" in benchmarks/RESULTS.md: both terms on
    # probability distributions (the weights' gradient reflects distance and relative loss, not
    # mass mismatch), positive saturating masses (the network never ascends a sample's loss),
    # the network trained on the weighted mean of its losses only, a step that moves only the
    # batch and balances the loss and transport evidence (each in its own units, the
    # transport's share following the objective's own ratio, at most 0.5), and a fixed, coarser
    # annealing schedule (7 instead of 11 Sinkhorn iterations at the usual scales; the values
    # did not get worse), so the validation side is computed once and the per-step diameter
    # sync is gone.
    "default": ObjectiveConfig(
        reduction="normalized",
        normalize_masses=True,
        mass="sigmoid",
        update="balanced",
        diameter="validation",
        scaling=0.3,
    ),
}


STEP_SIZES: dict[str, float] = {"adam": 0.01, "normalized": 0.01, "balanced": 0.05}
"""The weights' learning rate when none is given, by ``update``: the paper's Adam learning rate,
and for the balanced step (at most ``2 * lr`` per visit) a size at which the masses of samples
that keep standing out fall within a few epochs, so the network stops fitting them (measured in
benchmarks/RESULTS.md: better detection and a better model than 0.01)."""


def resolve_config(objective: str | ObjectiveConfig | dict) -> ObjectiveConfig:
    """Turn a preset name, a config or a dict of ``ObjectiveConfig`` fields into a config."""
    if isinstance(objective, ObjectiveConfig):
        return objective
    if isinstance(objective, str):
        if objective not in PRESETS:
            raise ValueError(f"unknown objective preset {objective!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[objective]
    if isinstance(objective, dict):
        fields = {f.name for f in dataclasses.fields(ObjectiveConfig)}
        unknown = sorted(set(objective) - fields)
        if unknown:
            raise ValueError(f"unknown objective options {unknown}; valid ones are {sorted(fields)}")
        return ObjectiveConfig(**objective)
    raise TypeError(f"objective must be a preset name, an ObjectiveConfig or a dict, got {type(objective).__name__}")


def cross_entropy(outputs: Tensor, targets: Tensor, *, probabilities: bool = False, eps: float = 1e-8) -> Tensor:
    """Per-sample cross-entropy, shape ``[B]``.

    Args:
        outputs: ``[B, K]`` logits, or probabilities when ``probabilities=True`` (the paper's
            softmax outputs, scored as ``-sum_k y_k log(p_k + eps)``).
        targets: ``[B]`` integer class indices, or ``[B, K]`` one-hot / soft targets.
    """
    if outputs.dim() != 2:
        raise ValueError(f"outputs must have shape [B, K], got {tuple(outputs.shape)}")
    log_p = torch.log(outputs + eps) if probabilities else F.log_softmax(outputs, dim=1)
    if targets.dim() == 1 and not targets.is_floating_point():
        return -log_p.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    if targets.shape != outputs.shape:
        raise ValueError(
            f"targets must be [B] class indices or [B, K] one-hot like outputs {tuple(outputs.shape)}, "
            f"got {tuple(targets.shape)} ({targets.dtype})"
        )
    return -(targets * log_p).sum(dim=1)


def squared_error(predictions: Tensor, targets: Tensor) -> Tensor:
    """Per-sample squared error summed over output dimensions, shape ``[B]``."""
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ in shape")
    return (predictions - targets).pow(2).reshape(predictions.shape[0], -1).sum(dim=1)


def weight_mass(weights: Tensor, mass: str) -> Tensor:
    """The masses ``[B]`` that learned weights ``[B]`` carry (see ``ObjectiveConfig.mass``); 1 at ``w = 1``."""
    if mass == "exp":
        return torch.exp(weights - 1)
    if mass == "sigmoid":
        return 2 * torch.sigmoid(4 * (weights - 1))
    return weights


def weighted_loss(weights: Tensor, losses: Tensor, reduction: str = "sum") -> Tensor:
    """``L_w``: the per-sample losses ``[B]`` combined with their weights ``[B]`` (see ``ObjectiveConfig``)."""
    weighted = weights * losses
    if reduction == "sum":
        return weighted.sum()
    if reduction == "mean":
        return weighted.mean()
    return weighted.sum() / weights.sum().clamp_min(torch.finfo(weighted.dtype).tiny)


def batch_diameter(x: Tensor, y: Tensor) -> float:
    """The paper's diameter: ``1.1 * max |x_i - y_j|``. Costs one host sync."""
    with torch.no_grad():
        return 1.1 * torch.cdist(x.float(), y.float()).max().item()


def cloud_diameter(y: Tensor) -> float:
    """geomloss's estimate of a point cloud's extent: the diagonal of its bounding box."""
    with torch.no_grad():
        return (y.amax(0) - y.amin(0)).norm().item()


def epsilon_schedule(p: int, diameter: float, blur: float, scaling: float) -> list[float]:
    """The annealing temperatures: ``diameter ** p`` down by ``scaling ** p`` per iteration to ``blur ** p``.

    The same list as geomloss's ``epsilon_schedule``; its length is the number of Sinkhorn iterations.
    """
    start, stop, step = p * math.log(diameter), p * math.log(blur), p * math.log(scaling)
    count = max(0, math.ceil((stop - start) / step))
    return [diameter**p] + [math.exp(start + k * step) for k in range(count)] + [blur**p]


def cost_matrix(x: Tensor, y: Tensor, p: int) -> Tensor:
    """Ground cost ``|x_i - y_j| ** p / p``, ``[N, M]``, computed as geomloss does (p = 1 or 2)."""
    squared = (x * x).sum(1, keepdim=True) - 2 * x @ y.T + (y * y).sum(1)
    if p == 2:
        return squared / 2
    if p == 1:
        return squared.clamp_min(1e-8).sqrt()
    raise ValueError(f"p must be 1 or 2, got {p}")


def label_cost(labels: Tensor, other: Tensor, scale: float) -> Tensor:
    """The label part of the ground cost, ``[N, M]``: ``scale`` where integer classes differ, or
    ``scale * (y_i - y_j) ** 2 / 2`` summed over the columns of numeric ``[N]`` / ``[N, K]`` targets."""
    if not labels.is_floating_point():
        return (labels.reshape(-1, 1) != other.reshape(1, -1)).float() * scale
    labels, other = labels.float().reshape(labels.shape[0], -1), other.float().reshape(other.shape[0], -1)
    return cost_matrix(labels, other, 2) * scale


def ground_cost(
    x: Tensor, y: Tensor, p: int, x_labels: Tensor | None = None, y_labels: Tensor | None = None, scale: float = 0.0
) -> Tensor:
    """The transport's ground cost ``[N, M]``: :func:`cost_matrix` plus, when labels are given,
    :func:`label_cost` with ``scale``."""
    cost = cost_matrix(x, y, p)
    return cost if x_labels is None else cost + label_cost(x_labels, y_labels, scale)


def _lse(eps: float, cost: Tensor, log_w: Tensor, potential: Tensor) -> Tensor:
    """``log sum_j w_j exp((g_j - C_ij) / eps)``, ``[N]``, for ``potential`` ``g`` ``[M]``.

    Terms more than ``e**80`` below a row's largest are clamped to that level before ``exp``:
    this changes the sum by less than ``M * 1e-34`` of it, and keeps CPU ``exp`` off its slow
    path for underflowing inputs (4x faster on a 32 x 10,000 cost). In-place ops on the one
    temporary: at the sizes of a training batch the number of ops sets the cost.
    """
    z = torch.add(torch.add(log_w, potential, alpha=1 / eps), cost, alpha=-1 / eps)
    top = z.amax(dim=1, keepdim=True)
    return z.sub_(top).clamp_min_(-80).exp_().sum(dim=1).log_().add_(top.squeeze(1))


def _softmin(eps: float, cost: Tensor, log_w: Tensor, potential: Tensor) -> Tensor:
    """Soft c-transform ``f_i = -eps * log sum_j w_j exp((g_j - C_ij) / eps)`` of ``potential``."""
    return _lse(eps, cost, log_w, potential).mul_(-eps)


def _average(old: Tensor, eps: float, cost: Tensor, log_w: Tensor, potential: Tensor) -> Tensor:
    """The symmetric Sinkhorn update: the mean of ``old`` and the soft c-transform of ``potential``."""
    return torch.add(old, _lse(eps, cost, log_w, potential), alpha=-eps).mul_(0.5)


def _log_masses(a: Tensor) -> Tensor:
    return torch.where(a > 0, a.clamp_min(1e-30).log(), torch.full_like(a, -1e5))


@torch.no_grad()
def self_potential(cost: Tensor, w: Tensor, eps_list: list[float]) -> Tensor:
    """Dual potential ``[M]`` of the symmetric problem ``OT(w, w)`` with ground cost ``cost`` ``[M, M]``.

    The debias term of a measure. It depends only on the measure and the schedule, so for a
    fixed validation set and a fixed diameter it is computed once (:func:`prepare_validation`).
    """
    log_w = _log_masses(w.float())
    g = _softmin(eps_list[0], cost, log_w, torch.zeros_like(log_w))
    for eps in eps_list:
        g = _average(g, eps, cost, log_w, g)
    return _softmin(eps_list[-1], cost, log_w, g)


@torch.no_grad()
def transport_potentials(cost: Tensor, a: Tensor, b: Tensor, eps_list: list[float]) -> tuple[Tensor, Tensor]:
    """Dual potentials ``f`` ``[N]`` and ``g`` ``[M]`` of ``OT(a, b)`` with ground cost ``cost`` ``[N, M]``.

    geomloss's symmetric Sinkhorn loop: one averaged update of both potentials per temperature
    of ``eps_list``, then a last full update at the final temperature.
    """
    log_a, log_b, c_yx = _log_masses(a.float()), _log_masses(b.float()), cost.T
    eps = eps_list[0]
    f, g = _softmin(eps, cost, log_b, torch.zeros_like(log_b)), _softmin(eps, c_yx, log_a, torch.zeros_like(log_a))
    for eps in eps_list:
        f, g = _average(f, eps, cost, log_b, g), _average(g, eps, c_yx, log_a, f)
    return _softmin(eps, cost, log_b, g), _softmin(eps, c_yx, log_a, f)


def _potentials(
    a: Tensor, b: Tensor, c_xy: Tensor, c_xx: Tensor | None, c_yy: Tensor | None, eps_list: list[float], y_potential
) -> tuple[Tensor, Tensor]:
    """The dual potentials ``f`` ``[N]`` and ``g`` ``[M]``, debiased when ``c_xx`` is given."""
    f, g = transport_potentials(c_xy, a.detach(), b.detach(), eps_list)
    if c_xx is not None:
        f = f - self_potential(c_xx, a.detach(), eps_list)
        g = g - (self_potential(c_yy, b, eps_list) if y_potential is None else y_potential)
    return f, g


def _divergence(
    a: Tensor, b: Tensor, c_xy: Tensor, c_xx: Tensor | None, c_yy: Tensor | None, eps_list: list[float], y_potential
) -> Tensor:
    """``sum_i a_i f_i + sum_j b_j g_j`` with the (debiased when ``c_xx`` is given) potentials."""
    f, g = _potentials(a, b, c_xy, c_xx, c_yy, eps_list, y_potential)
    return (a * f).sum() + (b * g).sum()


def sinkhorn_distance(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    blur: float = 0.05,
    scaling: float = 0.5,
    p: int = 2,
    debias: bool = True,
    diameter: float | None = None,
    y_potential: Tensor | None = None,
) -> Tensor:
    """Sinkhorn divergence between ``sum_i a_i delta(x_i)`` and ``sum_j b_j delta(y_j)``.

    The algorithm of geomloss's ``SamplesLoss("sinkhorn", backend="tensorized")`` (symmetric
    log-domain updates with epsilon-scaling from ``diameter`` to ``blur``, a last extrapolation,
    the ``OT(a, a)`` and ``OT(b, b)`` debias terms), written out so that the ``y`` side's debias
    potential can come precomputed (``y_potential``, :func:`self_potential` with the same
    schedule) and nothing global (grad mode) is switched. ``x``: ``[N, D]``, ``y``: ``[M, D]``,
    masses ``a``: ``[N]`` and ``b``: ``[M]`` (default 1 each); ``diameter`` ``None`` costs one
    host sync (:func:`batch_diameter`). Differentiable in the masses only (the points are
    constants): the gradient with respect to ``a`` is the dual potential ``f_ba - f_aa``.
    Balanced OT assumes ``a.sum() == b.sum()`` and does not check (the paper preset relies on
    that). Non-positive masses count as empty. Computed in float32, also under autocast.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must be [N, D] and [M, D] with the same D, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    x, y = x.detach().float(), y.detach().float()
    a = torch.ones(x.shape[0], device=x.device) if a is None else a.float()
    b = torch.ones(y.shape[0], device=y.device) if b is None else b.float()
    eps_list = epsilon_schedule(p, batch_diameter(x, y) if diameter is None else diameter, blur, scaling)
    with torch.autocast(x.device.type, enabled=False):
        c_xx, c_yy = (cost_matrix(x, x, p), cost_matrix(y, y, p)) if debias else (None, None)
        return _divergence(a, b, cost_matrix(x, y, p), c_xx, c_yy, eps_list, y_potential)


class Validation(NamedTuple):
    """The validation side of the objective, prepared once per fit by :func:`prepare_validation`."""

    features: Tensor  # [V, D]
    labels: Tensor | None  # [V] classes or [V, K] numeric targets, when the objective uses labels
    masses: Tensor  # [V]
    label_scale: float  # label_weight times the mean validation cost
    schedule: list[float] | None  # the annealing temperatures; None: from each batch's diameter
    potential: Tensor | None  # the debias potential, when the schedule is fixed


def prepare_validation(features: Tensor, labels: Tensor | None, config: ObjectiveConfig) -> Validation:
    """Everything of the objective that depends on the validation set only, computed once.

    ``features``: ``[V, D]``; ``labels``: ``[V]`` classes or ``[V, K]`` numeric targets, used only
    when ``config.label_weight > 0``. With a fixed diameter (``"validation"`` or a number) the
    annealing schedule is fixed, so the validation side's debias potential is computed here.
    """
    with torch.autocast(features.device.type, enabled=False):
        features = features.detach().float()
        v = features.shape[0]
        masses = torch.full((v,), 1.0 / v if config.normalize_masses else 1.0, device=features.device)
        fixed = config.diameter != "batch"
        if config.label_weight == 0:
            labels, label_scale = None, 0.0
            cost = cost_matrix(features, features, config.p) if fixed and config.debias else None
        elif labels is None:
            raise ValueError(
                "label_weight > 0 needs the validation targets: pass val_data as (inputs, targets) or a "
                "dataset/loader whose batches carry targets"
            )
        else:
            labels = labels.detach().to(features.device)
            cost = cost_matrix(features, features, config.p)
            label_scale = config.label_weight * cost.mean().item()
            if labels.is_floating_point() and v > 1:  # numeric targets in units of their spread
                label_scale /= labels.float().var(dim=0).sum().clamp_min(1e-12).item()
            cost = cost + label_cost(labels, labels, label_scale)
        if not fixed:
            return Validation(features, labels, masses, label_scale, None, None)
        if config.diameter == "validation":  # the extent of the validation set, labels included
            diameter = cloud_diameter(features)
            diameter = math.sqrt(diameter**2 + 2 * label_scale) if config.p == 2 else diameter + label_scale
        else:
            diameter = float(config.diameter)
        schedule = epsilon_schedule(config.p, max(diameter, config.blur), config.blur, config.scaling)
        potential = self_potential(cost, masses, schedule) if config.debias else None
        return Validation(features, labels, masses, label_scale, schedule, potential)


def lossval_objective(
    weights: Tensor,
    losses: Tensor,
    features: Tensor,
    validation: Tensor | Validation,
    config: ObjectiveConfig = PRESETS["paper"],
    labels: Tensor | None = None,
    running: Tensor | None = None,
) -> Tensor:
    """The LossVal objective of one batch: ``L_w * OT_w ** config.ot_exponent``.

    With ``config.update == "balanced"`` (the default preset) the returned value is ``L_w`` alone,
    the masses' weighted mean of ``losses`` with the masses held constant: the network trains on
    its own loss, reweighted per sample and nothing else, at the scale of that loss. The weights'
    gradient is :func:`balanced_direction`, built from the two parts of the gradient of
    ``L_w * OT_w ** k`` (not times the masses' derivative, so the sigmoid does not slow a sample
    that has already moved: its weight sums its evidence); it updates the running scales in
    ``running`` (:func:`balanced_state`). The other updates return ``L_w * OT_w ** k`` itself,
    whose gradient both the network and the weights follow.

    Args:
        weights: ``[B]`` the batch's sample weights (differentiable).
        losses: ``[B]`` per-sample losses.
        features: ``[B, D]`` batch features (constants: the OT term values the weights).
        validation: the :func:`prepare_validation` result, or just the ``[V, D]`` validation
            features (then prepared on every call).
        config: the objective's options.
        labels: ``[B]`` classes or ``[B, K]`` numeric targets, needed when ``config.label_weight > 0``.
        running: the ``"balanced"`` update's state, updated in place.
    """
    if config.update == "balanced" and running is None:
        raise ValueError("update='balanced' keeps running scales: pass running=balanced_state()")
    if isinstance(validation, Tensor):
        validation = prepare_validation(validation, None, config)
    losses = losses.float()
    masses = weight_mass(weights.float(), config.mass)
    loss = weighted_loss(masses, losses, config.reduction)
    a = masses / masses.sum().clamp_min(torch.finfo(masses.dtype).tiny) if config.normalize_masses else masses
    x, y = features.detach().float(), validation.features
    if x.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"features must be [B, {y.shape[1]}] like the validation features, got {tuple(x.shape)}")
    eps_list = validation.schedule
    if eps_list is None:
        eps_list = epsilon_schedule(config.p, batch_diameter(x, y), config.blur, config.scaling)
    if validation.labels is not None and labels is None:
        raise ValueError("label_weight > 0 needs the batch's targets: pass labels=...")
    y_labels, scale = validation.labels, validation.label_scale
    x_labels = None if y_labels is None else labels
    with torch.autocast(x.device.type, enabled=False):
        c_xy = ground_cost(x, y, config.p, x_labels, y_labels, scale)
        c_xx = ground_cost(x, x, config.p, x_labels, x_labels, scale) if config.debias else None
        c_yy = None
        if config.debias and validation.potential is None:
            c_yy = ground_cost(y, y, config.p, y_labels, y_labels, scale)
        f, g = _potentials(a, validation.masses, c_xy, c_xx, c_yy, eps_list, validation.potential)
        ot = (a * f).sum() + (validation.masses * g).sum()
    if config.update != "balanced":
        return loss * ot**config.ot_exponent
    k, ot = config.ot_exponent, ot.detach()
    with torch.no_grad():
        mean_loss = loss.detach()
        loss_dev, potential_dev = losses.detach() - mean_loss, f - (a.detach() * f).sum()
        # d(L_w * S**k)/dm_i is proportional to S**k * loss_dev_i + k * L_w * S**(k-1) * potential_dev_i
        ratio = k * mean_loss * _rms(potential_dev) / (ot * _rms(loss_dev))
        direction = balanced_direction(loss_dev, potential_dev, ratio, running, config.ot_share, config.ot_share_max)
    surrogate = (weights.float() * direction).sum()  # its gradient in the weights: the direction itself
    # The network's loss is the masses' weighted mean of its per-sample losses and nothing else: the
    # transport term informs the weights only, so it neither rescales the network's step nor the
    # user's extra loss terms (with SGD, S**k would multiply the learning rate by a factor that
    # changes every batch and grows with the features' scale).
    held = masses.detach()
    if labels is not None and labels.dim() == 1 and not labels.is_floating_point():
        held = class_balanced(held, labels)
    return weighted_loss(held, losses, config.reduction) + (surrogate - surrogate.detach())


def class_balanced(masses: Tensor, classes: Tensor) -> Tensor:
    """``masses`` ``[B]`` rescaled within each class of ``classes`` ``[B]`` so that every class keeps
    the total mass it has in the batch (its count): the weights reweight a class's rows against
    each other, never one class against another. A class the network learns later than the others
    (higher losses for a while) cannot lose its share of the network's training that way."""
    same = (classes.reshape(-1, 1) == classes.reshape(1, -1)).to(masses.dtype)  # [B, B]: any integer labels, no sync
    return masses * same.sum(1) / (same @ masses).clamp_min(torch.finfo(masses.dtype).tiny)


RUNNING_BETA = 0.99
"""Memory of the balanced update's running means (about 100 steps), bias-corrected like Adam's."""


def balanced_state(device: torch.device | str | None = None) -> Tensor:
    """The ``"balanced"`` update's running state: (count, sum) pairs for the loss deviations' RMS,
    the objective's ratio of transport to loss part, and the step's mean square."""
    return torch.zeros(6, device=device)


def _rms(t: Tensor) -> Tensor:
    return t.pow(2).mean().sqrt()


def _running_mean(state: Tensor, slot: int, value: Tensor, valid: Tensor | bool = True) -> Tensor:
    """Fold ``value`` into the bias-corrected moving average in ``state[2 * slot : 2 * slot + 2]``
    (skipped where ``valid`` is false) and return the average. No host sync."""
    valid = torch.as_tensor(valid, device=state.device)
    count, total = state[2 * slot], state[2 * slot + 1]
    state[2 * slot] = count + valid.float()
    state[2 * slot + 1] = torch.where(valid, RUNNING_BETA * total + (1 - RUNNING_BETA) * value, total)
    debias = (1 - RUNNING_BETA ** state[2 * slot]).clamp_min(torch.finfo(state.dtype).tiny)
    return state[2 * slot + 1] / debias


@torch.no_grad()
def balanced_direction(
    loss_dev: Tensor,
    potential_dev: Tensor,
    ratio: Tensor,
    running: Tensor,
    share: float | str = "auto",
    share_max: float = 0.5,
) -> Tensor:
    """Per-sample direction ``[B]`` of the ``"balanced"`` update (positive: the weight goes down).

    ``loss_dev / A + s * potential_dev / rms(potential_dev)``: ``loss_dev`` ``[B]`` are the
    losses minus the batch's weighted mean, ``A`` the running mean of their batch RMS (so a batch
    whose losses barely differ casts a small vote, and one with an outlier a large one);
    ``potential_dev`` ``[B]`` the transport potentials minus their weighted mean, in units of the
    batch's spread. ``s`` is ``share``, or with ``"auto"`` the running mean of ``ratio`` (the
    objective's own ratio of transport to loss part, which is high when the losses have no
    outliers, i.e. feature rather than label noise) capped at ``share_max``. Updates ``running``.
    """
    tiny = torch.finfo(running.dtype).tiny
    loss_rms = _rms(loss_dev)
    scale = _running_mean(running, 0, loss_rms, loss_rms > 0)
    if share == "auto":
        usable = torch.isfinite(ratio) & (ratio > 0)
        share = _running_mean(running, 1, torch.where(usable, ratio, 0.0), usable).clamp_max(share_max)
    return loss_dev / scale.clamp_min(tiny) + share * potential_dev / _rms(potential_dev).clamp_min(tiny)


@torch.no_grad()
def running_step(
    weights: Tensor, index: Tensor, grad: Tensor, running: Tensor, *, lr: float, clip: float = 2.0
) -> None:
    """``w[index] -= lr * clip * tanh(grad / (R * clip))``, in place, for distinct ``index``; ``R`` is
    the running RMS of the steps' gradients (``running``, :func:`balanced_state`, updated here).

    Like :func:`normalized_step`, but a batch whose samples all look alike moves them little,
    instead of as far as a batch with a clear outlier. The clip is soft: a gradient of ``R`` moves
    a sample by about ``lr``, and no step exceeds ``lr * clip``, but a stronger gradient still
    moves a sample further, so samples that stand out by different amounts stay apart.
    """
    scale = _running_mean(running, 2, grad.pow(2).mean()).sqrt().clamp_min(torch.finfo(grad.dtype).tiny)
    weights[index] -= lr * clip * torch.tanh(grad / (scale * clip))


def coalesce(index: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Sum ``values`` ``[K]`` that share an ``index`` ``[K]``: returns ``(unique_index, summed)``."""
    unique, inverse = torch.unique(index, return_inverse=True)
    return unique, torch.zeros(len(unique), dtype=values.dtype, device=values.device).index_add_(0, inverse, values)


@torch.no_grad()
def sparse_adam_step(
    weights: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    steps: Tensor,
    index: Tensor,
    grad: Tensor,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """Adam on the rows ``index`` only (distinct indices), in place; other rows do not move.

    ``weights``, ``exp_avg``, ``exp_avg_sq``: ``[N]`` float; ``steps``: ``[N]`` per-sample step
    counts for the bias correction, so a sample's update depends only on the steps that saw it.
    """
    beta1, beta2 = betas
    t = steps[index] + 1
    steps[index] = t
    m = exp_avg[index].mul_(beta1).add_(grad, alpha=1 - beta1)
    v = exp_avg_sq[index].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    exp_avg[index], exp_avg_sq[index] = m, v
    t = t.to(weights.dtype)
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    weights[index] -= lr * m_hat / (v_hat.sqrt() + eps)


@torch.no_grad()
def normalized_step(weights: Tensor, index: Tensor, grad: Tensor, *, lr: float, clip: float = 2.0) -> None:
    """``w[index] -= lr * clamp(grad / rms(grad), -clip, clip)``, in place, for distinct ``index``.

    Only the batch's samples move. Unlike Adam, which scales each sample by its own gradient
    history, this keeps the ratios between the batch's gradients, so a sample whose loss or
    transport cost stands out moves further; dividing by the batch's root mean square makes the
    step independent of the objective's scale, and the clip keeps a single extreme batch from
    deciding a sample's value. A zero gradient moves nothing.
    """
    step = grad / _rms(grad).clamp_min(torch.finfo(grad.dtype).tiny)
    weights[index] -= lr * step.clamp(-clip, clip)
