"""The tiny fixed batch that the objective's and the solver's tests share."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import B, D, K, V


@pytest.fixture
def batch():
    """A fixed tiny batch: features, val features, softmax probabilities, one-hot targets, weights."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, D, generator=g)
    x_val = torch.randn(V, D, generator=g) + 0.5
    probs = torch.softmax(torch.randn(B, K, generator=g), dim=1)
    targets = F.one_hot(torch.randint(0, K, (B,), generator=g), K).float()
    weights = torch.rand(B, generator=g) * 1.5 + 0.2  # in [0.2, 1.7): not all ones, sum != V
    return x, x_val, probs, targets, weights
