"""Errors whose message is one line that says what is wrong and what to do; the CLI prints them as is."""

from contract.datasets import DataError  # the data set on disk cannot be used as it is (shared with `evaluate`)

__all__ = ["DataError", "ExportError", "TrainingError"]


class TrainingError(Exception):
    """Base class: the CLI prints `error: <message>` and exits 2, with no traceback."""


class ExportError(TrainingError):
    """The model could not be exported, or the export failed its checks; nothing was written."""
