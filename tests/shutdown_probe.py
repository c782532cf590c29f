"""Run by test_distributed under torchrun: one rank fails inside a step, as a rank that cannot read
its checkpoint does, both keep the error (its traceback holds frames that hold process groups),
then shut down. Prints how many gloo threads each rank still has before and after. With
--at-exit the probe never calls shutdown() and counts at exit, after setup()'s own handler ran."""

import atexit
import os
import sys

from answerdist.engine.model import distributed
from answerdist.errors import EngineError


def say(line: str) -> None:
    os.write(1, f"{line}\n".encode())  # one write: the ranks share torchrun's stdout


def gloo_threads() -> int:
    tasks = os.listdir("/proc/self/task")
    return sum(open(f"/proc/self/task/{t}/comm").read().startswith(("pt_gloo", "gloo_"))
               for t in tasks)


at_exit = sys.argv[1:] == ["--at-exit"]
if at_exit:  # atexit runs last-registered first: this count comes after setup()'s shutdown
    atexit.register(lambda: say(f"rank {layout.rank}: gloo threads after shutdown "
                                f"{gloo_threads()}"))
layout = distributed.setup(2, "cpu", 60)
kept = []
try:
    with layout.tp.step("failing on one rank"):
        if layout.rank == 1:
            raise EngineError("rank 1 cannot go on")
except EngineError as e:
    kept.append(e)
say(f"rank {layout.rank}: {type(kept[0]).__name__}, gloo threads {gloo_threads()}")
if not at_exit:
    distributed.shutdown()
    say(f"rank {layout.rank}: gloo threads after shutdown {gloo_threads()}")
