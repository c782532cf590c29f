"""A sweep's bookkeeping, kept in its results store so that every worker on every machine sharing
the store sees it: OUT/.sweep/LABEL.claim and OUT/.sweep/LABEL.failed.

* A claim is an flock(2) on LABEL.claim, held by the worker scoring that label and recording
  its pid, host and start time (answerdist/engine/results/store.py's `LabelLock`). The kernel
  (or, on NFSv4, the server's lease) drops it when its holder dies, even under kill -9 or with
  its node, so the next worker that reaches the label takes it over: no heartbeat, no timeout.
* LABEL.failed is the last one-line error of a label that failed, with its checkpoint, host and
  time, removed when the label is scored; `answerdist sweep --status` shows it on every machine.

Every file goes through the store's one door (answerdist/engine/results/guard.py): no link is
followed, and a claim file that is not a regular file is refused."""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from answerdist.engine.results.guard import LinkRefused, StoreFiles
from answerdist.engine.results.store import LabelLock
from answerdist.errors import OutputError

LEDGER = ".sweep"  # beside the label directories; no label starts with a dot
CLAIM, FAILED = ".claim", ".failed"
PROBE = "probe.claim"


class Claims:
    """A worker's claims on the labels of one checkpoint, all or none: `take` holds every one or,
    when a live worker holds one of them, none (`holder` then names that worker)."""

    def __init__(self, out: Path, labels: list[str]):
        self.locks = [LabelLock(out, LEDGER, label + CLAIM) for label in labels]
        self.holder = ""
        self.held: list[LabelLock] = []

    def take(self) -> bool:
        for lock in self.locks:
            if not lock.take():
                self.holder = lock.holder
                self.release()
                return False
            self.held.append(lock)
        return True

    def release(self) -> None:
        while self.held:
            self.held.pop().__exit__(None, None, None)


def check_ledger(out: Path, labels: list[str]) -> None:
    """Before any work: the store takes advisory locks (a probe lock is taken and released), and
    every claim or failure file already there is a regular file. An OutputError otherwise."""
    probe = LabelLock(out, LEDGER, PROBE)
    if probe.take():
        probe.__exit__(None, None, None)
    files = StoreFiles(out, LEDGER)
    for label in labels:
        for name in (label + CLAIM, label + FAILED):
            try:
                files.read_stat(name)
            except FileNotFoundError:
                continue
            except LinkRefused as e:
                raise OutputError(f"{e}; remove it (the sweep's claims and failure records must "
                                  "be plain files)") from None


def holder(out: Path, label: str) -> str | None:
    """Who holds the label's claim now ("pid P on HOST since T"), None when nobody does."""
    return LabelLock(out, LEDGER, label + CLAIM).held_by()


def record_failure(out: Path, label: str, checkpoint: str, error: str) -> None:
    record = {"label": label, "checkpoint": checkpoint, "error": error,
              "host": socket.gethostname(), "pid": os.getpid(),
              "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with _writing(out, label + FAILED):
        StoreFiles(out, LEDGER).write(label + FAILED, (json.dumps(record) + "\n").encode())


def clear_failure(out: Path, label: str) -> None:
    with _writing(out, label + FAILED):
        StoreFiles(out, LEDGER).remove(label + FAILED)


@contextmanager
def _writing(out: Path, name: str):
    """A failure record that cannot be written or removed is one OutputError line."""
    try:
        yield
    except OSError as e:
        raise OutputError(f"{Path(out) / LEDGER / name}: cannot be written "
                          f"({e.strerror or e}); free some space or fix the store") from None


def read_failure(out: Path, label: str) -> dict | None:
    """The label's failure record, None when it has none (or an unreadable one)."""
    try:
        record = json.loads(StoreFiles(out, LEDGER).read(label + FAILED))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
