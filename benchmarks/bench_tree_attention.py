"""Kernel 2 of `make bench`: tree attention against ``scaled_dot_product_attention`` with a
dense boolean mask and against FlexAttention with a block mask built from span_end, one table
row per (sequences, prompt, trie nodes, heads, kv heads, head_dim) shape."""

from __future__ import annotations

import functools
import random
import time

import torch

from benchmarks.bench_env import Rotation, max_abs_diff, n_sets, peak_extra_mib, time_ms

# (sequences packed in the row, prompt, trie nodes, query heads, kv heads, head_dim): one
# sequence per row, and rows packed end to end as the engine packs them (40 x (150 + 50) and
# 16 x (450 + 50) tokens in T = 8000).
GPU_TREE_SHAPES = ([(1, p, n, 32, 8, 128) for p in (512, 2048) for n in (64, 512)]
                   + [(40, 150, 50, 32, 8, 128), (16, 450, 50, 32, 8, 128)])
DRY_TREE_SHAPES = [(1, 20, 8, 4, 2, 32), (1, 9, 30, 4, 1, 16), (3, 12, 6, 4, 2, 32)]


def random_trie_parents(rng: random.Random, n: int, max_depth: int = 8) -> list[int]:
    """A wide, shallow answer trie (depth <= max_depth) of n nodes in DFS pre-order."""
    from answerdist.kernels.tree_attention import dfs_preorder

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
    from answerdist.kernels.tree_attention import trie_span_end

    rng = random.Random(seed)
    parts = [trie_span_end(prompt, random_trie_parents(rng, nodes)) + i * (prompt + nodes)
             for i in range(seqs)]
    return torch.cat(parts)[None]


def tree_inputs(seqs, prompt, nodes, hq, hkv, dh, device, dtype, seed=0):
    """span_end [1, T], the dense mask [T, T] for SDPA, and a Rotation of (q, k, v, k and v
    expanded to hq heads) sets."""
    from answerdist.kernels.tree_attention import span_end_visible

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

    from answerdist.kernels._tree_attention_triton import TreeAttentionConfig
    from answerdist.kernels.tree_attention import tree_attention_reference, tree_attention_triton

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
