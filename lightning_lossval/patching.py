"""What LossValCallback changes on the user's module while it fits: applied once, always undone.

Everything is set on the module *instance* (its class stays untouched) and listed under one
attribute, so :func:`restore` removes exactly what :func:`patch` added; ``patch`` first restores
what a fit that ended in an exception may have left. Before the store exists, :func:`after_setup`
wraps the module's ``setup`` for one call, so the store is made once the module's own ``setup``
has built what its loaders need. Patched, for every store:

- ``training_step``: runs with the batch's indices at hand for ``lossval_loss``;
- the batch-transfer hooks the module overrides: they see the inner batch of ``Indexed``;
- ``_lossval_callback``: the :class:`~lightning_lossval.mixin.LossValHook` ``lossval_loss`` asks.

On the trainer's strategy, :func:`take_indices` patches ``batch_to_device``: it takes the indices
off every ``Indexed`` batch it moves and hands them to the callback, so everything after the
transfer (``on_train_batch_start`` and ``on_train_batch_end`` of the module and of every callback,
``training_step``) sees the batch the user's loader made; :func:`release_indices` undoes it.

For the dense store only: its weights become the parameter ``lossval_weights`` (registered
before any strategy wraps the module, so DDP broadcasts and all-reduces it) and a param group of
the user's optimizer; ``lr_scheduler_step`` and ``clip_gradients`` (which Lightning's clipping
and a manual-optimization step call) run with that group hidden, so schedulers built before it
existed neither crash on it (LambdaLR, OneCycleLR keep per-group lists) nor change its lr, and
clipping leaves its gradient alone; ``on_load_checkpoint`` makes sure a resumed checkpoint's
state dict has the entry the weights parameter needs, even when the module's own hook skips
``super()``. :func:`restore` takes the parameter off again: after fit the module's state dict is
the user's own.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn

from lightning_lossval.data import BATCH_HOOKS, UNWRAPPING, Indexed, on_inner_batch
from lightning_lossval.mixin import HOOK, PATCHED, WEIGHTS, LossValHook, weights_entry
from lightning_lossval.stores import GROUP_NAME


def patch(pl_module: LightningModule, hook: LossValHook, training_step: Callable, weights: nn.Parameter | None) -> None:
    """Route ``pl_module``'s training step through ``training_step(step, batch, *args)`` and ``hook``;
    register the dense store's ``weights`` (``None`` for the sparse store)."""
    restore(pl_module)
    wrappers: dict[str, Callable] = {"training_step": training_step}
    names = [HOOK]
    if weights is not None:
        wrappers.update(
            lr_scheduler_step=_scheduler_step_alone,
            clip_gradients=_clipping_alone,
            on_load_checkpoint=_with_weights_entry,
        )
        pl_module.register_parameter(WEIGHTS, weights)
        names.append(WEIGHTS)
    for name, wrapper in wrappers.items():
        method = getattr(pl_module, name)
        setattr(pl_module, name, functools.wraps(method)(functools.partial(wrapper, method)))
        names.append(name)
    for name in BATCH_HOOKS:
        if is_overridden(name, pl_module):
            setattr(pl_module, name, on_inner_batch(getattr(pl_module, name)))
            names.append(name)
    setattr(pl_module, HOOK, hook)
    pl_module.__dict__[PATCHED] = names
    UNWRAPPING.add(pl_module)


def after_setup(pl_module: LightningModule, then: Callable[[], None]) -> None:
    """Call ``then()`` right after ``pl_module``'s own next ``setup``, once. Lightning calls the
    callbacks' ``setup`` before the module's, and a module may build the datasets its loaders
    serve there, so what needs the training data waits for it."""
    restore(pl_module)
    setup = pl_module.setup

    @functools.wraps(setup)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        pl_module.__dict__.pop("setup", None)
        result = setup(*args, **kwargs)
        then()
        return result

    pl_module.__dict__["setup"] = wrapped
    pl_module.__dict__[PATCHED] = ["setup"]


def restore(pl_module: LightningModule) -> None:
    """Remove every patch :func:`patch` set; a module that was never patched is left as it is."""
    for name in pl_module.__dict__.pop(PATCHED, ()):
        pl_module.__dict__.pop(name, None)
        pl_module._parameters.pop(name, None)  # the dense weights
    UNWRAPPING.discard(pl_module)


def take_indices(strategy: Strategy, keep: Callable[[Tensor], None]) -> None:
    """Make ``strategy.batch_to_device`` pass the indices of each ``Indexed`` batch to ``keep`` and
    return the batch inside."""
    release_indices(strategy)
    to_device = strategy.batch_to_device  # a patch of the user's on the instance, if any, runs inside ours

    @functools.wraps(to_device)
    def batch_to_device(batch: Any, *args: Any, **kwargs: Any) -> Any:
        batch = to_device(batch, *args, **kwargs)
        if isinstance(batch, Indexed):
            keep(batch.index)
            return batch.data
        return batch

    batch_to_device.lossval_replaced = strategy.__dict__.get("batch_to_device")  # type: ignore[attr-defined]
    strategy.__dict__["batch_to_device"] = batch_to_device


def release_indices(strategy: Strategy) -> None:
    """Undo :func:`take_indices`: the instance's own ``batch_to_device`` (a user's patch) is back, if it had one."""
    ours = strategy.__dict__.get("batch_to_device")
    if not hasattr(ours, "lossval_replaced"):
        return
    if ours.lossval_replaced is None:
        del strategy.__dict__["batch_to_device"]
    else:
        strategy.__dict__["batch_to_device"] = ours.lossval_replaced


def is_patched(pl_module: LightningModule) -> bool:
    return PATCHED in pl_module.__dict__


@contextlib.contextmanager
def _weights_group_hidden(optimizer: Any):
    """Take the dense weights' param group out of ``optimizer.param_groups`` for a moment."""
    if isinstance(optimizer, LightningOptimizer):  # what self.optimizers() gives: hide it in the optimizer it wraps
        optimizer = optimizer.optimizer
    groups = optimizer.param_groups
    optimizer.param_groups = [g for g in groups if g.get("name") != GROUP_NAME]
    try:
        yield
    finally:
        optimizer.param_groups = groups


def _scheduler_step_alone(scheduler_step: Any, scheduler: Any, *args: Any, **kwargs: Any) -> Any:
    """``lr_scheduler_step`` without the weights' group."""
    with _weights_group_hidden(scheduler.optimizer):
        return scheduler_step(scheduler, *args, **kwargs)


def _with_weights_entry(on_load_checkpoint: Any, checkpoint: dict[str, Any]) -> Any:
    """The module's ``on_load_checkpoint``, then the dense weights' state-dict entry that a resume needs and
    an override that skips ``super()`` leaves out."""
    result = on_load_checkpoint(checkpoint)
    weights_entry(on_load_checkpoint.__self__, checkpoint)
    return result


def _clipping_alone(clip_gradients: Any, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
    """``clip_gradients`` on the network's gradients only, not the weights'."""
    with _weights_group_hidden(optimizer):
        return clip_gradients(optimizer, *args, **kwargs)
