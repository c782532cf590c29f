"""The command's process keeps freed memory for its next allocations (answerdist.cli's
keep_freed_memory): an allocation pattern like the CPU engine's (the same large temporaries
freed and taken again at every batch) no longer faults its pages in afresh each time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests import launch

CHURN = """
import random, resource, sys
from answerdist.cli import keep_freed_memory
if sys.argv[1] == "kept":
    keep_freed_memory()
rng = random.Random(0)
def churn():
    for _ in range(200):
        blocks = [bytearray(rng.randrange(1, 24) << 20) for _ in range(3)]  # zero-filled
        del blocks
churn()  # warm up: the heap grows to its working size
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str, env: dict) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], env=env, cwd=launch.ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def test_freed_memory_is_reused_instead_of_faulted_in_again():
    if sys.platform != "linux":
        pytest.skip("glibc's mallopt: Linux only (elsewhere the allocator is left as it is)")
    env = {k: v for k, v in launch.ENV.items() if k != "GLIBC_TUNABLES"}
    default, kept = faults("default", env), faults("kept", env)
    assert kept * 10 < default, (kept, default)


def test_a_users_own_malloc_tunables_are_left_alone():
    if sys.platform != "linux":
        pytest.skip("glibc's mallopt: Linux only")
    env = dict(launch.ENV, GLIBC_TUNABLES="glibc.malloc.check=0")
    assert faults("kept", env) * 10 > faults("default", env)
