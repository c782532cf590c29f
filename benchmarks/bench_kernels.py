"""`make bench`: the two Triton kernels against the torch paths and peers a user would pick.

    python -m benchmarks.bench_kernels            # full run (GPU table on CUDA, CPU table else);
                                                  # prints the table, writes nothing
    python -m benchmarks.bench_kernels --record   # also write benchmarks/results/<device>-<date>
                                                  # .json and this device's RESULTS.md section
    python -m benchmarks.bench_kernels --dry-run  # the whole GPU code path on tiny shapes; on a
                                                  # machine without CUDA under TRITON_INTERPRET
    python -m benchmarks.bench_kernels --lm-configs "128,256,64,2048,8,3;128,128,64,1024,8,4"
                                                  # also time other tiles (tuning a new GPU)

On CUDA:
* kernel 1 (fused LM head -> log-probs) at D=4096, V in {100352, 128256}, N in {256, 4096,
  16384}, bf16, against torch eager (bf16 matmul -> float32 log_softmax -> gather -> boundary
  logsumexp), torch.compile of the same function, and the chunked approach of Liger-Kernel and
  others (cuBLAS bf16 matmul over 16384-row vocabulary chunks, float32 online log-sum-exp,
  target logits from gathered weight rows): median milliseconds
  (``triton.testing.do_bench``, which also flushes L2 before every call), achieved TFLOP/s
  (2*N*D*V / time) against the measured bf16 matmul rate of the same GPU at the same shape, and
  peak extra memory (``torch.cuda.max_memory_allocated`` above what was allocated before the
  call, after ``reset_peak_memory_stats``);
* kernel 2 (tree attention) against ``scaled_dot_product_attention`` with a dense boolean mask
  and against FlexAttention (``torch.nn.attention.flex_attention``, compiled, with a block mask
  built from span_end once per row, its build time reported apart), at prompt 512/2048 + trie
  64/512 nodes (one sequence per row) and on rows packed like the engine's (40 x (150 + 50)
  and 16 x (450 + 50) tokens), 32 query heads (8 kv heads, expanded for SDPA outside the timed
  region), head_dim 128, bf16.

The issue's targets (LM head at N=4096, D=4096, V=128256 >= 70% of the bf16 matmul rate and
>= 1.3x the chunked peer; tree attention >= 1.5x FlexAttention on packed rows) are printed
with the measured ratios, met or not.
Inputs are rotated over several buffers between calls so that no call finds its inputs in
cache. Each kernel's output is also checked against the plain-torch reference, once per shape.

Without CUDA, kernel timings are impossible (the interpreter is ~200x slower than torch and
says nothing about a GPU), so the run compares what the engine does on CPU: the chunked LM-head
reference against full [N, V] logits at V=128256, time and peak memory, each variant in a fresh
process. Peak memory there is the resident-set high-water mark (VmHWM, reset through
/proc/self/clear_refs) above the resident set just before the call.

Results: printed. With ``--record`` also ``benchmarks/results/<device>-<date>.json`` and a
section per device in the tracked ``benchmarks/RESULTS.md`` (the latest run of a device
replaces its section); ``--out DIR`` writes both under DIR instead.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import gc
import json
import math
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
RESULTS_DIR = ROOT / "results"
RESULTS_MD = ROOT / "RESULTS.md"
NEEDS_CUDA = ("Kernel timings need CUDA: this machine has none, so only the CPU reference "
              "comparison ran (chunked LM head vs full logits).")

# (N, D, V) of the full GPU table and of the dry run.
GPU_LM_SHAPES = [(n, 4096, v) for v in (100352, 128256) for n in (256, 4096, 16384)]
DRY_LM_SHAPES = [(1, 64, 300), (40, 72, 257)]
# (sequences packed in the row, prompt, trie nodes, query heads, kv heads, head_dim): one
# sequence per row, and rows packed end to end as the engine packs them (40 x (150 + 50) and
# 16 x (450 + 50) tokens in T = 8000).
GPU_TREE_SHAPES = ([(1, p, n, 32, 8, 128) for p in (512, 2048) for n in (64, 512)]
                   + [(40, 150, 50, 32, 8, 128), (16, 450, 50, 32, 8, 128)])
DRY_TREE_SHAPES = [(1, 20, 8, 4, 2, 32), (1, 9, 30, 4, 1, 16), (3, 12, 6, 4, 2, 32)]
# The LM head's chunked peer: vocabulary rows per cuBLAS matmul (Liger-Kernel style).
CHUNKED_VOCAB = 16384
# The targets on H100/H200, bf16 (checked on the GPU table, reported met or not).
TARGET_LM_SHAPE = (4096, 4096, 128256)
TARGET_LM_OF_MATMUL = 0.70
TARGET_LM_VS_CHUNKED = 1.3
TARGET_TREE_VS_FLEX = 1.5
# (N, D) of the CPU comparison, at V=128256.
CPU_SHAPES = [(512, 1024), (2048, 1024)]
CPU_VOCAB = 128256


# --------------------------------------------------------------------------- environment

def _use_interpreter_without_cuda() -> None:
    """Dry run without CUDA: interpret the kernels. TRITON_INTERPRET=1 only works when set
    before triton is first imported (see kernels/interpreter.py), hence the early call."""
    from kernels.interpreter import interpret_without_cuda

    if not interpret_without_cuda():
        raise SystemExit("bench_kernels --dry-run: triton was imported before TRITON_INTERPRET=1 "
                         "could be set; run it as its own process (python -m "
                         "benchmarks.bench_kernels --dry-run)")


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


# --------------------------------------------------------------------------- kernel 1

def lm_head_eager(hidden, weight, targets, boundary_idx):
    """What the kernel replaces: bf16 matmul -> float32 log_softmax -> gather -> boundary lse."""
    logits = hidden @ weight.T
    logp = torch.log_softmax(logits.float(), dim=-1)
    target_logp = logp.gather(1, targets.clamp(min=0)).masked_fill(targets < 0, float("-inf"))
    return target_logp, torch.logsumexp(logp.index_select(1, boundary_idx), dim=-1)


@functools.cache
def compiled_lm_head_eager():
    """One torch.compile of ``lm_head_eager`` for all shapes (Inductor specialises per shape
    or goes dynamic as it sees fit; compile time stays out of the timings)."""
    return torch.compile(lm_head_eager)


def boundary_chunks(boundary_idx: torch.Tensor, v: int, chunk: int = CHUNKED_VOCAB) -> list:
    """The boundary ids of each vocabulary chunk, relative to the chunk (built once, outside
    the timed region, as a user of the chunked approach would)."""
    return [boundary_idx[(boundary_idx >= s) & (boundary_idx < s + chunk)] - s
            for s in range(0, v, chunk)]


def lm_head_chunked(hidden, weight, targets, chunks_boundary, chunk=CHUNKED_VOCAB):
    """The chunked peer (Liger-Kernel and others): cuBLAS bf16 matmul over vocabulary chunks,
    float32 online log-sum-exp over the whole vocabulary and over the boundary tokens (their
    per-chunk ids from ``boundary_chunks``), target logits from the gathered weight rows.
    Returns ``lm_head_eager``'s two log-prob tensors."""
    n = hidden.shape[0]
    lse = torch.full((n,), float("-inf"), device=hidden.device)
    blse = lse.clone()
    for i, start in enumerate(range(0, weight.shape[0], chunk)):
        logits = (hidden @ weight[start:start + chunk].T).float()
        lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=1))
        blse = torch.logaddexp(blse, torch.logsumexp(logits.index_select(1, chunks_boundary[i]),
                                                     dim=1))
    rows = weight[targets.clamp(min=0)].float()  # [N, K, D]
    target = torch.bmm(rows, hidden.float()[:, :, None])[..., 0]
    target = target.masked_fill(targets < 0, float("-inf"))
    return target - lse[:, None], blse - lse


def lm_head_fused(hidden, weight, targets, boundary_mask, config=None):
    """The kernel, returning the same two log-prob tensors as ``lm_head_eager``."""
    from kernels.lm_head import lm_head_logprobs_triton

    lse, target_logits, boundary_lse = lm_head_logprobs_triton(hidden, weight, targets,
                                                               boundary_mask, config=config)
    return target_logits - lse[:, None], boundary_lse - lse


def lm_head_inputs(n, d, v, device, dtype, seed=0):
    """Weight [V, D], a boundary mask over ~35% of the vocabulary (its index list for eager),
    and a Rotation of (hidden [N, D], targets [N, 1]) sets."""
    g = torch.Generator(device=device).manual_seed(seed)
    weight = (torch.randn(v, d, device=device, generator=g, dtype=dtype) * d**-0.5)
    mask = torch.rand(v, device=device, generator=g) < 0.35
    per_set = n * d * torch.finfo(dtype).bits // 8
    sets = [(torch.randn(n, d, device=device, generator=g, dtype=dtype),
             torch.randint(0, v, (n, 1), device=device, generator=g))
            for _ in range(n_sets(per_set, device))]
    return weight, mask, mask.nonzero()[:, 0], Rotation(sets)


def bench_lm_head_shape(n, d, v, device, dtype, use_compile, configs=()) -> dict:
    """One row of the kernel-1 table (plus the fused kernel under each extra config)."""
    from kernels._lm_head_triton import LMHeadConfig
    from kernels.lm_head import lm_head_logprobs_reference

    weight, mask, idx, rot = lm_head_inputs(n, d, v, device, dtype)
    compiled = compiled_lm_head_eager() if use_compile else None

    def call(impl, boundary):
        def fn():
            hidden, targets = rot()
            return impl(hidden, weight, targets, boundary)
        return fn

    variants = {"fused": call(lm_head_fused, mask), "eager": call(lm_head_eager, idx),
                "chunked": call(lm_head_chunked, boundary_chunks(idx, v)),
                "matmul": lambda: rot()[0] @ weight.T}
    if compiled is not None:
        variants["compile"] = call(compiled, idx)
    flop = 2.0 * n * d * v
    row = {"N": n, "D": d, "V": v, "dtype": str(dtype).removeprefix("torch.")}
    for name, fn in variants.items():
        fn()  # compile / autotune / first-launch costs stay out of the timings
        row[f"{name}_ms"] = time_ms(fn, device)
        row[f"{name}_tflops"] = flop / row[f"{name}_ms"] / 1e9
        row[f"{name}_peak_mib"] = peak_extra_mib(fn, device)
    row["fused_vs_eager_speedup"] = row["eager_ms"] / row["fused_ms"]
    row["fused_vs_chunked_speedup"] = row["chunked_ms"] / row["fused_ms"]
    if use_compile:
        row["fused_vs_compile_speedup"] = row["compile_ms"] / row["fused_ms"]
    row["fused_fraction_of_matmul_rate"] = row["fused_tflops"] / row["matmul_tflops"]
    if row["fused_peak_mib"] is not None and row["eager_peak_mib"]:
        row["fused_mem_fraction_of_eager"] = row["fused_peak_mib"] / row["eager_peak_mib"]
    hidden, targets = rot.sets[0]
    got = lm_head_fused(hidden, weight, targets, mask)
    lse, tl, blse = lm_head_logprobs_reference(hidden, weight, targets, mask)
    row["max_abs_diff_vs_reference"] = max(max_abs_diff(got[0], tl - lse[:, None]),
                                           max_abs_diff(got[1], blse - lse))
    peer = lm_head_chunked(hidden, weight, targets, boundary_chunks(idx, v))
    row["chunked_max_abs_diff_vs_reference"] = max(max_abs_diff(peer[0], tl - lse[:, None]),
                                                   max_abs_diff(peer[1], blse - lse))
    row["config_sweep"] = []
    for fields in configs:
        cfg = LMHeadConfig(*fields)
        fn = call(lambda h, w, t, m, cfg=cfg: lm_head_fused(h, w, t, m, cfg), mask)
        ms = time_ms(fn, device)
        row["config_sweep"].append({"config": list(fields), "ms": ms, "tflops": flop / ms / 1e9})
    return row


def square_matmul_tflops(device, dtype, size=8192) -> float | None:
    """Measured bf16 matmul rate of this GPU on a large square problem (its practical peak)."""
    if device.type != "cuda":
        return None
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2.0 * size**3 / time_ms(lambda: a @ b, device) / 1e9


# --------------------------------------------------------------------------- kernel 2

def random_trie_parents(rng: random.Random, n: int, max_depth: int = 8) -> list[int]:
    """A wide, shallow answer trie (depth <= max_depth) of n nodes in DFS pre-order."""
    from kernels.tree_attention import dfs_preorder

    parents, depth = [], []
    for i in range(n):
        choices = [j for j in range(max(0, i - 64), i) if depth[j] < max_depth]
        p = rng.choice(choices) if choices and rng.random() < 0.85 else -1
        parents.append(p)
        depth.append(0 if p < 0 else depth[p] + 1)
    order = dfs_preorder(parents)
    new_id = {old: new for new, old in enumerate(order)}
    return [new_id[parents[old]] if parents[old] >= 0 else -1 for old in order]


def packed_span_end(seqs: int, prompt: int, nodes: int, seed: int = 0) -> torch.Tensor:
    """span_end [1, T] of ``seqs`` sequences (prompt + random trie each) end to end, the
    engine's packed layout: every sequence sees only itself."""
    from kernels.tree_attention import trie_span_end

    rng = random.Random(seed)
    parts = [trie_span_end(prompt, random_trie_parents(rng, nodes)) + i * (prompt + nodes)
             for i in range(seqs)]
    return torch.cat(parts)[None]


def tree_inputs(seqs, prompt, nodes, hq, hkv, dh, device, dtype, seed=0):
    """span_end [1, T], the dense mask [T, T] for SDPA, and a Rotation of (q, k, v, k and v
    expanded to hq heads) sets."""
    from kernels.tree_attention import span_end_visible

    span_end = packed_span_end(seqs, prompt, nodes, seed).to(device)
    t = span_end.shape[1]
    g = torch.Generator(device=device).manual_seed(seed)
    per_set = (2 * hq + 2 * hkv) * t * dh * torch.finfo(dtype).bits // 8
    sets = []
    for _ in range(n_sets(per_set, device)):
        q = torch.randn(1, hq, t, dh, device=device, dtype=dtype, generator=g)
        k, v = (torch.randn(1, hkv, t, dh, device=device, dtype=dtype, generator=g)
                for _ in range(2))
        sets.append((q, k, v, k.repeat_interleave(hq // hkv, 1),
                     v.repeat_interleave(hq // hkv, 1)))
    return span_end, span_end_visible(span_end[0]), Rotation(sets)


def flex_block_mask(span_end: torch.Tensor):
    """FlexAttention's block mask for the tree pattern ``j <= i < span_end[b, j]``."""
    from torch.nn.attention.flex_attention import create_block_mask

    def tree_mask(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx < span_end[b, kv_idx])

    b, t = span_end.shape
    return create_block_mask(tree_mask, b, None, t, t, device=span_end.device)


@functools.cache
def flex_attention_fn(use_compile: bool):
    """FlexAttention, compiled as its documentation asks (eager is a slow reference); one
    compiled function for all shapes."""
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    warnings.filterwarnings("ignore", message=".*flex_attention.*")
    return torch.compile(flex_attention, dynamic=False) if use_compile else flex_attention


def bench_tree_shape(seqs, prompt, nodes, hq, hkv, dh, device, dtype, configs=(),
                     use_compile=True) -> dict:
    """One row of the kernel-2 table (plus the kernel under each extra config)."""
    import torch.nn.functional as F

    from kernels._tree_attention_triton import TreeAttentionConfig
    from kernels.tree_attention import tree_attention_reference, tree_attention_triton

    span_end, dense, rot = tree_inputs(seqs, prompt, nodes, hq, hkv, dh, device, dtype)
    scale = dh**-0.5
    flex = flex_attention_fn(use_compile)
    start = time.perf_counter()
    block_mask = flex_block_mask(span_end)
    mask_ms = (time.perf_counter() - start) * 1e3

    def fused(config=None):
        q, k, v, _, _ = rot()
        return tree_attention_triton(q, k, v, span_end, scale, config=config)

    def sdpa():
        q, _, _, k_rep, v_rep = rot()
        return F.scaled_dot_product_attention(q, k_rep, v_rep, attn_mask=dense, scale=scale)

    def flex_attention():
        q, k, v, _, _ = rot()
        return flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True)

    visible_pairs = int(dense.sum())
    t = span_end.shape[1]
    row = {"sequences": seqs, "prompt": prompt, "trie_nodes": nodes, "T": t, "heads": hq,
           "kv_heads": hkv, "head_dim": dh, "dtype": str(dtype).removeprefix("torch."),
           "visible_fraction": visible_pairs / dense.numel(),
           "flex_block_mask_ms": mask_ms, "flex_compiled": use_compile}
    flop = 4.0 * hq * dh * visible_pairs  # useful work: QK^T and PV over visible pairs only
    for name, fn in (("fused", fused), ("sdpa_dense_mask", sdpa), ("flex", flex_attention)):
        fn()
        row[f"{name}_ms"] = time_ms(fn, device)
        row[f"{name}_useful_tflops"] = flop / row[f"{name}_ms"] / 1e9
        row[f"{name}_peak_mib"] = peak_extra_mib(fn, device)
    row["fused_vs_sdpa_speedup"] = row["sdpa_dense_mask_ms"] / row["fused_ms"]
    row["fused_vs_flex_speedup"] = row["flex_ms"] / row["fused_ms"]
    q, k, v = rot.sets[0][:3]
    want = tree_attention_reference(q, k, v, span_end, scale)
    row["max_abs_diff_vs_reference"] = max_abs_diff(
        tree_attention_triton(q, k, v, span_end, scale), want)
    row["flex_max_abs_diff_vs_reference"] = max_abs_diff(
        flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True), want)
    row["config_sweep"] = []
    for fields in configs:
        cfg = TreeAttentionConfig(*fields)
        ms = time_ms(lambda cfg=cfg: fused(cfg), device)
        row["config_sweep"].append({"config": list(fields), "ms": ms,
                                    "useful_tflops": flop / ms / 1e9})
    return row


# --------------------------------------------------------------------------- GPU suite

def gpu_suite(device: torch.device, dry_run: bool, use_compile: bool, lm_configs=(),
              tree_configs=()) -> dict:
    """Both kernel tables. Dry run: tiny shapes (interpreted without CUDA), same code path.

    ``lm_configs`` / ``tree_configs``: extra tile configurations (tuples of the kernels' config
    fields) timed beside the defaults, for tuning on a new GPU without editing code.
    """
    dtype = torch.bfloat16
    lm_shapes = DRY_LM_SHAPES if dry_run else GPU_LM_SHAPES
    tree_shapes = DRY_TREE_SHAPES if dry_run else GPU_TREE_SHAPES
    result = {"matmul_8192_tflops": square_matmul_tflops(device, dtype), "lm_head": [],
              "tree_attention": []}
    for n, d, v in lm_shapes:
        result["lm_head"].append(bench_lm_head_shape(n, d, v, device, dtype, use_compile,
                                                     lm_configs))
        _progress("lm_head", result["lm_head"][-1])
    for shape in tree_shapes:
        result["tree_attention"].append(bench_tree_shape(*shape, device, dtype, tree_configs,
                                                         use_compile))
        _progress("tree_attention", result["tree_attention"][-1])
    return result


def _progress(kind: str, row: dict) -> None:
    """One line per finished row, so a long GPU run shows it is alive."""
    keys = [k for k in row if (k == "ms" or k.endswith("_ms") or k.endswith("speedup")
                               or k == "peak_extra_mib") and isinstance(row[k], float)]
    shape = {k: row[k] for k in list(row)[:4]}
    print(kind, shape, {k: round(row[k], 3) for k in keys}, flush=True)


# --------------------------------------------------------------------------- CPU suite

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
    from kernels.lm_head import lm_head_logprobs_reference

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
                                  cwd=ROOT.parent)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            _progress("cpu", rows[-1])
    full_logits_mib = {(r["N"], r["D"]): r["peak_extra_mib"] for r in rows
                       if r["variant"] == "full_logits"}
    for r in rows:
        r["mem_fraction_of_full_logits"] = r["peak_extra_mib"] / full_logits_mib[(r["N"], r["D"])]
    return {"cpu_reference": rows}


# --------------------------------------------------------------------------- reporting

def _fmt(x, digits=2) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) >= 0.01 or x == 0 else f"{x:.1e}"
    return str(x)


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> list[str]:
    head = "| " + " | ".join(title for title, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(key)) for _, key in columns) + " |" for r in rows]
    return [head, rule, *body]


LM_COLUMNS = [("N", "N"), ("D", "D"), ("V", "V"), ("fused ms", "fused_ms"),
              ("eager ms", "eager_ms"), ("compile ms", "compile_ms"),
              ("chunked ms", "chunked_ms"),
              ("x eager", "fused_vs_eager_speedup"), ("x compile", "fused_vs_compile_speedup"),
              ("x chunked", "fused_vs_chunked_speedup"),
              ("fused TFLOP/s", "fused_tflops"), ("matmul TFLOP/s", "matmul_tflops"),
              ("of matmul", "fused_fraction_of_matmul_rate"),
              ("fused MiB", "fused_peak_mib"), ("eager MiB", "eager_peak_mib"),
              ("compile MiB", "compile_peak_mib"), ("chunked MiB", "chunked_peak_mib"),
              ("mem of eager", "fused_mem_fraction_of_eager"),
              ("max abs diff", "max_abs_diff_vs_reference"),
              ("chunked max abs diff", "chunked_max_abs_diff_vs_reference")]
TREE_COLUMNS = [("seqs", "sequences"), ("prompt", "prompt"), ("trie", "trie_nodes"),
                ("T", "T"), ("heads", "heads"),
                ("kv", "kv_heads"), ("Dh", "head_dim"), ("fused ms", "fused_ms"),
                ("SDPA+mask ms", "sdpa_dense_mask_ms"), ("x SDPA", "fused_vs_sdpa_speedup"),
                ("flex ms", "flex_ms"), ("x flex", "fused_vs_flex_speedup"),
                ("flex mask ms", "flex_block_mask_ms"),
                ("fused MiB", "fused_peak_mib"), ("SDPA MiB", "sdpa_dense_mask_peak_mib"),
                ("flex MiB", "flex_peak_mib"), ("max abs diff", "max_abs_diff_vs_reference"),
                ("flex max abs diff", "flex_max_abs_diff_vs_reference")]
TARGET_COLUMNS = [("target", "target"), ("measured", "measured"), ("needed", "needed"),
                  ("met", "met")]
CPU_COLUMNS = [("variant", "variant"), ("N", "N"), ("D", "D"), ("V", "V"),
               ("threads", "threads"), ("ms", "ms"),
               ("peak extra MiB", "peak_extra_mib"),
               ("of full logits", "mem_fraction_of_full_logits")]


def targets(result: dict) -> list[dict]:
    """The issue's targets against this run's rows: measured ratio, threshold, met or not
    ('n/a' where the row is missing, and for a dry run, whose timings mean nothing)."""
    def check(name, value, needed):
        if value is None or result["mode"] != "gpu":
            met = "n/a"
        else:
            met = "yes" if value >= needed else "NO"
        return {"target": name, "measured": value, "needed": needed, "met": met}

    n, d, v = TARGET_LM_SHAPE
    lm = next((r for r in result.get("lm_head", []) if (r["N"], r["D"], r["V"]) == (n, d, v)),
              {})
    out = [check(f"LM head N={n} D={d} V={v}: fraction of the bf16 matmul rate",
                 lm.get("fused_fraction_of_matmul_rate"), TARGET_LM_OF_MATMUL),
           check(f"LM head N={n} D={d} V={v}: speedup over the chunked peer",
                 lm.get("fused_vs_chunked_speedup"), TARGET_LM_VS_CHUNKED)]
    packed = [r for r in result.get("tree_attention", []) if r["sequences"] > 1]
    for r in packed or [{}]:
        shape = (f"{r['sequences']} x ({r['prompt']} + {r['trie_nodes']}), T={r['T']}"
                 if r else "packed rows")
        out.append(check(f"tree attention {shape}: speedup over FlexAttention",
                         r.get("fused_vs_flex_speedup"), TARGET_TREE_VS_FLEX))
    return out


def render_section(result: dict) -> str:
    """This run's section of RESULTS.md."""
    env = result["environment"]
    lines = [f"## {result['device_slug']} ({result['mode']}, {result['date']})", "",
             f"Device: {env['device']}; torch {env['torch']}, CUDA {env['cuda']}, "
             f"triton {env['triton']}, Python {env['python']}, {env['cpu_count']} CPUs, "
             f"load average {_fmt(env.get('load_average_1min'))} at the start.",
             ""]
    lines += [f"{note}" for note in result["notes"]] + [""]
    if result.get("matmul_8192_tflops"):
        lines += [f"Measured bf16 matmul rate (8192^3): "
                  f"{result['matmul_8192_tflops']:.0f} TFLOP/s.", ""]
    if result.get("lm_head"):
        lines += ["Kernel 1, fused LM head -> log-probs (bf16; ms are medians; TFLOP/s = "
                  "2NDV/time; MiB = peak extra memory; 'of matmul' = fused rate / torch bf16 "
                  "matmul rate at the same shape):", ""]
        lines += _table(result["lm_head"], LM_COLUMNS) + [""]
    if result.get("tree_attention"):
        lines += ["Kernel 2, tree attention vs SDPA with a dense boolean mask and FlexAttention "
                  "with a block mask from span_end (bf16; seqs > 1: rows packed like the "
                  "engine's; flex mask ms = building the block mask, once per row, not in "
                  "flex ms):", ""]
        lines += _table(result["tree_attention"], TREE_COLUMNS) + [""]
    if result.get("targets"):
        lines += ["Targets (H100/H200, bf16, one run):", ""]
        lines += _table(result["targets"], TARGET_COLUMNS) + [""]
    lines += _sweep_lines(result)
    if result.get("cpu_reference"):
        lines += [f"CPU: chunked LM-head reference (chunks of 4096 vocabulary rows) vs full "
                  f"[N, V] float32 logits, V={CPU_VOCAB}, float32; ms = median of 3; peak "
                  f"extra MiB = {result['cpu_reference'][0]['memory_method']} above the "
                  f"resident set before the call, one fresh process per row:", ""]
        lines += _table(result["cpu_reference"], CPU_COLUMNS) + [""]
    return "\n".join(lines)


def _sweep_lines(result: dict) -> list[str]:
    """Extra-config timings (``--lm-configs`` / ``--tree-configs``), one table if any."""
    rows = []
    for kind, shape_keys, rate in (("lm_head", ("N", "D", "V"), "tflops"),
                                   ("tree_attention", ("sequences", "prompt", "trie_nodes"),
                                    "useful_tflops")):
        for r in result.get(kind, []):
            for c in r.get("config_sweep", []):
                rows.append({"kernel": kind, "shape": " ".join(f"{k}={r[k]}" for k in shape_keys),
                             "config": ",".join(map(str, c["config"])), "ms": c["ms"],
                             "default_ms": r["fused_ms"], "tflops": c[rate]})
    if not rows:
        return []
    columns = [("kernel", "kernel"), ("shape", "shape"), ("config", "config"), ("ms", "ms"),
               ("default config ms", "default_ms"), ("TFLOP/s", "tflops")]
    return ["Extra tile configurations:", "", *_table(rows, columns), ""]


def update_results_md(path: Path, slug: str, section: str) -> None:
    """Replace this device's section of RESULTS.md (or add it), keeping the others."""
    header = ("# Kernel benchmarks\n\nWritten by `make bench BENCH_ARGS=--record` (`python -m "
              "benchmarks.bench_kernels --record`): one section per device, the latest run of a "
              "device replacing its previous section; raw numbers in `benchmarks/results/`.\n")
    text = path.read_text() if path.exists() else header
    begin, end = f"<!-- begin {slug} -->", f"<!-- end {slug} -->"
    block = f"{begin}\n{section}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else \
        text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def write_results(result: dict, results_dir: Path, results_md: Path) -> Path:
    """JSON under results_dir, section in results_md; returns the JSON path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{result['device_slug']}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    update_results_md(results_md, result["device_slug"], render_section(result))
    return path


# --------------------------------------------------------------------------- entry point

def _configs(text: str) -> tuple[tuple[int, ...], ...]:
    """'128,128,64,2048,8,3;64,128,64,2048,4,3' -> ((128, 128, ...), (64, 128, ...))."""
    return tuple(tuple(int(x) for x in part.split(",")) for part in text.split(";") if part)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_kernels",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="run the GPU code path on tiny shapes (interpreted without CUDA)")
    parser.add_argument("--record", action="store_true",
                        help="write the JSON under benchmarks/results/ and this device's "
                             "section of the tracked benchmarks/RESULTS.md (default: print only)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the JSON and a RESULTS.md under this directory instead")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="time the torch.compile baseline (default: yes on CUDA, no in a "
                             "dry run without CUDA, where Inductor takes ~20 s per shape)")
    parser.add_argument("--lm-configs", type=_configs, default=(),
                        help="extra LM-head kernel tiles to time, ';'-separated, each "
                             "'block_n,block_v,block_k,split_v,num_warps,num_stages'")
    parser.add_argument("--tree-configs", type=_configs, default=(),
                        help="extra tree-attention tiles to time, ';'-separated, each "
                             "'block_m,block_n,block_scan,num_warps,num_stages[,qk_chunk]'")
    parser.add_argument("--cpu-threads", type=int, default=1,
                        help="intra-op threads for the CPU comparison (default 1: on a shared "
                             "machine, OpenMP barriers across busy cores distort the timings "
                             "far more than a second thread helps)")
    parser.add_argument("--cpu-worker", nargs=4, metavar=("VARIANT", "N", "D", "V"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """The benchmark itself; returns the result record."""
    has_cuda = torch.cuda.is_available()
    device = torch.device("cuda" if has_cuda else "cpu")
    if args.dry_run:
        _use_interpreter_without_cuda()  # before environment() imports triton
    result = {"date": _dt.date.today().isoformat(), "device_slug": device_slug(device),
              "environment": environment(device), "notes": []}
    use_compile = has_cuda if args.compile is None else args.compile
    if args.dry_run:
        result["mode"] = "dry run" + ("" if has_cuda else ", Triton interpreter on CPU")
        result["notes"].append("Dry run on tiny shapes: checks the code path, not performance.")
        if not use_compile:
            result["notes"].append("torch.compile baseline skipped.")
        result.update(gpu_suite(device, True, use_compile, args.lm_configs, args.tree_configs))
    elif has_cuda:
        result["mode"] = "gpu"
        result.update(gpu_suite(device, False, use_compile, args.lm_configs, args.tree_configs))
    if result.get("lm_head") or result.get("tree_attention"):
        result["targets"] = targets(result)
    else:
        result["mode"] = "cpu reference"
        result["notes"].append(NEEDS_CUDA)
        print(NEEDS_CUDA, flush=True)
        result.update(cpu_suite(args.cpu_threads))
    return result


def report(result: dict, record: bool, out: Path | None) -> Path | None:
    """Print this run's section; write the JSON and the RESULTS.md section only when asked
    (``--record``: the tracked benchmarks/RESULTS.md; ``--out DIR``: under DIR). Returns the
    JSON path written, if any."""
    print()
    print(render_section(result))
    if not (record or out):
        print("(printed only; --record writes benchmarks/results/ and this device's section of "
              "benchmarks/RESULTS.md, --out DIR writes them under DIR)")
        return None
    results_md = out / "RESULTS.md" if out else RESULTS_MD
    path = write_results(result, out / "results" if out else RESULTS_DIR, results_md)
    print(f"wrote {path} and the {result['device_slug']} section of {results_md}")
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cpu_worker:
        variant, n, d, v = args.cpu_worker
        print(json.dumps(cpu_worker(variant, int(n), int(d), int(v), args.cpu_threads)))
        return 0
    report(run(args), args.record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
