"""Ready LightningModules that fulfil LossValMixin, so tabular data and small images need no code.

Both take their input and output sizes and the task as ``num_inputs``, ``num_outputs`` and
``task``, and build their layers at once; the ``lossval`` command fills them from the DataModule
(``num_features``, ``num_outputs``, ``task``), so LightningCLI's ``--optimizer`` and
``--lr_scheduler`` see the parameters. Left None, they are read from the Trainer's DataModule in
``configure_model``. The sizes are kept in the hyperparameters, so ``load_from_checkpoint``
rebuilds the network without data.
"""

from __future__ import annotations

import inspect
import math

import lightning as L
import torch
from torch import Tensor, nn

from lightning_lossval.errors import ConfigError, DataError
from lightning_lossval.losses import cross_entropy, squared_error
from lightning_lossval.mixin import LossValMixin

LOSSVAL_SPACES = ("inputs", "embedding")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU, "elu": nn.ELU}


class TaskModule(LossValMixin, L.LightningModule):
    """Classification (cross-entropy) or regression (squared error) on ``(x, y)`` batches.

    Subclasses build ``self.net`` in :meth:`build`; the network maps ``x`` to logits (or
    probabilities when ``self.probabilities``) for classification, or to ``[B, outputs]``.
    """

    probabilities = False

    def __init__(self, lr: float, lossval_space: str = "inputs") -> None:
        super().__init__()
        if lossval_space not in LOSSVAL_SPACES:
            raise ConfigError(f"lossval_space must be one of {LOSSVAL_SPACES}, got {lossval_space!r}")
        self.lr = lr
        self.lossval_refresh_validation = lossval_space == "embedding"
        self.net: nn.Module | None = None

    def _build_if_sized(self) -> None:
        """Build now when the sizes were given (or restored by ``load_from_checkpoint``)."""
        self.save_hyperparameters(frame=inspect.currentframe().f_back)
        if None not in (self.hparams.task, self.hparams.num_inputs, self.hparams.num_outputs):
            self._build_from_hparams()

    def build(self, num_inputs: int, num_outputs: int, task: str) -> nn.Module:
        raise NotImplementedError

    def _build_from_hparams(self) -> None:
        h = self.hparams
        if h.task not in ("classification", "regression"):
            raise ConfigError(f"task must be 'classification' or 'regression', got {h.task!r}")
        self.net = self.build(h.num_inputs, h.num_outputs, h.task)

    def configure_model(self) -> None:
        datamodule = getattr(self._trainer, "datamodule", None)  # no trainer: load_from_checkpoint
        if self.net is not None:  # built already: by the CLI from the data's sizes, or by a fit before
            names = {"num_inputs": "num_features", "num_outputs": "num_outputs", "task": "task"}
            data = {a: getattr(datamodule, b, None) for a, b in names.items()}
            differ = [
                f"{a} {self.hparams.get(a)} (the data: {v})"
                for a, v in data.items()
                if v not in (None, self.hparams.get(a))
            ]
            if differ:
                raise ConfigError(
                    f"this {type(self).__name__} was built with {', '.join(differ)}: a network fits one shape of "
                    f"data; make a new {type(self).__name__}(...) for this data"
                )
            return
        missing = [a for a in ("num_features", "num_outputs", "task") if getattr(datamodule, a, None) is None]
        if missing:
            raise ConfigError(
                f"{type(self).__name__} takes its sizes from the DataModule, which lacks {missing}; give "
                "num_inputs, num_outputs and task to the model, or use TabularDataModule"
            )
        self.hparams.update(
            num_inputs=datamodule.num_features, num_outputs=datamodule.num_outputs, task=datamodule.task
        )
        self._build_from_hparams()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _head_start(self) -> int:
        """Index in ``self.net`` of the final linear layer (the embedding is everything before it)."""
        return max(i for i, module in enumerate(self.net) if isinstance(module, nn.Linear))

    def embed(self, x: Tensor) -> Tensor:
        """The network's last hidden representation of ``x``: the input of its final linear layer."""
        return self.net[: self._head_start()](x)

    def lossval_features(self, batch) -> Tensor:
        """The flattened inputs, or with ``lossval_space="embedding"`` the detached :meth:`embed`."""
        if not self.lossval_refresh_validation:
            return super().lossval_features(batch)
        with torch.no_grad():
            return self.embed(batch[0]).flatten(1)

    def per_sample_losses(self, batch) -> tuple[Tensor, Tensor]:
        """``(losses [B], outputs)`` of a batch."""
        x, y = batch
        out = self(x)
        if self.hparams.task == "classification":
            return cross_entropy(out, y, probabilities=self.probabilities), out
        return squared_error(out, y), out

    def training_step(self, batch, batch_idx: int) -> Tensor:
        # with lossval_space="embedding" the callback embeds the batch in eval mode, as it does the validation
        # rows (this forward's hidden layer carries dropout's masks and scaling)
        losses, _ = self.per_sample_losses(batch)
        loss = self.lossval_loss(losses)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        losses, out = self.per_sample_losses(batch)
        self.log("val_loss", losses.mean(), prog_bar=True, sync_dist=True)  # under DDP: all ranks' rows
        if self.hparams.task == "classification":
            self.log("val_acc", (out.argmax(1) == batch[1]).float().mean(), prog_bar=True, sync_dist=True)

    def lossval_predict(self, batch) -> Tensor:
        """Predictions for a batch: class indices ``[B]`` or regression outputs ``[B, outputs]``."""
        out = self(batch[0])
        return out.argmax(1) if self.hparams.task == "classification" else out

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class MLP(TaskModule):
    """A multilayer perceptron for tabular data.

    Args:
        preset: ``"paper"`` uses the LossVal paper's networks and ignores ``layers``, ``width``,
            ``activation`` and ``probabilities``: classification 5 linear layers of 100 with ReLU
            and a softmax output scored as ``-sum y log(p + 1e-8)``; regression 3 linear layers of
            90 with tanh. ``"custom"`` uses the arguments below.
        layers: number of linear layers (at least 1).
        width: units of each hidden layer.
        activation: one of ``relu``, ``tanh``, ``gelu``, ``silu``, ``elu``.
        dropout: dropout after each hidden activation.
        probabilities: classification only: end in a softmax and score probabilities.
        lr: Adam learning rate of the network (the CLI's ``--optimizer`` replaces that Adam).
        lossval_space: where LossVal's transport term compares a batch with the validation set:
            ``"inputs"`` (the feature rows) or ``"embedding"`` (the last hidden layer, recomputed
            for the validation set at every epoch start).
        task, num_inputs, num_outputs: None: the DataModule's ``task``, ``num_features``, ``num_outputs``.
    """

    def __init__(
        self,
        preset: str = "custom",
        layers: int = 3,
        width: int = 100,
        activation: str = "relu",
        dropout: float = 0.0,
        probabilities: bool = False,
        lr: float = 0.01,
        lossval_space: str = "inputs",
        task: str | None = None,
        num_inputs: int | None = None,
        num_outputs: int | None = None,
    ) -> None:
        super().__init__(lr, lossval_space)
        if preset not in ("custom", "paper"):
            raise ConfigError(f"MLP preset must be 'custom' or 'paper', got {preset!r}")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if layers < 1:
            raise ConfigError(f"an MLP needs at least 1 layer, got {layers}")
        self._build_if_sized()

    def build(self, num_inputs: int, num_outputs: int, task: str) -> nn.Module:
        h = self.hparams
        layers, width, activation, self.probabilities = h.layers, h.width, h.activation, h.probabilities
        if h.preset == "paper":
            classification = task == "classification"
            layers, width = (5, 100) if classification else (3, 90)
            activation, self.probabilities = ("relu", True) if classification else ("tanh", False)
        self.probabilities = self.probabilities and task == "classification"
        blocks: list[nn.Module] = []
        sizes = [num_inputs] + [width] * (layers - 1)
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            blocks += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
            if h.dropout:
                blocks.append(nn.Dropout(h.dropout))
        blocks.append(nn.Linear(sizes[-1], num_outputs))
        if self.probabilities:
            blocks.append(nn.Softmax(dim=1))
        return nn.Sequential(*blocks)


class _Images(nn.Module):
    """Each row as an image of ``shape`` (channels, height, width): rows of that many values, flat or already
    such images; anything else (channels-last images) is refused rather than scrambled."""

    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        if (x.dim() != 2 or x.shape[1] != math.prod(self.shape)) and list(x.shape[1:]) != list(self.shape):
            raise DataError(
                f"the CNN takes rows of {math.prod(self.shape)} values, flat or as {self.shape} images (its "
                f"image_shape: channels first), and got a batch of {tuple(x.shape)}; set image_shape to the rows' "
                "(channels, height, width), or move channels-last images' channels first (x.permute(0, 3, 1, 2))"
            )
        return x.reshape(x.shape[0], *self.shape)


class CNN(TaskModule):
    """A small convolutional classifier for image-like rows (e.g. the 8x8 digits, flat or as ``[N, 1, 8, 8]``).

    Each row of ``num_inputs`` values is reshaped to ``image_shape`` (channels, height, width);
    each entry of ``channels`` adds a 3x3 convolution, ReLU and 2x2 max-pool (while the image is
    at least 2 pixels wide), then global average pooling and a linear classifier.
    ``lossval_space="embedding"`` compares the pooled features instead of the pixels (see :class:`MLP`).
    """

    def __init__(
        self,
        image_shape: list[int] = [1, 8, 8],  # noqa: B006 (a plain list keeps the CLI type simple)
        channels: list[int] = [16, 32],  # noqa: B006
        lr: float = 0.01,
        lossval_space: str = "inputs",
        task: str | None = None,
        num_inputs: int | None = None,
        num_outputs: int | None = None,
    ) -> None:
        super().__init__(lr, lossval_space)
        self._build_if_sized()

    def build(self, num_inputs: int, num_outputs: int, task: str) -> nn.Module:
        shape = list(self.hparams.image_shape)
        if len(shape) != 3 or shape[0] * shape[1] * shape[2] != num_inputs:
            raise ConfigError(
                f"CNN image_shape {shape} (channels, height, width) does not hold the {num_inputs} input "
                "features of a row; set model.image_shape so that its product equals the feature count"
            )
        blocks: list[nn.Module] = [_Images(shape)]
        fan_in, size = shape[0], min(shape[1:])
        for fan_out in self.hparams.channels:
            blocks += [nn.Conv2d(fan_in, fan_out, 3, padding=1), nn.ReLU()]
            if size >= 2:
                blocks.append(nn.MaxPool2d(2))
                size //= 2
            fan_in = fan_out
        return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(fan_in, num_outputs))
