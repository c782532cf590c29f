"""The CPU table of `make bench` (no CUDA): the chunked LM-head reference against full [N, V]
logits at V=128256, time and peak resident memory, each (variant, shape) in a fresh process
(``python -m benchmarks.bench_kernels --cpu-worker ...``)."""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.bench_env import progress
from benchmarks.bench_lm_head import lm_head_eager

REPO = Path(__file__).resolve().parents[1]
# (N, D) of the CPU comparison, at V=128256.
CPU_SHAPES = [(512, 1024), (2048, 1024)]
CPU_VOCAB = 128256


def _rss_kib(field: str) -> int:
    """VmRSS / VmHWM of this process, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_hwm() -> bool:
    """Reset the resident-set high-water mark (Linux >= 4.0); False where not permitted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_variant(variant: str, n: int, d: int, v: int):
    """The callable for one CPU variant on fresh float32 inputs (engine's CPU dtype)."""
    from answerdist.kernels.lm_head import lm_head_logprobs_reference

    g = torch.Generator().manual_seed(0)
    weight = torch.randn(v, d, generator=g).mul_(d**-0.5)
    hidden = torch.randn(n, d, generator=g)
    targets = torch.randint(0, v, (n, 1), generator=g)
    mask = torch.rand(v, generator=g) < 0.35
    idx = mask.nonzero()[:, 0]
    if variant == "full_logits":
        return lambda: lm_head_eager(hidden, weight, targets, idx)
    if variant == "chunked_reference":
        return lambda: lm_head_logprobs_reference(hidden, weight, targets, mask)
    raise ValueError(f"unknown CPU variant {variant!r}")


def cpu_worker(variant: str, n: int, d: int, v: int, threads: int = 1) -> dict:
    """Run in a fresh process: warm up on a tiny problem, then peak memory of one call and the
    median time of three, on ``threads`` intra-op threads (the caller's count is restored)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _cpu_measure(variant, n, d, v, threads)
    finally:  # called in-process by the tests: a leaked count changes every later result's bits
        torch.set_num_threads(previous)


def _cpu_measure(variant: str, n: int, d: int, v: int, threads: int) -> dict:
    cpu_variant(variant, 2, 8, 64)()  # thread pools and lazy initialisation, not measured
    fn = cpu_variant(variant, n, d, v)
    gc.collect()
    exact = _reset_hwm()
    before = _rss_kib("VmRSS")
    if not exact:
        import resource

        before = max(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    fn()
    # Linux batches RSS counters per thread (tens of KiB of slack), so a call that allocates
    # nothing can read a hair below zero.
    peak = max(0, _rss_kib("VmHWM") - before)
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1e3)
    return {"variant": variant, "N": n, "D": d, "V": v, "threads": threads,
            "ms": statistics.median(runs),
            "peak_extra_mib": peak / 1024,
            "memory_method": "VmHWM after clear_refs" if exact else "ru_maxrss (approximate)"}


def cpu_suite(threads: int) -> dict:
    """Chunked reference vs full logits at V=128256, each (variant, shape) in its own process."""
    rows = []
    for n, d in CPU_SHAPES:
        for variant in ("full_logits", "chunked_reference"):
            cmd = [sys.executable, "-m", "benchmarks.bench_kernels", "--cpu-threads",
                   str(threads), "--cpu-worker", variant, str(n), str(d), str(CPU_VOCAB)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                  cwd=REPO)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            progress("cpu", rows[-1])
    full_logits_mib = {(r["N"], r["D"]): r["peak_extra_mib"] for r in rows
                       if r["variant"] == "full_logits"}
    for r in rows:
        r["mem_fraction_of_full_logits"] = r["peak_extra_mib"] / full_logits_mib[(r["N"], r["D"])]
    return {"cpu_reference": rows}
