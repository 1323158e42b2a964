"""geomloss as the objective's transport engine (``Sinkhorn(backend="geomloss")``): the reference solver.

The own solver (:mod:`lightning_lossval.sinkhorn`) is the default and the fast one; this engine
hands the same problem to ``geomloss.SamplesLoss("sinkhorn")`` with the same settings, so a run can
be checked against the reference. ``backend="geomloss"`` runs geomloss's tensorized backend
(``B x V``, ``B x B`` and ``V x V`` cost matrices every step: the validation debias term is not
cached), ``"geomloss-online"`` its KeOps backend (``pykeops``; ``O(B + V)`` memory, compiled on first
use). Only the feature cost ``|x - y| ** p / p``: label-aware transport stays with the own solver.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_lossval.sinkhorn import Sinkhorn


def geomloss_potentials(
    a: Tensor, x: Tensor, b: Tensor, y: Tensor, solver: Sinkhorn, diameter: float
) -> tuple[Tensor, Tensor]:
    """The (debiased when ``solver.debias``) dual potentials ``f`` ``[N]`` and ``g`` ``[M]`` of the
    transport between ``sum_i a_i delta(x_i)`` and ``sum_j b_j delta(y_j)``, computed by geomloss.

    ``x``: ``[N, D]``, ``y``: ``[M, D]``, masses ``a`` ``[N]`` and ``b`` ``[M]``; ``diameter`` (a length in
    feature units) is where the annealing starts, as in the own solver's schedule. The potentials are
    constants; ``sum(a * f) + sum(b * g)`` is the divergence, and ``f`` its gradient in ``a``.
    """
    from geomloss import SamplesLoss  # a runtime dependency, imported only by the runs that choose it

    engine = SamplesLoss(
        "sinkhorn",
        p=solver.p,
        blur=solver.blur,
        scaling=solver.scaling,
        debias=solver.debias,
        diameter=diameter,
        potentials=True,
        backend="online" if solver.backend == "geomloss-online" else "tensorized",
    )
    with torch.no_grad():
        f, g = engine(a.detach().float(), x.detach().float().contiguous(), b.detach().float(), y.float().contiguous())
    return f.reshape(-1), g.reshape(-1)  # the tensorized backend returns [1, N] and [1, M]
