"""The errors a user can cause and fix; every message says what was wrong and what to do.

``LossValError`` is the base: catch it to handle them all (the ``lossval`` command turns it into
``lossval: error: ...`` and exit status 2). The subclasses are also ``ValueError``\\ s. What works but may
not do what was meant is a :class:`LossValWarning` (printed by ``lossval`` as ``lossval: warning: ...``).
"""

from lightning.pytorch.utilities import rank_zero_warn


class LossValError(Exception):
    """Base of the errors a user can fix in their data, configuration or checkpoint."""


class DataError(LossValError, ValueError):
    """Bad data: a missing column, a validation set of the wrong shape, batches without indices."""


class ConfigError(LossValError, ValueError):
    """Bad options: an unknown preset or field, a misspelt option string, a refused strategy."""


class ResumeError(LossValError, ValueError):
    """A checkpoint that does not fit this run: other training data, store or objective."""


class LossValWarning(UserWarning):
    """Data or settings that work but may not do what was meant (an id column that repeats, rows never trained)."""


def warn(message: str) -> None:
    """``message`` as a :class:`LossValWarning`, on global rank zero, pointing at the line that warns."""
    rank_zero_warn(message, stacklevel=5, category=LossValWarning)
