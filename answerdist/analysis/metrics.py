"""Information metrics on exact answer distributions, in bits (log base 2).

Public functions (each takes one distribution [K] or a stack of row distributions [N, K]; a
pair of arguments must have the same shape; a 1-D input gives a float, a 2-D input one value
per row):

- ``entropy(p)``            H(p) = -sum_a p_a log2 p_a                          (0 log 0 = 0)
- ``perplexity(p)``         2 ** H(p): the effective support size, in answers (1 .. K)
- ``kl_divergence(p, q)``   KL(p||q) = sum_a p_a (log2 p_a - log2 q_a); +inf if p_a > 0 = q_a
- ``js_divergence(p, q)``   JS(p, q) = KL(p||m)/2 + KL(q||m)/2, m = (p + q)/2; in [0, 1]
- ``total_variation(p, q)`` TV(p, q) = sum_a |p_a - q_a| / 2
- ``pairwise_js(P)``        [N, K] -> [N, N] matrix of JS(P_i, P_j), symmetric, zero diagonal
- ``support(p, mass=0.9)``  boolean mask of the smallest set of answers, taken by descending
                            probability (ties by lower index), whose mass reaches ``mass``
- ``mass_within(p, mask)``  sum of p_a over the answers where mask is True

Inputs are checked here, at the Python boundary: finite, non-negative, each row summing to 1
within 1e-6, matching shapes; otherwise a ValueError names the argument, the row and the reason.
The kernels below are Numba functions on float64 C-contiguous [N, K] arrays only, so that each
is compiled for a single signature (first-call compile time is paid once, then cached on disk).

Numerics: log2 m is computed as log2(p + q) - 1, so that m never underflows for probabilities
down to the smallest subnormal; answers with p_a == q_a contribute exactly 0 to JS, so that
JS(p, p) == 0 exactly. JS and KL are clamped to their mathematical ranges ([0, 1] and >= 0)
to absorb rounding of order 1e-16.
"""

import math
import os

import numba
import numpy as np
from numba import njit, prange

# Numba's default OpenMP pool sets the process's OpenMP thread count to the core count when it
# starts, and torch reads its thread count from that same setting: analysing in a process that
# then scores (a notebook, a test worker under OMP_NUM_THREADS=1) would change the engine's
# threads. Numba's own workqueue pool leaves OpenMP alone. A user's NUMBA_THREADING_LAYER wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

__all__ = [
    "entropy",
    "perplexity",
    "kl_divergence",
    "js_divergence",
    "total_variation",
    "pairwise_js",
    "support",
    "mass_within",
]

ROW_SUM_TOLERANCE = 1e-6
# A cumulative mass within this of the target counts as reaching it, so that a support of
# {0.7, 0.2} reaches 0.9 although 0.7 + 0.2 == 0.8999999999999999 in floating point.
SUPPORT_ROUNDING = 1e-12
# pairwise_js runs on threads from this many (pairs x answers) x 2 up: below, a few prompts of
# a task (say 20 x 20 x 100), starting the thread pool costs more than the work.
PARALLEL_MIN_WORK = 1_000_000


# ----------------------------------------------------------------------------------- kernels


@njit(cache=True)
def _log2_rows(P):
    """log2 of every entry, 0 where the entry is 0 (the value is then never used)."""
    out = np.zeros_like(P)
    n, k = P.shape
    for i in range(n):
        for a in range(k):
            if P[i, a] > 0.0:
                out[i, a] = math.log2(P[i, a])
    return out


@njit(cache=True)
def _entropy_rows(P):
    n, k = P.shape
    out = np.zeros(n)
    for i in range(n):
        h = 0.0
        for a in range(k):
            x = P[i, a]
            if x > 0.0:
                h -= x * math.log2(x)
        out[i] = max(h, 0.0)
    return out


@njit(cache=True)
def _kl_rows(P, Q):
    n, k = P.shape
    out = np.zeros(n)
    for i in range(n):
        d = 0.0
        for a in range(k):
            x = P[i, a]
            y = Q[i, a]
            if x > 0.0:
                if y <= 0.0:
                    d = np.inf
                    break
                # Difference of logs, not log of a ratio: x / y overflows for tiny y.
                d += x * (math.log2(x) - math.log2(y))
        out[i] = max(d, 0.0)
    return out


@njit(cache=True, inline="always")
def _js_sum(x, lx, y, ly):
    """Twice the JS contribution of one answer: x (log2 x - log2 m) + y (log2 y - log2 m).

    With log2 m = log2(x + y) - 1. Equal entries contribute exactly 0.
    """
    if x == y:
        return 0.0
    ls = math.log2(x + y) - 1.0
    t = 0.0
    if x > 0.0:
        t += x * (lx - ls)
    if y > 0.0:
        t += y * (ly - ls)
    return t


@njit(cache=True)
def _js_rows(P, Q):
    n, k = P.shape
    LP = _log2_rows(P)
    LQ = _log2_rows(Q)
    out = np.zeros(n)
    for i in range(n):
        t = 0.0
        for a in range(k):
            t += _js_sum(P[i, a], LP[i, a], Q[i, a], LQ[i, a])
        out[i] = min(max(0.5 * t, 0.0), 1.0)
    return out


@njit(cache=True, inline="always")
def _pairwise_row(P, L, i, out):
    """Fill out[i, j] and out[j, i] for all j > i."""
    n, k = P.shape
    for j in range(i + 1, n):
        t = 0.0
        for a in range(k):
            t += _js_sum(P[i, a], L[i, a], P[j, a], L[j, a])
        v = min(max(0.5 * t, 0.0), 1.0)
        out[i, j] = v
        out[j, i] = v


@njit(cache=True, parallel=True)
def _pairwise_js(P):
    n = P.shape[0]
    L = _log2_rows(P)  # one log per entry here, then one log2(p + q) per pair and answer
    out = np.zeros((n, n))
    # Row i has n - 1 - i pairs to its right. Pairing row t with row n - 1 - t gives every
    # parallel iteration the same n - 1 pairs, so the two halves of the triangle balance.
    for t in prange(n // 2):
        _pairwise_row(P, L, t, out)
        _pairwise_row(P, L, n - 1 - t, out)
    if n % 2 == 1:
        _pairwise_row(P, L, n // 2, out)
    return out


@njit(cache=True)
def _pairwise_js_serial(P):
    """Same values as _pairwise_js; for small inputs, where starting threads costs more."""
    n = P.shape[0]
    L = _log2_rows(P)
    out = np.zeros((n, n))
    for i in range(n):
        _pairwise_row(P, L, i, out)
    return out


@njit(cache=True)
def _support_rows(P, mass):
    n, k = P.shape
    mask = np.zeros((n, k), dtype=np.bool_)
    target = mass - SUPPORT_ROUNDING
    for i in range(n):
        # Stable sort of -p: descending probability, ties by ascending index.
        order = np.argsort(-P[i], kind="mergesort")
        cum = 0.0
        for a in order:
            if cum >= target or P[i, a] <= 0.0:
                break
            mask[i, a] = True
            cum += P[i, a]
    return mask


@njit(cache=True)
def complete_linkage(D):
    """Merge heights of complete-linkage clustering of a distance matrix (nearest-neighbour chain).

    Complete linkage is reducible, so merging reciprocal nearest neighbours as the chain finds
    them gives the same dendrogram as merging globally closest pairs, in O(N^2).
    """
    n = D.shape[0]
    d = D.copy()
    active = np.ones(n, dtype=np.bool_)
    chain = np.empty(n, dtype=np.int64)
    heights = np.empty(max(n - 1, 0))
    top = 0
    for m in range(n - 1):
        if top == 0:
            chain[0] = np.argmax(active)
            top = 1
        while True:
            a = chain[top - 1]
            # Prefer the previous chain element on ties, so the chain cannot cycle.
            b, best = -1, np.inf
            if top >= 2:
                b, best = chain[top - 2], d[a, chain[top - 2]]
            for c in range(n):
                if active[c] and c != a and d[a, c] < best:
                    b, best = c, d[a, c]
            if top >= 2 and b == chain[top - 2]:
                break
            chain[top] = b
            top += 1
        top -= 2
        heights[m] = best
        # The merged cluster lives on at index b; its distance to c is the larger of the two.
        for c in range(n):
            if active[c] and c != a and c != b:
                v = max(d[a, c], d[b, c])
                d[b, c] = v
                d[c, b] = v
        active[a] = False
    return heights



# ------------------------------------------------------------------------ input validation


def _as_rows(x, name):
    """Return (float64 C-contiguous [N, K] array, was_1d) after checking it holds distributions."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim not in (1, 2):
        raise ValueError(f"{name}: expected shape [K] or [N, K], got {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: empty array of shape {arr.shape}")
    was_1d = arr.ndim == 1
    rows = np.ascontiguousarray(arr.reshape(-1, arr.shape[-1]))

    def where(i):
        return name if was_1d else f"{name} row {i}"

    finite = np.isfinite(rows)
    if not finite.all():
        i, a = np.argwhere(~finite)[0]
        raise ValueError(f"{where(i)}: non-finite value {rows[i, a]} at answer {a}")
    if (rows < 0).any():
        i, a = np.argwhere(rows < 0)[0]
        raise ValueError(f"{where(i)}: negative probability {rows[i, a]} at answer {a}")
    sums = rows.sum(axis=1)
    off = np.abs(sums - 1.0) > ROW_SUM_TOLERANCE
    if off.any():
        i = int(np.argmax(off))
        raise ValueError(
            f"{where(i)}: sums to {float(sums[i])!r}, not 1 (tolerance {ROW_SUM_TOLERANCE})"
        )
    return rows, was_1d


def _as_pair(p, q):
    P, p1 = _as_rows(p, "p")
    Q, _ = _as_rows(q, "q")
    if np.shape(p) != np.shape(q):
        raise ValueError(f"p and q have different shapes: {np.shape(p)} vs {np.shape(q)}")
    return P, Q, p1


def _result(values, was_1d):
    return float(values[0]) if was_1d else values


# ------------------------------------------------------------------------------ public API


def entropy(p):
    """Shannon entropy in bits, H(p) = -sum_a p_a log2 p_a, with 0 log 0 = 0."""
    P, one = _as_rows(p, "p")
    return _result(_entropy_rows(P), one)


def perplexity(p):
    """2 ** H(p): the effective support size, the number of equally likely answers that would
    have the same entropy. In [1, K]; 1 for a point mass, K only for the uniform distribution,
    and never more than the number of answers with p_a > 0."""
    P, one = _as_rows(p, "p")
    return _result(np.exp2(_entropy_rows(P)), one)


def kl_divergence(p, q):
    """KL(p||q) = sum_a p_a log2(p_a / q_a) in bits; +inf where some p_a > 0 has q_a = 0."""
    P, Q, one = _as_pair(p, q)
    return _result(_kl_rows(P, Q), one)


def js_divergence(p, q):
    """Jensen-Shannon divergence in bits, (KL(p||m) + KL(q||m)) / 2 with m = (p + q) / 2.

    Symmetric, in [0, 1], zero iff p == q; its square root is a metric.
    """
    P, Q, one = _as_pair(p, q)
    return _result(_js_rows(P, Q), one)


def total_variation(p, q):
    """Total variation distance, sum_a |p_a - q_a| / 2, in [0, 1]."""
    P, Q, one = _as_pair(p, q)
    return _result(0.5 * np.abs(P - Q).sum(axis=1), one)  # a plain vectorised sum: no kernel needed


def pairwise_js(P):
    """[N, K] row distributions -> [N, N] matrix D with D[i, j] = JS(P_i, P_j) in bits.

    D is symmetric with a zero diagonal. Memory is O(N K + N^2): no [N, N, K] temporary.
    Parallel over rows (Numba prange).
    """
    if np.ndim(P) != 2:
        raise ValueError(f"P: expected shape [N, K], got {np.shape(P)}")
    rows, _ = _as_rows(P, "P")
    n, k = rows.shape
    return _pairwise_js(rows) if n * n * k >= PARALLEL_MIN_WORK else _pairwise_js_serial(rows)


def support(p, mass=0.9):
    """Boolean mask of the smallest set of answers whose total probability reaches ``mass``.

    Answers are taken by descending probability, ties broken by lower index, until the
    cumulative mass is >= ``mass`` (up to 1e-12 of rounding). Zero-probability answers are
    never included. Same shape as p.
    """
    mass = float(mass)
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass: must be in (0, 1], got {mass}")
    P, one = _as_rows(p, "p")
    mask = _support_rows(P, mass)
    return mask[0] if one else mask


def mass_within(p, mask):
    """sum_a p_a [mask_a]: the probability that p puts on the answers selected by a mask."""
    P, one = _as_rows(p, "p")
    M = np.asarray(mask)
    if M.dtype != np.bool_:
        raise ValueError(f"mask: expected a boolean array, got dtype {M.dtype}")
    if M.shape != np.shape(p):
        raise ValueError(f"p and mask have different shapes: {np.shape(p)} vs {M.shape}")
    M = np.ascontiguousarray(M.reshape(P.shape))
    return _result(np.where(M, P, 0.0).sum(axis=1), one)
