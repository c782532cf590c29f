"""Fused LM-head log-probabilities: reference vs float64, Triton kernel vs reference.

Without CUDA the kernels run under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports triton). Interpreted kernels are
~200x slower than torch, hence the small shapes; the same tests run natively (and the
batch-invariance test at 4096 rows) wherever CUDA is present.
"""

import importlib

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import answerdist.kernels
from answerdist.kernels import interpreter
from answerdist.kernels.lm_head import (
    lm_head_logprobs,
    lm_head_logprobs_reference,
    lm_head_logprobs_triton,
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
    return importlib.import_module("answerdist.kernels._lm_head_triton")


def make_problem(n, d, v, k, seed, dtype=torch.float32, mask_kind="random", pad=0.3):
    """Random hidden [n, d], weight [v, d], targets [n, k] (-1 padding), boundary mask [v].

    Weight rows are scaled so logits have a spread of a few nats, like a real LM head.
    """
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g)
    weight = torch.randn(v, d, generator=g) * (3.0 / max(1, d) ** 0.5)
    targets = torch.randint(0, v, (n, k), generator=g)
    targets[torch.rand(n, k, generator=g) < pad] = -1
    masks = {
        "random": lambda: torch.rand(v, generator=g) < 0.3,
        "empty": lambda: torch.zeros(v, dtype=torch.bool),
        "full": lambda: torch.ones(v, dtype=torch.bool),
        "last": lambda: torch.arange(v) == v - 1,
    }
    mask = masks[mask_kind]()
    return (hidden.to(dtype).to(DEVICE), weight.to(dtype).to(DEVICE), targets.to(DEVICE),
            mask.to(DEVICE))


def float64_truth(hidden, weight, targets, mask):
    """Independent float64 computation over full logits (fine at test sizes)."""
    logits = hidden.double() @ weight.double().T
    lse = torch.logsumexp(logits, dim=1)
    tl = logits.gather(1, targets.clamp(min=0)).masked_fill(targets < 0, float("-inf"))
    if bool(mask.any()):
        blse = torch.logsumexp(logits[:, mask], dim=1)
    else:
        blse = torch.full_like(lse, float("-inf"))
    return lse, tl, blse


def assert_outputs_close(got, want, atol, rtol):
    """Same -inf pattern, no NaN, finite values close (torch treats matching infs as equal)."""
    for name, g, w in zip(("lse", "target_logits", "boundary_lse"), got, want, strict=True):
        assert g.dtype == torch.float32, name
        assert not torch.isnan(g).any(), f"{name} has NaN (unwritten or invalid)"
        torch.testing.assert_close(g.double().cpu(), w.double().cpu(), atol=atol, rtol=rtol,
                                   msg=lambda m, name=name: f"{name}: {m}")


def poisoned(n, k):
    """NaN-filled output buffers: any element the kernel forgets to write stays NaN."""
    full = lambda *shape: torch.full(shape, float("nan"), dtype=torch.float32, device=DEVICE)
    return full(n), full(n, k), full(n)


problems = st.fixed_dictionaries({
    "n": st.integers(1, 40),
    "d": st.integers(1, 80),
    "v": st.integers(1, 300),
    "k": st.integers(1, 6),
    "seed": st.integers(0, 2**31 - 1),
    "mask_kind": st.sampled_from(["random", "random", "empty", "full", "last"]),
})


@budget(60)
@given(p=problems, dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       chunk=st.integers(1, 400))
@example(p={"n": 1, "d": 1, "v": 1, "k": 1, "seed": 0, "mask_kind": "empty"},
         dtype=torch.float32, chunk=1)
def test_reference_matches_float64(p, dtype, chunk):
    """Chunked reference == float64 over full logits, for any chunk size (ragged last chunk)."""
    hidden, weight, targets, mask = make_problem(**p, dtype=dtype)
    got = lm_head_logprobs_reference(hidden, weight, targets, mask, chunk_size=chunk)
    # bf16 inputs are upcast exactly, so both dtypes meet float32-accumulation tolerances.
    assert_outputs_close(got, float64_truth(hidden, weight, targets, mask), atol=1e-5, rtol=1e-5)


def test_reference_matches_full_log_softmax():
    """With float32 inputs the chunked reference agrees with a full float32 log_softmax."""
    hidden, weight, targets, mask = make_problem(7, 64, 1000, 3, seed=1, pad=0.0)
    lse, tl, _ = lm_head_logprobs_reference(hidden, weight, targets, mask, chunk_size=128)
    logp = torch.log_softmax(hidden @ weight.T, dim=1)
    torch.testing.assert_close(tl - lse[:, None], logp.gather(1, targets), atol=2e-6, rtol=0)


@needs_kernels
@budget(60)
@given(p=problems, dtype=st.sampled_from([torch.float32, torch.bfloat16]))
@example(p={"n": 1, "d": 1, "v": 1, "k": 1, "seed": 0, "mask_kind": "empty"},
         dtype=torch.float32)
@example(p={"n": 33, "d": 65, "v": 129, "k": 3, "seed": 5, "mask_kind": "last"},
         dtype=torch.bfloat16)
def test_triton_matches_reference_and_float64(p, dtype):
    """Kernel == reference == float64, outputs poisoned with NaN before the run."""
    hidden, weight, targets, mask = make_problem(**p, dtype=dtype)
    got = lm_head_logprobs_triton(hidden, weight, targets, mask, out=poisoned(p["n"], p["k"]))
    want = lm_head_logprobs_reference(hidden, weight, targets, mask)
    tol = 2e-5 if dtype == torch.float32 else 1e-4  # bf16 natively: tensor-core accumulation
    assert_outputs_close(got, want, atol=tol, rtol=tol)
    assert_outputs_close(got, float64_truth(hidden, weight, targets, mask), atol=tol, rtol=tol)


@pytest.fixture
def fixed_order_dot():
    """Interpreted, a ``tl.dot`` with a fixed per-element order (numpy's BLAS has none; see
    ``answerdist.kernels.interpreter.fixed_order_dot``), so the test checks what the kernel
    guarantees: tiles, splits and merge order that never depend on N. Natively nothing is
    replaced."""
    with interpreter.fixed_order_dot():
        yield


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_batch_invariance_bitwise(dtype, kernel_module, fixed_order_dot):
    """A row's outputs are bitwise identical alone, in a sub-batch and in the full batch.

    4096 rows natively; 160 interpreted (10 row blocks of the interpreter's 16-row tiles, over
    several vocabulary splits) to keep the interpreted suite to seconds. Interpreted, the dot
    has a fixed per-element order (``fixed_order_dot``), since numpy's BLAS does not.
    """
    n = 4096 if HAS_CUDA else 160
    v, d = (5000, 256) if HAS_CUDA else (200, 40)
    hidden, weight, targets, mask = make_problem(n, d, v, 4, seed=3, dtype=dtype)
    full = lm_head_logprobs_triton(hidden, weight, targets, mask)
    for lo, hi in [(0, 1), (1, 2), (15, 16), (16, 17), (77, 78), (n - 1, n), (5, 43)]:
        part = lm_head_logprobs_triton(hidden[lo:hi], weight, targets[lo:hi], mask)
        for name, a, b in zip(("lse", "target_logits", "boundary_lse"), part, full, strict=True):
            assert torch.equal(a, b[lo:hi]), f"{name} of rows {lo}:{hi} changed with the batch"


@needs_kernels
def test_triton_batch_composition_within_rounding():
    """With the interpreter's own (BLAS) dot, batch composition moves a row by float32 rounding
    at most: the tolerance a host BLAS can introduce, nothing more."""
    hidden, weight, targets, mask = make_problem(160, 40, 200, 4, seed=3)
    full = lm_head_logprobs_triton(hidden, weight, targets, mask)
    part = lm_head_logprobs_triton(hidden[5:43], weight, targets[5:43], mask)
    for a, b in zip(part, full, strict=True):
        torch.testing.assert_close(a, b[5:43], rtol=2e-6, atol=2e-6)


def test_tile_config_never_depends_on_the_batch(kernel_module):
    """The tiles come from (D, V, dtype) only: the config function cannot even see N."""
    import inspect

    assert list(inspect.signature(kernel_module.default_config).parameters) == ["d", "v", "dtype",
                                                                               "arch"]


@needs_kernels
def test_triton_repeatable_bitwise():
    """Two runs of the same input give the same bits (no atomics, fixed reduction order)."""
    args = make_problem(50, 48, 250, 2, seed=4, dtype=torch.bfloat16)
    first = lm_head_logprobs_triton(*args)
    second = lm_head_logprobs_triton(*args)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@needs_kernels
def test_triton_custom_tiles(kernel_module):
    """Non-default tiles (one split covering all of V; tiles larger than the problem) agree."""
    config_cls = kernel_module.LMHeadConfig
    args = make_problem(20, 33, 97, 2, seed=6)
    want = lm_head_logprobs_reference(*args)
    for cfg in (config_cls(16, 16, 16, 128, 4, 2), config_cls(32, 128, 64, 128, 4, 2)):
        got = lm_head_logprobs_triton(*args, config=cfg, out=poisoned(20, 2))
        assert_outputs_close(got, want, atol=2e-5, rtol=2e-5)


@needs_kernels
def test_triton_many_targets_per_row():
    """K in the hundreds (a trie root with many children), gathered, with padding."""
    args = make_problem(3, 40, 300, 150, seed=7, pad=0.2)
    got = lm_head_logprobs_triton(*args, out=poisoned(3, 150))
    assert_outputs_close(got, lm_head_logprobs_reference(*args), atol=2e-5, rtol=2e-5)


@needs_kernels
def test_empty_batch():
    """N=0 (a batch with no scored positions) gives empty outputs on both paths."""
    args = make_problem(1, 8, 10, 2, seed=11)
    args = (args[0][:0], args[1], args[2][:0], args[3])
    for fn in (lm_head_logprobs_reference, lm_head_logprobs_triton):
        assert [tuple(x.shape) for x in fn(*args)] == [(0,), (0, 2), (0,)]


def test_dispatch_and_force_reference(monkeypatch):
    """CPU tensors and ENGINE_FORCE_REFERENCE=1 go to the reference; CUDA goes to Triton."""
    args = make_problem(4, 16, 50, 2, seed=8)
    monkeypatch.setenv("ENGINE_FORCE_REFERENCE", "1")
    assert answerdist.kernels.force_reference() and not answerdist.kernels.use_triton(args[0])
    forced = lm_head_logprobs(*args)
    assert all(torch.equal(a, b) for a, b in
               zip(forced, lm_head_logprobs_reference(*args), strict=True))
    monkeypatch.setenv("ENGINE_FORCE_REFERENCE", "0")
    assert answerdist.kernels.use_triton(args[0]) == HAS_CUDA
    routed = lm_head_logprobs(*args)
    expected = lm_head_logprobs_triton(*args) if HAS_CUDA else lm_head_logprobs_reference(*args)
    assert all(torch.equal(a, b) for a, b in zip(routed, expected, strict=True))


@pytest.mark.parametrize("change, match", [
    (lambda h, w, t, m: (h[:, :-1], w, t, m), "D="),
    (lambda h, w, t, m: (h, w.to(torch.float64), t, m), "dtype"),
    (lambda h, w, t, m: (h, w, t.to(torch.int32), m), "int64"),
    (lambda h, w, t, m: (h, w, t[:1], m), "targets"),
    (lambda h, w, t, m: (h, w, torch.full_like(t, 10), m), r"\[-1, V"),
    (lambda h, w, t, m: (h, w, torch.full_like(t, -2), m), r"\[-1, V"),
    (lambda h, w, t, m: (h, w, t, m[:-1]), "boundary_mask"),
])
def test_bad_inputs_raise(change, match):
    """Shape and dtype mistakes fail loudly, naming the argument, on both paths."""
    args = change(*make_problem(3, 8, 10, 2, seed=9))
    with pytest.raises(ValueError, match=match):
        lm_head_logprobs_reference(*args)
    with pytest.raises(ValueError, match=match):
        lm_head_logprobs_triton(*args)


@pytest.mark.skipif(not HAS_CUDA, reason="native-size check needs CUDA (interpreter too slow)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_triton_native_large(dtype):
    """Engine-sized shapes natively: D=4096, a vocabulary with a ragged tail."""
    args = make_problem(300, 4096, 32003, 3, seed=10, dtype=dtype)
    got = lm_head_logprobs_triton(*args)
    assert_outputs_close(got, lm_head_logprobs_reference(*args), atol=2e-4, rtol=2e-4)
