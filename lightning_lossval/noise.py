"""Seeded noise injection with a known mask, so that a valuation run can score itself."""

from __future__ import annotations

import torch
from torch import Tensor


def choose_rows(n: int, rate: float, seed: int) -> Tensor:
    """A ``[n]`` bool mask with ``round(rate * n)`` rows set, drawn with ``seed``."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be within [0, 1], got {rate}")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: round(rate * n)]] = True
    return mask


def flip_labels(labels: Tensor, rate: float, num_classes: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Move a ``rate`` fraction of integer ``labels`` ``[N]`` to a different class, uniformly.

    Returns ``(noisy_labels, mask)``; every masked label differs from the original.
    """
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got {num_classes}")
    mask = choose_rows(len(labels), rate, seed)
    shift = torch.randint(1, num_classes, (len(labels),), generator=torch.Generator().manual_seed(seed + 1))
    return torch.where(mask, (labels + shift) % num_classes, labels), mask


def add_feature_noise(features: Tensor, rate: float, scale: float = 1.0, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Add ``N(0, scale^2)`` to every feature of a ``rate`` fraction of rows of ``features`` ``[N, D]``.

    Returns ``(noisy_features, mask)``.
    """
    mask = choose_rows(len(features), rate, seed)
    noise = torch.randn(features.shape, generator=torch.Generator().manual_seed(seed + 2)) * scale
    return features + noise.to(features.dtype) * mask.reshape(-1, *([1] * (features.dim() - 1))), mask
