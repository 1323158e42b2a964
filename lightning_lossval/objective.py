"""The LossVal objective of one batch: masses, the weighted loss and the transport to the validation side.

Nothing here imports Lightning. Shapes: ``B`` training samples in a batch, ``V`` validation
samples, ``D`` feature dimensions.

The objective of a batch is ``L_w * S ** exponent``: ``L_w`` combines the per-sample losses with
the masses the batch's weights give them, ``S`` is the (debiased) Sinkhorn divergence between the
batch features carrying those masses and the validation features (:class:`Objective` says how).
What the network and the weights then follow is the update rule's business
(``lightning_lossval.updates``): :func:`lossval_objective` hands it the batch's :class:`Parts`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

import torch
from torch import Tensor

from lightning_lossval.engines import geomloss_potentials
from lightning_lossval.errors import ConfigError, DataError
from lightning_lossval.sinkhorn import (
    Sinkhorn,
    batch_diameter,
    cloud_diameter,
    cost_matrix,
    debiased_potentials,
    ground_cost,
    label_cost,
    quantize,
    self_potential,
)

MASSES: dict[str, Callable[[Tensor], Tensor]] = {
    "raw": lambda w: w,
    "exp": lambda w: torch.exp(w - 1),
    "sigmoid": lambda w: 2 * torch.sigmoid(4 * (w - 1)),
}
REDUCTIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "sum": lambda m, losses: (m * losses).sum(),
    "mean": lambda m, losses: (m * losses).mean(),
    "normalized": lambda m, losses: (m * losses).sum() / m.sum().clamp_min(torch.finfo(losses.dtype).tiny),
}


def _choice(name: str, value: Any, table: dict[str, Any]) -> None:
    if value not in table:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, table))}, got {value!r}")


@dataclass(frozen=True)
class Objective:
    """How the LossVal objective of a batch is built; the defaults are this project's objective.

    Args:
        reduction: how ``L_w`` combines the losses: ``"sum"`` (paper) or ``"mean"`` of
            ``m_n * l_n``, or ``"normalized"``: ``sum(m_n * l_n) / sum(m_n)``, a weighted mean that
            does not change when all masses scale together.
        normalize_masses: ``True``: both sides of the transport are probability distributions.
            ``False`` (paper): the batch carries mass ``sum(m)`` and the validation set mass ``V``.
        mass: how a sample's learned weight ``w`` (initially 1) becomes the mass it carries in
            both terms: ``"raw"`` (paper) ``w`` itself, unbounded; ``"exp"``: ``exp(w - 1)``;
            ``"sigmoid"``: ``2 * sigmoid(4 * (w - 1))``, in (0, 2). The last two never go
            negative; the sigmoid also saturates.
        label_weight: ``0``: the transport compares features only. ``> 0``: the ground cost
            between two samples adds ``label_weight * c`` when their classes differ (integer
            targets) or ``label_weight * c * (y - y')**2 / (2 var(y_val))`` for numeric targets,
            ``c`` being the mean cost between validation samples.
        exponent: the power of the Sinkhorn term (paper: 2).
        sinkhorn: the solver's settings (:class:`~lightning_lossval.sinkhorn.Sinkhorn`).
        max_support: the most validation points the transport compares a batch with. A larger
            validation set is summarised once per fit by seeded k-means
            (:func:`~lightning_lossval.sinkhorn.quantize`) into this many centroids, each carrying
            the mass of its rows (per class with label-aware transport), so a step costs
            ``B x max_support`` and the debias term ``max_support ** 2`` whatever ``V``: 2000
            points cost ~16 MB and, on 8 features, move the divergence by ~3 % and the weights'
            gradient by ~5 %. ``None``: always the exact transport (``V x V`` memory once per fit).
    """

    reduction: Literal["sum", "mean", "normalized"] = "normalized"
    normalize_masses: bool = True
    mass: Literal["raw", "exp", "sigmoid"] = "sigmoid"
    label_weight: float = 0.0
    exponent: float = 2.0
    sinkhorn: Sinkhorn = field(default_factory=Sinkhorn)
    max_support: int | None = 2000

    def __post_init__(self) -> None:
        if self.max_support is not None and (
            isinstance(self.max_support, bool) or not isinstance(self.max_support, int) or self.max_support < 2
        ):
            raise ConfigError(
                f"max_support must be an integer >= 2 (validation points the transport keeps) or None (all of "
                f"them), got {self.max_support!r}"
            )
        _choice("reduction", self.reduction, REDUCTIONS)
        _choice("mass", self.mass, MASSES)
        if not self.label_weight >= 0:
            raise ConfigError(f"label_weight must be >= 0, got {self.label_weight}")
        if self.label_weight > 0 and self.sinkhorn.backend != "own":
            raise ConfigError(
                f"label_weight > 0 adds a label cost that only the own Sinkhorn takes, not "
                f"backend={self.sinkhorn.backend!r}: use backend='own' for label-aware transport, or label_weight=0"
            )
        if self.reduction == "normalized" and self.mass == "raw":
            raise ConfigError(
                "reduction='normalized' divides by the sum of the masses, which raw weights can drive to zero or "
                "below: use mass='exp' or mass='sigmoid' with it"
            )


def weight_mass(weights: Tensor, mass: str) -> Tensor:
    """The masses ``[B]`` that learned weights ``[B]`` carry (see :class:`Objective`); 1 at ``w = 1``."""
    _choice("mass", mass, MASSES)
    return MASSES[mass](weights)


def weighted_loss(masses: Tensor, losses: Tensor, reduction: str = "sum") -> Tensor:
    """``L_w``: the per-sample losses ``[B]`` combined with their masses ``[B]`` (see :class:`Objective`)."""
    _choice("reduction", reduction, REDUCTIONS)
    return REDUCTIONS[reduction](masses, losses)


def class_balanced(masses: Tensor, classes: Tensor) -> Tensor:
    """``masses`` ``[B]`` rescaled within each class of ``classes`` ``[B]`` so that every class keeps
    the total mass it has in the batch (its count): the weights reweight a class's rows against
    each other, never one class against another. A class the network learns later than the others
    (higher losses for a while) cannot lose its share of the network's training that way."""
    same = (classes.reshape(-1, 1) == classes.reshape(1, -1)).to(masses.dtype)  # [B, B]: any integer labels, no sync
    return masses * same.sum(1) / (same @ masses).clamp_min(torch.finfo(masses.dtype).tiny)


def zero_one(values: Tensor) -> Tensor:
    """Whether every entry of ``values`` is 0 or 1 (binary cross-entropy's classes): a bool tensor on
    their device, so deciding it needs no host sync."""
    return ((values == 0) | (values == 1)).all()


def balanced_by_class(masses: Tensor, targets: Tensor | None) -> Tensor:
    """:func:`class_balanced` ``masses`` ``[B]`` when ``targets`` are classes, one per row: integers,
    or 0/1 floats (binary cross-entropy's targets), ``[B]`` or ``[B, 1]``; ``masses`` as they are otherwise."""
    if targets is None or targets.numel() != masses.numel() or targets.shape[0] != masses.numel():
        return masses
    classes = targets.reshape(-1)
    if not targets.is_floating_point():
        return class_balanced(masses, classes)
    return torch.where(zero_one(classes), class_balanced(masses, classes), masses)


class Validation(NamedTuple):
    """The validation side of the objective, prepared once per fit by :func:`prepare_validation`."""

    features: Tensor  # [V, D]
    labels: Tensor | None  # [V] classes or [V, K] numeric targets, when the objective uses labels
    masses: Tensor  # [V]
    label_scale: float  # label_weight times the mean validation cost
    schedule: list[float] | None  # the annealing temperatures; None: from each batch's diameter
    potential: Tensor | None  # the debias potential, when the schedule is fixed


def validation_on(fields: Validation | dict[str, Any], device: torch.device | str) -> Validation:
    """``fields`` (a :class:`Validation`, or its ``_asdict()`` as checkpoints keep it) on ``device``."""
    fields = fields._asdict() if isinstance(fields, Validation) else fields
    return Validation(**{name: v.to(device) if isinstance(v, Tensor) else v for name, v in fields.items()})


def prepare_validation(features: Tensor, labels: Tensor | None, objective: Objective) -> Validation:
    """Everything of the objective that depends on the validation set only, computed once.

    ``features``: ``[V, D]``; ``labels``: ``[V]`` classes or ``[V, K]`` numeric targets, used only
    when ``objective.label_weight > 0``. With a fixed diameter (``"validation"`` or a number) the
    annealing schedule is fixed, so the validation side's debias potential is computed here. More
    than ``objective.max_support`` rows are summarised (:func:`summarize_validation`); the
    diameter and the label scale still come from every row, in ``O(V * D)`` memory.
    """
    solver = objective.sinkhorn
    if objective.max_support is not None and features.shape[0] > objective.max_support:
        return _prepare_summary(features, labels, objective)
    with torch.autocast(features.device.type, enabled=False):
        features = features.detach().float()
        v = features.shape[0]
        masses = torch.full((v,), 1.0 / v if objective.normalize_masses else 1.0, device=features.device)
        if objective.label_weight == 0:
            labels, label_scale = None, 0.0
            cost = cost_matrix(features, features, solver.p) if solver.caches_self_term else None
        elif labels is None:
            raise DataError(LABELS_NEEDED)
        else:
            labels = labels.detach().to(features.device)
            cost = cost_matrix(features, features, solver.p)
            label_scale = objective.label_weight * cost.mean().item()
            if labels.is_floating_point() and v > 1:  # numeric targets in units of their spread
                label_scale /= labels.float().var(dim=0).sum().clamp_min(1e-12).item()
            cost = cost + label_cost(labels, labels, label_scale)
        return _finish(features, labels, masses, label_scale, cost, objective, _extent(features, objective))


LABELS_NEEDED = (
    "label_weight > 0 needs the validation targets: pass val_data as (inputs, targets) or a dataset/loader whose "
    "batches carry targets"
)


def _finish(
    features: Tensor,
    labels: Tensor | None,
    masses: Tensor,
    label_scale: float,
    cost: Tensor | None,
    objective: Objective,
    extent: float,
) -> Validation:
    """The schedule and the debias potential of the (possibly summarised) validation side."""
    solver = objective.sinkhorn
    if not solver.fixed:
        return Validation(features, labels, masses, label_scale, None, None)
    if solver.diameter == "validation":  # the extent of the validation set, labels included
        diameter = math.sqrt(extent**2 + 2 * label_scale) if solver.p == 2 else extent + label_scale
    else:
        diameter = float(solver.diameter)
    schedule = solver.schedule(diameter)
    potential = self_potential(cost, masses, schedule) if solver.caches_self_term else None
    return Validation(features, labels, masses, label_scale, schedule, potential)


def _extent(features: Tensor, objective: Objective) -> float:
    """The validation set's bounding-box diagonal when the diameter is ``"validation"`` (else unused, 0)."""
    return cloud_diameter(features) if objective.sinkhorn.diameter == "validation" else 0.0


def _prepare_summary(features: Tensor, labels: Tensor | None, objective: Objective) -> Validation:
    """:func:`prepare_validation` of a validation set larger than ``objective.max_support``."""
    solver = objective.sinkhorn
    with torch.autocast(features.device.type, enabled=False):
        features = features.detach().float()
        if objective.label_weight > 0 and labels is None:
            raise DataError(LABELS_NEEDED)
        labels = None if objective.label_weight == 0 else labels.detach().to(features.device)
        label_scale = 0.0 if labels is None else _label_scale(features, labels, objective)
        extent = _extent(features, objective)
        features, labels, masses = summarize_validation(features, labels, objective, label_scale)
        cost = None
        if solver.caches_self_term:
            cost = ground_cost(features, features, solver.p, labels, labels, label_scale)
        return _finish(features, labels, masses, label_scale, cost, objective, extent)


def _label_scale(features: Tensor, labels: Tensor, objective: Objective) -> float:
    """``label_weight`` times the mean cost between validation rows (per unit of target variance for
    numeric targets) without the ``V x V`` costs: exact for ``p = 2`` (``mean |x|**2 - |mean x|**2``),
    from ``max_support`` seeded rows for ``p = 1``."""
    if objective.sinkhorn.p == 2:
        x = features.double()
        mean_cost = ((x * x).sum(1).mean() - (x.mean(0) ** 2).sum()).item()
    else:
        rows = torch.randperm(features.shape[0], generator=torch.Generator().manual_seed(0))[: objective.max_support]
        sample = features[rows.to(features.device)]
        mean_cost = cost_matrix(sample, sample, 1).mean().item()
    scale = objective.label_weight * mean_cost
    if labels.is_floating_point():
        scale /= labels.float().var(dim=0).sum().clamp_min(1e-12).item()
    return scale


def summarize_validation(
    features: Tensor, labels: Tensor | None, objective: Objective, label_scale: float = 0.0
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The validation measure summarised to about ``objective.max_support`` weighted points.

    Returns features ``[K, D]``, labels (``[K]`` classes or ``[K, T]`` targets, or ``None``) and
    masses ``[K]`` (the rows' masses of :func:`prepare_validation` summed per centroid). Classes are
    summarised one by one, each with a share of ``max_support`` proportional to its rows (at least
    one point each); numeric targets join the features scaled by ``sqrt(label_scale)``, so k-means
    minimises the transport's own squared cost (``p = 2``), and each centroid carries its rows'
    mean target. At most ``max_support`` rows: the rows themselves, unchanged.
    """
    v, k = features.shape[0], objective.max_support or features.shape[0]
    masses = torch.full((v,), 1.0 / v if objective.normalize_masses else 1.0, device=features.device)
    if v <= k:
        return features, labels, masses
    if labels is None:
        centroids, mass = quantize(features, masses, k)
        return centroids, None, mass
    if not labels.is_floating_point():
        parts = []
        for label in labels.unique():
            rows = labels == label
            centroids, mass = quantize(features[rows], masses[rows], max(1, round(k * rows.sum().item() / v)))
            parts.append((centroids, label.expand(len(mass)), mass))
        return tuple(torch.cat(column) for column in zip(*parts))
    targets = labels.float().reshape(v, -1)
    root = math.sqrt(label_scale)
    centroids, mass = quantize(torch.cat([features, targets * root], 1), masses, k)
    means = centroids[:, features.shape[1] :] / root if root > 0 else centroids.new_zeros(len(mass), targets.shape[1])
    return centroids[:, : features.shape[1]], means.reshape(len(mass), *labels.shape[1:]), mass


class Parts(NamedTuple):
    """One batch's objective taken apart, for the update rule to decide what is returned."""

    weights: Tensor  # [B] the learned weights (differentiable)
    masses: Tensor  # [B] their masses (differentiable)
    transport_masses: Tensor  # [B] the masses the transport sees (normalised when the objective says so)
    losses: Tensor  # [B] per-sample losses, float32 or float64 (differentiable in the network)
    loss: Tensor  # L_w, differentiable in masses and losses
    potentials: Tensor  # [B] the transport potentials (the divergence's gradient in transport_masses)
    ot: Tensor  # S, differentiable in transport_masses
    labels: Tensor | None  # the batch's targets, when the module gives them
    features: Tensor  # [B, D] the batch's features the transport compares (constants)
    objective: Objective

    def value(self) -> Tensor:
        """``L_w * S ** exponent``: the objective itself, what the paper's network and weights follow."""
        return self.loss * self.ot**self.objective.exponent


class Rule(Protocol):
    """What :func:`lossval_objective` asks of an update rule (``lightning_lossval.updates``)."""

    def loss(self, parts: Parts, state: dict[str, Tensor]) -> Tensor: ...


def lossval_objective(
    weights: Tensor,
    losses: Tensor,
    features: Tensor,
    validation: Tensor | Validation,
    objective: Objective | None = None,
    *,
    labels: Tensor | None = None,
    update: Rule | None = None,
    state: dict[str, Tensor] | None = None,
) -> Tensor:
    """The LossVal loss of one batch.

    Without ``update`` (or with a rule that follows the gradient, like the paper's Adam) this is
    ``L_w * S ** exponent``, and both the network and the weights follow its gradient. The default
    rule (``updates.Balanced``) returns ``L_w`` alone, with the masses held constant, so the
    network trains on its own loss reweighted per sample, and gives the weights their direction.

    Args:
        weights: ``[B]`` the batch's sample weights (differentiable).
        losses: ``[B]`` per-sample losses.
        features: ``[B, D]`` batch features (constants: the transport values the weights).
        validation: the :func:`prepare_validation` result, or just the ``[V, D]`` validation
            features (then prepared on every call).
        objective: how the objective is built (default: this project's :class:`Objective`).
        labels: ``[B]`` classes or ``[B, K]`` numeric targets: needed when ``label_weight > 0``; an
            update rule may use them too (the default's class-balanced masses).
        update: the rule that decides what is returned (``lightning_lossval.updates``).
        state: the rule's running state (``update.state(n)``), updated in place.
    """
    objective = Objective() if objective is None else objective
    if isinstance(validation, Tensor):
        validation = prepare_validation(validation, None, objective)
    losses = losses if losses.dtype == torch.float64 else losses.float()  # a float64 loss stays float64
    masses = weight_mass(weights.float(), objective.mass)
    loss = weighted_loss(masses, losses, objective.reduction)
    a = masses / masses.sum().clamp_min(torch.finfo(masses.dtype).tiny) if objective.normalize_masses else masses
    x, y = features.detach().float(), validation.features
    if x.dim() != 2 or x.shape[1] != y.shape[1]:
        raise DataError(
            f"features must be [B, {y.shape[1]}] like the validation features, got {tuple(x.shape)}: every batch "
            "needs the same width (inputs padded per batch: override lossval_features to return a fixed-width "
            "summary, e.g. a masked mean of the token embeddings)"
        )
    solver = objective.sinkhorn
    eps_list = validation.schedule
    if eps_list is None:
        diameter = batch_diameter(x, y)
        if not math.isfinite(diameter):
            raise DataError(
                "this training batch's features hold NaN or inf, so their transport to the validation set is "
                "undefined: clean or drop those rows, or skip such batches in training_step before lossval_loss"
            )
        eps_list = solver.schedule(diameter)  # from at least the blur: a batch on top of the validation rows
    if validation.labels is not None and labels is None:
        raise DataError("label_weight > 0 needs the batch's targets: pass labels=...")
    y_labels, scale = validation.labels, validation.label_scale
    x_labels = None if y_labels is None else labels
    with torch.autocast(x.device.type, enabled=False):
        if solver.backend != "own":  # the reference solver (no labels: Objective refuses them), same schedule
            f, g = geomloss_potentials(a, x, validation.masses, y, solver, eps_list[0] ** (1 / solver.p))
        else:
            c_xy = ground_cost(x, y, solver.p, x_labels, y_labels, scale)
            c_xx = ground_cost(x, x, solver.p, x_labels, x_labels, scale) if solver.debias else None
            c_yy = None
            if solver.debias and validation.potential is None:
                c_yy = ground_cost(y, y, solver.p, y_labels, y_labels, scale)
            f, g = debiased_potentials(a, validation.masses, c_xy, c_xx, c_yy, eps_list, validation.potential)
        ot = (a * f).sum() + (validation.masses * g).sum()
        parts = Parts(weights, masses, a, losses, loss, f, ot, labels, x, objective)  # the update in float32 too
        return parts.value() if update is None else update.loss(parts, {} if state is None else state)
