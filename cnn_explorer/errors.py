"""The exception for mistakes a user can fix (bad config, missing data, bad checkpoint), and argument checks."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can act on; the message names the thing and the fix.

    train.py and analyze.py print the message (no traceback) and exit with status 1.
    """


class BadArgument(UserError, ValueError):
    """A bad argument of a view or callback: a ``ValueError`` for library callers, a :class:`UserError` for
    train.py, which prints its message (naming the argument) instead of a traceback."""


def check_positive(**values: object) -> None:
    """Check that every named value (``every_n_epochs``, ``nrow``, ``per_class``, ``k``, ...) is an int >= 1.

    Raises:
        BadArgument: naming the first argument that is not.
    """
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadArgument(f"{name} must be a whole number >= 1, got {value!r}")


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite; raised before the diverged weights reach a checkpoint."""

    def __init__(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step
        super().__init__(
            f"training diverged: the loss stopped being a finite number at epoch {epoch}, global step {step}"
        )
