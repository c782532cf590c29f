"""Errors a user can cause. Each carries one line: what is wrong, where, and how to fix it.

The CLIs catch `EngineError`, print its message and exit with status 2, writing nothing; their
argument parsers (`ArgumentParser` below) keep the same contract for bad flags.
"""

import argparse
import re
import sys


def notice(message: str) -> None:
    """A note on stderr: something the run did that the user should know, not an error."""
    print(f"note: {message}", file=sys.stderr)


class EngineError(Exception):
    """Base class for user-caused errors (bad path, corrupt file, bad task file, ...).

    `reported_by`: under torchrun, the one rank that prints an error every rank of a group meets
    (answerdist/engine/model/distributed.py); None: printed by whichever rank meets it."""

    def __init__(self, message: str = "", reported_by: int | None = None):
        super().__init__(one_line(message))
        self.reported_by = reported_by


_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def one_line(message: str) -> str:
    """`message` with its control characters and line breaks escaped (a path or a value quoted
    in a message may hold a newline): every EngineError prints as exactly one line."""
    return _BREAKS.sub(lambda m: repr(m.group())[1:-1], str(message))


class CheckpointError(EngineError):
    """The checkpoint directory or one of its files is missing, unreadable or refused."""


class WeightsError(CheckpointError):
    """A safetensors file is corrupt, or a tensor is missing or has the wrong shape."""


class ArchitectureError(CheckpointError):
    """config.json names an architecture the engine does not implement."""


class TokenizerError(CheckpointError):
    """tokenizer.json / tokenizer_config.json is missing or cannot be used."""


class ChatTemplateError(EngineError):
    """A chat template is missing, raised an error, or tried to leave the sandbox."""


class DeviceError(EngineError):
    """The requested device or dtype is not available here."""


class TaskError(EngineError):
    """A task file is invalid, or a task name is unknown."""


class PromptTooLongError(EngineError):
    """A rendered prompt plus its answers does not fit in the model's context."""


class OutputError(EngineError):
    """The output location cannot be written."""


class AnalysisError(EngineError):
    """Results given to the analysis layer are missing or inconsistent."""


class NonFiniteError(EngineError):
    """The model produced NaN or infinite log-probabilities (bad weights, or overflow)."""


class ParallelError(EngineError):
    """A torchrun launch cannot run as asked (world size, --tp), or one of its ranks failed or
    stopped answering (answerdist/engine/model/distributed.py)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as every other bad input is reported: one `error:` line,
    exit status 2 (argparse's own usage line first would make it two)."""

    def error(self, message: str):
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(2)
