"""Seeded noise injection with a known mask, so that a valuation run can score itself.

Every draw takes its generator from :func:`_generator`, which mixes ``seed`` with a constant of
the draw: the chosen rows then never coincide with a shuffling order seeded with the same small
integer (``torch.randperm(n, generator=manual_seed(0))`` is both the first epoch's order of a
loader seeded 0 and, unmixed, the rows noise with seed 0 would pick: the corrupted rows would
be exactly the first ones trained on, a leak any order-sensitive method could exploit).
"""

from __future__ import annotations

import torch
from torch import Tensor

_MIX = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: consecutive seeds land far apart
_ROWS, _SHIFT, _FEATURES, _MIXED, _CYCLE = range(5)  # one stream per kind of draw


def _generator(seed: int, draw: int) -> torch.Generator:
    """A generator for ``draw`` (one of the constants above) under ``seed``; no sampler uses its seed."""
    return torch.Generator().manual_seed(((seed + 1) * _MIX + draw * 0x632BE59BD9B4E019) % 2**63)


def choose_rows(n: int, rate: float, seed: int) -> Tensor:
    """A ``[n]`` bool mask with ``round(rate * n)`` rows set, drawn with ``seed``."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be within [0, 1], got {rate}")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=_generator(seed, _ROWS))[: round(rate * n)]] = True
    return mask


def flip_labels(labels: Tensor, rate: float, num_classes: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Move a ``rate`` fraction of integer ``labels`` ``[N]`` to a different class, uniformly.

    Returns ``(noisy_labels, mask)``; every masked label differs from the original.
    """
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got {num_classes}")
    mask = choose_rows(len(labels), rate, seed)
    shift = torch.randint(1, num_classes, (len(labels),), generator=_generator(seed, _SHIFT))
    return torch.where(mask, (labels + shift) % num_classes, labels), mask


def add_feature_noise(features: Tensor, rate: float, scale: float = 1.0, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Add ``N(0, scale^2)`` to every feature of a ``rate`` fraction of rows of ``features`` ``[N, D]``.

    Returns ``(noisy_features, mask)``.
    """
    mask = choose_rows(len(features), rate, seed)
    noise = torch.randn(features.shape, generator=_generator(seed, _FEATURES)) * scale
    return features + noise.to(features.dtype) * mask.reshape(-1, *([1] * (features.dim() - 1))), mask


NOISE_KINDS = ("none", "label", "feature", "mixed")


def swap_targets(targets: Tensor, rate: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Give each of a ``rate`` fraction of rows of ``targets`` ``[N, ...]`` the target of another chosen row.

    Label noise for regression: the chosen targets move along one random cycle, so the set of
    values is kept. Returns ``(noisy_targets, mask)``; the mask holds the rows whose target
    changed, not those that drew a value equal to their own (ties, frequent in integer or rounded
    targets) or had nothing to swap with (a lone chosen row).
    """
    mask = choose_rows(len(targets), rate, seed)
    return _swap_rows(targets, mask, seed)


def inject_noise(
    kind: str, features: Tensor, targets: Tensor, rate: float, seed: int = 0, num_classes: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Corrupt a ``rate`` fraction of rows of ``features`` ``[N, D]`` / ``targets`` ``[N, ...]``.

    ``kind``: ``"none"``, ``"label"`` (:func:`flip_labels` with ``num_classes``, or :func:`swap_targets`
    when ``num_classes`` is None, i.e. regression), ``"feature"`` (:func:`add_feature_noise`, scale 1)
    or ``"mixed"`` (half of the chosen rows, rounded up, get label noise, the others feature noise).
    Returns ``(features, targets, mask)`` with ``mask`` a ``[N]`` bool tensor of the rows that
    were changed (a regression swap can leave a chosen row's target as it was: :func:`swap_targets`).
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {', '.join(NOISE_KINDS)}, got {kind!r}")
    n = len(features)
    if kind == "none":
        return features, targets, torch.zeros(n, dtype=torch.bool)
    if kind == "feature":
        noisy, mask = add_feature_noise(features, rate, seed=seed)
        return noisy, targets, mask
    if kind == "label":
        if num_classes is None:
            noisy, mask = swap_targets(targets, rate, seed)
        else:
            noisy, mask = flip_labels(targets, rate, num_classes, seed)
        return features, noisy, mask
    mask = choose_rows(n, rate, seed)
    rows = mask.nonzero().flatten()
    rows = rows[torch.randperm(len(rows), generator=_generator(seed, _MIXED))]
    label_mask = torch.zeros(n, dtype=torch.bool)
    label_mask[rows[: (len(rows) + 1) // 2]] = True
    if num_classes is None:
        targets, swapped = _swap_rows(targets, label_mask, seed)
        mask = mask & (swapped | ~label_mask)
    else:
        shift = torch.randint(1, num_classes, (n,), generator=_generator(seed, _SHIFT))
        targets = torch.where(label_mask, (targets + shift) % num_classes, targets)
    noise = torch.randn(features.shape, generator=_generator(seed, _FEATURES))
    feature_mask = (mask & ~label_mask).reshape(-1, *([1] * (features.dim() - 1)))
    return features + noise.to(features.dtype) * feature_mask, targets, mask


def _swap_rows(targets: Tensor, mask: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """The masked rows' targets moved along one seeded cycle, and the ``[N]`` mask of rows that changed."""
    rows = mask.nonzero().flatten()
    cycle = rows[torch.randperm(len(rows), generator=_generator(seed, _CYCLE))]
    out = targets.clone()
    out[cycle] = targets[cycle.roll(1)]
    return out, (out != targets).reshape(len(targets), -1).any(dim=1)
