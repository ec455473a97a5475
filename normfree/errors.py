"""The errors a user can fix, as distinct types: the command line prints them as one line.

Anything else that escapes is a bug and shows its traceback.
"""


class NormfreeError(Exception):
    """Base of every error normfree raises for bad input, files or settings. `fields`: the
    settings its message names by their field names (e.g. `val_size`), which the command line
    shows as its flags (`--val-size`): the floors below it know no flags."""

    def __init__(self, message="", fields=()):
        super().__init__(message)
        self.fields = tuple(fields)


class ConfigError(NormfreeError, ValueError):
    """A setting no run or model can use; the message names the flag or field."""


class InputError(NormfreeError, ValueError):
    """A tensor a model cannot take (wrong rank, dtype, channels, or smaller than its stride)."""


class DataError(NormfreeError, ValueError):
    """A dataset is missing or malformed; the message names the file and what was expected."""


class CheckpointError(NormfreeError, ValueError):
    """A checkpoint or weights file is missing, truncated, foreign or for another model."""


class OutputError(NormfreeError, OSError):
    """A file could not be written (full disk, read-only or missing directory, ...); the file
    it would have replaced, if any, is intact."""


class ExportError(NormfreeError, RuntimeError):
    """An exported model does not compute what the PyTorch model does; the file was removed."""


class FolderInUse(NormfreeError, RuntimeError):
    """Another live process owns the run folder (its lock names the process)."""


class PeerLost(NormfreeError, RuntimeError):
    """Another process of a data-parallel job stopped: this one cannot go on alone."""


class TrainingDiverged(NormfreeError, RuntimeError):
    """The loss became NaN or infinite at optimisation step `.step` (counting from 1)."""

    def __init__(self, message, step=None):
        super().__init__(message)
        self.step = step


class MissingDependency(NormfreeError, ImportError):
    """An optional package a feature needs is not installed; the message says how to get it."""


class TrainingStopped(Exception):
    """Not an error: a signal stopped training after a checkpoint; `.signal` is its
    `signal.Signals` (the command line exits with 128 + its number)."""

    def __init__(self, message, stopped_by):
        super().__init__(message)
        self.signal = stopped_by
