"""Failures the user can act on: entry points report them as one line and exit with ``exit_code``."""

from __future__ import annotations


class EngineError(RuntimeError):
    """A user-facing training failure with a one-line message."""

    exit_code = 1


class SetupError(EngineError):
    """Bad settings found before training starts: output directory, disk space, batch size..."""

    exit_code = 2


class NonFiniteLossError(EngineError):
    """The loss became NaN or infinite (more than ``max_bad_batches`` times in a row)."""

    exit_code = 3


class TrainingInterrupted(EngineError):
    """Training stopped on SIGTERM or SIGINT after writing a checkpoint; exit status 128 + signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
