"""User-facing errors.

``UserError`` (a ``ValueError``) carries a message that says what was wrong and what to do.
The CLI prints it as one line and exits with status 2; the Python API lets it propagate.
``TrainingDiverged`` (a ``FloatingPointError``): a loss became NaN or infinite; the CLI prints
its one line (where, and what to lower) and exits with status 1.
"""


class UserError(ValueError):
    """Bad input or a missing resource that the user can fix; the message says how."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A dataset could not be found in any of the places searched."""


class TrainingDiverged(FloatingPointError):
    """A training loss became NaN or infinite; the message says where and what to change."""
