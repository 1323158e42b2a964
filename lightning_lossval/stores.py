"""Where the sample weights live and how a step reaches them: two interchangeable stores.

``DenseWeights`` (the paper's way): one parameter in the user's optimizer, registered on the
module only while it fits (``lightning_lossval.patching``). Simple and exact to the reference,
but every step touches all ``N`` weights: the optimizer updates all of them (Adam's momentum
moves samples that were not in the batch) and DDP all-reduces all ``N`` gradients (4 MB per step
at a million samples).

``SparseWeights``: a tensor held by the callback, outside the module and the DDP bucket. Each
optimizer step gathers the batch's ``(index, gradient)`` pairs from all ranks and lets the
update rule (``lightning_lossval.updates``) move those samples only, so traffic and compute
depend on the batch size, not on ``N``, and a sample moves only on steps that saw it. Every rank
applies the same update, so the ranks stay identical.

Both count each row's visits (how often it was in a training batch, over all ranks) at every
optimizer step and note whether a step ever carried a LossVal gradient of its own training step
(:func:`check_applied`). :func:`save_state` / :func:`load_state` are the callback's checkpoint
state: weights, visits and the update rule's state, under the objective that learned them.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Trainer, callbacks
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_lossval.errors import ConfigError, DataError, ResumeError
from lightning_lossval.mixin import WEIGHTS
from lightning_lossval.presets import Preset, check_resume, describe
from lightning_lossval.ranks import gather
from lightning_lossval.updates import UpdateRule

GROUP_NAME = WEIGHTS  # the dense weights' param group, named like their parameter
SPARSE_AUTO_THRESHOLD = 100_000  # sparse=None: the sparse store from this many training samples on


class _Store:
    """What both stores share: visit counts and the micro-batches since the last optimizer step."""

    sparse: bool
    weights: Tensor

    def __init__(self, n: int) -> None:
        self.visits = torch.zeros(n, dtype=torch.long)
        # (index, leaf, counts) of each LossVal loss since the step; counts: its batch's first in its training step
        self.pending: list[tuple[Tensor, Tensor | None, bool]] = []
        self.fresh, self.again = 0, False  # pending[fresh:] came from the running training step; again: its batch
        self.selected = 0  # batches whose LossVal loss was computed in this fit
        self.applied = False  # an optimizer step carried the LossVal gradient of its own training step
        self.stepped = -1  # the number of the last batch an optimizer step took in
        self.columns: dict[str, list] = {}  # values.csv's other columns (row, id, target, ...) for these values

    def numel(self) -> int:
        return self.visits.numel()

    def call_state(self, first: bool) -> dict[str, Tensor] | None:
        """The update rule's state for a LossVal loss of the running training step (none: a rule in the
        user's optimizer keeps it there)."""
        return None

    def begin_batch(self, again: bool = False) -> None:
        """A training step starts; ``again``: on the batch of the one before (a closure LBFGS evaluates again)."""
        self.fresh, self.again = len(self.pending), again

    def skip_batch(self) -> None:
        """Forget the running training step's LossVal losses: it returned None, so Lightning skips its
        backward and step (automatic optimization), and its rows were not trained on."""
        self.selected -= len(self.pending) - self.fresh
        del self.pending[self.fresh :]

    def _select(self, index: Tensor, leaf: Tensor | None, alone: bool = False) -> None:
        # not a visit: a second LossVal loss of the batch in one training step, or a row alone (nothing to compare)
        counts = not alone and not any(torch.equal(i, index) for i, _, _ in self.pending[self.fresh :])
        self.pending.append((index, leaf, counts))
        self.selected += 1

    def _again(self, trainer: Trainer) -> bool:
        """Whether the optimizer steps again on the batch its last step took in, and if so drop what is
        pending: an optimizer that evaluates its closure several times per step (LBFGS) moves the weights
        and counts the visits once per batch, with the first evaluation's gradient."""
        number = trainer.fit_loop.epoch_loop.total_batch_idx
        if number != self.stepped:
            self.stepped = number
            return False
        self.pending.clear()
        self.fresh = 0
        return True

    def _taken(self) -> tuple[Tensor, Tensor, bool]:
        """The pending indices, which of them count as visits, and whether the running training step added
        some; empties ``pending``."""
        index = torch.cat([i for i, _, _ in self.pending])
        counts = torch.cat([torch.full_like(i, c, dtype=torch.bool) for i, _, c in self.pending])
        fresh = len(self.pending) > self.fresh
        self.pending.clear()
        self.fresh = 0
        return index, counts, fresh

    def _load_visits(self, state: dict[str, Any]) -> None:
        if state["weights"].numel() != self.numel():
            raise ResumeError(
                f"the checkpoint holds LossVal weights for {state['weights'].numel()} training samples but this run "
                f"has {self.numel()}; resume with the training data the checkpoint was made with"
            )
        if "visits" in state:  # checkpoints from before visits were counted start from zero
            self.visits = state["visits"].to(self.visits.device).clone()


class DenseWeights(_Store):
    """The weights as the module parameter ``lossval_weights``, in the user's optimizer."""

    sparse = False

    def __init__(self, n: int, lr: float, device: torch.device | str = "cpu") -> None:
        super().__init__(n)
        self.weights = nn.Parameter(torch.ones(n, device=device))  # patching registers it on the module
        self.lr = lr

    def start(self, trainer: Trainer, optimizer: Optimizer) -> None:
        """Give the weights their own param group (own lr, no weight decay), out of the user's groups; one a
        callback restored before this (``BaseFinetuning`` re-creates the saved groups in their order) stays
        where it is, so that the saved optimizer state still pairs up."""
        if not any(
            g.get("name") == GROUP_NAME and [id(p) for p in g["params"]] == [id(self.weights)]
            for g in optimizer.param_groups
        ):
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if p is not self.weights]
            optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
            group = {"params": [self.weights], "lr": self.lr, "weight_decay": 0.0, "name": GROUP_NAME}
            optimizer.add_param_group(group)
        self.visits = self.visits.to(self.weights.device)
        self.pending.clear()
        # a resumed checkpoint written without the weights (no callback, or the sparse store) has no optimizer
        # state for their group: it gets the group as it is now, so that Lightning's restore of it loads
        saved = (getattr(trainer._checkpoint_connector, "_loaded_checkpoint", None) or {}).get("optimizer_states")
        groups = saved[trainer.optimizers.index(optimizer)]["param_groups"] if saved else None
        if groups is not None and len(groups) == len(optimizer.param_groups) - 1:
            ids = [i for g in groups for i in g["params"]]
            settings = {k: v for k, v in optimizer.param_groups[-1].items() if k != "params"}
            groups.append({**settings, "params": [max(ids, default=-1) + 1]})

    def select(self, index: Tensor) -> Tensor:
        index = index.to(self.weights.device)
        self._select(index, None)
        return self.weights[index]

    def step(self, trainer: Trainer) -> None:
        """Count the visits; the user's optimizer steps the parameter."""
        if not self.pending or self._again(trainer):
            return
        index, counts, fresh = self._taken()
        grad = self.weights.grad
        own = fresh or trainer.lightning_module.automatic_optimization  # (accumulated micro-batches' under automatic)
        self.applied = self.applied or (own and grad is not None and bool(grad.any()))
        visited = index[counts]
        if trainer.world_size > 1:
            visited = gather(trainer, visited[None])[0]
        self.visits.index_add_(0, visited, torch.ones_like(visited))

    def values(self) -> Tensor:
        return self.weights.detach()

    def state_dict(self) -> dict[str, Any]:
        # here rather than in the module's state dict, so checkpoints load into a module built without LossVal
        return {"weights": self.weights.detach().cpu().clone(), "visits": self.visits.cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "weights" not in state:  # an older checkpoint: the module's state dict held the weights
            return
        self._load_visits(state)
        with torch.no_grad():
            self.weights.copy_(state["weights"])  # in place: the optimizer and DDP hold this parameter


class SparseWeights(_Store):
    """The weights in the callback, moved per sample by ``rule`` (``lightning_lossval.updates``).

    Under DDP each rank's objective folds its own batch into the rule's running state; every
    step then averages the entries the rule names in ``synced`` over the ranks (the moving
    averages are linear, so this equals folding in the ranks' mean), so all ranks hold the same
    state and a checkpoint resumes every rank exactly."""

    sparse = True

    def __init__(self, n: int, rule: UpdateRule) -> None:
        super().__init__(n)
        self.rule = rule
        self.weights = torch.ones(n)
        self.state = rule.state(n)

    def start(self, trainer: Trainer, optimizer: Optimizer) -> None:
        device = trainer.lightning_module.device
        self.weights = self.weights.to(device)
        self.visits = self.visits.to(device)
        self.state = {name: tensor.to(device) for name, tensor in self.state.items()}
        self.pending.clear()

    def call_state(self, first: bool) -> dict[str, Tensor]:
        """The state itself for the running training step's first LossVal loss; for another of the same step (a
        loss computed again to log it, say) a copy with the running scales as they were before the first, so
        that none moves twice and every LossVal loss of the step is the same."""
        if first and not self.again:
            self.before = {name: self.state[name].clone() for name in self.rule.synced}
            return self.state
        return {**self.state, **{name: tensor.clone() for name, tensor in self.before.items()}}

    def select(self, index: Tensor) -> Tensor:
        index = index.to(self.weights.device)
        leaf = self.weights[index].requires_grad_(True)
        self._select(index, leaf, alone=len(index) == 1 and self.rule.relative)
        return leaf

    def step(self, trainer: Trainer) -> None:
        """Gather this step's ``(index, gradient)`` pairs from every rank and update those samples."""
        if not self.pending or self._again(trainer):
            return
        automatic = trainer.lightning_module.automatic_optimization
        # this training step's LossVal losses, or, when it returned None, those of the micro-batches it accumulated
        own = [w.grad is not None for _, w, _ in self.pending[self.fresh :] or (self.pending if automatic else [])]
        if own and not any(own) and automatic:
            raise ConfigError(NOT_RETURNED)  # the loss Lightning's backward ran does not reach the weights
        self.applied = self.applied or any(own)
        grad = torch.cat([torch.zeros_like(w) if w.grad is None else w.grad for _, w, _ in self.pending])
        index, counts, _ = self._taken()
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:  # fp16 AMP: the loss was scaled, these gradients were not unscaled
            grad = grad / scaler.get_scale()
        if trainer.world_size > 1:
            gathered = gather(trainer, torch.stack([index.double(), grad.double(), counts.double()]))  # one collective
            index, grad, counts = gathered[0].long(), gathered[1].to(grad.dtype), gathered[2].bool()
            grad = grad / trainer.world_size  # what DDP's averaging all-reduce does to a dense parameter
            for name in self.rule.synced:
                self.state[name] = trainer.strategy.all_gather(self.state[name]).mean(0)
        self.visits.index_add_(0, index[counts], torch.ones_like(index[counts]))
        if not torch.isfinite(grad).all():
            if scaler is None:  # the batch's losses and features were finite (LossValCallback checks them)
                raise FloatingPointError(
                    f"the LossVal gradients of step {trainer.global_step} came out NaN or inf from finite losses "
                    "and features; lower the weights' lr, or use objective='default' if this is another objective"
                )
            return  # an overflowing fp16 step: the GradScaler skips it for the network too
        index, grad = coalesce(index, grad)
        self.rule.step(self.weights, index, grad, self.state)

    def values(self) -> Tensor:
        return self.weights

    def state_dict(self) -> dict[str, Any]:
        state = {"weights": self.weights, "visits": self.visits, **self.state}
        return {name: tensor.detach().cpu().clone() for name, tensor in state.items()}  # not the live tensors

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load_visits(state)
        self.weights = state["weights"].to(self.weights.device).clone()
        # a rule's state that a checkpoint from before it existed lacks starts afresh
        self.state = {
            name: state.get(name, fresh).to(self.weights.device).clone() for name, fresh in self.state.items()
        }


def check_store(rule: UpdateRule, sparse: bool | None) -> None:
    """Refuse ``sparse=False`` with a rule that moves only the batch's samples."""
    if sparse is False and rule.sparse_only:
        raise ConfigError(
            f"update={rule.name!r} moves only the batch's samples, which needs the sparse weight store: drop "
            "sparse=False (or use the paper's update='adam')"
        )


def new_store(n: int, rule: UpdateRule, sparse: bool | None, device: torch.device) -> DenseWeights | SparseWeights:
    """``n`` new weights (ones): sparse if ``rule`` needs it, if asked, or (``sparse=None``) from
    ``SPARSE_AUTO_THRESHOLD`` samples on; else dense, created on ``device``."""
    if rule.sparse_only or (sparse if sparse is not None else n >= SPARSE_AUTO_THRESHOLD):
        return SparseWeights(n, rule)
    return DenseWeights(n, rule.lr, device)


def save_state(store: DenseWeights | SparseWeights, preset: Preset) -> dict[str, Any]:
    """The callback's checkpoint state."""
    state = {"num_samples": store.numel(), "sparse": store.sparse, "objective": describe(preset)}
    return {**state, "store": store.state_dict()}


def load_state(store: DenseWeights | SparseWeights, state: dict[str, Any], preset: Preset) -> None:
    """Restore :func:`save_state` into ``store``; refuse another objective or store."""
    check_resume(state.get("objective", {}), preset)
    if state["sparse"] != store.sparse:
        kind = "sparse" if state["sparse"] else "dense"
        raise ResumeError(
            f"the checkpoint was trained with the {kind} weight store: resume with sparse={kind == 'sparse'}"
        )
    store.load_state_dict(state["store"])


NOT_RETURNED = (
    "the loss training_step returned does not depend on self.lossval_loss(...): a LossVal loss that is only logged, "
    "or computed beside the loss returned, trains neither the network nor the weights; return it, or a loss built "
    "from it (with your extra terms added)"
)


def check_applied(
    store: DenseWeights | SparseWeights, optimizer_index: int, trainer: Trainer, rule: UpdateRule
) -> None:
    """Refuse weights whose LossVal gradients no optimizer step ever applied (at an epoch end), and, under an
    objective that multiplies the network's loss, weights the steps left all at 1 (Adam's moments overflowed)."""
    epoch = trainer.current_epoch
    if store.applied and rule.name != "balanced" and bool((store.values() == 1).all()):
        raise DataError(
            f"the LossVal weights did not move in epoch {epoch} although optimizer {optimizer_index} stepped with "
            f"their gradients: the gradients overflow, and the values would mean nothing; {diverged(rule, '')}"
        )
    if store.applied or not store.selected:
        return
    if trainer.lightning_module.automatic_optimization:
        raise ConfigError(f"the LossVal weights never moved in epoch {epoch}: {NOT_RETURNED}")
    raise ConfigError(
        f"the LossVal weights never moved in epoch {epoch}: training_step computed their gradients, but optimizer "
        f"{optimizer_index} (optimizer_index={optimizer_index}) never stepped with the gradient of its own training "
        "step (it steps before the LossVal loss's backward, or its zero_grad clears that gradient first). Set "
        "LossValCallback(optimizer_index=...) to the position, in what configure_optimizers returns, of the "
        "optimizer that steps after self.manual_backward(self.lossval_loss(...))"
    )


def coalesce(index: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Sum ``values`` ``[K]`` that share an ``index`` ``[K]``: returns ``(unique_index, summed)``."""
    unique, inverse = torch.unique(index, return_inverse=True)
    return unique, torch.zeros(len(unique), dtype=values.dtype, device=values.device).index_add_(0, inverse, values)


# Lightning's weight-averaging callbacks (WeightAveraging, and EMAWeightAveraging under it, since 2.6)
_AVERAGING = ("StochasticWeightAveraging", "WeightAveraging")
AVERAGING = tuple(getattr(callbacks, n) for n in _AVERAGING if hasattr(callbacks, n))


def check_dense_setup(trainer: Trainer, pl_module: Any, store: _Store, optimizer: Optimizer) -> None:
    """Refuse what the dense weights, a parameter of the module, would break: LBFGS (one param group only),
    weight averaging (the averaged copy has one parameter less, so parameters pair up shifted), and LR
    schedulers of the optimizer they join under manual optimization (``scheduler.step()`` would change
    their learning rate, or fail on their group)."""
    if store.sparse:
        return
    if store.weights.dtype in (torch.float16, torch.bfloat16):
        raise ConfigError(
            f"precision={trainer.precision!r} makes the module's parameters {store.weights.dtype}, this objective's "
            "weights among them (3 digits of a weight); use 16-mixed or bf16-mixed, or sparse=True (float32 weights)"
        )
    if isinstance(optimizer, torch.optim.LBFGS):
        raise ConfigError(
            "LBFGS takes one param group, and this objective's weights join your optimizer as a second; use "
            "objective='default' (its weights stay out of your optimizer) with LBFGS"
        )
    averaging = [type(c).__name__ for c in trainer.callbacks if isinstance(c, AVERAGING)]
    if averaging:
        raise ConfigError(
            f"{averaging[0]} averages the module's parameters, and this objective's weights are one of them while "
            "it fits, which the averaged copy leaves out; use objective='default' (its weights stay out of the "
            "module) with weight averaging"
        )
    if pl_module.automatic_optimization:
        return
    stepped = [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer]
    if stepped:
        raise ConfigError(
            f"with manual optimization your {', '.join(stepped)} steps the optimizer that the weights of this "
            "objective join as a param group, so it would change their learning rate or fail on it; use "
            "objective='default' (its weights stay out of your optimizer), or automatic optimization"
        )


def check_finite(values: Tensor, when: str, rule: UpdateRule) -> Tensor:
    """``values`` if all are finite; else an error that names the likely cause."""
    bad = int((~torch.isfinite(values)).sum())
    if not bad:
        return values
    cause = (
        "the weights follow the per-sample losses, so NaN or inf losses reached them: check the training "
        "inputs for NaN or inf and whether the network itself diverges (its learning rate)"
    )
    raise FloatingPointError(
        f"{bad} of {values.numel()} LossVal weights are NaN or inf ({when}): {diverged(rule, cause)}"
    )


def diverged(rule: UpdateRule, otherwise: str) -> str:
    """Why the network diverged under ``rule``'s objective, when that objective multiplies its loss."""
    if rule.name == "balanced":
        return otherwise
    return (
        "this objective trains the network on L_w * S**k, which multiplies the network's learning rate by "
        "a factor that changes every batch and grows with the features' scale, so with SGD or unscaled "
        "inputs the network and then the weights diverge; use objective='default' (--lossval.objective "
        "default; the network trains on its own loss), standardise the inputs, or use Adam; also check the "
        "inputs for NaN or inf"
    )
