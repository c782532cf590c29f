"""Soft-capping (Gemma 2) in the kernels: cap * tanh(x / cap) on the final logits in the LM
head and on the scaled attention scores, references and Triton kernels against float64.

The caps are small enough to bind (scores and logits of a few units against caps of 1.5-2),
so a kernel that forgot the cap, capped the masked -inf into -cap, or capped after the change
to log2 units would fail. Interpreted without CUDA, as in the other kernel tests.
"""

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import answerdist.kernels
from answerdist.kernels.lm_head import lm_head_logprobs_reference, lm_head_logprobs_triton
from answerdist.kernels.tree_attention import tree_attention_reference, tree_attention_triton
from tests import test_kernels_lm_head as lm
from tests import test_kernels_tree_attention as ta

DEVICE = lm.DEVICE


def capped(x: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.tanh(x / cap) * cap


def lm_head_float64(hidden, weight, targets, mask, cap):
    """Full float64 capped logits, then the three outputs."""
    logits = capped(hidden.double() @ weight.double().T, cap)
    lse = torch.logsumexp(logits, dim=1)
    tl = logits.gather(1, targets.clamp(min=0)).masked_fill(targets < 0, float("-inf"))
    blse = (torch.logsumexp(logits[:, mask], dim=1) if bool(mask.any())
            else torch.full_like(lse, float("-inf")))
    return lse, tl, blse


def attention_float64(q, k, v, visible, scale, cap):
    """Dense float64 attention, the scaled scores capped before the mask."""
    group = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    scores = capped((q.double() @ k.transpose(-1, -2)) * scale, cap)
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


if lm.KERNELS_RUN and answerdist.kernels.triton_available():  # after conftest chose the interpreter
    import triton
    import triton.language as tl

    from answerdist.kernels._triton_common import tanh

    @triton.jit
    def tanh_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        """The kernels' tanh, elementwise."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < n
        tl.store(y_ptr + offs, tanh(tl.load(x_ptr + offs, mask=ok, other=0.0)), mask=ok)


@lm.needs_kernels
def test_triton_tanh_is_accurate_in_float32():
    """The kernels' tanh (exp-based, with a polynomial near 0) against float64 torch.tanh:
    within 4 float32 ulps of the result everywhere, including both sides of its 0.3 switch,
    tiny and huge arguments and signed zero."""
    grid = torch.cat([torch.linspace(-12, 12, 4001), torch.linspace(0.29, 0.31, 401),
                      torch.tensor([0.0, -0.0, 1e-30, -1e-20, 1e-7, 3e-4, 50.0, -80.0, 1e30])])
    x = grid.to(torch.float32).to(DEVICE)
    y = torch.empty_like(x)
    tanh_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
    want = torch.tanh(x.double())
    ulp = torch.finfo(torch.float32).eps * want.abs().clamp(min=torch.finfo(torch.float32).tiny)
    err = (y.double() - want).abs()
    assert bool((err <= 4 * ulp).all()), f"max error {(err / ulp).max().item():.1f} ulps"
    assert torch.equal(torch.sign(y), torch.sign(x))


problems = st.fixed_dictionaries({
    "n": st.integers(1, 24), "d": st.integers(1, 48), "v": st.integers(1, 200),
    "k": st.integers(1, 4), "seed": st.integers(0, 2**31 - 1),
    "mask_kind": st.sampled_from(["random", "empty", "full", "last"]),
})


@lm.budget(30)
@given(p=problems, dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       chunk=st.integers(1, 300), cap=st.sampled_from([1.5, 2.0, 30.0]))
def test_lm_head_reference_caps_like_float64(p, dtype, chunk, cap):
    hidden, weight, targets, mask = lm.make_problem(**p, dtype=dtype)
    got = lm_head_logprobs_reference(hidden, weight, targets, mask, chunk_size=chunk,
                                     softcap=cap)
    lm.assert_outputs_close(got, lm_head_float64(hidden, weight, targets, mask, cap),
                            atol=1e-5, rtol=1e-5)


@lm.needs_kernels
@lm.budget(20)
@given(p=problems, dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       cap=st.sampled_from([1.5, 2.0, 30.0]))
@example(p={"n": 17, "d": 40, "v": 150, "k": 3, "seed": 3, "mask_kind": "random"},
         dtype=torch.float32, cap=1.5)
def test_lm_head_triton_caps_like_the_reference_and_float64(p, dtype, cap):
    hidden, weight, targets, mask = lm.make_problem(**p, dtype=dtype)
    got = lm_head_logprobs_triton(hidden, weight, targets, mask, softcap=cap,
                                  out=lm.poisoned(p["n"], p["k"]))
    tol = 2e-5 if dtype == torch.float32 else 1e-4
    want = lm_head_logprobs_reference(hidden, weight, targets, mask, softcap=cap)
    lm.assert_outputs_close(got, want, atol=tol, rtol=tol)
    lm.assert_outputs_close(got, lm_head_float64(hidden, weight, targets, mask, cap),
                            atol=tol, rtol=tol)


@lm.needs_kernels
def test_lm_head_cap_binds():
    """The cap changes the result, and bounds every target logit by it."""
    hidden, weight, targets, mask = lm.make_problem(9, 32, 120, 3, seed=4)
    lse, tl, _ = lm_head_logprobs_triton(hidden, weight, targets, mask, softcap=1.5)
    plain_lse, plain_tl, _ = lm_head_logprobs_triton(hidden, weight, targets, mask)
    finite = torch.isfinite(tl)
    assert bool((tl[finite].abs() < 1.5).all())
    assert (lse - plain_lse).abs().max() > 0.1 and (tl - plain_tl)[finite].abs().max() > 0.1


@ta.budget(20)
@given(seed=st.integers(0, 2**31 - 1), seqs=ta.seq_lists, group=st.sampled_from([1, 2]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), cap=st.sampled_from([1.5, 50.0]))
def test_attention_reference_caps_like_float64(seed, seqs, group, dtype, cap):
    q, k, v, se, visible = ta.make_problem(seed, 2, 2, group, 16, seqs, dtype)
    got = tree_attention_reference(q, k, v, se, 0.25, softcap=cap)
    ta.assert_attention_close(got, attention_float64(q, k, v, visible, 0.25, cap), dtype)


@ta.needs_kernels
@ta.budget(20)
@given(seed=st.integers(0, 2**31 - 1), seqs=ta.seq_lists, group=st.sampled_from([1, 2]),
       head_dim=st.sampled_from([16, 32]), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       cap=st.sampled_from([1.5, 50.0]))
@example(seed=7, seqs=[(30, 20, 3), (4, 9, 0)], group=2, head_dim=16, dtype=torch.float32,
         cap=1.5)
def test_attention_triton_caps_like_the_reference_and_float64(seed, seqs, group, head_dim,
                                                              dtype, cap):
    """Masked keys stay invisible under the cap (a capped -inf would be -cap, a weight of
    exp(-cap) on keys the tree hides), on the masked and unmasked paths alike."""
    q, k, v, se, visible = ta.make_problem(seed, 2, 2, group, head_dim, seqs, dtype)
    scale = head_dim**-0.5
    got = tree_attention_triton(q, k, v, se, scale, softcap=cap,
                                out=torch.full_like(q, float("nan")))
    ta.assert_attention_close(got, tree_attention_reference(q, k, v, se, scale, softcap=cap),
                              dtype)
    ta.assert_attention_close(got, attention_float64(q, k, v, visible, scale, cap), dtype)


@ta.needs_kernels
@pytest.mark.parametrize("window", [3, 12])
def test_attention_triton_caps_with_a_window(window):
    """Gemma 2's sliding layers: cap and window together."""
    q, k, v, se, pos, visible = ta.windowed_problem(8, 2, 2, 16, [(30, 20, 2), (6, 25, 0)],
                                                    window)
    got = tree_attention_triton(q, k, v, se, 0.25, positions=pos, window=window, softcap=1.5,
                                out=torch.full_like(q, float("nan")))
    ta.assert_attention_close(got, attention_float64(q, k, v, visible, 0.25, 1.5),
                              torch.float32)
    plain = tree_attention_triton(q, k, v, se, 0.25, positions=pos, window=window)
    assert (got - plain).abs().max() > 1e-2
