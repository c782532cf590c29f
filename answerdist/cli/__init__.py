"""The front door: `answerdist COMMAND ...` (the same as `python -m answerdist COMMAND ...`).

Each command is a module of this package with a `main(argv) -> exit status`; this one only
picks it. Argument parsing lives here, the work below (answerdist/engine, analysis, lab).
"""

from __future__ import annotations

import ctypes
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


def keep_freed_memory() -> None:
    """Have glibc's malloc serve allocations under 32 MiB from its heap and keep up to 1 GiB of
    freed memory for the next ones (mallopt M_MMAP_THRESHOLD, M_TRIM_THRESHOLD), in the
    command's own process only, unless GLIBC_TUNABLES sets malloc options already.

    Why: on the CPU the engine frees and allocates the same large temporaries at every batch,
    and by default glibc hands each back to the kernel and takes it again, zero-filled. One
    worker of benchmarks/bench_sweep.py's 12-checkpoint tiny sweep took 6.3 million page faults
    and 61 s (14 s of it in the kernel); with this, 150 thousand and 47 s. Where memory comes
    from changes no number."""
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): its own allocator as it is
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: the largest glibc accepts on 64-bit
    mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    keep_freed_memory()
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
