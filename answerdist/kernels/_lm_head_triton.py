"""Triton kernels behind ``answerdist.kernels.lm_head.lm_head_logprobs_triton``.

Imported lazily (only by the Triton path): CPU users never import triton, and tests can set
``TRITON_INTERPRET=1`` before triton is first imported (see ``kernels/interpreter.py``).

Three launches, none of which writes [N, V] logits to global memory:

1. ``_lse_partials_kernel``, grid (vocabulary splits, row blocks). A program owns BLOCK_N rows
   and one split of ``split_v`` vocabulary entries. For each BLOCK_V tile of its split, in
   order, it computes the [BLOCK_N, BLOCK_V] logits tile in registers (H @ W^T over D in
   BLOCK_K steps, float32 accumulation) and folds it into a running (max, sum) for the whole
   vocabulary and, restricted to the boundary mask, for the boundary subset. It writes four
   floats per row and split.
2. ``_merge_kernel``: one program per row block merges the splits' partials in split order.
3. ``_target_logits_kernel``: gathers W[t] for each target and dots it with the row (float32).

Why splits: at N=256 one program per row block would leave most SMs idle. The split is still
deterministic and batch-invariant because the number of splits, the tiles and the merge order
depend only on (D, V, dtype, GPU architecture), never on N, and there are no atomics: a row's
bits do not depend on which rows share its launch. Split partials cost 16 bytes per row and
split.

Grid order: axis 0 (fastest-launched) is the split, so the programs resident at once share a
few row blocks of H (kept in L2) and stream different parts of W; each W tile is then read from
DRAM about once per wave of row blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from answerdist.kernels import _triton_common as common
from answerdist.kernels._triton_common import INTERPRET, dot, soft_cap


@dataclass(frozen=True)
class LMHeadConfig:
    """Tile sizes and launch parameters. Must never be chosen from N (batch invariance)."""

    block_n: int
    block_v: int
    block_k: int
    split_v: int  # vocabulary entries per split program; a multiple of block_v
    num_warps: int = 8
    num_stages: int = 3


# Per-architecture, per-dtype tiles: (block_n, block_v, block_k, split_v, num_warps,
# num_stages). bf16: 128x128x64 tensor-core tiles (wgmma on sm_90), 2048-entry vocabulary
# splits (63 splits at V=128256, so even N=256 fills ~126 SMs). float32: exact ("ieee") dots on
# CUDA cores, whose operands live in registers: block_k 16 keeps them from spilling (32 spilled
# 8-16 bytes per thread). Checked with `python -m benchmarks.native_report`; sm_80 tiles also fit
# the 99 KiB of shared memory of sm_86 / sm_89.
TILES = {
    (90, torch.bfloat16): (128, 128, 64, 2048, 8, 3),
    (80, torch.bfloat16): (128, 128, 64, 2048, 8, 3),
    (90, torch.float32): (64, 64, 16, 2048, 4, 3),
    (80, torch.float32): (64, 64, 16, 2048, 4, 2),
}


def default_config(d: int, v: int, dtype: torch.dtype, arch: int = 90) -> LMHeadConfig:
    """Tiles from (D, V, dtype, architecture, interpreter) only, never from N (batch
    invariance). Under the interpreter: small tiles, so that small test shapes still cross
    several tiles, K steps and splits."""
    del d, v
    if INTERPRET:
        return LMHeadConfig(block_n=16, block_v=32, block_k=32, split_v=64, num_warps=1,
                            num_stages=1)
    return LMHeadConfig(*TILES[(arch, dtype)])


@triton.jit
def _online_fold(m, s, x):
    """Fold a [rows, cols] tile x (may hold -inf) into running max m and scaled sum s."""
    m_new = tl.maximum(m, tl.max(x, axis=1))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # no (-inf) - (-inf) = NaN
    s = s * tl.exp(m - m_ref) + tl.sum(tl.exp(x - m_ref[:, None]), axis=1)
    return m_new, s


@triton.jit
def _empty_lse_pairs(BLOCK: tl.constexpr):
    """Running (max, sum) of nothing yet, for the whole vocabulary and for its boundary subset."""
    m = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    s = tl.zeros([BLOCK], dtype=tl.float32)
    return m, s, m, s


@triton.jit
def _pair_fold(m, s, pm, ps):
    """Merge a partial (pm, ps) into the running (m, s) of the same rows."""
    m_new = tl.maximum(m, pm)
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    s = s * tl.exp(m - m_ref) + ps * tl.exp(pm - m_ref)
    return m_new, s


@triton.jit
def _logits_tile(h_ptr, w_ptr, row0, v0, N, V, D, stride_hn, stride_hd, stride_wv, stride_wd,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                 F32_DOT: tl.constexpr, IEEE: tl.constexpr):
    """[BLOCK_N, BLOCK_V] float32 logits H[row0:+BLOCK_N] @ W[v0:+BLOCK_V]^T, reducing D in
    BLOCK_K steps. 64-bit scalar bases (W can exceed 2**31 elements), 32-bit tile offsets."""
    offs_r = tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_V)
    offs_k = tl.arange(0, BLOCK_K)
    row_ok = row0 + offs_r < N
    col_ok = v0 + offs_c < V
    h_ptrs = (h_ptr + tl.cast(row0, tl.int64) * stride_hn
              + offs_r[:, None] * stride_hn + offs_k[None, :] * stride_hd)
    w_ptrs = (w_ptr + tl.cast(v0, tl.int64) * stride_wv
              + offs_c[None, :] * stride_wv + offs_k[:, None] * stride_wd)
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        k_ok = k0 + offs_k < D
        h = tl.load(h_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = dot(h, w, acc, F32_DOT, IEEE)
        h_ptrs += BLOCK_K * stride_hd
        w_ptrs += BLOCK_K * stride_wd
    return acc


@triton.jit
def _lse_partials_kernel(h_ptr, w_ptr, bmask_ptr, part_ptr, N, V, D, S, softcap,
                         stride_hn, stride_hd, stride_wv, stride_wd, SOFTCAP: tl.constexpr,
                         SPLIT_V: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                         BLOCK_K: tl.constexpr, F32_DOT: tl.constexpr, IEEE: tl.constexpr):
    """Per (split, row block): running (max, sum) over the split's vocabulary, all and boundary.

    Partials layout: part[q, split, row] with q = 0 max, 1 sum, 2 boundary max, 3 boundary sum.
    SOFTCAP: every logit is soft-capped first, the boundary ones included.
    """
    split = tl.program_id(0)
    row0 = tl.program_id(1) * BLOCK_N
    rows = row0 + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    m, s, mb, sb = _empty_lse_pairs(BLOCK_N)
    v_start = split * SPLIT_V
    v_stop = tl.minimum(v_start + SPLIT_V, V)
    for v0 in range(v_start, v_stop, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        logits = _logits_tile(h_ptr, w_ptr, row0, v0, N, V, D, stride_hn, stride_hd, stride_wv,
                              stride_wd, BLOCK_N, BLOCK_V, BLOCK_K, F32_DOT, IEEE)
        if SOFTCAP:
            logits = soft_cap(logits, softcap)
        logits = tl.where(col_ok[None, :], logits, float("-inf"))
        m, s = _online_fold(m, s, logits)
        is_boundary = tl.load(bmask_ptr + cols, mask=col_ok, other=0) != 0
        mb, sb = _online_fold(mb, sb, tl.where(is_boundary[None, :], logits, float("-inf")))
    base = part_ptr + split * N + rows
    plane = S * N
    tl.store(base, m, mask=row_ok)
    tl.store(base + plane, s, mask=row_ok)
    tl.store(base + 2 * plane, mb, mask=row_ok)
    tl.store(base + 3 * plane, sb, mask=row_ok)


@triton.jit
def _merge_kernel(part_ptr, lse_ptr, blse_ptr, N, S, BLOCK: tl.constexpr):
    """Merge the S split partials of each row in split order (fixed, N-independent)."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = rows < N
    m, s, mb, sb = _empty_lse_pairs(BLOCK)
    plane = S * N
    for split in range(0, S):
        base = part_ptr + split * N + rows
        m, s = _pair_fold(m, s, tl.load(base, mask=ok, other=float("-inf")),
                          tl.load(base + plane, mask=ok, other=0.0))
        mb, sb = _pair_fold(mb, sb, tl.load(base + 2 * plane, mask=ok, other=float("-inf")),
                            tl.load(base + 3 * plane, mask=ok, other=0.0))
    # log of a where()-guarded sum: rows past N and empty boundary sets have sum 0.
    lse = m + tl.log(tl.where(s > 0, s, 1.0))
    blse = tl.where(mb == float("-inf"), float("-inf"), mb + tl.log(tl.where(sb > 0, sb, 1.0)))
    tl.store(lse_ptr + rows, lse, mask=ok)
    tl.store(blse_ptr + rows, blse, mask=ok)


@triton.jit
def _target_logits_kernel(h_ptr, w_ptr, t_ptr, out_ptr, D, K, softcap,
                          stride_hn, stride_hd, stride_wv, stride_wd, stride_tn, stride_tk,
                          SOFTCAP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[row, t] = h_row · W[target] in float32 (gathered rows), soft-capped with SOFTCAP,
    -inf for padding (-1)."""
    row = tl.program_id(0)
    ts = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = ts < K
    tid = tl.load(t_ptr + row * stride_tn + ts * stride_tk, mask=t_ok, other=-1)
    valid = tid >= 0
    w_rows = w_ptr + tl.where(valid, tid, 0).to(tl.int64)[:, None] * stride_wv
    h_row = h_ptr + row.to(tl.int64) * stride_hn
    acc = tl.zeros([BLOCK_T], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        d_ok = ds < D
        h = tl.load(h_row + ds * stride_hd, mask=d_ok, other=0.0).to(tl.float32)
        w = tl.load(w_rows + ds[None, :] * stride_wd, mask=valid[:, None] & d_ok[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(w * h[None, :], axis=1)
    if SOFTCAP:
        acc = soft_cap(acc, softcap)
    tl.store(out_ptr + row * K + ts, tl.where(valid, acc, float("-inf")), mask=t_ok)


def _outputs(n: int, k: int, device, out):
    """(lse, target_logits, boundary_lse) buffers: fresh, or the caller's (tests pass NaN-filled
    ones to catch elements that a kernel forgets to write)."""
    if out is None:
        return (torch.empty(n, dtype=torch.float32, device=device),
                torch.empty((n, k), dtype=torch.float32, device=device),
                torch.empty(n, dtype=torch.float32, device=device))
    lse, tlog, blse = out
    for name, buf, shape in (("lse", lse, (n,)), ("target_logits", tlog, (n, k)),
                             ("boundary_lse", blse, (n,))):
        if buf.shape != shape or buf.dtype != torch.float32 or not buf.is_contiguous():
            raise ValueError(f"out {name} must be contiguous float32 {shape}")
    return lse, tlog, blse


def lm_head_logprobs(hidden, weight, targets, boundary_mask, config=None, out=None, *,
                     softcap=None):
    """Launch the three kernels; inputs already validated by ``answerdist.kernels.lm_head``.
    ``softcap``: Gemma 2's final-logit cap, cap * tanh(logit / cap) (None: none)."""
    common.check_device(hidden, "LM-head", "answerdist.kernels.lm_head.lm_head_logprobs_reference")
    n, d = hidden.shape
    v = weight.shape[0]
    k = targets.shape[1]
    cfg = config or default_config(d, v, hidden.dtype, common.arch_key(hidden))
    if cfg.split_v % cfg.block_v:
        raise ValueError(f"split_v={cfg.split_v} must be a multiple of block_v={cfg.block_v}")
    dev = hidden.device
    lse, tlog, blse = _outputs(n, k, dev, out)
    if n == 0:
        return lse, tlog, blse
    n_split = triton.cdiv(v, cfg.split_v)
    # Interpreted (tests), the scratch is poisoned too, so an unwritten partial shows as NaN.
    parts = torch.empty((4, n_split, n), dtype=torch.float32, device=dev)
    if INTERPRET:
        parts.fill_(float("nan"))
    bmask = boundary_mask.to(torch.int8)
    f32_dot = INTERPRET and hidden.dtype != torch.float32
    ieee = hidden.dtype == torch.float32
    capped = softcap is not None
    cap = float(softcap) if capped else 1.0
    _lse_partials_kernel[(n_split, triton.cdiv(n, cfg.block_n))](
        hidden, weight, bmask, parts, n, v, d, n_split, cap,
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1), SOFTCAP=capped,
        SPLIT_V=cfg.split_v, BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v, BLOCK_K=cfg.block_k,
        F32_DOT=f32_dot, IEEE=ieee, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    merge_block = 128
    _merge_kernel[(triton.cdiv(n, merge_block),)](parts, lse, blse, n, n_split, BLOCK=merge_block,
                                                   num_warps=4)
    block_t = 16
    _target_logits_kernel[(n, triton.cdiv(k, block_t))](
        hidden, weight, targets, tlog, d, k, cap,
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
        targets.stride(0), targets.stride(1), SOFTCAP=capped,
        BLOCK_T=block_t, BLOCK_D=128 if not INTERPRET else 64, num_warps=4)
    return lse, tlog, blse
