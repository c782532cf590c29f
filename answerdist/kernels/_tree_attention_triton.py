"""Triton kernel behind ``answerdist.kernels.tree_attention.tree_attention_triton``.

Imported lazily (only by the Triton path): CPU users never import triton, and tests can set
``TRITON_INTERPRET=1`` before triton is first imported (see ``kernels/interpreter.py``).

Grid: one program per (BLOCK_M rows of the packed row, batch x query head); the heaviest query
blocks (the last ones) are launched first to shorten the tail. The engine packs many
prompt+trie sequences end to end into one row, so a block of rows can hold the end of one
sequence and the start of the next. A program therefore works in *passes*, one per sequence
among its rows (``seq_start``, per row, from ``answerdist.kernels.tree_attention.sequence_starts``);
a pass attends its sequence's rows [r0, r1) to keys from that sequence's start s0 only:

* key blocks are aligned to s0 (``s0 + k * BLOCK_N``), never to the row, so a query's
  arithmetic (which keys share a block, in which order blocks are folded) depends only on its
  place in its own sequence, never on where the sequence sits in the row or what it is packed
  with: the kernel is batch-invariant;
* keys before s0 are never visited (other sequences), nor keys from r1 on (causality);
* ``span_end`` is scanned once over [s0, r0) to find the longest run of whole key blocks that
  every row of the pass sees: in the engine's layout that is the prompt, almost all of the
  work, and it runs without any mask or branch so that Triton software-pipelines its loads;
* the rest (the trie, and the diagonal) runs with the visibility mask ``j <= i < span_end[j]``
  and skips a whole key block when its largest span_end is <= r0 (no row of the pass sees it,
  e.g. a finished sibling subtree).

A sliding window (WINDOWED; ``pos[i] - pos[j] < window`` on the position ids) adds two
bounds found by the same scan: the first key inside some row's window (earlier blocks are not
visited) and the first from which every key is inside every row's window; blocks between the
two take the masked path, and the masked path also skips blocks outside every row's window.

Rows of the program that belong to another pass are computed along (they share the tiles) but
not stored; masked or skipped blocks leave a row's softmax state bit-for-bit unchanged, so
which other rows share a program never changes a row's result.

Float32 (the exact mode) uses IEEE float32 dots, which run on CUDA cores with operands held in
registers: with q resident, a [BLOCK_M, head_dim] operand spills at head_dim 128 (11.7 KB per
thread at 64x32 tiles). So float32 tiles set ``qk_chunk``: the q.k dot runs over
head_dim in chunks, reloading q's chunk (from L1/L2) with each key block, which keeps every
operand small. The float32 FMA dot accumulates over head_dim in order either way. bf16 at
head_dim 256 does the same with 128-wide chunks, freeing q's registers for the accumulator.

No [T, T] mask or scores ever reach global memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from answerdist.kernels import _triton_common as common
from answerdist.kernels._triton_common import INTERPRET, dot, soft_cap

_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class TreeAttentionConfig:
    """Tile sizes and launch parameters."""

    block_m: int
    block_n: int
    block_scan: int = 1024  # span_end entries read at once when finding the unmasked prefix
    num_warps: int = 4
    num_stages: int = 2
    qk_chunk: int = 0  # head_dim chunk of the q.k dot; 0: all of it, q resident in registers


# Per-architecture, per-dtype tiles by padded head_dim: (block_m, block_n, num_warps,
# num_stages, qk_chunk). Chosen with `python -m benchmarks.native_report` (no spills, bf16
# pipelined with async copies, wgmma on sm_90) and timed with `make bench` where a GPU was lent.
# sm_80 tiles also fit the 99 KiB of shared memory of sm_86 / sm_89.
TILES = {
    (90, torch.bfloat16): {64: (128, 64, 8, 3, 0), 128: (128, 64, 8, 3, 0),
                           256: (64, 32, 8, 3, 128)},
    (80, torch.bfloat16): {64: (128, 64, 8, 3, 0), 128: (64, 64, 8, 3, 0),
                           256: (64, 32, 8, 3, 128)},
    (90, torch.float32): {64: (64, 32, 8, 2, 16), 128: (64, 32, 8, 2, 16),
                          256: (64, 16, 8, 2, 16)},
    (80, torch.float32): {64: (64, 32, 8, 2, 16), 128: (64, 32, 8, 2, 16),
                          256: (64, 16, 8, 2, 16)},
}
# Soft-capped scores (Gemma 2) hold the tanh's temporaries beside the score tile: where the
# plain tile would spill, a narrower key block.
SOFTCAP_TILES = {
    (90, torch.bfloat16): {64: (128, 32, 8, 3, 0), 128: (128, 32, 8, 3, 0)},
}


def default_config(head_dim: int, dtype: torch.dtype, arch: int = 90,
                   softcap: bool = False) -> TreeAttentionConfig:
    """Tiles from head_dim, dtype, architecture (80: Ampere/Ada, 90: Hopper and newer) and
    whether scores are soft-capped; small tiles when interpreted, so that test-sized sequences
    still cross several query and key blocks and head_dim chunks."""
    padded = max(16, triton.next_power_of_2(head_dim))
    if INTERPRET:
        return TreeAttentionConfig(block_m=16, block_n=16, block_scan=32, num_warps=1,
                                   num_stages=1,
                                   qk_chunk=min(32, padded) if dtype == torch.float32 else 0)
    table = TILES[(arch, dtype)]
    if softcap:
        table = {**table, **SOFTCAP_TILES.get((arch, dtype), {})}
    block_m, block_n, warps, stages, qk_chunk = table[min(d for d in table if d >= padded)]
    return TreeAttentionConfig(block_m, block_n, 1024, warps, stages, min(qk_chunk, padded))


@triton.jit
def _scan_prefix(se_base, sse_t, pos_base, spos_t, s0, r0, r1, pos_lo, pos_hi, window,
                 BLOCK_SCAN: tl.constexpr, WINDOWED: tl.constexpr):
    """Scan keys [s0, r0) (causal for every row of the pass [r0, r1)), BLOCK_SCAN at a time.

    Returns (first_bad, w_lo, w_full): the first key whose span ends before r1 (the first not
    seen by every row); with a window, the first key inside some row's window (position >
    pos_lo - window, pos_lo the rows' smallest position) and one past the last key outside
    some row's window (position <= pos_hi - window). Without a window w_lo = w_full = s0.
    """
    first_bad = r0
    w_lo = s0
    w_full = s0
    if WINDOWED:
        w_lo = r0
    for c0 in range(s0, r0, BLOCK_SCAN):
        offs = c0 + tl.arange(0, BLOCK_SCAN)
        ok = offs < r0
        span_end = tl.load(se_base + offs * sse_t, mask=ok, other=0)
        first_bad = tl.minimum(first_bad, tl.min(tl.where(ok & (span_end < r1), offs, r0), 0))
        if WINDOWED:
            pos = tl.load(pos_base + offs * spos_t, mask=ok, other=0)
            w_lo = tl.minimum(w_lo, tl.min(tl.where(ok & (pos > pos_lo - window), offs, r0), 0))
            w_full = tl.maximum(w_full,
                                tl.max(tl.where(ok & (pos <= pos_hi - window), offs + 1, s0), 0))
    return first_bad, w_lo, w_full


@triton.jit
def _scores(q, q_rows, sq_d, k_base, sk_t, sk_d, offs_m, offs_n, T, DH,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
            QK_CHUNK: tl.constexpr, F32_DOT: tl.constexpr, IEEE: tl.constexpr):
    """[BLOCK_M, BLOCK_N] float32 q.k for one key block: with q resident (QK_CHUNK == 0), or
    over head_dim in QK_CHUNK steps reloading q's chunk (float32: keeps operands small)."""
    n_ok = offs_n < T
    if QK_CHUNK == 0:
        offs_d = tl.arange(0, BLOCK_D)
        k = tl.load(k_base + offs_n[:, None] * sk_t + offs_d[None, :] * sk_d,
                    mask=n_ok[:, None] & (offs_d < DH)[None, :], other=0.0)
        s = dot(q, tl.trans(k), None, F32_DOT, IEEE)
    else:
        m_ok = offs_m < T
        s = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for d0 in range(0, BLOCK_D, QK_CHUNK):
            offs_c = d0 + tl.arange(0, QK_CHUNK)
            c_ok = offs_c < DH
            qc = tl.load(q_rows + offs_c[None, :] * sq_d, mask=m_ok[:, None] & c_ok[None, :],
                         other=0.0)
            kc = tl.load(k_base + offs_n[:, None] * sk_t + offs_c[None, :] * sk_d,
                         mask=n_ok[:, None] & c_ok[None, :], other=0.0)
            s = dot(qc, tl.trans(kc), s, F32_DOT, IEEE)
    return s


@triton.jit
def _attend_block(q, q_rows, sq_d, k_base, v_base, sk_t, sk_d, sv_t, sv_d, offs_m, offs_n,
                  T, DH, span_end, pos_m, pos_n, window, qk_scale, softcap, m_i, l_i, acc,
                  MASKED: tl.constexpr, WINDOWED: tl.constexpr, SOFTCAP: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  QK_CHUNK: tl.constexpr, F32_DOT: tl.constexpr, IEEE: tl.constexpr):
    """Fold one key block into the online softmax state (m_i, l_i, acc), in log2 units.

    MASKED applies ``j <= i < span_end[j]`` and, WINDOWED, ``pos_m[i] - pos_n[j] < window``;
    unmasked, every key is visible (fast path). A visible pair's score is one expression on both
    paths, so it gets the same bits whichever path its block takes; the mask comes after it
    because a capped -inf would be -cap. SOFTCAP: qk_scale is the plain scale, and the scaled
    score is soft-capped (as in the reference) before the change to log2 units.
    """
    s = _scores(q, q_rows, sq_d, k_base, sk_t, sk_d, offs_m, offs_n, T, DH, BLOCK_M, BLOCK_N,
                BLOCK_D, QK_CHUNK, F32_DOT, IEEE)
    if SOFTCAP:
        s = soft_cap(s * qk_scale, softcap) * 1.4426950408889634  # log2(e)
    else:
        s = s * qk_scale
    if MASKED:
        visible = (offs_n[None, :] <= offs_m[:, None]) & (offs_m[:, None] < span_end[None, :])
        if WINDOWED:
            visible = visible & (pos_m[:, None] - pos_n[None, :] < window)
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # no (-inf) - (-inf) = NaN
    alpha = tl.exp2(m_i - m_ref)
    p = tl.exp2(s - m_ref[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    offs_d = tl.arange(0, BLOCK_D)
    v = tl.load(v_base + offs_n[:, None] * sv_t + offs_d[None, :] * sv_d,
                mask=(offs_n < T)[:, None] & (offs_d < DH)[None, :], other=0.0)
    acc = dot(p.to(v.dtype), v, acc * alpha[:, None], F32_DOT, IEEE)
    return m_new, l_i, acc


@triton.jit
def _masked_blocks(start, stop, r0, q, q_rows, sq_d, k_base, v_base, sk_t, sk_d, sv_t, sv_d,
                   se_base, sse_t, pos_base, spos_t, offs_m, T, DH, pos_m, pos_lo, window,
                   qk_scale, softcap, m_i, l_i, acc, visits,
                   WINDOWED: tl.constexpr, SOFTCAP: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, QK_CHUNK: tl.constexpr,
                   F32_DOT: tl.constexpr, IEEE: tl.constexpr):
    """Key blocks [start, stop) with the mask, skipping a block no row of the pass can see:
    every span ends at or before r0, or (WINDOWED) every key lies outside every row's window."""
    for n0 in range(start, stop, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < T
        span_end = tl.load(se_base + offs_n * sse_t, mask=n_ok, other=0)
        seen = tl.max(span_end, axis=0) > r0
        pos_n = offs_n
        if WINDOWED:
            pos_n = tl.load(pos_base + offs_n * spos_t, mask=n_ok, other=0)
            seen = seen & (pos_lo - tl.max(tl.where(n_ok, pos_n, -(2**30)), axis=0) < window)
        if seen:
            m_i, l_i, acc = _attend_block(q, q_rows, sq_d, k_base, v_base, sk_t, sk_d, sv_t,
                                          sv_d, offs_m, offs_n, T, DH, span_end, pos_m, pos_n,
                                          window, qk_scale, softcap, m_i, l_i, acc, True,
                                          WINDOWED, SOFTCAP, BLOCK_M, BLOCK_N, BLOCK_D,
                                          QK_CHUNK, F32_DOT, IEEE)
            visits += 1
    return m_i, l_i, acc, visits


@triton.jit
def _tree_attn_kernel(q_ptr, k_ptr, v_ptr, se_ptr, ss_ptr, pos_ptr, o_ptr, visits_ptr,
                      T, HQ, GROUP, DH, qk_scale, softcap, window,
                      sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d,
                      sv_b, sv_h, sv_t, sv_d, so_b, so_h, so_t, so_d, sse_b, sse_t,
                      sss_b, sss_t, spos_b, spos_t,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                      QK_CHUNK: tl.constexpr, BLOCK_SCAN: tl.constexpr, WINDOWED: tl.constexpr,
                      SOFTCAP: tl.constexpr, COUNT_VISITS: tl.constexpr, F32_DOT: tl.constexpr,
                      IEEE: tl.constexpr):
    """out[b, h, i] = softmax over visible keys j of (q_i . k_j) * scale, times v_j.

    qk_scale is scale * log2(e), so the softmax runs on exp2 (SOFTCAP: scale, see
    `_attend_block`). One pass per sequence among the
    program's rows (see the module docstring); COUNT_VISITS (tests only) writes the number of
    key blocks each pass attends to visits[b, h, r0].
    """
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # heaviest query blocks first
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    kvh = h // GROUP
    m0 = pid_m * BLOCK_M
    m1 = tl.minimum(m0 + BLOCK_M, T)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    m_ok = offs_m < T
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < DH
    q_rows = q_ptr + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h + offs_m[:, None] * sq_t
    q = offs_m  # unused when q.k runs in head_dim chunks
    if QK_CHUNK == 0:
        q = tl.load(q_rows + offs_d[None, :] * sq_d, mask=m_ok[:, None] & d_ok[None, :],
                    other=0.0)
    k_base = k_ptr + b.to(tl.int64) * sk_b + kvh.to(tl.int64) * sk_h
    v_base = v_ptr + b.to(tl.int64) * sv_b + kvh.to(tl.int64) * sv_h
    se_base = se_ptr + b.to(tl.int64) * sse_b
    ss_base = ss_ptr + b.to(tl.int64) * sss_b
    pos_base = pos_ptr + b.to(tl.int64) * spos_b
    o_rows = o_ptr + b.to(tl.int64) * so_b + h.to(tl.int64) * so_h + offs_m[:, None] * so_t
    seq = tl.load(ss_base + offs_m * sss_t, mask=m_ok, other=0)
    pos_m = offs_m  # unused without a window
    if WINDOWED:
        pos_m = tl.load(pos_base + offs_m * spos_t, mask=m_ok, other=0)

    r0 = m0
    while r0 < m1:
        s0 = tl.load(ss_base + r0 * sss_t)
        r1 = tl.min(tl.where(m_ok & (offs_m > r0) & (seq != s0), offs_m, m1), axis=0)
        rows = (offs_m >= r0) & (offs_m < r1)
        pos_lo = tl.min(tl.where(rows, pos_m, 2**30), axis=0)
        pos_hi = tl.max(tl.where(rows, pos_m, -(2**30)), axis=0)
        first_bad, w_lo, w_full = _scan_prefix(se_base, sse_t, pos_base, spos_t, s0, r0, r1,
                                               pos_lo, pos_hi, window, BLOCK_SCAN, WINDOWED)
        full_end = s0 + ((first_bad - s0) // BLOCK_N) * BLOCK_N
        lo = s0 + ((w_lo - s0) // BLOCK_N) * BLOCK_N
        in_window = s0 + tl.cdiv(w_full - s0, BLOCK_N) * BLOCK_N

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        visits = 0
        # 1. (window only) prefix blocks that some row's window cuts: masked.
        m_i, l_i, acc, visits = _masked_blocks(
            lo, tl.minimum(in_window, full_end), r0, q, q_rows, sq_d, k_base, v_base, sk_t,
            sk_d, sv_t, sv_d, se_base, sse_t, pos_base, spos_t, offs_m, T, DH, pos_m, pos_lo,
            window, qk_scale, softcap, m_i, l_i, acc, visits, WINDOWED, SOFTCAP, BLOCK_M,
            BLOCK_N, BLOCK_D, QK_CHUNK, F32_DOT, IEEE)
        # 2. the prefix every row sees whole: no mask, no branch (pipelined).
        for n0 in range(tl.maximum(lo, in_window), full_end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            m_i, l_i, acc = _attend_block(q, q_rows, sq_d, k_base, v_base, sk_t, sk_d, sv_t,
                                          sv_d, offs_m, offs_n, T, DH, offs_n, pos_m, offs_n,
                                          window, qk_scale, softcap, m_i, l_i, acc, False,
                                          WINDOWED, SOFTCAP, BLOCK_M, BLOCK_N, BLOCK_D,
                                          QK_CHUNK, F32_DOT, IEEE)
            visits += 1
        # 3. the rest up to the pass's last row (trie, diagonal): masked, with skipping.
        m_i, l_i, acc, visits = _masked_blocks(
            tl.maximum(lo, full_end), r1, r0, q, q_rows, sq_d, k_base, v_base, sk_t, sk_d, sv_t,
            sv_d, se_base, sse_t, pos_base, spos_t, offs_m, T, DH, pos_m, pos_lo, window,
            qk_scale, softcap, m_i, l_i, acc, visits, WINDOWED, SOFTCAP, BLOCK_M, BLOCK_N,
            BLOCK_D, QK_CHUNK, F32_DOT, IEEE)

        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # a row with no visible key stays 0
        tl.store(o_rows + offs_d[None, :] * so_d, out.to(o_ptr.dtype.element_ty),
                 mask=rows[:, None] & d_ok[None, :])
        if COUNT_VISITS:
            tl.store(visits_ptr + bh.to(tl.int64) * T + r0, visits)
        r0 = r1


def tree_attention(q, k, v, span_end, seq_start, scale, config=None, out=None, *,
                   positions=None, window=None, softcap=None, visits=None):
    """Launch the kernel; inputs already validated by ``answerdist.kernels.tree_attention``.

    ``seq_start`` [B, T]: each row's sequence start (``sequence_starts(span_end)``). ``out``
    (a q-shaped, q-dtype buffer) receives the result; tests pass a NaN-filled one to catch
    elements the kernel forgets to write. ``visits`` (tests): an int32 [B, Hq, T] buffer that
    receives, at each pass's first row, the number of key blocks the pass attended to.
    ``softcap``: attention logit soft-capping, cap * tanh(scale * q.k / cap) (None: none).
    """
    common.check_device(q, "tree-attention",
                        "answerdist.kernels.tree_attention.tree_attention_reference")
    b, hq, t, dh = q.shape
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype:
        raise ValueError(f"out must be {q.dtype} {tuple(q.shape)}")
    if q.numel() == 0:
        return out
    cfg = config or default_config(dh, q.dtype, common.arch_key(q), softcap is not None)
    block_d = max(16, triton.next_power_of_2(dh))
    if cfg.qk_chunk and (block_d % cfg.qk_chunk or cfg.qk_chunk < 16):
        raise ValueError(f"qk_chunk={cfg.qk_chunk} must be >= 16 and divide {block_d}")
    windowed = window is not None
    # int32 positions (position ids are far below 2**30), so in-kernel differences stay int32.
    pos = positions.to(torch.int32) if windowed else seq_start  # unused without a window
    count = visits is not None
    capped = softcap is not None
    grid = (triton.cdiv(t, cfg.block_m), b * hq)
    _tree_attn_kernel[grid](
        q, k, v, span_end, seq_start, pos, out, visits if count else seq_start,
        t, hq, hq // k.shape[1], dh, scale if capped else scale * _LOG2E,
        float(softcap) if capped else 1.0, int(window) if windowed else 0,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *span_end.stride(),
        *seq_start.stride(), *pos.stride(),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d, QK_CHUNK=cfg.qk_chunk,
        BLOCK_SCAN=cfg.block_scan, WINDOWED=windowed, SOFTCAP=capped, COUNT_VISITS=count,
        F32_DOT=INTERPRET and q.dtype != torch.float32, IEEE=q.dtype == torch.float32,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out
