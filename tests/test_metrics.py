"""Property tests of answerdist.analysis.metrics against scipy / numpy float64 references.

Agreement is required within 1e-12 (relative above 1, for KL values in the hundreds of bits).
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon, pdist, squareform
from scipy.special import rel_entr
from scipy.stats import entropy as scipy_entropy

from answerdist.analysis import metrics
from answerdist.analysis.metrics import (
    entropy,
    js_divergence,
    kl_divergence,
    mass_within,
    pairwise_js,
    perplexity,
    support,
    total_variation,
)

PROPERTY = settings(max_examples=150, deadline=None)
LN2 = math.log(2.0)

# Raw weights: exact zeros, probabilities down to 1e-300, and ordinary values.
_weight = st.one_of(
    st.just(0.0),
    st.sampled_from([1e-300, 1e-200, 1e-30, 1e-9]),
    st.floats(0.0, 1.0, allow_subnormal=False),
)


def _normalise(w):
    w = np.asarray(w, dtype=np.float64)
    if w.sum() == 0.0:
        w[0] = 1.0
    return w / w.sum()


@st.composite
def dists(draw, k):
    """A probability vector of length k."""
    return _normalise(draw(st.lists(_weight, min_size=k, max_size=k)))


@st.composite
def dist_tuple(draw, count, min_k=1, max_k=12):
    """`count` probability vectors over the same K answers."""
    k = draw(st.integers(min_k, max_k))
    return [draw(dists(k)) for _ in range(count)]


@st.composite
def dist_matrix(draw, max_n=8, max_k=10):
    n = draw(st.integers(1, max_n))
    k = draw(st.integers(1, max_k))
    rows = [draw(dists(k)) for _ in range(n)]
    # Repeat a row sometimes: equal prompts must get JS exactly 0.
    if n > 1 and draw(st.booleans()):
        rows[-1] = rows[0].copy()
    return np.array(rows)


def close(a, b, tol=1e-12):
    if math.isinf(b):
        return a == b
    return abs(a - b) <= tol * max(1.0, abs(b))


# ------------------------------------------------------------- agreement with references


@PROPERTY
@given(dist_tuple(1))
def test_entropy_matches_scipy(ps):
    (p,) = ps
    assert close(entropy(p), scipy_entropy(p, base=2))


@PROPERTY
@given(dist_tuple(2))
def test_kl_matches_scipy_including_infinity(ps):
    p, q = ps
    ref = float(np.sum(rel_entr(p, q)) / LN2)
    got = kl_divergence(p, q)
    assert close(got, ref), (got, ref)
    assert math.isinf(got) == bool(np.any((p > 0) & (q == 0)))


@PROPERTY
@given(dist_tuple(2))
def test_js_matches_scipy(ps):
    p, q = ps
    assert close(js_divergence(p, q), jensenshannon(p, q, base=2) ** 2)


@PROPERTY
@given(dist_tuple(2))
def test_total_variation_matches_numpy(ps):
    p, q = ps
    assert close(total_variation(p, q), 0.5 * np.abs(p - q).sum())


# --------------------------------------------------------------------------- properties


@PROPERTY
@given(dist_tuple(2))
def test_js_and_tv_are_symmetric(ps):
    p, q = ps
    assert js_divergence(p, q) == js_divergence(q, p)
    assert total_variation(p, q) == total_variation(q, p)


@PROPERTY
@given(dist_tuple(2))
def test_js_in_unit_interval(ps):
    p, q = ps
    assert 0.0 <= js_divergence(p, q) <= 1.0


@PROPERTY
@given(dist_tuple(2))
def test_js_zero_iff_equal(ps):
    p, q = ps
    assert js_divergence(p, p) == 0.0
    # Pinsker through the midpoint gives JS >= TV^2 / (2 ln 2): JS = 0 forces p = q, and
    # any p != q is strictly positive.
    tv = total_variation(p, q)
    js = js_divergence(p, q)
    assert js >= tv * tv / (2 * LN2) - 1e-15
    if tv > 1e-6:
        assert js > 0.0


@PROPERTY
@given(dist_tuple(3))
def test_sqrt_js_triangle_inequality(ps):
    p, q, r = ps
    lhs = math.sqrt(js_divergence(p, r))
    rhs = math.sqrt(js_divergence(p, q)) + math.sqrt(js_divergence(q, r))
    assert lhs <= rhs + 1e-12


@PROPERTY
@given(dist_tuple(2))
def test_kl_nonnegative_and_zero_on_self(ps):
    p, q = ps
    assert kl_divergence(p, q) >= 0.0
    assert kl_divergence(p, p) == 0.0


@PROPERTY
@given(dist_tuple(1))
def test_entropy_at_most_log2k_with_equality_only_for_uniform(ps):
    (p,) = ps
    k = p.size
    h = entropy(p)
    assert 0.0 <= h <= math.log2(k) + 1e-12
    uniform = np.full(k, 1.0 / k)
    if total_variation(p, uniform) > 1e-6:
        assert h < math.log2(k)
    assert close(entropy(uniform), math.log2(k))


@PROPERTY
@given(dist_tuple(1, max_k=40))
def test_perplexity_is_the_effective_support_size(ps):
    """2^H(p) against scipy's entropy; between 1 and the number of answers with p_a > 0 (hence
    K), K only for the uniform distribution, 1 only for a point mass."""
    (p,) = ps
    k = p.size
    got = perplexity(p)
    assert close(got, 2.0 ** scipy_entropy(p, base=2), tol=1e-11)
    assert 1.0 - 1e-12 <= got <= np.count_nonzero(p) * (1 + 1e-12)
    if total_variation(p, np.full(k, 1.0 / k)) > 1e-6:
        assert got < k
    if p.max() < 1.0 - 1e-6:
        assert got > 1.0


@pytest.mark.parametrize("m", [1, 2, 7, 193, 1000])
def test_perplexity_counts_equally_likely_answers_whatever_k(m):
    """Uniform over m of K = 1000 answers (the rest exactly 0): support m, for every m."""
    p = np.zeros(1000)
    p[np.random.default_rng(m).choice(1000, m, replace=False)] = 1.0 / m
    assert perplexity(p) == pytest.approx(m, rel=1e-12)
    assert np.allclose(perplexity(np.stack([p, p[::-1]])), [m, m], rtol=1e-12)


@PROPERTY
@given(dist_tuple(2), st.randoms(use_true_random=False))
def test_permutation_invariance(ps, rnd):
    p, q = ps
    perm = np.array(rnd.sample(range(p.size), p.size))
    pp, qp = p[perm], q[perm]
    assert close(entropy(pp), entropy(p))
    assert close(perplexity(pp), perplexity(p))
    assert close(kl_divergence(pp, qp), kl_divergence(p, q))
    assert close(js_divergence(pp, qp), js_divergence(p, q))
    assert close(total_variation(pp, qp), total_variation(p, q))


@PROPERTY
@given(dist_matrix())
def test_pairwise_js_consistent_with_js_divergence(P):
    D = pairwise_js(P)
    n = P.shape[0]
    assert D.shape == (n, n)
    assert np.array_equal(D, D.T)
    assert np.all(np.diag(D) == 0.0)
    for i in range(n):
        for j in range(n):
            assert close(D[i, j], js_divergence(P[i], P[j]))
    if n > 1 and np.array_equal(P[-1], P[0]):
        assert D[0, -1] == 0.0


@PROPERTY
@given(dist_matrix(), st.randoms(use_true_random=False))
def test_pairwise_js_row_permutation(P, rnd):
    perm = np.array(rnd.sample(range(P.shape[0]), P.shape[0]))
    D = pairwise_js(P)
    assert np.allclose(pairwise_js(P[perm]), D[np.ix_(perm, perm)], rtol=0, atol=1e-12)


@PROPERTY
@given(dist_matrix())
def test_stacked_rows_match_single_rows(P):
    Q = P[::-1].copy()
    assert np.allclose(entropy(P), [entropy(p) for p in P], rtol=0, atol=1e-12)
    assert np.allclose(perplexity(P), [perplexity(p) for p in P], rtol=1e-12, atol=0)
    for fn in (kl_divergence, js_divergence, total_variation):
        singles = [fn(p, q) for p, q in zip(P, Q, strict=True)]
        assert np.allclose(fn(P, Q), singles, rtol=0, atol=1e-12)


def _support_reference(p, mass):
    order = sorted(range(p.size), key=lambda a: (-p[a], a))
    mask = np.zeros(p.size, dtype=bool)
    cum = 0.0
    for a in order:
        if cum >= mass - 1e-12 or p[a] == 0.0:
            break
        mask[a] = True
        cum += p[a]
    return mask


@PROPERTY
@given(dist_tuple(1), st.floats(0.01, 1.0))
def test_support_is_smallest_descending_prefix(ps, mass):
    (p,) = ps
    mask = support(p, mass)
    assert np.array_equal(mask, _support_reference(p, mass))
    got = mass_within(p, mask)
    assert got >= mass - 1e-9 or np.all(mask == (p > 0))
    # Minimal: dropping its least likely answer falls short of the target.
    if mask.any():
        inside = np.flatnonzero(mask)
        smaller = mask.copy()
        smaller[inside[np.argmin(p[inside])]] = False
        assert mass_within(p, smaller) < mass - 1e-12
    # Every answer left out is no more likely than every answer kept.
    if mask.any() and (~mask).any():
        assert p[~mask].max() <= p[mask].min()


@PROPERTY
@given(dist_matrix(), st.randoms(use_true_random=False))
def test_mass_within_matches_numpy(P, rnd):
    mask = np.array([[rnd.random() < 0.5 for _ in range(P.shape[1])] for _ in range(P.shape[0])])
    assert np.allclose(mass_within(P, mask), np.where(mask, P, 0.0).sum(axis=1), rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------ examples


def test_tiny_probabilities_give_no_nan():
    tiny = np.array([1e-300, 1.0 - 1e-300, 0.0])
    other = np.array([0.0, 1e-300, 1.0 - 1e-300])
    values = [
        entropy(tiny),
        js_divergence(tiny, other),
        kl_divergence(other, np.array([1e-300, 0.5, 0.5])),
        total_variation(tiny, other),
    ]
    assert not any(math.isnan(v) for v in values)
    assert js_divergence(np.array([5e-324, 1.0]), np.array([0.0, 1.0])) >= 0.0


def test_known_values():
    p = np.array([0.5, 0.5, 0.0])
    q = np.array([0.0, 0.5, 0.5])
    assert entropy(p) == 1.0
    assert entropy(np.array([1.0, 0.0])) == 0.0
    assert kl_divergence(p, q) == math.inf
    assert js_divergence(p, q) == pytest.approx(0.5, abs=1e-15)
    assert js_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == 1.0
    assert total_variation(p, q) == 0.5


def test_support_ties_by_index_and_rounding():
    assert support(np.array([0.25, 0.25, 0.25, 0.25]), 0.5).tolist() == [True, True, False, False]
    # 0.7 + 0.2 rounds to 0.8999999999999999 but reaches 0.9.
    assert support(np.array([0.7, 0.2, 0.1]), 0.9).tolist() == [True, True, False]
    assert support(np.array([0.1, 0.6, 0.3]), 0.6).tolist() == [False, True, False]
    assert support(np.array([[0.1, 0.9], [0.9, 0.1]]), 0.5).tolist() == [
        [False, True],
        [True, False],
    ]


def test_pairwise_js_parallel_and_serial_kernels_agree():
    P = np.random.default_rng(1).dirichlet(np.full(50, 0.3), size=151)  # odd N: middle row
    assert P.shape[0] ** 2 * P.shape[1] >= metrics.PARALLEL_MIN_WORK
    D = pairwise_js(P)
    assert np.array_equal(D, metrics._pairwise_js_serial(P))
    assert np.array_equal(D, D.T) and np.all(np.diag(D) == 0.0)
    assert close(D[0, 150], js_divergence(P[0], P[150]))


def test_pairwise_js_matches_scipy_pdist():
    P = np.random.default_rng(0).dirichlet(np.full(7, 0.5), size=30)
    ref = squareform(pdist(P, "jensenshannon") ** 2 / LN2)
    assert np.allclose(pairwise_js(P), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: entropy([0.5, float("nan"), 0.5]), "p: non-finite value nan at answer 1"),
        (lambda: entropy([[0.5, 0.5], [1.2, -0.2]]), "p row 1: negative probability"),
        (lambda: entropy([[0.5, 0.5], [0.5, 0.6]]), "p row 1: sums to 1.1"),
        (lambda: js_divergence([0.5, 0.5], [1.0, 0.0, 0.0]), "different shapes"),
        (lambda: kl_divergence([[1.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]), "different shapes"),
        (lambda: total_variation([0.5, 0.5], [0.3, 0.3]), "q: sums to 0.6"),
        (lambda: pairwise_js([0.5, 0.5]), "expected shape [N, K]"),
        (lambda: entropy([]), "empty"),
        (lambda: perplexity([0.5, 0.6]), "p: sums to 1.1"),
        (lambda: entropy(np.ones((2, 2, 2)) / 2), "expected shape"),
        (lambda: support([0.5, 0.5], mass=0.0), "mass: must be in (0, 1]"),
        (lambda: mass_within([0.5, 0.5], [1, 0]), "boolean"),
        (lambda: mass_within([0.5, 0.5], [True]), "different shapes"),
    ],
)
def test_validation_errors_say_where_and_why(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert message in str(err.value)


def test_parallel_kernels_leave_the_engines_thread_count_alone():
    """Numba's OpenMP pool would raise the process's OpenMP threads (which torch reads) to the
    core count: analysing, then scoring, in one process must not change the engine's threads."""
    import os
    import subprocess
    import sys

    script = ("import numpy as np, torch\n"
              "from answerdist.analysis import metrics\n"
              "before = torch.get_num_threads()\n"
              "metrics._pairwise_js(np.full((6, 3), 1 / 3))\n"
              "import numba\n"
              "print(before, torch.get_num_threads(), numba.threading_layer())\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout.split()
    assert out == ["1", "1", "workqueue"]
