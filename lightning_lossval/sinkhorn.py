"""The Sinkhorn divergence between weighted point clouds: geomloss's algorithm on plain tensors.

Shapes: ``N`` and ``M`` points of ``D`` features, masses ``[N]`` and ``[M]``. The backend is the
tensorized one: every call builds ``N x M`` cost matrices (and ``N x N``, ``M x M`` for the debias
terms), so memory grows with the product of the two sizes. One loop serves every problem: the
symmetric log-domain updates of geomloss's ``sinkhorn_loop`` with epsilon-scaling from the
diameter down to the blur and a last extrapolation (:func:`transport_potentials`,
:func:`self_potential`); :class:`Sinkhorn` holds the settings and derives the annealing schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Literal

import torch
from torch import Tensor

from lightning_lossval.errors import ConfigError

BACKENDS = ("own", "geomloss", "geomloss-online")  # the engines of :class:`Sinkhorn` (its ``backend``)


@dataclass(frozen=True)
class Sinkhorn:
    """The solver's settings; the defaults are this project's (the paper's: ``scaling=0.5``,
    ``diameter="batch"``).

    Args:
        blur: entropic blur, a length in feature units (``eps = blur ** p``).
        scaling: ratio between successive blur scales of the annealing (closer to 1: slower,
            more accurate; 0.3 takes 7 instead of 11 iterations at the usual scales).
        p: exponent of the ground cost ``|x - y| ** p / p`` (1 or 2).
        debias: the debiased Sinkhorn divergence (``OT(a, b) - (OT(a, a) + OT(b, b)) / 2``).
        diameter: the distance scale the annealing starts from (``eps = diameter ** p`` first).
            ``"batch"`` (paper) recomputes ``1.1 * max |x_batch - x_val|`` every step (one host
            sync per step); ``"validation"`` takes the validation set's bounding-box diagonal
            (with the label cost added) once, so training outliers beyond it start the
            annealing a little cold, which only costs accuracy of the first iterations; a float
            fixes it. A fixed diameter fixes the annealing schedule, so the validation set's
            debias term is computed once per fit instead of every step. With balanced masses the
            value barely depends on the diameter; with the paper's unequal masses the balanced
            Sinkhorn value depends on where the annealing starts, so a fixed diameter changes the
            objective itself (by a factor ~2 at 1.5x the true diameter).
        backend: which engine solves the transport in the LossVal objective. ``"own"``: this
            module's loop (fast; the fixed diameter's validation debias term computed once per fit).
            ``"geomloss"``: the reference, ``geomloss.SamplesLoss("sinkhorn", backend="tensorized")``
            with the same settings, which recomputes the validation debias term every step (``N x M``,
            ``N x N`` and ``M x M`` costs per step). ``"geomloss-online"``: geomloss's KeOps backend
            (needs ``pykeops``; ``O(N + M)`` memory). The geomloss engines take no label cost
            (``label_weight`` must be 0).
    """

    blur: float = 0.05
    scaling: float = 0.3
    p: int = 2
    debias: bool = True
    diameter: float | Literal["batch", "validation"] = "validation"
    backend: Literal["own", "geomloss", "geomloss-online"] = "own"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {self.backend!r}")
        if self.backend == "geomloss-online" and find_spec("pykeops") is None:
            raise ConfigError(
                "backend='geomloss-online' runs geomloss's KeOps backend, which needs pykeops: pip install pykeops, "
                "or use backend='geomloss' (tensorized) or 'own'"
            )
        if not self.blur > 0 or not 0 < self.scaling < 1:
            raise ConfigError(f"need blur > 0 and 0 < scaling < 1, got blur={self.blur}, scaling={self.scaling}")
        if self.p not in (1, 2):
            raise ConfigError(f"p must be 1 or 2, got {self.p!r}")
        number = isinstance(self.diameter, (int, float)) and not isinstance(self.diameter, bool)
        if self.diameter not in ("batch", "validation") and not (number and self.diameter > 0):
            raise ConfigError(
                f"diameter must be 'batch' (per step, the paper's), 'validation' or a positive number, "
                f"got {self.diameter!r}"
            )

    @property
    def fixed(self) -> bool:
        """Whether the annealing schedule is fixed once per fit (a diameter that is not ``"batch"``)."""
        return self.diameter != "batch"

    @property
    def caches_self_term(self) -> bool:
        """Whether the validation side's debias potential is computed once per fit: a fixed schedule and the
        own engine (geomloss recomputes it every step)."""
        return self.fixed and self.debias and self.backend == "own"

    def schedule(self, diameter: float) -> list[float]:
        """The annealing temperatures from ``diameter`` (at least the blur) down to the blur."""
        return epsilon_schedule(self.p, max(diameter, self.blur), self.blur, self.scaling)


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


@torch.no_grad()
def quantize(
    y: Tensor, w: Tensor, k: int, *, iterations: int = 8, seed: int = 0, chunk_bytes: int = 4 << 20
) -> tuple[Tensor, Tensor]:
    """A weighted k-means summary of the measure ``sum_j w_j delta(y_j)``: at most ``k`` points.

    Returns centroids ``[K, D]`` and their masses ``[K]``, the total mass of the rows each one
    holds, so the summary's total mass is the measure's. With ``k`` at least the number of rows
    ``V`` the measure itself comes back. Otherwise ``iterations`` Lloyd steps on ``16 * k`` rows drawn
    with ``seed`` (deterministic), starting from ``k`` of them, then one assignment of every row
    for the masses and centroids: ``O((iterations * 16 * k + V) * k * D)`` time, ``O(V * D)``
    memory, rows assigned in chunks so that no distance block over ``chunk_bytes`` exists. Empty
    clusters are dropped.
    """
    y, w = y.detach().float(), w.detach().float()
    v = y.shape[0]
    if k >= v:
        return y, w
    order = torch.randperm(v, generator=torch.Generator().manual_seed(seed)).to(y.device)
    sample = order[: 16 * k]
    centroids = y[order[:k]]
    for _ in range(iterations):
        mass, means = _lloyd(y[sample], w[sample], centroids, chunk_bytes)
        centroids = torch.where(mass.unsqueeze(1) > 0, means, centroids)
    mass, means = _lloyd(y, w, centroids, chunk_bytes)
    keep = mass > 0
    return means[keep], mass[keep]


def _lloyd(y: Tensor, w: Tensor, centroids: Tensor, chunk_bytes: int) -> tuple[Tensor, Tensor]:
    """One Lloyd step: the masses ``[K]`` and means ``[K, D]`` of the rows nearest each centroid."""
    k = centroids.shape[0]
    half_norms = (centroids * centroids).sum(1) / 2
    rows = max(1, chunk_bytes // (4 * k))
    scores = y.new_empty(min(rows, y.shape[0]), k)  # one block, reused: no allocator churn over V / rows blocks
    assigned = torch.cat(
        [torch.mm(part, centroids.T, out=scores[: len(part)]).sub_(half_norms).argmax(1) for part in y.split(rows)]
    )
    mass = torch.zeros(k, device=y.device).index_add_(0, assigned, w)
    sums = torch.zeros_like(centroids).index_add_(0, assigned, y * w.unsqueeze(1))
    return mass, sums / mass.clamp_min(torch.finfo(mass.dtype).tiny).unsqueeze(1)


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


def debiased_potentials(
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
    f, g = debiased_potentials(a, b, c_xy, c_xx, c_yy, eps_list, y_potential)
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
