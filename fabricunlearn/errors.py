"""Which exceptions are the user's to fix (shown as one line) and which are bugs (shown with a traceback)."""

from __future__ import annotations


def user_error_message(err: BaseException) -> str | None:
    """One line for errors a user can act on; None for anything else."""
    from fabricunlearn.config import RecipeError
    from fabricunlearn.data.formats import DataError
    from fabricunlearn.models import ModelError
    from fabricunlearn.train.loop import TrainingDiverged

    if isinstance(err, RecipeError | DataError | ModelError | TrainingDiverged):
        return str(err)
    if isinstance(err, FileNotFoundError):
        return str(err) if not err.filename else f"{err.filename}: no such file"
    if isinstance(err, ValueError) and str(err).startswith("recipe"):
        return str(err)
    return None
