"""Where the sample weights live and how a step reaches them: two interchangeable stores.

``DenseWeights`` (the paper's way): one parameter of the module in the user's optimizer. Simple
and exact to the reference, but every step touches all ``N`` weights: the optimizer updates
all of them (Adam's momentum moves samples that were not in the batch) and DDP all-reduces all
``N`` gradients (4 MB per step at a million samples).

``SparseWeights``: a tensor held by the callback, outside the module and the DDP bucket. Each
optimizer step gathers the batch's ``(index, gradient)`` pairs from all ranks and lets the
update rule (``lightning_lossval.updates``) move those samples only, so traffic and compute
depend on the batch size, not on ``N``, and a sample moves only on steps that saw it. Every rank
applies the same update, so the ranks stay identical. The weights and the rule's named state are
saved in the callback's checkpoint state.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_lossval.errors import ResumeError
from lightning_lossval.mixin import WEIGHTS
from lightning_lossval.updates import UpdateRule

GROUP_NAME = "lossval_weights"


class DenseWeights:
    """The weights as the module parameter ``lossval_weights``, in the user's optimizer."""

    sparse = False

    def __init__(self, pl_module: LightningModule, n: int, lr: float) -> None:
        weights = pl_module._parameters.get(WEIGHTS)
        if weights is None:  # before any strategy wraps the module, so DDP broadcasts it
            weights = nn.Parameter(torch.ones(n, device=pl_module.device))
            pl_module.register_parameter(WEIGHTS, weights)
        elif weights.numel() != n:
            raise ResumeError(
                f"{type(pl_module).__name__} already has {weights.numel()} LossVal weights but the data has {n} samples"
            )
        self.weights = weights
        self.lr = lr

    def numel(self) -> int:
        return self.weights.numel()

    def start(self, trainer: Trainer, optimizer: Optimizer) -> None:
        """Give the weights their own param group (own lr, no weight decay), out of the user's groups."""
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if p is not self.weights]
        optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
        optimizer.add_param_group({"params": [self.weights], "lr": self.lr, "weight_decay": 0.0, "name": GROUP_NAME})

    def select(self, index: Tensor) -> Tensor:
        return self.weights[index.to(self.weights.device)]

    def step(self, trainer: Trainer) -> None:
        """Nothing to do: the user's optimizer steps the parameter."""

    def values(self) -> Tensor:
        return self.weights.detach()

    def state_dict(self) -> dict[str, Any]:
        return {}  # the module's state dict and the optimizer hold everything

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class SparseWeights:
    """The weights in the callback, moved per sample by ``rule`` (``lightning_lossval.updates``).

    Under DDP each rank's objective folds its own batch into the rule's running state; every
    step then averages the entries the rule names in ``synced`` over the ranks (the moving
    averages are linear, so this equals folding in the ranks' mean), so all ranks hold the same
    state and a checkpoint resumes every rank exactly."""

    sparse = True

    def __init__(self, n: int, rule: UpdateRule) -> None:
        self.rule = rule
        self.weights = torch.ones(n)
        self.state = rule.state(n)
        self.pending: list[tuple[Tensor, Tensor]] = []  # (index, leaf) of each micro-batch since the last step

    def numel(self) -> int:
        return self.weights.numel()

    def start(self, trainer: Trainer, optimizer: Optimizer) -> None:
        device = trainer.lightning_module.device
        self.weights = self.weights.to(device)
        self.state = {name: tensor.to(device) for name, tensor in self.state.items()}
        self.pending.clear()

    def select(self, index: Tensor) -> Tensor:
        index = index.to(self.weights.device)
        leaf = self.weights[index].requires_grad_(True)
        self.pending.append((index, leaf))
        return leaf

    def step(self, trainer: Trainer) -> None:
        """Gather this step's ``(index, gradient)`` pairs from every rank and update those samples."""
        if not self.pending:
            return
        index = torch.cat([i for i, _ in self.pending])
        grad = torch.cat([torch.zeros_like(w) if w.grad is None else w.grad for _, w in self.pending])
        self.pending.clear()
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:  # fp16 AMP: the loss was scaled, these gradients were not unscaled
            grad = grad / scaler.get_scale()
        if trainer.world_size > 1:
            index, grad = _gather(trainer, index, grad)
            grad = grad / trainer.world_size  # what DDP's averaging all-reduce does to a dense parameter
            for name in self.rule.synced:
                self.state[name] = trainer.strategy.all_gather(self.state[name]).mean(0)
        if not torch.isfinite(grad).all():
            return  # an overflowing fp16 step (the GradScaler skips it for the network too) or a NaN loss
        index, grad = coalesce(index, grad)
        self.rule.step(self.weights, index, grad, self.state)

    def values(self) -> Tensor:
        return self.weights

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.cpu(), **{name: tensor.cpu() for name, tensor in self.state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["weights"].numel() != self.numel():
            raise ResumeError(
                f"the checkpoint holds LossVal weights for {state['weights'].numel()} training samples but this run "
                f"has {self.numel()}; resume with the training data the checkpoint was made with"
            )
        self.weights = state["weights"].clone()
        self.state = {name: state[name].clone() for name in self.state}


def coalesce(index: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Sum ``values`` ``[K]`` that share an ``index`` ``[K]``: returns ``(unique_index, summed)``."""
    unique, inverse = torch.unique(index, return_inverse=True)
    return unique, torch.zeros(len(unique), dtype=values.dtype, device=values.device).index_add_(0, inverse, values)


def _gather(trainer: Trainer, index: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    """All ranks' ``index`` and ``grad`` (lengths may differ by rank), concatenated."""
    strategy = trainer.strategy
    sizes = strategy.all_gather(torch.tensor([len(index)], device=index.device)).flatten()
    longest = int(sizes.max())
    padded = torch.zeros(2, longest, dtype=torch.float64, device=index.device)
    padded[0, : len(index)], padded[1, : len(grad)] = index.double(), grad.double()  # one collective for both
    gathered = strategy.all_gather(padded)  # [world, 2, longest]
    keep = torch.arange(longest, device=index.device) < sizes.unsqueeze(1)
    return gathered[:, 0][keep].long(), gathered[:, 1][keep].to(grad.dtype)
