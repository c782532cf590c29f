"""The benchmarks' environment and measurement helpers: the device and software versions
recorded with every result, the device's file-name slug, and the timing, memory and accuracy
measurements both kernel suites share."""

from __future__ import annotations

import gc
import math
import os
import platform
import re
import statistics
import time

import torch

# --------------------------------------------------------------------------- environment

def use_interpreter_without_cuda() -> None:
    """Dry run without CUDA: interpret the kernels. TRITON_INTERPRET=1 only works when set
    before triton is first imported (see kernels/interpreter.py), hence the early call."""
    from answerdist.kernels.interpreter import interpret_without_cuda

    if not interpret_without_cuda():
        raise SystemExit("bench_kernels --dry-run: triton was imported before TRITON_INTERPRET=1 "
                         "could be set; run it as its own process (python -m "
                         "benchmarks.bench_kernels --dry-run)")


def default_device() -> torch.device:
    """The device a benchmark runs on: CUDA where there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def environment(device: torch.device) -> dict:
    """Device name and software versions, recorded with every result."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        platform.processor() or platform.machine())
    return {
        "device": name,
        "device_type": device.type,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        # Other work on the machine skews CPU timings; recorded so a reader can tell.
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def device_slug(device: torch.device) -> str:
    """File-name form of the device: 'cpu', or e.g. 'nvidia-h100-80gb-hbm3'."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


# --------------------------------------------------------------------------- measurement

class Rotation:
    """Cycles through several input sets, so consecutive calls never reuse cached inputs."""

    def __init__(self, sets: list[tuple]):
        self.sets, self.i = sets, 0

    def __call__(self) -> tuple:
        self.i = (self.i + 1) % len(self.sets)
        return self.sets[self.i]


def n_sets(bytes_per_set: int, device: torch.device) -> int:
    """Enough input sets to cover 256 MiB (several L2s), between 2 and 8; 2 on CPU."""
    if device.type != "cuda":
        return 2
    return max(2, min(8, math.ceil((256 << 20) / max(1, bytes_per_set))))


def time_ms(fn, device: torch.device) -> float:
    """Median milliseconds: ``triton.testing.do_bench`` on CUDA (warm-up, L2 flushed before
    each call); on CPU (dry run only) the median of a few perf_counter runs after a warm-up."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=100, rep=500, return_mode="median"))
    fn()
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1e3)
    return statistics.median(runs)


def peak_extra_mib(fn, device: torch.device) -> float | None:
    """Peak CUDA memory allocated during one call, above what was allocated before it (outputs
    included). None on CPU, where the dry run does not measure memory."""
    if device.type != "cuda":
        return None
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del out
    return peak / 2**20


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| over finite entries (both -inf counts as equal)."""
    a, b = a.double(), b.double()
    both = torch.isfinite(a) & torch.isfinite(b)
    if not bool(torch.equal(torch.isfinite(a), torch.isfinite(b))):
        return float("inf")
    return float((a[both] - b[both]).abs().max()) if bool(both.any()) else 0.0


def square_matmul_tflops(device, dtype, size=8192) -> float | None:
    """Measured bf16 matmul rate of this GPU on a large square problem (its practical peak)."""
    if device.type != "cuda":
        return None
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2.0 * size**3 / time_ms(lambda: a @ b, device) / 1e9


def progress(kind: str, row: dict) -> None:
    """One line per finished row, so a long GPU run shows it is alive."""
    keys = [k for k in row if (k == "ms" or k.endswith("_ms") or k.endswith("speedup")
                               or k == "peak_extra_mib") and isinstance(row[k], float)]
    shape = {k: row[k] for k in list(row)[:4]}
    print(kind, shape, {k: round(row[k], 3) for k in keys}, flush=True)
