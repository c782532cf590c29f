"""Kernel 1 of `make bench`: the fused LM head -> log-probs against torch eager, torch.compile
of the same function and the chunked approach of Liger-Kernel and others, one table row per
(N, D, V) shape."""

from __future__ import annotations

import functools

import torch

from benchmarks.bench_env import Rotation, max_abs_diff, n_sets, peak_extra_mib, time_ms

# (N, D, V) of the full GPU table and of the dry run.
GPU_LM_SHAPES = [(n, 4096, v) for v in (100352, 128256) for n in (256, 4096, 16384)]
DRY_LM_SHAPES = [(1, 64, 300), (40, 72, 257)]
# The LM head's chunked peer: vocabulary rows per cuBLAS matmul (Liger-Kernel style).
CHUNKED_VOCAB = 16384


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
    from answerdist.kernels.lm_head import lm_head_logprobs_triton

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
    from answerdist.kernels._lm_head_triton import LMHeadConfig
    from answerdist.kernels.lm_head import lm_head_logprobs_reference

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
