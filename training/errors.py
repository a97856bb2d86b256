"""Errors whose message is one line that says what is wrong and what to do; the CLI prints them as is."""


class TrainingError(Exception):
    """Base class: the CLI prints `error: <message>` and exits 2, with no traceback."""


class DataError(TrainingError):
    """The data set on disk cannot be used as it is (layout, missing file, sizes, mask values)."""


class ExportError(TrainingError):
    """The model could not be exported, or the export failed its checks; nothing was written."""
