"""The front door: `answerdist COMMAND ...` (the same as `python -m answerdist COMMAND ...`).

Each command is a module of this package with a `main(argv) -> exit status`; this one only
picks it. Argument parsing lives here, the work below (answerdist/engine, analysis, lab).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

from answerdist.errors import ArgumentParser
from answerdist.version import __version__

# command: (module, one line of help)
COMMANDS = {
    "score": ("score", "exact answer distributions of one checkpoint"),
    "sweep": ("sweep", "score a ladder of checkpoints from a sweep file (alone or under torchrun)"),
    "analyse": ("analyse", "phases of ladders of scored checkpoints (liquid, nucleated, settled)"),
    "trajectory": ("trajectory", "order parameters along many checkpoints and where they jump"),
    "tasks": ("tasks", "list the shipped tasks and task groups"),
    "demo": ("demo", "build the toy ladder, score it, analyse it (make demo)"),
}


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="answerdist", description="Exact answer distributions of language-"
                       "model checkpoints by teacher forcing, and how post-training changes them.",
                       epilog="answerdist COMMAND --help describes each command.")
    p.add_argument("--version", action="version", version=f"answerdist {__version__}")
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND",
                   help="; ".join(f"{name}: {text}" for name, (_, text) in COMMANDS.items()))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0].startswith("-"):
        parser().parse_args(argv or ["--help"])  # --help / --version exit here; else one line
        return 2
    if argv[0] not in COMMANDS:
        parser().error(f"unknown command {argv[0]!r}; the commands are {', '.join(COMMANDS)}")
    # Only the chosen command is imported: `answerdist tasks` and `analyse` never load torch.
    module = importlib.import_module(f"answerdist.cli.{COMMANDS[argv[0]][0]}")
    try:
        return module.main(argv[1:])
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as `yes` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 128 + signal.SIGPIPE
