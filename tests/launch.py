"""Start multi-rank runs for the tests: through torchrun, or as one process per rank with the
environment torchrun gives its workers (same env:// rendezvous), so that a test can hand each
rank its own arguments or stop one of them.

Every process runs with OMP_NUM_THREADS=1, as torchrun sets it for its workers: the single
process runs the tests compare against then use the same BLAS threading, and bits can be equal.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(key, None)


def module(command: str) -> list[str]:
    """`-m answerdist command` for an answerdist command, `-m command` for a module (a dotted
    name such as tests.shutdown_probe)."""
    return ["-m", command] if "." in command else ["-m", "answerdist", command]


def python_command(command: str, *args) -> list[str]:
    return [sys.executable, *module(command), *map(str, args)]


def python(command: str, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m answerdist command args` in one process (a world of one)."""
    return subprocess.run(python_command(command, *args), capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=timeout)


def torchrun_command(nproc: int, command: str, *args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", *module(command), *map(str, args)]


def torchrun(nproc: int, command: str, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node nproc -m answerdist command args` (a free port of
    its own)."""
    return subprocess.run(torchrun_command(nproc, command, *args), capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=timeout)


def concurrently(*commands, timeout: float = 900) -> list[subprocess.CompletedProcess]:
    """Run commands side by side (as `subprocess.run` with captured text would, one after the
    other), their output in temporary files so that no pipe fills and blocks one."""
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i, cmd in enumerate(commands):
            out, err = open(f"{tmp}/{i}.out", "w"), open(f"{tmp}/{i}.err", "w")
            procs.append((subprocess.Popen([str(c) for c in cmd], env=ENV, cwd=ROOT, stdout=out,
                                           stderr=err, text=True), out, err))
        done = []
        for i, (proc, out, err) in enumerate(procs):
            proc.wait(timeout=timeout)
            out.close()
            err.close()
            done.append(subprocess.CompletedProcess(
                proc.args, proc.returncode, open(f"{tmp}/{i}.out").read(),
                open(f"{tmp}/{i}.err").read()))
        return done


@dataclass
class Rank:
    rank: int
    returncode: int | None
    stdout: str
    stderr: str

    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(command: str, argv_per_rank: list[list], log_dir: Path) -> list[subprocess.Popen]:
    """One process per rank, each with its own arguments, joined by the env:// rendezvous.
    Output goes to files (a pipe nobody reads could fill and block a rank)."""
    port, world = free_port(), len(argv_per_rank)
    procs = []
    for rank, argv in enumerate(argv_per_rank):
        env = dict(ENV, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        out = open(log_dir / f"rank{rank}.out", "w")
        err = open(log_dir / f"rank{rank}.err", "w")
        procs.append(subprocess.Popen([sys.executable, *module(command), *map(str, argv)],
                                      env=env, cwd=ROOT, stdout=out, stderr=err))
    return procs


def finish_ranks(procs: list[subprocess.Popen], log_dir: Path, timeout: float = 300) -> list[Rank]:
    """Wait for every rank (killing any still running after `timeout`) and collect its output."""
    deadline = time.time() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    return [Rank(r, proc.returncode, (log_dir / f"rank{r}.out").read_text(),
                 (log_dir / f"rank{r}.err").read_text()) for r, proc in enumerate(procs)]


def ranks(command: str, argv_per_rank: list[list], log_dir: Path,
          timeout: float = 300) -> list[Rank]:
    return finish_ranks(start_ranks(command, argv_per_rank, log_dir), log_dir, timeout)


def worker_pids(launcher_pid: int) -> dict[int, int]:
    """{RANK: pid} of the workers a torchrun process started (read from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent != launcher_pid:
                continue
            environ = dict(item.split("=", 1)
                           for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in environ:
            found[int(environ["RANK"])] = int(entry.name)
    return found
