"""The processes of a run: which strategies keep one weight tensor, gathers across ranks, a clean exit.

LossVal's weights must stay one tensor, identical on every rank: strategies that shard or re-wrap
parameters, or that train in worker processes whose state never returns, are refused in ``setup``.
"""

from __future__ import annotations

import atexit
import functools

import torch
import torch.distributed as dist
from lightning.pytorch import Trainer
from torch import Tensor

from lightning_lossval.errors import ConfigError


def check_strategy(trainer: Trainer) -> None:
    """Refuse the strategies whose wrapping or process model would silently break the weights; with a
    process group up, have it destroyed at exit (:func:`_close_at_exit`)."""
    strategy = trainer.strategy
    name = type(strategy).__name__
    if "FSDP" in name or "DeepSpeed" in name or "ModelParallel" in name:
        raise ConfigError(
            f"LossValCallback does not support {name}: it shards or re-wraps parameters, so the per-sample weights "
            "would not stay one consistent tensor. Use strategy='ddp' (or a single device)."
        )
    if getattr(strategy, "_start_method", "popen") != "popen":
        raise ConfigError(
            f"LossValCallback does not support {name} with start method '{strategy._start_method}' (ddp_spawn, "
            "ddp_fork, ddp_notebook): the weights learned in the worker processes would not reach this one. Use "
            "strategy='ddp', which re-runs your script for each process (or launch it with torchrun)."
        )
    if dist.is_available() and dist.is_initialized():
        _close_at_exit()


@functools.cache
def _close_at_exit() -> None:
    """Destroy the process group before the interpreter shuts down. Lightning does so for NCCL only; a
    gloo group left to the shutdown can abort a finished run ('terminate called without an active
    exception', exit code 134) after its values file is written. A second destroy is a no-op."""
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())


def gather(trainer: Trainer, rows: Tensor) -> Tensor:
    """All ranks' ``rows`` ``[C, L]`` (``L`` may differ by rank), concatenated: ``[C, sum of L]``."""
    strategy = trainer.strategy
    sizes = strategy.all_gather(torch.tensor([rows.shape[1]], device=rows.device)).flatten()
    longest = int(sizes.max())
    padded = torch.zeros(rows.shape[0], longest, dtype=rows.dtype, device=rows.device)
    padded[:, : rows.shape[1]] = rows
    gathered = strategy.all_gather(padded)  # [world, C, longest]
    keep = torch.arange(longest, device=rows.device) < sizes.unsqueeze(1)  # [world, longest]
    return gathered.transpose(0, 1)[:, keep]
