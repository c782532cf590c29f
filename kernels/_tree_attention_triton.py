"""Triton kernel behind ``kernels.tree_attention.tree_attention_triton``.

Imported lazily (only by the Triton path): CPU users never import triton, and tests can set
``TRITON_INTERPRET=1`` before triton is first imported (see ``kernels/interpreter.py``).

One program per (query block, batch x query head). It loads its BLOCK_M queries once and walks
the key blocks from 0 up to the end of the query block (keys after it are never visible), in a
fixed order, with an online softmax in float32 (flash attention), in two loops:

1. the longest prefix of key blocks that every query of the block sees (found by scanning
   ``span_end`` once: keys before the block whose span reaches past its last query). In the
   engine's layout this is the prompt, i.e. almost all of the work, and it runs without any mask
   and without branches, so Triton can software-pipeline its K/V loads;
2. the remaining key blocks, with the visibility mask ``j <= i < span_end[j]`` recomputed from the
   [BLOCK_N] span_end vector, and a whole block skipped when its largest ``span_end`` is <= the
   block's first query (no query of the block can see it).

With a sliding window (WINDOWED), both loops also mask ``pos[i] - pos[j] < window`` on the
position ids, and the second skips a key block that lies outside every query's window.

No [T, T] mask or scores ever reach global memory. The heaviest query blocks (the last ones, with
the most keys) are launched first to shorten the tail.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton import knobs

# Decided when this module is imported, exactly like the @triton.jit decoration below.
INTERPRET = bool(knobs.runtime.interpret)
_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class TreeAttentionConfig:
    """Tile sizes and launch parameters."""

    block_m: int
    block_n: int
    block_scan: int = 1024  # span_end entries read at once when finding the unmasked prefix
    num_warps: int = 4
    num_stages: int = 2


def default_config(head_dim: int, dtype: torch.dtype) -> TreeAttentionConfig:
    """Tiles from head_dim, dtype and interpreter mode (small tiles when interpreted, so that
    test-sized sequences still cross several query and key blocks)."""
    if INTERPRET:
        return TreeAttentionConfig(block_m=16, block_n=16, block_scan=32, num_warps=1,
                                   num_stages=1)
    if dtype == torch.float32 or head_dim > 128:
        return TreeAttentionConfig(block_m=64, block_n=32, num_warps=4, num_stages=2)
    if head_dim > 64:
        return TreeAttentionConfig(block_m=128, block_n=64, num_warps=8, num_stages=3)
    return TreeAttentionConfig(block_m=128, block_n=64, num_warps=4, num_stages=3)


@triton.jit
def _dot(a, b, F32_DOT: tl.constexpr, IEEE: tl.constexpr):
    """a @ b in float32. F32_DOT (interpreter only) upcasts bf16/fp16 operands, since the
    interpreter's bf16 dot returns garbage; IEEE keeps float32 inputs off TF32."""
    if F32_DOT:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _full_prefix_end(se_base, sse_t, m0, q_end, BLOCK_N: tl.constexpr, BLOCK_SCAN: tl.constexpr):
    """End of the longest prefix of whole key blocks visible to every query in [m0, q_end).

    Key j < m0 is causal for all of them, so it is fully visible iff span_end[j] >= q_end. The
    prefix is scanned BLOCK_SCAN keys at a time and rounded down to whole key blocks.
    """
    first_bad = m0
    for c0 in range(0, m0, BLOCK_SCAN):
        offs = c0 + tl.arange(0, BLOCK_SCAN)
        span_end = tl.load(se_base + offs * sse_t, mask=offs < m0, other=0)
        bad = (offs < m0) & (span_end < q_end)
        first_bad = tl.minimum(first_bad, tl.min(tl.where(bad, offs, m0), axis=0))
    return (first_bad // BLOCK_N) * BLOCK_N


@triton.jit
def _attend_block(q, k_base, v_base, sk_t, sk_d, sv_t, sv_d, offs_n, n_ok, offs_d, d_ok,
                  offs_m, span_end, pos_m, pos_n, window, qk_scale, m_i, l_i, acc,
                  MASKED: tl.constexpr, WINDOWED: tl.constexpr, F32_DOT: tl.constexpr,
                  IEEE: tl.constexpr):
    """Fold one key block into the online softmax state (m_i, l_i, acc), in log2 units.

    MASKED applies ``j <= i < span_end[j]``, WINDOWED ``pos_m[i] - pos_n[j] < window``; with
    neither, every key is visible (fast path).
    """
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(k_base + offs_n[:, None] * sk_t + offs_d[None, :] * sk_d, mask=kv_mask, other=0.0)
    s = _dot(q, tl.trans(k), F32_DOT, IEEE) * qk_scale
    if MASKED:
        visible = (offs_n[None, :] <= offs_m[:, None]) & (offs_m[:, None] < span_end[None, :])
        s = tl.where(visible, s, float("-inf"))
    if WINDOWED:
        s = tl.where(pos_m[:, None] - pos_n[None, :] < window, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # no (-inf) - (-inf) = NaN
    alpha = tl.exp2(m_i - m_ref)
    p = tl.exp2(s - m_ref[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = tl.load(v_base + offs_n[:, None] * sv_t + offs_d[None, :] * sv_d, mask=kv_mask, other=0.0)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, F32_DOT, IEEE)
    return m_new, l_i, acc


@triton.jit
def _tree_attn_kernel(q_ptr, k_ptr, v_ptr, se_ptr, pos_ptr, o_ptr, T, HQ, GROUP, DH, qk_scale,
                      window, sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d,
                      sv_b, sv_h, sv_t, sv_d, so_b, so_h, so_t, so_d, sse_b, sse_t,
                      spos_b, spos_t,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                      BLOCK_SCAN: tl.constexpr, WINDOWED: tl.constexpr, F32_DOT: tl.constexpr,
                      IEEE: tl.constexpr):
    """out[b, h, i] = softmax over visible keys j of (q_i . k_j) * scale, times v_j.

    qk_scale is scale * log2(e), so the softmax runs on exp2. Two loops over key blocks, both
    in a fixed order: first the prefix visible to every query of the block (no mask, the
    prompt in the engine's layout), then the rest up to the block's end, with the mask and
    whole-block skipping.
    """
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # heaviest query blocks first
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    kvh = h // GROUP
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < T
    d_ok = offs_d < DH
    q_base = q_ptr + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h
    q = tl.load(q_base + offs_m[:, None] * sq_t + offs_d[None, :] * sq_d,
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = k_ptr + b.to(tl.int64) * sk_b + kvh.to(tl.int64) * sk_h
    v_base = v_ptr + b.to(tl.int64) * sv_b + kvh.to(tl.int64) * sv_h
    se_base = se_ptr + b.to(tl.int64) * sse_b
    pos_base = pos_ptr + b.to(tl.int64) * spos_b
    pos_m = offs_m  # unused without a window
    if WINDOWED:
        pos_m = tl.load(pos_base + offs_m * spos_t, mask=m_ok, other=0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = tl.minimum(m0 + BLOCK_M, T)
    full_end = _full_prefix_end(se_base, sse_t, m0, hi, BLOCK_N, BLOCK_SCAN)
    for n0 in range(0, full_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        pos_n = offs_n  # unused without a window
        if WINDOWED:
            pos_n = tl.load(pos_base + offs_n * spos_t, mask=offs_n < T, other=0)
        m_i, l_i, acc = _attend_block(q, k_base, v_base, sk_t, sk_d, sv_t, sv_d, offs_n,
                                      offs_n < T, offs_d, d_ok, offs_m, offs_n, pos_m, pos_n,
                                      window, qk_scale, m_i, l_i, acc, False, WINDOWED,
                                      F32_DOT, IEEE)  # span_end unused
    for n0 in range(full_end, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < T
        span_end = tl.load(se_base + offs_n * sse_t, mask=n_ok, other=0)
        pos_n = offs_n
        if WINDOWED:
            pos_n = tl.load(pos_base + offs_n * spos_t, mask=n_ok, other=0)
        seen = tl.max(span_end, axis=0) > m0  # else no query of this block sees these keys
        if WINDOWED:  # ... nor when every key is out of every query's window
            seen = seen & (tl.min(tl.where(m_ok, pos_m, 2**30), axis=0)
                           - tl.max(tl.where(n_ok, pos_n, -2**30), axis=0) < window)
        if seen:
            m_i, l_i, acc = _attend_block(q, k_base, v_base, sk_t, sk_d, sv_t, sv_d, offs_n,
                                          n_ok, offs_d, d_ok, offs_m, span_end, pos_m, pos_n,
                                          window, qk_scale, m_i, l_i, acc, True, WINDOWED,
                                          F32_DOT, IEEE)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # a row with no visible key stays 0
    o_base = o_ptr + b.to(tl.int64) * so_b + h.to(tl.int64) * so_h
    tl.store(o_base + offs_m[:, None] * so_t + offs_d[None, :] * so_d,
             out.to(o_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


def _check_device(q: torch.Tensor) -> None:
    """CPU tensors only work interpreted; say so instead of failing inside Triton."""
    if not q.is_cuda and not INTERPRET:
        raise RuntimeError("the Triton tree-attention kernel needs CUDA tensors, or "
                           "TRITON_INTERPRET=1 set before triton is first imported")


def tree_attention(q, k, v, span_end, scale, config=None, out=None, *, positions=None,
                   window=None):
    """Launch the kernel; inputs already validated by ``kernels.tree_attention``.

    ``out`` (a q-shaped, q-dtype buffer) receives the result; tests pass a NaN-filled one to
    catch elements the kernel forgets to write.
    """
    _check_device(q)
    b, hq, t, dh = q.shape
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype:
        raise ValueError(f"out must be {q.dtype} {tuple(q.shape)}")
    if q.numel() == 0:
        return out
    cfg = config or default_config(dh, q.dtype)
    block_d = max(16, triton.next_power_of_2(dh))
    grid = (triton.cdiv(t, cfg.block_m), b * hq)
    windowed = window is not None
    # int32 positions (position ids are far below 2**30), so in-kernel differences stay int32.
    pos = positions.to(torch.int32) if windowed else span_end  # unused without a window
    _tree_attn_kernel[grid](
        q, k, v, span_end, pos, out, t, hq, hq // k.shape[1], dh, scale * _LOG2E,
        int(window) if windowed else 0,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *span_end.stride(), *pos.stride(),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d, BLOCK_SCAN=cfg.block_scan,
        WINDOWED=windowed, F32_DOT=INTERPRET and q.dtype != torch.float32, IEEE=q.dtype == torch.float32,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out
