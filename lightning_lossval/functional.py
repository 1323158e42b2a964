"""Pure tensor math of LossVal: per-sample losses, the Sinkhorn term and the objective.

Nothing here imports Lightning. Shapes: ``B`` training samples in a batch, ``V`` validation
samples, ``D`` feature dimensions, ``K`` classes.

The objective of one batch is ``L_w * OT_w ** ot_exponent`` where ``L_w`` combines the per-sample
losses with the batch's weights and ``OT_w`` is the debiased Sinkhorn divergence between the
batch features carrying mass ``w`` and the validation features carrying mass 1 each.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from geomloss import SamplesLoss
from torch import Tensor


@dataclass(frozen=True)
class ObjectiveConfig:
    """How the LossVal objective of a batch is computed. The defaults are the paper preset.

    Args:
        reduction: ``"sum"`` (paper) or ``"mean"`` of ``w_n * l_n`` over the batch.
        normalize_masses: paper ``False``: the batch carries mass ``sum(w)`` and the validation
            set mass ``V``. ``True`` turns both into probability distributions.
        ot_exponent: power of the Sinkhorn term (paper: 2).
        blur: entropic blur, a length in feature units (``eps = blur ** p``).
        scaling: ratio between successive blur scales of the annealing (closer to 1: slower,
            more accurate).
        p: exponent of the ground cost ``|x - y| ** p / p``.
        debias: use the debiased Sinkhorn divergence (paper: ``True``).
        diameter: largest distance the annealing starts from. ``None`` (paper) recomputes
            ``1.1 * max |x_batch - x_val|`` every step, which costs one host sync per step; a
            float fixes it and removes that sync. With balanced masses (``normalize_masses``)
            the value barely depends on it; with the paper's unequal masses the balanced
            Sinkhorn value depends on where the annealing starts, so a fixed diameter changes
            the objective itself (by a factor ~2 at 1.5x the true diameter).
        backend: geomloss backend; ``"tensorized"`` holds a ``B x V`` cost matrix in memory,
            ``"online"`` and ``"multiscale"`` need pykeops.
    """

    reduction: Literal["sum", "mean"] = "sum"
    normalize_masses: bool = False
    ot_exponent: float = 2.0
    blur: float = 0.05
    scaling: float = 0.5
    p: int = 2
    debias: bool = True
    diameter: float | None = None
    backend: Literal["tensorized", "online", "multiscale"] = "tensorized"

    def __post_init__(self) -> None:
        if self.reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {self.reduction!r}")
        if self.blur <= 0 or not 0 < self.scaling < 1:
            raise ValueError(f"need blur > 0 and 0 < scaling < 1, got blur={self.blur}, scaling={self.scaling}")
        if self.diameter is not None and self.diameter <= 0:
            raise ValueError(f"diameter must be positive or None, got {self.diameter}")


PRESETS: dict[str, ObjectiveConfig] = {"paper": ObjectiveConfig()}


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


def weighted_loss(weights: Tensor, losses: Tensor, reduction: str = "sum") -> Tensor:
    """``L_w``: the per-sample losses ``[B]`` combined with their weights ``[B]``."""
    weighted = weights * losses
    return weighted.sum() if reduction == "sum" else weighted.mean()


def batch_diameter(x: Tensor, y: Tensor) -> float:
    """The paper's diameter: ``1.1 * max |x_i - y_j|``. Costs one host sync."""
    with torch.no_grad():
        return 1.1 * torch.cdist(x.float(), y.float()).max().item()


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
    backend: str = "tensorized",
) -> Tensor:
    """Sinkhorn divergence between ``sum_i a_i delta(x_i)`` and ``sum_j b_j delta(y_j)``.

    geomloss's ``SamplesLoss("sinkhorn")`` with its ground cost ``|x - y| ** p / p``, called so
    that it cannot disturb the caller: an explicit backend, float32 even under autocast, the
    caller's grad mode restored (geomloss switches it globally) and a diameter passed in
    (``None``: :func:`batch_diameter`, one host sync). ``x``: ``[N, D]``, ``y``: ``[M, D]``,
    masses ``a``: ``[N]`` and ``b``: ``[M]`` (default 1 each). The gradient with respect to
    ``a`` is the dual potential. Balanced OT assumes ``a.sum() == b.sum()``; geomloss does not
    check (the paper preset relies on that). Non-positive masses count as empty.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must be [N, D] and [M, D] with the same D, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    a = torch.ones(x.shape[0], device=x.device) if a is None else a
    b = torch.ones(y.shape[0], device=y.device) if b is None else b
    if diameter is None:
        diameter = batch_diameter(x, y)
    grad_mode = torch.is_grad_enabled()
    loss = SamplesLoss("sinkhorn", p=p, blur=blur, scaling=scaling, debias=debias, diameter=diameter, backend=backend)
    try:
        with torch.autocast(x.device.type, enabled=False):
            return loss(a.float(), x.float(), b.float(), y.float())
    finally:
        torch.set_grad_enabled(grad_mode)


def lossval_objective(
    weights: Tensor,
    losses: Tensor,
    features: Tensor,
    val_features: Tensor,
    config: ObjectiveConfig = PRESETS["paper"],
) -> Tensor:
    """The LossVal objective of one batch: ``L_w * OT_w ** config.ot_exponent``.

    Args:
        weights: ``[B]`` the batch's sample weights (differentiable).
        losses: ``[B]`` per-sample losses.
        features: ``[B, D]`` batch features (detach them: the OT term values the weights).
        val_features: ``[V, D]`` validation features.
    """
    losses = losses.float()
    weights = weights.float()
    loss = weighted_loss(weights, losses, config.reduction)
    a = weights
    b = torch.ones(val_features.shape[0], device=val_features.device)
    if config.normalize_masses:
        a, b = a / a.sum(), b / b.shape[0]
    ot = sinkhorn_distance(
        features,
        val_features,
        a,
        b,
        blur=config.blur,
        scaling=config.scaling,
        p=config.p,
        debias=config.debias,
        diameter=config.diameter,
        backend=config.backend,
    )
    return loss * ot**config.ot_exponent


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
