"""Exceptions raised for bad user input: each message names the problem and the fix."""


class SupmimError(Exception):
    """Base class for errors the CLI reports as a clean message (no traceback)."""


class ConfigError(SupmimError, ValueError):
    """An invalid configuration key or value; raised before any work starts."""


class DataError(SupmimError, ValueError):
    """Data that cannot be found or read in the accepted forms."""


class CheckpointError(SupmimError, ValueError):
    """A checkpoint or exported model that cannot be loaded safely."""


class TrainingError(SupmimError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last checkpoint is intact."""


class Interrupted(SupmimError):
    """Training stopped by SIGTERM / SIGINT after writing a checkpoint."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
