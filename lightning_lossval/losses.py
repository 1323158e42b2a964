"""Per-sample losses for classification and regression, ``[B]`` each: the inputs of ``lossval_loss``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
