"""Detection metrics for a valuation when the noisy samples are known, and the 2-means cut that flags
rows when they are not. Pure functions on tensors.

Low value = suspected noisy. ``values``: ``[N]`` float, ``noisy``: ``[N]`` bool.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc, binary_average_precision


def two_means_split(values: Tensor) -> Tensor:
    """Flag the lower of the two groups of exact 1-D 2-means (OpenDataVal's detection rule).

    The split of the sorted values that minimises the within-group sum of squares; returns a
    ``[N]`` bool mask of the lower group. The noise rate is not used.
    """
    v = values.double().flatten()
    n = v.numel()
    if n < 2:
        return torch.zeros(n, dtype=torch.bool)
    sorted_v, order = v.sort()
    prefix = sorted_v.cumsum(0)
    prefix_sq = (sorted_v**2).cumsum(0)
    k = torch.arange(1, n, dtype=torch.float64)  # size of the lower group
    low_sse = prefix_sq[:-1] - prefix[:-1] ** 2 / k
    high_sum, high_sq = prefix[-1] - prefix[:-1], prefix_sq[-1] - prefix_sq[:-1]
    high_sse = high_sq - high_sum**2 / (n - k)
    best = int((low_sse + high_sse).argmin()) + 1
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[:best]] = True
    return mask


def flag_low(values: Tensor, measured: Tensor | None = None, below: float = float("inf")) -> Tensor:
    """The rows a 2-means split suggests acting on, ``[N]`` bool: of the ``measured`` rows (default: all),
    those valued at most the largest value of the split's lower group (ties with it included) and less
    than ``below`` (the weights' start: a row the run raised is not suspect). Nothing when fewer than two
    measured values differ: 2-means would still split them."""
    values = values.detach().double().cpu().flatten()
    measured = torch.ones_like(values, dtype=torch.bool) if measured is None else measured.bool().cpu().flatten()
    seen = values[measured]
    if seen.numel() < 2 or seen.min() == seen.max():
        return torch.zeros(values.numel(), dtype=torch.bool)
    return measured & (values <= seen[two_means_split(seen)].max()) & (values < below)


def f1(flagged: Tensor, noisy: Tensor) -> float:
    """F1 of ``flagged`` against the true ``noisy`` mask (0 when nothing is flagged or noisy)."""
    tp = int((flagged & noisy).sum())
    denominator = int(flagged.sum()) + int(noisy.sum())
    return 2 * tp / denominator if denominator else 0.0


def lowest(values: Tensor, k: int) -> Tensor:
    """A ``[N]`` bool mask of the ``k`` lowest values."""
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    mask[values.flatten().argsort()[:k]] = True
    return mask


def discovery_curve(values: Tensor, noisy: Tensor) -> tuple[Tensor, Tensor]:
    """Fraction of the noisy samples found vs fraction of samples inspected, lowest value first.

    Returns ``(inspected, found)``, both ``[N + 1]`` starting at 0.
    """
    hits = noisy.flatten()[values.flatten().argsort()].double()
    found = torch.cat([torch.zeros(1, dtype=torch.float64), hits.cumsum(0)]) / max(int(noisy.sum()), 1)
    inspected = torch.arange(values.numel() + 1, dtype=torch.float64) / max(values.numel(), 1)
    return inspected, found


def detection_report(values: Tensor, noisy: Tensor) -> dict[str, float]:
    """2-means F1, F1 when flagging as many samples as are noisy, AUROC and average precision."""
    values, noisy = values.detach().float().cpu().flatten(), noisy.detach().cpu().bool().flatten()
    if values.shape != noisy.shape:
        raise ValueError(f"values {tuple(values.shape)} and noisy mask {tuple(noisy.shape)} differ in shape")
    report = {
        "detection_f1": f1(two_means_split(values), noisy),
        "f1_at_noise_rate": f1(lowest(values, int(noisy.sum())), noisy),
    }
    if 0 < int(noisy.sum()) < noisy.numel():  # ranking metrics need both classes
        report["auroc"] = binary_auroc(-values, noisy.int()).item()
        report["average_precision"] = binary_average_precision(-values, noisy.int()).item()
    return report
