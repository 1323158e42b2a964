"""LossValMixin: the small contract a LightningModule fulfils for LossVal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from lightning_lossval.errors import ResumeError

WEIGHTS = "lossval_weights"
HOOK = "_lossval_callback"  # the instance attribute through which the callback serves lossval_loss
UNWEIGHTED = "lossval/unweighted_loss"
TARGET_KEYS = ("labels", "label", "targets", "target", "y")  # where a dict batch's targets are looked for
PATCHED = "_lossval_patched"  # the names LossValCallback patched on the instance (lightning_lossval.patching)


@runtime_checkable
class LossValHook(Protocol):
    """What :meth:`LossValMixin.lossval_loss` asks of the callback that patched the module."""

    in_training_step: bool  # a patched training step is running (its batch's indices are known)

    def loss(self, pl_module: Any, losses: Tensor, features: Tensor | None) -> Tensor:
        """The LossVal loss of the running training step's batch."""
        ...


class LossValMixin:
    """Mix into a ``LightningModule`` (first in the bases) to let :class:`LossValCallback` value its data.

    The contract: ``training_step`` computes one loss per sample and reduces it with
    :meth:`lossval_loss`. Everything else in the step (logging, extra loss terms) stays yours::

        class Net(LossValMixin, MyLightningModule):
            def training_step(self, batch, batch_idx):
                x, y = batch
                losses = F.cross_entropy(self(x), y, reduction="none")   # shape [B]
                loss = self.lossval_loss(losses)
                self.log("train_loss", loss)
                return loss + 1e-4 * self.l2_penalty()

    ``training_step`` receives the batch as the wrapped loader made it; the callback strips and
    keeps the sample indices. Without the callback (plain training, validation, a step outside
    fit) :meth:`lossval_loss` is the mean loss, so the same module trains with or without LossVal.

    Manual optimization works the same way: ``self.manual_backward(self.lossval_loss(losses))``
    then ``opt.step()`` updates the weights too (they sit in that optimizer, or the callback's
    sparse store steps them just before it). Under gradient
    accumulation every micro-batch adds the gradient of its own samples' weights, scaled like
    the rest of the loss by ``1 / accumulate_grad_batches``.

    Override :meth:`lossval_features` to compare something other than the flattened inputs with
    the validation set; it is applied to training batches and to validation batches alike. When
    those features come from the network itself (an embedding), set
    ``lossval_refresh_validation = True`` so that the validation features follow the network and
    both sides are computed in eval mode (without it, running the network for them in the training
    step updates BatchNorm statistics and draws dropout masks a second time).
    """

    lossval_refresh_validation: bool = False
    """``True`` when :meth:`lossval_features` depends on the module's parameters: the callback then
    recomputes the validation features (in eval mode) at the start of every training epoch instead
    of once per fit, and computes the training batches' in eval mode too (no dropout, BatchNorm
    statistics untouched)."""

    def lossval_loss(self, losses: Tensor, features: Tensor | None = None) -> Tensor:
        """Reduce per-sample ``losses`` ``[B]`` to the training loss.

        Inside a training step under :class:`LossValCallback` this is the LossVal objective of the
        batch (``features`` ``[B, ...]`` default to ``lossval_features(batch)``): with the default
        objective the weighted mean of ``losses`` under the samples' current masses, at the scale
        of the plain mean (the weights learn from the transport term on the side); with the paper
        preset ``L_w * S**2``. Elsewhere the plain mean. The plain mean of ``losses`` is logged as
        ``lossval/unweighted_loss`` (epoch mean): the training loss without the masses, to monitor
        where the weighted loss would fall merely because harmful rows lose mass.
        """
        hook: LossValHook | None = self.__dict__.get(HOOK)
        if hook is None or not hook.in_training_step:
            return losses.mean()
        loss = hook.loss(self, losses, features)
        # the plain mean beside the weighted one: what train_loss would be without the masses
        self.log(
            UNWEIGHTED, losses.detach().mean(), on_step=False, on_epoch=True, batch_size=len(losses), sync_dist=True
        )
        return loss

    def lossval_features(self, batch: Any) -> Tensor:
        """Features of a batch for the transport term, ``[B, D]``: the flattened first element.

        ``batch`` is an input tensor or a tuple/list whose first element is the input tensor.
        """
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        if isinstance(batch, Mapping) or not isinstance(x, Tensor):
            first = "" if isinstance(batch, Mapping) or x is batch else f" whose first element is a {type(x).__name__}"
            raise TypeError(
                f"{type(self).__name__}.lossval_features cannot find the inputs in a batch of type "
                f"{type(batch).__name__}{first}; override lossval_features(batch) to return a [B, D] tensor (and, "
                f"unless a dict batch holds its targets under one of {', '.join(TARGET_KEYS)}, lossval_targets(batch) "
                "to return the [B] targets: with classes the default update keeps each class's share of the batch)"
            )
        return x.reshape(x.shape[0], -1)

    def lossval_targets(self, batch: Any) -> Tensor | None:
        """Targets of a batch: the second element. Integer ``[B]`` targets, and 0/1 float ``[B]`` or
        ``[B, 1]`` ones (binary cross-entropy's), are classes, whose share of the batch the default
        update keeps (class-balanced masses); label-aware transport
        (``label_weight > 0``) compares them with the validation targets.

        Integer ``[B]`` classes or numeric ``[B]``/``[B, K]`` targets; ``None`` when the batch has none. A
        dict batch's targets are its first tensor under ``labels``, ``label``, ``targets``, ``target`` or ``y``.
        """
        if isinstance(batch, Mapping):
            return next((batch[k] for k in TARGET_KEYS if isinstance(batch.get(k), Tensor)), None)
        if isinstance(batch, (list, tuple)) and len(batch) > 1 and isinstance(batch[1], Tensor):
            return batch[1]
        return None

    def __getstate__(self) -> dict[str, Any]:
        """The module's state without what LossValCallback patched on it during fit: a copy or pickle made
        then (weight averaging, keeping the best model) is the plain module, which trains without LossVal."""
        state = super().__getstate__()  # type: ignore[misc]
        patched = set(state.pop(PATCHED, ()))
        if patched:
            state = {k: v for k, v in state.items() if k not in patched}
            state["_parameters"] = {k: v for k, v in state["_parameters"].items() if k not in patched}
        return state

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the dense LossVal weights out of the model's state dict (the callback's state holds them)."""
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        checkpoint.get("state_dict", {}).pop(WEIGHTS, None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Load checkpoints with or without LossVal weights, whether or not a fit is running with them."""
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        weights_entry(self, checkpoint)


def weights_entry(module: Any, checkpoint: dict[str, Any]) -> None:
    """Make the checkpoint's state dict fit ``module`` as to the dense LossVal weights: drop them when the
    module has none (inference), add the module's own when a dense fit resumes (the callback's state
    restores them), refuse weights for another number of training samples. Idempotent."""
    state = checkpoint.get("state_dict", {})
    saved = state.get(WEIGHTS)
    current = module._parameters.get(WEIGHTS)
    if current is None:
        state.pop(WEIGHTS, None)  # an older checkpoint, loaded for inference: the values stay in the file
        for saved in checkpoint.get("optimizer_states", []):  # a fit without the dense weights resumes it
            groups = saved.get("param_groups", [])  # the dense weights' group is named like their parameter
            dropped = {i for g in groups if g.get("name") == WEIGHTS for i in g["params"]}
            saved["param_groups"] = [g for g in groups if g.get("name") != WEIGHTS]
            saved["state"] = {i: v for i, v in saved.get("state", {}).items() if i not in dropped}
    elif saved is None:
        state[WEIGHTS] = current.detach()  # resuming a dense fit: the callback's state restores them
    elif saved.shape != current.shape:
        raise ResumeError(
            f"the checkpoint holds LossVal weights for {saved.numel()} training samples but this run has "
            f"{current.numel()}; resume with the training data the checkpoint was made with"
        )
