"""Tree attention: span_end encoding, reference vs float64, Triton kernel vs reference.

Without CUDA the kernels run under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports triton). Interpreted kernels are
~200x slower than torch, hence the small shapes (the interpreter's 16x16 tiles still make them
cross several query and key blocks); the same tests run natively wherever CUDA is present.

The float64 oracle builds visibility from the tree itself (causal prompt, ancestors in the
trie, padding sees itself), not from span_end, so it also checks the encoding.
"""

import importlib
import random
import types

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import answerdist.kernels
from answerdist.engine.scoring.scorer import Sequence, _layout, make_batches, whole
from answerdist.engine.text.trie import build_trie
from answerdist.kernels import interpreter
from answerdist.kernels.tree_attention import (
    dfs_preorder,
    sequence_starts,
    span_end_visible,
    tree_attention,
    tree_attention_reference,
    tree_attention_triton,
    trie_span_end,
)
from tests.conftest import KERNELS_RUN  # TRITON_INTERPRET was set there, before triton's import

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"


def budget(examples: int):
    """Hypothesis settings for interpreted kernels: no deadline, a fixed number of examples."""
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


needs_kernels = pytest.mark.skipif(
    not (KERNELS_RUN and answerdist.kernels.triton_available()),
    reason="triton missing, or imported natively before tests/conftest.py set TRITON_INTERPRET=1")


@pytest.fixture(scope="module")
def kernel_module():
    """The Triton kernel module (for its config class); imported only by kernel tests."""
    return importlib.import_module("answerdist.kernels._tree_attention_triton")


def random_trie(rng: random.Random, n: int) -> list[int]:
    """Parents of a random answer trie with n nodes, relabelled into DFS pre-order.

    Random parent pointers (node i hangs under an earlier node or under the prompt, -1), then
    pre-order, as the engine lays the trie out.
    """
    raw = [rng.randrange(-1, i) if rng.random() < 0.8 else -1 for i in range(n)]
    order = dfs_preorder(raw)
    new_id = {old: new for new, old in enumerate(order)}
    return [new_id[raw[old]] if raw[old] >= 0 else -1 for old in order]


def tree_visibility(prompt_len: int, parents: list[int], total: int) -> torch.Tensor:
    """[total, total] visibility straight from the tree definition (the oracle's mask)."""
    vis = torch.zeros(total, total, dtype=torch.bool)
    length = prompt_len + len(parents)
    for i in range(prompt_len):
        vis[i, : i + 1] = True
    for node in range(len(parents)):
        row = prompt_len + node
        vis[row, :prompt_len] = True
        a = node
        while a >= 0:
            vis[row, prompt_len + a] = True
            a = parents[a]
    for i in range(length, total):
        vis[i, i] = True
    return vis


def attention_float64(q, k, v, visible, scale):
    """Dense float64 masked attention with GQA by repeating kv heads. visible [B, T, T]."""
    group = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    scores = (q.double() @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def make_problem(seed, batch, hkv, group, head_dim, seqs, dtype=torch.float32,
                 se_dtype=torch.int64):
    """q, k, v and span_end for a batch of (prompt_len, trie_nodes, padding) sequences.

    Returns also the oracle visibility built from the trees themselves.
    """
    rng = random.Random(seed)
    total = max(p + n + pad for p, n, pad in seqs)
    span_ends, visible = [], []
    for p, n, _ in seqs[:batch]:
        parents = random_trie(rng, n)
        span_ends.append(trie_span_end(p, parents, total))
        visible.append(tree_visibility(p, parents, total))
    g = torch.Generator().manual_seed(seed)
    shape_q = (batch, hkv * group, total, head_dim)
    shape_kv = (batch, hkv, total, head_dim)
    q, k, v = (torch.randn(s, generator=g).to(dtype).to(DEVICE)
               for s in (shape_q, shape_kv, shape_kv))
    span_end = torch.stack(span_ends).to(se_dtype).to(DEVICE)
    return q, k, v, span_end, torch.stack(visible).to(DEVICE)


def assert_attention_close(got, want, dtype):
    """No NaN; float32 tight, bf16 within a couple of bf16 ulps of O(1) outputs."""
    assert not torch.isnan(got).any(), "NaN in output (unwritten element?)"
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.double().cpu(), want.double().cpu(), atol=tol, rtol=tol)


# (prompt, trie nodes, padding) per sequence: up to ~100 positions, i.e. up to 6 query blocks
# of the interpreter's 16-row tiles and several 32-entry span_end scan chunks.
seq_lists = st.lists(st.tuples(st.integers(1, 60), st.integers(0, 36), st.integers(0, 6)),
                     min_size=2, max_size=2)


@budget(200)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 40), prompt=st.integers(0, 10),
       pad=st.integers(0, 5))
def test_span_end_encodes_the_tree(seed, n, prompt, pad):
    """j visible to i iff j <= i < span_end[j] is exactly: causal prompt, prompt + ancestors
    for trie nodes, self for padding."""
    parents = random_trie(random.Random(seed), n)
    total = prompt + n + pad
    se = trie_span_end(prompt, parents, total)
    assert torch.equal(span_end_visible(se), tree_visibility(prompt, parents, total))


def test_trie_span_end_rejects_non_preorder():
    """A layout that is not DFS pre-order cannot be encoded and says so."""
    with pytest.raises(ValueError, match="pre-order"):
        trie_span_end(2, [-1, -1, 0])  # node 2's parent is 0, but root 1 sits between
    with pytest.raises(ValueError, match="pre-order"):
        trie_span_end(2, [-1, 2, -1])


@budget(40)
@given(seed=st.integers(0, 2**31 - 1), seqs=seq_lists, hkv=st.sampled_from([1, 2]),
       group=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([16, 32, 64]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_reference_matches_float64(seed, seqs, hkv, group, head_dim, dtype):
    """Reference == dense float64 attention under the tree's own mask."""
    q, k, v, se, visible = make_problem(seed, 2, hkv, group, head_dim, seqs, dtype)
    got = tree_attention_reference(q, k, v, se, head_dim**-0.5)
    assert got.dtype == dtype
    assert_attention_close(got, attention_float64(q, k, v, visible, head_dim**-0.5), dtype)


@needs_kernels
@budget(60)
@given(seed=st.integers(0, 2**31 - 1), seqs=seq_lists, hkv=st.sampled_from([1, 2]),
       group=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([16, 32, 64]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       se_dtype=st.sampled_from([torch.int32, torch.int64]))
@example(seed=1, seqs=[(1, 0, 0), (1, 0, 0)], hkv=1, group=1, head_dim=16,
         dtype=torch.float32, se_dtype=torch.int64)
@example(seed=2, seqs=[(24, 24, 6), (3, 1, 0)], hkv=2, group=4, head_dim=64,
         dtype=torch.bfloat16, se_dtype=torch.int32)
def test_triton_matches_reference_and_float64(seed, seqs, hkv, group, head_dim, dtype,
                                              se_dtype):
    """Kernel == reference == float64; GQA 1/2/4, head_dim 16/32/64, ragged T, padding, output
    poisoned with NaN before the run."""
    q, k, v, se, visible = make_problem(seed, 2, hkv, group, head_dim, seqs, dtype, se_dtype)
    scale = head_dim**-0.5
    got = tree_attention_triton(q, k, v, se, scale, out=torch.full_like(q, float("nan")))
    assert got.dtype == dtype
    assert_attention_close(got, tree_attention_reference(q, k, v, se, scale), dtype)
    assert_attention_close(got, attention_float64(q, k, v, visible, scale), dtype)


@needs_kernels
@pytest.mark.parametrize("head_dim", [128, 24])
def test_triton_head_dim_128_and_non_power_of_two(head_dim):
    """head_dim 128 (the engine's real models) and a padded non-power-of-two head_dim."""
    q, k, v, se, visible = make_problem(3, 1, 1, 2, head_dim, [(20, 15, 3)], torch.bfloat16)
    got = tree_attention_triton(q, k, v, se, 0.1, out=torch.full_like(q, float("nan")))
    assert_attention_close(got, attention_float64(q, k, v, visible, 0.1), torch.bfloat16)


@needs_kernels
def test_subtree_ending_one_row_before_a_query_block_ends(kernel_module):
    """A chain of trie nodes at positions 8..30 (span_end 31 each), then roots: the query at 31
    must not see the chain although it shares a 16-row query block with rows that do, so the
    unmasked-prefix scan must stop at key 8 (an off-by-one there lets key block 0..15 through).
    """
    cfg = kernel_module.TreeAttentionConfig(block_m=16, block_n=16, block_scan=32)
    parents = [-1] + list(range(22)) + [-1] * 9  # chain of nodes 0..22, then roots
    se = trie_span_end(8, parents, 40)[None].to(DEVICE)
    assert int(se[0, 8]) == 31
    q, k, v, _, _ = make_problem(10, 1, 1, 1, 16, [(8, 32, 0)])
    visible = tree_visibility(8, parents, 40)[None].to(DEVICE)
    got = tree_attention_triton(q, k, v, se, 0.3, config=cfg)
    assert_attention_close(got, attention_float64(q, k, v, visible, 0.3), torch.float32)


@needs_kernels
def test_triton_non_contiguous_inputs():
    """q/k/v as views of a [B, T, H, Dh] projection, transposed (what a model passes)."""
    q, k, v, se, _ = make_problem(4, 2, 2, 2, 32, [(10, 12, 2), (5, 20, 0)])
    qt, kt, vt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    assert not qt.is_contiguous()
    got = tree_attention_triton(qt, kt, vt, se, 0.2)
    assert_attention_close(got, tree_attention_reference(q, k, v, se, 0.2), torch.float32)


@needs_kernels
def test_rows_without_visible_keys_are_zero():
    """Defensive semantics: a row that sees no key (span_end[j] <= j) returns zeros."""
    q, k, v, _, _ = make_problem(5, 1, 1, 1, 16, [(20, 0, 0)])
    se = torch.arange(20, device=DEVICE)[None].clone()  # j visible to nobody, itself included
    se[0, 5:] += 1  # rows 5.. see themselves; rows 0-4 see nothing
    for fn in (tree_attention_reference, tree_attention_triton):
        out = fn(q, k, v, se, 0.25)
        assert torch.equal(out[0, :, :5], torch.zeros_like(out[0, :, :5])), fn.__name__
        torch.testing.assert_close(out[0, :, 5:], v[0, :, 5:], atol=1e-6, rtol=0)


@needs_kernels
def test_empty_sequence():
    """T=0 gives an empty output on both paths."""
    q, k, v, se, _ = make_problem(12, 1, 1, 2, 16, [(1, 0, 0)])
    q, k, v, se = q[:, :, :0], k[:, :, :0], v[:, :, :0], se[:, :0]
    for fn in (tree_attention_reference, tree_attention_triton):
        assert fn(q, k, v, se, 1.0).shape == q.shape


@needs_kernels
def test_triton_repeatable_bitwise():
    """Two runs give the same bits (fixed key-block order, no atomics)."""
    args = make_problem(6, 2, 2, 2, 32, [(17, 20, 3), (9, 30, 0)], torch.bfloat16)[:4]
    assert torch.equal(tree_attention_triton(*args, 0.2), tree_attention_triton(*args, 0.2))


def test_dispatch_and_force_reference(monkeypatch):
    """CPU tensors and ENGINE_FORCE_REFERENCE=1 go to the reference; CUDA goes to Triton."""
    q, k, v, se, _ = make_problem(7, 1, 1, 2, 16, [(8, 8, 1)])
    monkeypatch.setenv("ENGINE_FORCE_REFERENCE", "1")
    assert torch.equal(tree_attention(q, k, v, se, 0.3),
                       tree_attention_reference(q, k, v, se, 0.3))
    monkeypatch.delenv("ENGINE_FORCE_REFERENCE")
    assert answerdist.kernels.use_triton(q) == HAS_CUDA
    expected = (tree_attention_triton if HAS_CUDA else tree_attention_reference)(q, k, v, se, 0.3)
    assert torch.equal(tree_attention(q, k, v, se, 0.3), expected)


@pytest.mark.parametrize("change, match", [
    (lambda q, k, v, s: (q[0], k, v, s), "Dh"),
    (lambda q, k, v, s: (q, k[:, :, :-1], v[:, :, :-1], s), "does not match"),
    (lambda q, k, v, s: (q[:, :3], k, v, s), "multiple"),
    (lambda q, k, v, s: (q, k, v, s.float()), "span_end"),
    (lambda q, k, v, s: (q, k, v, s[:, :-1]), "span_end"),
])
def test_bad_inputs_raise(change, match):
    """Shape and dtype mistakes fail loudly on both paths."""
    args = change(*make_problem(8, 1, 2, 2, 16, [(4, 4, 0)])[:4])
    for fn in (tree_attention_reference, tree_attention_triton):
        with pytest.raises(ValueError, match=match):
            fn(*args, 1.0)


@pytest.mark.skipif(not HAS_CUDA, reason="native-size check needs CUDA (interpreter too slow)")
def test_triton_native_large():
    """Engine-sized: prompt 2048 + trie 512, 32 query heads over 8 kv heads, head_dim 128."""
    q, k, v, se, _ = make_problem(9, 2, 8, 4, 128, [(2048, 512, 0), (1500, 300, 760)],
                                  torch.bfloat16)
    got = tree_attention_triton(q, k, v, se, 128**-0.5)
    assert_attention_close(got, tree_attention_reference(q, k, v, se, 128**-0.5),
                           torch.bfloat16)


# --------------------------------------------------------------------------- sliding window

def tree_positions(prompt_len: int, parents: list[int], total: int) -> torch.Tensor:
    """Position ids as the engine gives them: the prompt 0..p-1, a trie node at p - 1 + its
    depth (a root has depth 1), padding continuing from the row index."""
    depth = []
    for p in parents:
        depth.append(1 if p < 0 else depth[p] + 1)
    length = prompt_len + len(parents)
    pos = list(range(prompt_len)) + [prompt_len - 1 + d for d in depth] + list(range(length,
                                                                                      total))
    return torch.tensor(pos, dtype=torch.int64)


def windowed_problem(seed, hkv, group, head_dim, seqs, window, dtype=torch.float32,
                     pos_dtype=torch.int64):
    """make_problem's inputs plus positions [B, T] and the oracle's visibility with the window
    applied on positions (built from the trees themselves, not from span_end)."""
    q, k, v, se, _ = make_problem(seed, len(seqs), hkv, group, head_dim, seqs, dtype)
    rng = random.Random(seed)  # make_problem's trie draws, replayed
    total = se.shape[1]
    positions, visible = [], []
    for p, n, _ in seqs:
        parents = random_trie(rng, n)
        pos = tree_positions(p, parents, total)
        positions.append(pos)
        visible.append(tree_visibility(p, parents, total)
                       & (pos[:, None] - pos[None, :] < window))
    assert torch.equal(torch.stack([trie_span_end(p, random_trie(random.Random(seed), n), total)
                                    for p, n, _ in seqs[:1]]).to(se), se[:1])
    return (q, k, v, se, torch.stack(positions).to(pos_dtype).to(DEVICE),
            torch.stack(visible).to(DEVICE))


window_seqs = st.lists(st.tuples(st.integers(1, 50), st.integers(0, 30), st.integers(0, 4)),
                       min_size=1, max_size=2)


@budget(40)
@given(seed=st.integers(0, 2**31 - 1), seqs=window_seqs, window=st.integers(1, 90),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
@example(seed=3, seqs=[(40, 20, 0)], window=8, dtype=torch.float32)  # window inside the prompt
@example(seed=4, seqs=[(5, 30, 2)], window=3, dtype=torch.float32)  # window cutting the trie
def test_window_reference_matches_float64(seed, seqs, window, dtype):
    """Reference with a window == dense float64 attention under tree & window visibility."""
    q, k, v, se, pos, visible = windowed_problem(seed, 2, 2, 16, seqs, window, dtype)
    got = tree_attention_reference(q, k, v, se, 0.25, positions=pos, window=window)
    assert_attention_close(got, attention_float64(q, k, v, visible, 0.25), dtype)


@needs_kernels
@budget(30)
@given(seed=st.integers(0, 2**31 - 1), seqs=window_seqs, window=st.integers(1, 90),
       head_dim=st.sampled_from([16, 32]), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       pos_dtype=st.sampled_from([torch.int32, torch.int64]))
@example(seed=5, seqs=[(45, 25, 3), (20, 30, 0)], window=10, head_dim=16,
         dtype=torch.float32, pos_dtype=torch.int64)
@example(seed=6, seqs=[(6, 36, 0)], window=2, head_dim=32, dtype=torch.bfloat16,
         pos_dtype=torch.int32)
def test_window_triton_matches_reference_and_float64(seed, seqs, window, head_dim, dtype,
                                                     pos_dtype):
    """Kernel with a window == reference == float64 (windows inside the prompt, cutting into
    the trie, wider than the row), output poisoned with NaN."""
    q, k, v, se, pos, visible = windowed_problem(seed, 1, 2, head_dim, seqs, window, dtype,
                                                 pos_dtype)
    scale = head_dim**-0.5
    got = tree_attention_triton(q, k, v, se, scale, positions=pos, window=window,
                                out=torch.full_like(q, float("nan")))
    want = tree_attention_reference(q, k, v, se, scale, positions=pos, window=window)
    assert_attention_close(got, want, dtype)
    assert_attention_close(got, attention_float64(q, k, v, visible, scale), dtype)


@pytest.mark.parametrize("fn", ["reference", "triton"])
def test_window_as_wide_as_the_row_is_no_window(fn):
    """window >= T (in positions) changes nothing: bitwise equal to window=None."""
    if fn == "triton" and not (KERNELS_RUN and answerdist.kernels.triton_available()):
        pytest.skip("triton missing, or imported natively before TRITON_INTERPRET=1 could be set")
    impl = tree_attention_reference if fn == "reference" else tree_attention_triton
    q, k, v, se, pos, _ = windowed_problem(11, 1, 2, 16, [(30, 20, 2), (12, 30, 0)], 52)
    t = se.shape[1]
    plain = impl(q, k, v, se, 0.3)
    for window in (t, t + 1, 10**6):
        assert torch.equal(impl(q, k, v, se, 0.3, positions=pos, window=window), plain)


def test_window_changes_the_result_when_it_cuts():
    """A window shorter than the prompt does change late queries (the test above is not
    vacuous), and the dispatcher passes positions and window through."""
    q, k, v, se, pos, _ = windowed_problem(12, 1, 1, 16, [(30, 10, 0)], 4)
    plain = tree_attention(q, k, v, se, 0.3)
    windowed = tree_attention(q, k, v, se, 0.3, positions=pos, window=4)
    assert torch.equal(windowed[..., :4, :], plain[..., :4, :])  # rows 0-3 see all their keys
    assert not torch.allclose(windowed[..., 10:, :], plain[..., 10:, :])
    assert torch.equal(windowed, tree_attention_reference(q, k, v, se, 0.3, positions=pos,
                                                          window=4))


@pytest.mark.parametrize("make_kwargs, match", [
    (lambda pos: {"window": 4}, "positions is None"),
    (lambda pos: {"window": 0, "positions": pos}, "positive int"),
    (lambda pos: {"window": 2.5, "positions": pos}, "positive int"),
    (lambda pos: {"window": True, "positions": pos}, "positive int"),
    (lambda pos: {"window": 4, "positions": pos[:, :-1]}, "positions must be"),
    (lambda pos: {"window": 4, "positions": pos.float()}, "positions must be"),
])
def test_window_bad_inputs_raise(make_kwargs, match):
    """Bad window arguments are one clear ValueError on both paths (before any kernel)."""
    q, k, v, se, pos, _ = windowed_problem(13, 1, 1, 16, [(6, 4, 0)], 4)
    for fn in (tree_attention_reference, tree_attention_triton):
        with pytest.raises(ValueError, match=match):
            fn(q, k, v, se, 1.0, **make_kwargs(pos))


# --------------------------------------------------------------------------- packed rows

def engine_sequences(seed: int, count: int, prompt_range: tuple[int, int],
                     answers_range: tuple[int, int]) -> list[Sequence]:
    """Scorer sequences with random prompts and answer tries (tokens irrelevant here)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        prompt = rng.randint(*prompt_range)
        wanted = rng.randint(*answers_range)
        answers: set[tuple[int, ...]] = set()
        while len(answers) < wanted:
            answers.add(tuple(rng.randrange(6) for _ in range(rng.randint(1, 4))))
        ids = [list(a) for a in sorted(answers)]
        out.append(Sequence("t", f"p{i}", "", "", [1] * prompt, [""] * len(ids), ids,
                            list(range(len(ids))), build_trie(ids)))
    return out


def packed_rows(sequences, batch_tokens):
    """The engine's own packing (answerdist.engine.scoring.scorer.make_batches): [1, T] rows of
    whole sequences."""
    return make_batches(sequences, batch_tokens)


def packed_visibility(sequences, batch, window=None) -> torch.Tensor:
    """[1, T, T] oracle visibility of a packed row, built from each sequence's trie (parents),
    block-diagonal over the placements, with the window applied on position ids."""
    t = batch.span_end.shape[1]
    vis = torch.zeros(t, t, dtype=torch.bool)
    for i, offset in ((part.seq, offset) for part, offset in batch.placements):
        s = sequences[i]
        n = len(s)
        vis[offset:offset + n, offset:offset + n] = tree_visibility(
            len(s.prompt_ids), list(s.trie.parent), n)
    if window is not None:
        pos = batch.position_ids[0]
        vis &= (pos[:, None] - pos[None, :]) < window
    return vis[None]


def packed_qkv(seed, t, hq, hkv, dh, dtype):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, h, t, dh, generator=g).to(dtype).to(DEVICE)
                 for h in (hq, hkv, hkv))


def test_sequence_starts_on_engine_rows():
    """sequence_starts gives each position of a packed row its sequence's offset; padding runs
    are grouped under their first position; each start is <= the first visible key."""
    seqs = engine_sequences(20, 9, (1, 30), (1, 8))
    for batch in packed_rows(seqs, 120):
        starts = sequence_starts(batch.span_end)
        want = torch.empty_like(starts)
        for i, offset in ((part.seq, offset) for part, offset in batch.placements):
            want[0, offset:offset + len(seqs[i])] = offset
        assert torch.equal(starts, want)
    se = trie_span_end(5, [-1, 0, -1], 12)[None]  # 8 positions, then 4 of padding
    assert sequence_starts(se).tolist() == [[0] * 8 + [8] * 4]
    visible = span_end_visible(se[0])
    first = torch.where(visible.any(1), visible.to(torch.int8).argmax(1), torch.arange(12))
    assert bool((sequence_starts(se)[0] <= first).all())


@needs_kernels
@pytest.mark.parametrize("window", [None, 9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_rows_match_reference_and_float64(dtype, window):
    """Rows packed by the engine's packer (sequences straddling query blocks): kernel ==
    reference == float64 oracle, with and without a window, output poisoned with NaN."""
    seqs = engine_sequences(21, 10, (3, 40), (1, 7))
    batch = packed_rows(seqs, 260)[0]
    t = batch.span_end.shape[1]
    q, k, v = packed_qkv(22, t, 4, 2, 32, dtype)
    se = batch.span_end.to(DEVICE)
    kwargs = {} if window is None else {"positions": batch.position_ids.to(DEVICE),
                                        "window": window}
    got = tree_attention_triton(q, k, v, se, 0.2, out=torch.full_like(q, float("nan")),
                                **kwargs)
    assert_attention_close(got, tree_attention_reference(q, k, v, se, 0.2, **kwargs), dtype)
    oracle = attention_float64(q, k, v, packed_visibility(seqs, batch, window).to(DEVICE), 0.2)
    assert_attention_close(got, oracle, dtype)


def visible_blocks(visible_rows: torch.Tensor, block_n: int) -> int:
    """Key blocks (of the fixed grid j // block_n) holding a visible pair for these rows."""
    keys = visible_rows.any(0).nonzero()[:, 0]
    return len(set((keys // block_n).tolist()))


def count_visits(kernel_module, sequences, batch, cfg, window=None):
    """(per-pass visits, per-pass bound, passes) for one packed row: the kernel's own count of
    the key blocks each pass (the rows of one sequence within one query block) attends to, and
    the key blocks of the fixed grid holding a visible pair for those rows."""
    t = batch.span_end.shape[1]
    q, k, v = packed_qkv(23, t, 1, 1, 16, torch.float32)
    se = batch.span_end.to(DEVICE)
    pos = batch.position_ids.to(DEVICE)
    visits = torch.zeros(1, 1, t, dtype=torch.int32, device=DEVICE)
    kernel_module.tree_attention(q, k, v, se, sequence_starts(se), 0.2, cfg, positions=pos,
                                 window=window, visits=visits)
    visible = packed_visibility(sequences, batch, window)[0]
    passes, counts, bounds = [], [], []
    for i, offset in sorted(((part.seq, offset) for part, offset in batch.placements),
                            key=lambda p: p[1]):
        end = offset + len(sequences[i])
        for m0 in range(offset - offset % cfg.block_m, end, cfg.block_m):
            r0, r1 = max(m0, offset), min(m0 + cfg.block_m, end)
            passes.append(r0)
            counts.append(int(visits[0, 0, r0]))
            bounds.append(visible_blocks(visible[r0:r1], cfg.block_n))
    assert set(visits[0, 0].nonzero()[:, 0].tolist()) == set(passes)  # every pass accounted
    return counts, bounds, passes


@needs_kernels
@pytest.mark.parametrize("window", [None, 12])
def test_packed_rows_visit_only_visible_blocks(kernel_module, window):
    """On rows packed by the engine's packer, each query block (the rows of one sequence within
    a BLOCK_M tile) attends to at most (key blocks holding a visible pair) + 1 key blocks: it
    starts at its own sequence, never at key 0."""
    cfg = kernel_module.TreeAttentionConfig(block_m=16, block_n=16, block_scan=32)
    seqs = engine_sequences(24, 14, (10, 45), (2, 9))
    batch = packed_rows(seqs, 520)[0]
    counts, bounds, _ = count_visits(kernel_module, seqs, batch, cfg, window)
    over = [(c, b) for c, b in zip(counts, bounds, strict=True) if c > b + 1]
    assert not over, over
    t = batch.span_end.shape[1]
    all_blocks = sum(min(t, m0 + 16) // 16 + 1 for m0 in range(0, t, 16))
    print(f"\nT={t}, window={window}: {sum(counts)} key blocks visited over {len(counts)} "
          f"query blocks, {sum(bounds)} hold a visible pair; from key 0 it would be "
          f"~{all_blocks}")


@needs_kernels
def test_packed_rows_visit_counts_at_engine_scale(kernel_module):
    """The issue's shape with the shipped Hopper bf16 head_dim-128 tiles (128 x 64): 40
    sequences of 150-token prompts and 50-node tries (10 answers of 5 tokens) packed by the
    engine into one row of T = 8000; every query block within the bound."""
    cfg = kernel_module.TreeAttentionConfig(block_m=128, block_n=64, block_scan=1024)
    conts = [[10 * a + t for t in range(5)] for a in range(10)]
    seqs = [Sequence("t", f"p{i}", "", "", [1] * 150, [""] * 10, conts, list(range(10)),
                     build_trie(conts)) for i in range(40)]
    batch = packed_rows(seqs, 8192)[0]
    assert batch.span_end.shape[1] == 8000 and len(batch.placements) == 40
    counts, bounds, _ = count_visits(kernel_module, seqs, batch, cfg)
    assert all(c <= b + 1 for c, b in zip(counts, bounds, strict=True))
    from_zero = sum(min(8000, m0 + 128 + 63) // 64 for m0 in range(0, 8000, 128))
    print(f"\nT=8000: {sum(counts)} key blocks visited over {len(counts)} query blocks; "
          f"{sum(bounds)} hold a visible pair; every block from key 0: {from_zero}")


@needs_kernels
@pytest.mark.parametrize("window", [None, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_rows_batch_invariant_bitwise(dtype, window, fixed_order_dot):
    """A sequence's outputs are bitwise identical alone and packed at other offsets with other
    neighbours: key blocks align to the sequence's start, never to the row."""
    seqs = engine_sequences(26, 3, (11, 37), (2, 6))
    layouts = [[0], [1, 0, 2], [2, 1, 0], [1, 2, 0]]
    qkv = [packed_qkv(30 + i, len(s), 2, 1, 32, dtype) for i, s in enumerate(seqs)]
    results = []
    offsets = set()
    for order in layouts:
        batch = _layout(seqs, [whole(i, seqs[i]) for i in order])  # the engine's row layout
        at = next(offset for part, offset in batch.placements if part.seq == 0)
        offsets.add(at)
        q, k, v = (torch.cat([qkv[i][n] for i in order], dim=2) for n in range(3))
        kwargs = {} if window is None else {"positions": batch.position_ids.to(DEVICE),
                                            "window": window}
        out = tree_attention_triton(q, k, v, batch.span_end.to(DEVICE), 0.3, **kwargs)
        results.append(out[..., at:at + len(seqs[0]), :])
    assert len(offsets) == 3
    for r in results[1:]:
        assert torch.equal(r, results[0])


@pytest.fixture
def fixed_order_dot():
    """Interpreted, a fixed-order ``tl.dot`` (see
    ``answerdist.kernels.interpreter.fixed_order_dot``)."""
    with interpreter.fixed_order_dot():
        yield


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 24])
def test_triton_qk_in_head_dim_chunks(kernel_module, head_dim, dtype):
    """q.k over head_dim in chunks (q reloaded per chunk: float32's tiles, bf16 at head_dim
    256), a ragged last chunk at head_dim 24, with padding: equal to the float64 oracle."""
    cfg = kernel_module.TreeAttentionConfig(block_m=16, block_n=16, block_scan=32, qk_chunk=16)
    q, k, v, se, visible = make_problem(14, 1, 2, 2, head_dim, [(30, 25, 5)], dtype)
    got = tree_attention_triton(q, k, v, se, 0.2, config=cfg,
                                out=torch.full_like(q, float("nan")))
    assert_attention_close(got, attention_float64(q, k, v, visible, 0.2), dtype)


@needs_kernels
def test_unsupported_dtype_head_dim_and_arch_name_the_reference(monkeypatch):
    """float16, head_dim > 256 and GPUs older than sm_80 are one clear KernelUnsupportedError
    naming the torch reference, raised before anything compiles."""
    q, k, v, se, _ = make_problem(15, 1, 1, 1, 16, [(6, 4, 0)])
    with pytest.raises(answerdist.kernels.KernelUnsupportedError, match="dtype torch.float16.*"
                       "tree_attention_reference"):
        tree_attention_triton(q.half(), k.half(), v.half(), se, 1.0)
    q, k, v, se, _ = make_problem(15, 1, 1, 1, 320, [(6, 4, 0)])
    with pytest.raises(answerdist.kernels.KernelUnsupportedError,
                       match="head_dim 320.*ENGINE_FORCE_REF"):
        tree_attention_triton(q, k, v, se, 1.0)
    common = importlib.import_module("answerdist.kernels._triton_common")
    monkeypatch.setattr(common, "INTERPRET", False)
    monkeypatch.setattr(common, "device_capability", lambda tensor: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    gpu_tensor = types.SimpleNamespace(is_cuda=True, device="cuda:0")
    with pytest.raises(answerdist.kernels.KernelUnsupportedError,
                       match=r"sm_80 \(Ampere\) and newer, not sm_70 \(Tesla V100\).*reference"):
        common.check_device(gpu_tensor, "tree-attention",
                            "answerdist.kernels.tree_attention.tree_attention_reference")
    monkeypatch.setattr(common, "device_capability", lambda tensor: (8, 0))
    common.check_device(gpu_tensor, "tree-attention", "ref")  # A100: fine


def test_a_wide_trie_attends_to_its_visible_keys_only(monkeypatch):
    """Query blocks deep in a trie of many siblings attend to the prompt, their ancestors and
    themselves (linear in the answers); the result is the dense oracle's. A causal sequence,
    where every earlier key is visible, keeps the contiguous key range (bits unchanged)."""
    import answerdist.kernels.tree_attention as ta

    used = []
    real = ta._sparse_keys

    def spy(*args):
        keys = real(*args)
        used.append(keys is not None)
        return keys

    monkeypatch.setattr(ta, "_SCORE_BUDGET", 2 * 64 * 8)  # 8 query rows a block at T = 64 x 2
    monkeypatch.setattr(ta, "_sparse_keys", spy)
    prompt, parents = 6, [-1 if i % 5 == 0 else i - 1 for i in range(60)]  # 12 branches of 5
    total = prompt + len(parents)
    span_end = trie_span_end(prompt, parents, total)[None]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, total, 16, generator=g) for _ in range(3))
    got = ta.tree_attention_reference(q, k, v, span_end, 0.25)
    want = attention_float64(q, k, v, tree_visibility(prompt, parents, total)[None], 0.25)
    assert_attention_close(got, want, torch.float32)
    assert any(used), "no block took the visible keys only"
    used.clear()
    causal = torch.full((1, total), total, dtype=torch.int64)
    ta.tree_attention_reference(q, k, v, causal, 0.25)
    assert used and not any(used)
