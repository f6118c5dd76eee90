"""One family of errors for the library and the command line.

Every error the project raises on purpose is an :class:`LsqbqError`. Its message reads
``<what>: <why>; <what to do>`` and names the offending key, file, row or size. The command line prints it
as one line, ``lsqbq <command>: <message>``, and exits with the class's ``exit_code`` (tracebacks only with
``--debug`` or ``LSQBQ_DEBUG=1``). Each class also derives from the built-in exception callers expect, so
``except ValueError`` keeps working for library users.

=====================  ===========  ==============================================================
class                  exit code    raised for
=====================  ===========  ==============================================================
``LsqbqError``         1            anything else the project reports on purpose
``ConfigError``        2            unknown key, wrong type, non-finite or out-of-range value
``SchemeError``        2            unknown scheme name (a ``ConfigError``)
``DataError``          3            missing, corrupt or malformed dataset files
``CheckpointError``    4            missing, truncated, foreign or mismatched checkpoints
``InputError``         5            tensors of the wrong shape, dtype or values (NaN, negative scales)
``TrainingError``      6            training that cannot make progress (loss NaN, zero optimiser steps)
=====================  ===========  ==============================================================
"""
from __future__ import annotations

__all__ = [
    "LsqbqError", "ConfigError", "SchemeError", "DataError", "DataNotFoundError", "RunFileError", "CheckpointError",
    "CheckpointNotFoundError", "InputError", "InputTypeError", "TrainingError", "EXIT_CODES",
]


class LsqbqError(Exception):
    """Base class: an error the project reports on purpose, with a message that says what to do."""

    exit_code = 1


class ConfigError(LsqbqError, ValueError):
    """A config value is unknown, of the wrong type, non-finite or inconsistent; the message names the key."""

    exit_code = 2


class SchemeError(ConfigError):
    """An unknown or malformed quantization scheme name."""


class DataError(LsqbqError, ValueError):
    """A dataset file is corrupt, truncated or not in the expected format; the message names the file."""

    exit_code = 3


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset file or directory does not exist."""


class RunFileError(DataError):
    """A per-run result file (``metrics.json``, ``bitwise.json``) is malformed, holds a missing, non-finite or
    out-of-range value, or names another run than the folder it sits in; the message names the file and the key."""


class CheckpointError(LsqbqError, ValueError):
    """A checkpoint cannot be read or does not fit the model/config it is used with; names the file."""

    exit_code = 4


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path does not exist."""


class InputError(LsqbqError, ValueError):
    """A tensor argument has the wrong shape or invalid values; the message names the size or row."""

    exit_code = 5


class InputTypeError(InputError, TypeError):
    """A tensor argument has the wrong type or dtype."""


class TrainingError(LsqbqError, RuntimeError):
    """Training cannot make progress (non-finite loss, no optimiser step)."""

    exit_code = 6


EXIT_CODES = {cls.__name__: cls.exit_code for cls in
              (LsqbqError, ConfigError, DataError, CheckpointError, InputError, TrainingError)}
