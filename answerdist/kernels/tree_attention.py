"""Tree attention over a prompt and its answer trie, with the tree given by one int per key.

The engine scores a prompt and every answer in one forward pass: the sequence is the prompt's
tokens followed by the nodes of the answer trie. A prompt token attends causally; a trie node
attends to the whole prompt and to its own ancestors in the trie (its answer prefix), never to
sibling branches.

Compact tree encoding: ``span_end`` [B, T] (int32 or int64). Key position j is visible to query
position i iff ``j <= i < span_end[b, j]``. The engine lays each sequence out as

* prompt tokens, with ``span_end[j] = L`` (the real sequence length, prompt + trie), so that
  the prompt is causal and every trie node sees all of it;
* the trie nodes in DFS pre-order, with ``span_end[j] = j + size of j's subtree``: in pre-order
  a subtree is a contiguous range starting at its root, so the earlier nodes whose span covers
  position i are exactly i's ancestors (and i itself);
* padding positions (j >= L), with ``span_end[j] = j + 1``: visible only to themselves, so no
  query row is ever empty.

The encoding is O(T) instead of a [T, T] mask, and it gives the kernel two ways to skip a whole
key block without looking inside: when the block starts after the query block ends (causality),
and when ``max(span_end over the block) <= first query of the query block`` (every key's span
ends before any of these queries, e.g. a finished sibling subtree).

Sliding window (``window``, e.g. OLMo 3's local layers): key j is additionally visible to query i
only if ``positions[b, i] - positions[b, j] < window``, with ``positions`` [B, T] the position
ids (a trie node sits at position prompt_len - 1 + depth, so the distance is measured in
positions, not in row indices; Hugging Face's sliding window is ``q_pos - kv_pos < window``).
``window=None`` means no window.

Grouped-query attention: q [B, Hq, T, Dh], k and v [B, Hkv, T, Dh], with query head h reading
kv head ``h // (Hq // Hkv)``. ``tree_attention_reference`` is plain torch (the engine's CPU
path); ``tree_attention_triton`` is a flash-attention style kernel
(``kernels/_tree_attention_triton.py``) with the same semantics.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from answerdist.kernels import KernelUnsupportedError, use_triton

__all__ = [
    "dfs_preorder",
    "sequence_starts",
    "span_end_visible",
    "trie_span_end",
    "tree_attention",
    "tree_attention_reference",
    "tree_attention_triton",
]

# Query rows per block of the reference, chosen so the [Hq, rows, T] float32 scores stay near
# this many elements (64 MiB) at any T and head count.
_SCORE_BUDGET = 1 << 24


def _check_inputs(q, k, v, span_end) -> None:
    """Validate shapes and dtypes once, with messages naming the offending argument."""
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"q must be [B, Hq, T, Dh] and k, v [B, Hkv, T, Dh], got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    b, hq, t, dh = q.shape
    if k.shape[0] != b or k.shape[2] != t or k.shape[3] != dh:
        raise ValueError(f"k/v shape {tuple(k.shape)} does not match q shape {tuple(q.shape)}")
    if k.shape[1] < 1 or hq % k.shape[1]:
        raise ValueError(f"Hq={hq} must be a multiple of Hkv={k.shape[1]}")
    if span_end.shape != (b, t) or span_end.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"span_end must be int32/int64 [B={b}, T={t}], got {span_end.dtype} "
                         f"{tuple(span_end.shape)}")


def _check_window(positions, window, span_end) -> None:
    """A window needs integer positions shaped like span_end; the window is a positive int."""
    if window is None:
        return
    if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 1:
        raise ValueError(f"window must be a positive int (or None for no window), got {window!r}")
    if positions is None:
        raise ValueError("window is set but positions is None: pass the position ids [B, T] "
                         "(the sliding window is measured in positions)")
    if positions.shape != span_end.shape or positions.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"positions must be int32/int64 {tuple(span_end.shape)} like span_end, "
                         f"got {positions.dtype} {tuple(positions.shape)}")
    if positions.device != span_end.device:
        raise ValueError(f"positions is on {positions.device} but span_end on {span_end.device}")


def sequence_starts(span_end: torch.Tensor) -> torch.Tensor:
    """Where each position's sequence starts, [B, T] int32, for the Triton kernel's passes.

    For most positions that is its first visible key, ``min{j <= i : span_end[j] > i}``: in
    the engine's packed rows, the start of the position's own sequence, for prompt and trie
    alike. Padding positions (each seen only by itself) would each start a sequence of one;
    a run of them is grouped under the run's first position instead, so the kernel handles
    padding in one pass rather than one pass per position (still a lower bound of each one's
    first visible key, which is all correctness needs). Non-decreasing along T.

    Computed on span_end's device without a host sync: with ``cm`` the running maximum of
    span_end, the first key whose span reaches i is ``searchsorted(cm, i, right=True)``.
    """
    t = span_end.shape[-1]
    ends = span_end.to(torch.int32)
    running_max = torch.cummax(ends, dim=-1).values.contiguous()
    rows = torch.arange(t, device=span_end.device, dtype=torch.int32).expand_as(ends)
    first = torch.searchsorted(running_max, rows.contiguous(), right=True, out_int32=True)
    first = torch.minimum(first, rows)
    alone = (first == rows) & (ends == rows + 1)  # sees only itself, seen only by itself
    last_other = torch.cummax(torch.where(alone, -1, rows), dim=-1).values
    return torch.where(alone, last_other + 1, first).to(torch.int32).contiguous()


def _check_kernel_support(q: torch.Tensor) -> None:
    """The Triton kernel's dtypes and head dims; anything else is one clear error naming the
    torch reference (before triton is imported or anything compiled)."""
    dh = q.shape[-1]
    if q.dtype not in (torch.bfloat16, torch.float32) or dh > 256:
        what = (f"dtype {q.dtype}" if q.dtype not in (torch.bfloat16, torch.float32)
                else f"head_dim {dh}")
        raise KernelUnsupportedError(
            f"the Triton tree-attention kernel supports bfloat16 and float32 with head_dim <= "
            f"256, not {what}; use the torch reference "
            f"answerdist.kernels.tree_attention.tree_attention_reference (the engine does with "
            f"ENGINE_FORCE_REFERENCE=1)")


def dfs_preorder(parents: Sequence[int]) -> list[int]:
    """Node ids of a forest in DFS pre-order (children in id order).

    ``parents[i]`` is the parent id of node i, or -1 for a root (a child of the prompt).
    """
    children: list[list[int]] = [[] for _ in parents]
    roots = []
    for node, parent in enumerate(parents):
        (roots if parent < 0 else children[parent]).append(node)
    order, stack = [], roots[::-1]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(children[node][::-1])
    if len(order) != len(parents):
        raise ValueError("parents do not form a forest (a cycle?)")
    return order


def trie_span_end(prompt_len: int, parents: Sequence[int], total_len: int | None = None
                  ) -> torch.Tensor:
    """``span_end`` [total_len] int64 for a prompt, then trie nodes in DFS pre-order, then pad.

    ``parents[i]`` is the parent of trie node i as an index into the trie (-1: a child of the
    prompt); nodes must already be in pre-order, i.e. every subtree contiguous and starting at
    its root (``dfs_preorder`` gives such an order). Raises ValueError otherwise.
    """
    n = len(parents)
    size = [1] * n
    for i in range(n - 1, -1, -1):
        if parents[i] >= i:
            raise ValueError(f"trie node {i} has parent {parents[i]}: not in DFS pre-order")
        if parents[i] >= 0:
            size[parents[i]] += size[i]
    for i, p in enumerate(parents):
        if p >= 0 and i >= p + size[p]:
            raise ValueError(f"trie node {i} lies outside its parent's subtree: not in pre-order")
    length = prompt_len + n
    total = length if total_len is None else total_len
    if total < length:
        raise ValueError(f"total_len={total} is shorter than prompt + trie = {length}")
    ends = ([length] * prompt_len + [prompt_len + i + size[i] for i in range(n)]
            + [j + 1 for j in range(length, total)])
    return torch.tensor(ends, dtype=torch.int64)


def span_end_visible(span_end: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
    """Dense visibility [..., rows, T] from span_end [..., T]: ``j <= i < span_end[j]``.

    Only for the reference and tests; the kernel never builds it.
    """
    t = span_end.shape[-1]
    rows = rows or slice(0, t)
    i = torch.arange(rows.start, rows.stop, device=span_end.device)[:, None]
    j = torch.arange(t, device=span_end.device)[None, :]
    return (j <= i) & (i < span_end[..., None, :])


def _attend_rows(q, k, v, visible, scale, softcap=None) -> torch.Tensor:
    """Float32 masked softmax attention for one batch element and a block of query rows.

    q [Hkv, G, R, Dh], k/v [Hkv, 1, T, Dh] (GQA by broadcasting, no copy), visible [R, T].
    The operation order is that of Hugging Face's eager attention (scale after q @ k^T,
    softmax, then @ v), so that the float32 CPU path reproduces transformers' float32 forward
    to the last bits rather than to ~1e-5 (the exactness guarantee of docs/results.md). Rows
    with no visible key come out as zeros instead of NaN. ``softcap`` (Gemma 2): the scaled
    scores become cap * tanh(score / cap) before the mask, in transformers' order.
    """
    scores = (q @ k.transpose(-1, -2)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    empty = ~visible.any(dim=-1, keepdim=True)
    if bool(empty.any()):
        probs = probs.masked_fill(empty, 0.0)
    return probs @ v


def _first_visible_key(span_end: torch.Tensor, r0: int, r1: int) -> int:
    """Keys before the first j with span_end[j] > r0 are invisible to every query >= r0, and
    keys at or after r1 to every query < r1: the reference attends only to [k0, r1). For packed
    rows (many sequences end to end) this makes its cost linear in the row length."""
    later = span_end[:r1] > r0
    return int(later.to(torch.int8).argmax()) if bool(later.any()) else r1


def tree_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             span_end: torch.Tensor, scale: float, *,
                             positions: torch.Tensor | None = None,
                             window: int | None = None,
                             softcap: float | None = None) -> torch.Tensor:
    """Plain-torch tree attention in float32; returns q.dtype [B, Hq, T, Dh].

    With ``window``, key j is visible to query i only if ``positions[b, i] - positions[b, j] <
    window`` as well (see the module docstring). ``softcap``: attention logit soft-capping
    (see `_attend_rows`). The dense mask is built per batch element and
    per block of query rows, over only the keys that block can see (see `_first_visible_key`),
    so memory stays bounded (about 64 MiB of scores) even at T = 5000 with 32 heads.
    """
    _check_inputs(q, k, v, span_end)
    _check_window(positions, window, span_end)
    b, hq, t, dh = q.shape
    hkv = k.shape[1]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    rows = max(1, _SCORE_BUDGET // max(1, hq * t))
    for bi in range(b):
        qb = q[bi].to(torch.float32).reshape(hkv, hq // hkv, t, dh)
        kb = k[bi].to(torch.float32)[:, None]
        vb = v[bi].to(torch.float32)[:, None]
        for r0 in range(0, t, rows):
            r1 = min(t, r0 + rows)
            k0 = _first_visible_key(span_end[bi], r0, r1)
            keys = _sparse_keys(span_end[bi], r0, r1, k0)
            if keys is None:  # the contiguous range [k0, r1)
                keys = slice(k0, r1)
                columns = torch.arange(k0, r1, device=span_end.device)
            else:
                columns = keys
            i = torch.arange(r0, r1, device=span_end.device)[:, None]
            visible = (columns[None, :] <= i) & (i < span_end[bi][columns][None, :])
            if window is not None:
                pos = positions[bi]
                visible &= (pos[r0:r1, None] - pos[None, columns]) < window
            o = _attend_rows(qb[:, :, r0:r1], kb[..., keys, :], vb[..., keys, :], visible, scale,
                             softcap)
            out[bi, :, r0:r1] = o.reshape(hq, r1 - r0, dh).to(q.dtype)
    return out


def _sparse_keys(span_end: torch.Tensor, r0: int, r1: int, k0: int) -> torch.Tensor | None:
    """The keys of [k0, r1) that some query of [r0, r1) can see, when they are fewer than half
    of that range; else None (attend to the whole range, as short sequences always do).

    A block of queries deep in a wide trie sees the prompt, the ancestors of its nodes and its
    own nodes, not the thousands of earlier siblings between them: attending to the visible
    keys only keeps a prompt with 100,000 answers linear in the answers, not quadratic. Key
    j < r0 is visible to the block iff span_end[j] > r0; every key in [r0, r1) sees itself."""
    earlier = torch.nonzero(span_end[k0:r0] > r0)[:, 0] + k0
    if 2 * (earlier.numel() + r1 - r0) > r1 - k0:
        return None
    return torch.cat([earlier, torch.arange(r0, r1, device=span_end.device)])


def tree_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          span_end: torch.Tensor, scale: float, *,
                          positions: torch.Tensor | None = None, window: int | None = None,
                          softcap: float | None = None, config=None, out=None) -> torch.Tensor:
    """Flash-attention style Triton kernel with the reference's semantics.

    Never materialises a [T, T] mask or scores in global memory; bfloat16 or float32, head_dim
    up to 256 (padded to a power of two >= 16 inside the kernel), any T, sm_80 or newer (else
    ``KernelUnsupportedError``). On packed rows each sequence's rows attend only to keys from
    that sequence's start (``sequence_starts``), with key blocks aligned to it: a query's
    result does not depend on where its sequence sits in the row or what it is packed with.
    ``config`` (a ``TreeAttentionConfig``) overrides the tile sizes for tests and tuning;
    ``out`` (q-shaped, q.dtype) receives the result. ``positions`` and ``window``: the sliding
    window, as in the reference. Runs natively on CUDA tensors, or on CPU tensors under
    ``TRITON_INTERPRET=1``.
    """
    _check_inputs(q, k, v, span_end)
    _check_window(positions, window, span_end)
    _check_kernel_support(q)
    from answerdist.kernels import _tree_attention_triton  # imports triton: only on this path

    return _tree_attention_triton.tree_attention(q, k, v, span_end, sequence_starts(span_end),
                                                 float(scale), config, out, positions=positions,
                                                 window=window, softcap=softcap)


def tree_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, span_end: torch.Tensor,
                   scale: float, *, positions: torch.Tensor | None = None,
                   window: int | None = None, softcap: float | None = None) -> torch.Tensor:
    """Dispatcher: the Triton kernel for CUDA tensors (unless ``ENGINE_FORCE_REFERENCE=1``),
    the torch reference otherwise. ``window=None``: no sliding window; an int window needs the
    position ids ``positions`` [B, T]. ``softcap``: attention logit soft-capping (None: none)."""
    if use_triton(q):
        return tree_attention_triton(q, k, v, span_end, scale, positions=positions,
                                     window=window, softcap=softcap)
    return tree_attention_reference(q, k, v, span_end, scale, positions=positions, window=window,
                                    softcap=softcap)
