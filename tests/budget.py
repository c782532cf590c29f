"""A per-example time and memory budget for the class tests (issue: every hostile input is
refused within bounds, not only refused).

Memory is this process's high-water mark (ru_maxrss): an example passes its budget when the
mark rises by less than `mib` MiB while it runs. A mark already above what the example needs
hides nothing that matters here: what the budget catches is an allocation in proportion to a
hostile value (a gigabyte for a config's inflated expert count, a template's string doubling),
which lifts any earlier mark.
"""

from __future__ import annotations

import resource
import time
from contextlib import contextmanager

SECONDS = 20.0
MIB = 500.0


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


@contextmanager
def budget(what, seconds: float = SECONDS, mib: float = MIB):
    """Fail when the block takes `seconds` or more, or lifts the memory mark by `mib` MiB,
    whether it returns or raises (a refusal must be within budget too)."""
    started, before = time.monotonic(), _peak_mib()
    try:
        yield
    finally:
        elapsed, grown = time.monotonic() - started, _peak_mib() - before
        assert elapsed < seconds, f"{what}: {elapsed:.1f} s (budget {seconds:g} s)"
        assert grown < mib, f"{what}: memory mark up {grown:.0f} MiB (budget {mib:g} MiB)"
