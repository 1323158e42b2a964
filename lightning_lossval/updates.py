"""How the sample weights learn: update rules as small frozen dataclasses, each owning its options and state.

A rule does two things. :meth:`UpdateRule.loss` decides what a batch's LossVal loss returns, so
what the network trains on and, through autograd, which gradient reaches the weights;
:meth:`UpdateRule.step` moves the batch's weights in the sparse store. :meth:`UpdateRule.state`
names the tensors the rule keeps (per sample, ``[n]``, or running scalars), which checkpoints
save; ``synced`` names the running ones every step averages over the DDP ranks. ``RULES`` maps
the names used in configs to the classes. Adding a rule is one class here and its tests.

The kernels are plain functions on tensors: :func:`sparse_adam_step`, :func:`normalized_step`,
:func:`balanced_direction`, :func:`neighbour_contrast`, :func:`far_side`, :func:`running_step`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from lightning_lossval.errors import ConfigError
from lightning_lossval.objective import Objective, Parts, balanced_by_class, weighted_loss, zero_one
from lightning_lossval.sinkhorn import cost_matrix

RUNNING_BETA = 0.99
"""Memory of the running means (about 100 steps), bias-corrected like Adam's."""


class UpdateRule:
    """The interface of an update rule; subclasses are frozen dataclasses with an ``lr`` field."""

    name: ClassVar[str]
    sparse_only: ClassVar[bool] = True  # moves only the batch's samples: needs the sparse store
    synced: ClassVar[tuple[str, ...]] = ()  # running state averaged over DDP ranks at every step
    relative: ClassVar[bool] = False  # values a row against the rest of its batch: a row alone is not valued
    lr: float

    def check(self, objective: Objective) -> None:
        """Refuse an objective this rule cannot work with (raise :class:`ConfigError`)."""

    def state(self, n: int) -> dict[str, Tensor]:
        """The rule's state for ``n`` samples, by name (zeros at the start)."""
        return {}

    def loss(self, parts: Parts, state: dict[str, Tensor]) -> Tensor:
        """What the batch's LossVal loss returns; by default ``L_w * S ** exponent`` itself."""
        return parts.value()

    def step(self, weights: Tensor, index: Tensor, grad: Tensor, state: dict[str, Tensor]) -> None:
        """Move ``weights[index]`` (distinct indices) by their gradients ``grad``, in place."""
        raise NotImplementedError


def _check_step(rule: UpdateRule) -> None:
    if not (isinstance(rule.lr, (int, float)) and 0 < rule.lr < math.inf):
        raise ConfigError(
            f"the weights' learning rate (lr, --lossval.lr on the command line) must be a positive number, got "
            f"{rule.lr!r}"
        )
    clip = getattr(rule, "clip", 1.0)
    if isinstance(clip, bool) or not (isinstance(clip, (int, float)) and 0 < clip < math.inf):
        raise ConfigError(f"clip (a weight's largest step, in units of lr) must be a positive number, got {clip!r}")


@dataclass(frozen=True)
class Adam(UpdateRule):
    """The paper's update: Adam on the objective's gradient, in the user's optimizer (dense store) or
    per sample on the batch's rows only (sparse store, :func:`sparse_adam_step`; a sample's bias
    correction counts the steps that saw it)."""

    name: ClassVar[str] = "adam"
    sparse_only: ClassVar[bool] = False
    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        _check_step(self)

    def state(self, n: int) -> dict[str, Tensor]:
        return {"exp_avg": torch.zeros(n), "exp_avg_sq": torch.zeros(n), "steps": torch.zeros(n, dtype=torch.int32)}

    def step(self, weights: Tensor, index: Tensor, grad: Tensor, state: dict[str, Tensor]) -> None:
        sparse_adam_step(
            weights,
            state["exp_avg"],
            state["exp_avg_sq"],
            state["steps"],
            index,
            grad,
            lr=self.lr,
            betas=self.betas,
            eps=self.eps,
        )


@dataclass(frozen=True)
class Normalized(UpdateRule):
    """Each step moves the batch's samples by ``lr * grad / rms(grad)`` over the batch, clipped
    (:func:`normalized_step`): unlike Adam it keeps the ratios between the batch's gradients."""

    name: ClassVar[str] = "normalized"
    lr: float = 0.01
    clip: float = 2.0

    def __post_init__(self) -> None:
        _check_step(self)

    def step(self, weights: Tensor, index: Tensor, grad: Tensor, state: dict[str, Tensor]) -> None:
        normalized_step(weights, index, grad, lr=self.lr, clip=self.clip)


@dataclass(frozen=True)
class Balanced(UpdateRule):
    """This project's update. The network trains on ``L_w`` alone: the masses' weighted mean of its
    losses, the masses held constant and, with class targets, rescaled within each class
    (:func:`~lightning_lossval.objective.balanced_by_class`). The weights follow
    :func:`balanced_direction` (the two parts of the gradient of ``L_w * S ** k``, each in its own
    units, the transport part weighted by ``ot_share``), moved by :func:`running_step`.

    Args:
        lr: step size; a step moves a sample by at most ``clip * lr``.
        ot_share: the weight of the transport part against the loss part. ``"auto"``: the
            running mean of the ratio of the two parts in the objective's own gradient, at most
            ``ot_share_max``; a number fixes it.
        ot_share_max: the cap of ``ot_share="auto"``.
        clip: the soft clip of a step, in units of the running RMS of the gradients.
        transport_side: ``"far"``: only the rows farther than the batch's average from the
            validation data take transport evidence (:func:`far_side`), so the transport part
            pushes outliers down without lifting the rows in dense regions, mislabeled rows
            among them; ``"both"`` (before 2026-12-01): every row's deviation counts, both ways.
        contrast: a row's transport evidence is its potential minus the kernel-weighted mean of
            its batch neighbours' (:func:`neighbour_contrast`, kernel width ``contrast`` times the
            batch's mean squared distance), so a row far from the validation data counts only as
            far as it stands out from the training rows near it: a clean row in a sparse region
            is as far as its neighbours, a row with corrupted features is farther. The batch's
            transport vote is scaled by the part of its potentials' spread the contrast keeps
            (at most 1), so a batch whose rows are all as far as their neighbours casts a small
            one, as the loss part does for a batch whose losses barely differ. ``0``: off (the
            default before this option existed).
        target_reference: numeric targets only (regression): how much of the part of a row's loss
            deviation that the extremeness of its target explains is taken off its loss evidence
            (:func:`target_reference`). A legitimately large target (a price, a skewed amount)
            has a large squared error in most rows like it, so without this its row reads as
            harmful. ``0``: off (the default before this option existed).
    """

    name: ClassVar[str] = "balanced"
    relative: ClassVar[bool] = True
    synced: ClassVar[tuple[str, ...]] = ("loss_scale", "ratio", "target_mean", "target_var", "target_fit")
    lr: float = 0.05
    ot_share: float | Literal["auto"] = "auto"
    ot_share_max: float = 0.5
    clip: float = 2.0
    transport_side: Literal["far", "both"] = "far"
    contrast: float = 0.1
    target_reference: float = 0.35

    def __post_init__(self) -> None:
        _check_step(self)
        if isinstance(self.contrast, bool) or not (isinstance(self.contrast, (int, float)) and self.contrast >= 0):
            raise ConfigError(f"contrast must be a number >= 0 (0: off), got {self.contrast!r}")
        reference = self.target_reference
        if isinstance(reference, bool) or not (isinstance(reference, (int, float)) and 0 <= reference <= 1):
            raise ConfigError(f"target_reference must be a number from 0 (off) to 1, got {reference!r}")
        if self.transport_side not in ("far", "both"):
            raise ConfigError(f"transport_side must be 'far' or 'both', got {self.transport_side!r}")
        share = self.ot_share
        number = isinstance(share, (int, float)) and not isinstance(share, bool)
        if share != "auto" and not (number and share >= 0):
            raise ConfigError(f"ot_share must be 'auto' or a number >= 0, got {share!r}")
        if not self.ot_share_max > 0:
            raise ConfigError(f"ot_share_max must be > 0, got {self.ot_share_max}")

    def check(self, objective: Objective) -> None:
        if not (objective.normalize_masses and objective.reduction == "normalized"):
            raise ConfigError(
                "update='balanced' balances the loss and transport parts of a weighted mean over probability "
                "masses: set normalize_masses=True and reduction='normalized' with it"
            )

    def state(self, n: int) -> dict[str, Tensor]:
        # (count, total...) of running means: the loss deviations' RMS, the objective's ratio of transport
        # to loss part, the step's mean square, and the numeric targets' mean, variance and the four
        # moments target_reference fits
        return {
            "loss_scale": torch.zeros(2),
            "ratio": torch.zeros(2),
            "step_scale": torch.zeros(2),
            "target_mean": torch.zeros(2),
            "target_var": torch.zeros(2),
            "target_fit": torch.zeros(5),
        }

    def loss(self, parts: Parts, state: dict[str, Tensor]) -> Tensor:
        if "loss_scale" not in state:
            raise ConfigError("the balanced update keeps running scales: pass state=Balanced().state(n)")
        k, ot, a, f = parts.objective.exponent, parts.ot.detach(), parts.transport_masses.detach(), parts.potentials
        tiny = torch.finfo(f.dtype).tiny
        with torch.no_grad():
            mean_loss = parts.loss.detach().float()  # float32 like the running state, also under 64-true
            loss_dev, potential_dev = parts.losses.detach().float() - mean_loss, f - (a * f).sum()
            # d(L_w * S**k)/dm_i is proportional to S**k * loss_dev_i + k * L_w * S**(k-1) * potential_dev_i
            ratio = k * mean_loss * _rms(potential_dev) / (ot * _rms(loss_dev))
            if self.target_reference > 0 and parts.labels is not None:
                loss_dev = target_reference(loss_dev, parts.labels, a, state, self.target_reference)
            kept = 1.0
            if self.contrast > 0:
                contrasted = neighbour_contrast(potential_dev, parts.features, self.contrast)
                # the share of the batch's spread its rows' neighbours leave unexplained: a batch whose rows
                # are all as far as their neighbours casts a small transport vote
                kept = (_rms(contrasted - (a * contrasted).sum()) / _rms(potential_dev).clamp_min(tiny)).clamp_max(1)
                potential_dev = contrasted
            if self.transport_side == "far":
                potential_dev = far_side(potential_dev, a)
            direction = balanced_direction(
                loss_dev, potential_dev, ratio, state, self.ot_share, self.ot_share_max, weight=kept
            )
        surrogate = (parts.weights.float() * direction).sum()  # its gradient in the weights: the direction
        # The network's loss is the masses' weighted mean of its per-sample losses and nothing else: the
        # transport term informs the weights only, so it neither rescales the network's step nor the
        # user's extra loss terms (with SGD, S**k would multiply the learning rate by a factor that
        # changes every batch and grows with the features' scale).
        held = balanced_by_class(parts.masses.detach(), parts.labels)
        return weighted_loss(held, parts.losses, parts.objective.reduction) + (surrogate - surrogate.detach())

    def step(self, weights: Tensor, index: Tensor, grad: Tensor, state: dict[str, Tensor]) -> None:
        running_step(weights, index, grad, state["step_scale"], lr=self.lr, clip=self.clip)


@torch.no_grad()
def target_reference(
    loss_dev: Tensor, targets: Tensor, masses: Tensor, state: dict[str, Tensor], amount: float = 0.35
) -> Tensor:
    """``loss_dev`` ``[B]`` with ``amount`` of what the extremeness of the rows' numeric ``targets``
    explains taken off, recentred under ``masses`` ``[B]``; as they are for class targets (integer,
    or floats that are all 0 or 1: :func:`~lightning_lossval.objective.balanced_by_class`).

    A row's extremeness is ``q = (y - m)**2 / v``, ``y`` the mean of its target columns, ``m`` and
    ``v`` the running mean and variance of ``y`` (``state["target_mean"]``, ``["target_var"]``). Over
    the run, the loss deviations are fitted as ``beta * (q - mean q)`` (least squares, ``beta >= 0``)
    on the running means of ``q``, ``loss_dev``, ``q * loss_dev`` and ``q**2``
    (``state["target_fit"]``; all updated here): the larger residuals that every row with an extreme
    target has. A
    row with a wrong target still stands out from the rows whose targets are as far out as its
    own. No host sync.
    """
    b = loss_dev.shape[0]
    if not targets.is_floating_point() or targets.numel() % b:
        return loss_dev
    y = targets.reshape(b, -1).float().mean(1).to(loss_dev.dtype)
    numeric = ~zero_one(y) if targets.numel() == b else torch.ones((), dtype=torch.bool, device=y.device)
    tiny = torch.finfo(loss_dev.dtype).tiny
    m = running_mean(state["target_mean"], (masses * y).sum(), numeric)
    v = running_mean(state["target_var"], (masses * (y - m) ** 2).sum(), numeric)
    q = (y - m) ** 2 / v.clamp_min(tiny)
    fit = [(masses * q).sum(), (masses * loss_dev).sum(), (masses * q * loss_dev).sum(), (masses * q * q).sum()]
    eq, ed, eqd, eqq = running_mean(state["target_fit"], torch.stack(fit), numeric)
    spread = eqq - eq * eq  # the variance of q: next to none where the q are all alike (a first batch of 2 rows)
    beta = torch.where(spread > 1e-6 * eqq, (eqd - eq * ed) / spread.clamp_min(tiny), 0.0).clamp_min(0)
    adjusted = loss_dev - amount * beta * (q - eq)
    return torch.where(numeric, adjusted - (masses * adjusted).sum(), loss_dev)


RULES: dict[str, type[UpdateRule]] = {rule.name: rule for rule in (Adam, Normalized, Balanced)}


def _rms(t: Tensor) -> Tensor:
    return t.pow(2).mean().sqrt()


def neighbour_contrast(deviation: Tensor, features: Tensor, width: float = 0.1) -> Tensor:
    """``deviation`` ``[B]`` minus its kernel-weighted mean over each row's batch neighbours: row ``i``
    subtracts ``sum_j k_ij d_j / sum_j k_ij`` over ``j != i``, ``k_ij = exp(-|x_i - x_j|**2 / h)`` on
    ``features`` ``[B, D]``, ``h`` being ``width`` times the batch's mean squared distance (so the
    kernel does not depend on the features' scale). A batch of one row is returned as it is."""
    b = features.shape[0]
    if b < 2:
        return deviation
    x = features.to(deviation.dtype)
    half_squared = cost_matrix(x, x, 2).clamp_min(0)  # [B, B], |x_i - x_j|**2 / 2
    h = (width * half_squared.sum() / (b * (b - 1))).clamp_min(torch.finfo(deviation.dtype).tiny)
    logits = (-half_squared / h).fill_diagonal_(-torch.inf)  # the same kernel: h scales with the cost
    return deviation - torch.softmax(logits, dim=1) @ deviation


def far_side(deviation: Tensor, masses: Tensor) -> Tensor:
    """The transport evidence of the rows farther than average from the validation data only:
    ``relu(d / rms(d))`` of the potentials' deviations ``d`` ``[B]``, centred on its mean under
    ``masses`` ``[B]``. Rows closer than average all get the same small lift, so a row in a dense
    region (a typical row with a wrong label, say) is not lifted above its batch by the transport
    part while its loss says it does not fit."""
    z = (deviation / _rms(deviation).clamp_min(torch.finfo(deviation.dtype).tiny)).clamp_min(0)
    return z - (masses * z).sum()


def running_mean(pair: Tensor, value: Tensor, valid: Tensor | bool = True) -> Tensor:
    """Fold ``value`` (a scalar, or ``[k]``) into the bias-corrected moving average(s) kept in ``pair``
    ``[1 + k]`` (count, totals), in place, unless ``valid`` is false or ``value`` is not finite (an fp16
    loss that overflowed must not freeze the average for the rest of the fit), and return the average(s),
    shaped like ``value``. No host sync."""
    valid = torch.as_tensor(valid, device=pair.device) & torch.isfinite(value).all()
    totals = pair[1:]
    pair[0] = pair[0] + valid.float()
    pair[1:] = torch.where(valid, RUNNING_BETA * totals + (1 - RUNNING_BETA) * value, totals)
    return (pair[1:] / (1 - RUNNING_BETA ** pair[0]).clamp_min(torch.finfo(pair.dtype).tiny)).reshape(value.shape)


@torch.no_grad()
def balanced_direction(
    loss_dev: Tensor,
    potential_dev: Tensor,
    ratio: Tensor,
    state: dict[str, Tensor],
    share: float | str = "auto",
    share_max: float = 0.5,
    weight: Tensor | float = 1.0,
) -> Tensor:
    """Per-sample direction ``[B]`` of the balanced update (positive: the weight goes down).

    ``loss_dev / A + weight * s * potential_dev / rms(potential_dev)``: ``loss_dev`` ``[B]`` are the
    losses minus the batch's weighted mean, ``A`` the running mean of their batch RMS (so a batch
    whose losses barely differ casts a small vote, and one with an outlier a large one);
    ``potential_dev`` ``[B]`` the transport potentials minus their weighted mean, in units of the
    batch's spread. ``s`` is ``share``, or with ``"auto"`` the running mean of ``ratio`` (the
    objective's own ratio of transport to loss part, which is high when the losses have no
    outliers, i.e. feature rather than label noise) capped at ``share_max``; ``weight`` scales this
    batch's transport vote (the balanced rule's neighbour contrast). Updates ``state["loss_scale"]``
    and ``state["ratio"]``.
    """
    tiny = torch.finfo(loss_dev.dtype).tiny
    loss_rms = _rms(loss_dev)
    scale = running_mean(state["loss_scale"], loss_rms, loss_rms > 0)
    if share == "auto":
        usable = torch.isfinite(ratio) & (ratio > 0)
        share = running_mean(state["ratio"], torch.where(usable, ratio, 0.0), usable).clamp_max(share_max)
    return loss_dev / scale.clamp_min(tiny) + weight * share * potential_dev / _rms(potential_dev).clamp_min(tiny)


@torch.no_grad()
def running_step(weights: Tensor, index: Tensor, grad: Tensor, scale: Tensor, *, lr: float, clip: float = 2.0) -> None:
    """``w[index] -= lr * clip * tanh(grad / (R * clip))``, in place, for distinct ``index``; ``R`` is
    the running RMS of the steps' gradients, kept in ``scale`` ``[2]`` (updated here).

    Like :func:`normalized_step`, but a batch whose samples all look alike moves them little,
    instead of as far as a batch with a clear outlier. The clip is soft: a gradient of ``R`` moves
    a sample by about ``lr``, and no step exceeds ``lr * clip``, but a stronger gradient still
    moves a sample further, so samples that stand out by different amounts stay apart.
    """
    rms = running_mean(scale, grad.pow(2).mean()).sqrt().clamp_min(torch.finfo(grad.dtype).tiny)
    weights[index] -= lr * clip * torch.tanh(grad / (rms * clip))


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
