"""The seed test: how likely a distribution unrelated to every base prompt comes this near one.

The seed stage's consensus C is traced back to the base prompt nearest to it, at JS distance
d = min_i JS(P_i, C). The null hypothesis: C is a distribution of the kind the base gives, but
not any particular base prompt's, as another phrasing of the prompt would be. Under it, C is
modelled two ways: as a draw from a Dirichlet distribution fitted (by moments) to the base
prompts, which keeps the answers the base favours and how peaked its prompts are (a new
phrasing), and as the consensus of the base prompts resampled with replacement (the base
consensus with other phrasings). For each family the p-value is the share of NULL_DRAWS draws q
that come at least as near to some base prompt, and the test takes the larger of the two:

    p = (1 + #{m : min_i JS(P_i, q_m) <= d}) / (NULL_DRAWS + 1)

A consensus can only be as near to its seed as its own sampling noise allows: the noise floor
is the median JS between C and the consensus of its prompts resampled with replacement. When
even a consensus at the noise floor would not reach the level (a few prompts over few answers
cover the simplex so densely that any distribution is near one of them), the prompts cannot
resolve a seed, and the verdict says so instead of claiming one or denying one.

docs/metrics.md ("Seed") documents the test and its measured false-positive rate and power.
"""

from __future__ import annotations

import zlib

import numpy as np
from numba import njit, prange

from answerdist.analysis.metrics import _js_sum, _log2_rows

NULL_DRAWS = 2000  # p-values resolve to 1 / 2001
NOISE_RESAMPLES = 200  # resamples of the seed stage's prompts for its noise floor
LEVEL = 0.01  # a seed is found only below this p-value (--level)
# Bounds on the fitted Dirichlet: a shape under MIN_ALPHA draws only exact zeros in float64,
# and a precision above MAX_PRECISION is a base whose prompts all agree (no liquid to test).
MIN_ALPHA = 1e-3
MAX_PRECISION = 1e6


@njit(cache=True, parallel=True)
def _js_cross(Q, P):
    """[M, N] JS(Q_m, P_i) for every row m of Q and row i of P."""
    m, k = Q.shape
    n = P.shape[0]
    LQ = _log2_rows(Q)
    LP = _log2_rows(P)
    out = np.empty((m, n))
    for r in prange(m):
        for i in range(n):
            t = 0.0
            for a in range(k):
                t += _js_sum(Q[r, a], LQ[r, a], P[i, a], LP[i, a])
            out[r, i] = min(max(0.5 * t, 0.0), 1.0)
    return out


def js_cross(Q, P) -> np.ndarray:
    """[M, N] JS (bits) between every row of Q and every row of P (both row distributions)."""
    return _js_cross(np.ascontiguousarray(Q, np.float64), np.ascontiguousarray(P, np.float64))


def nearest_js(Q, P) -> np.ndarray:
    """For each row of Q, its JS (bits) to the nearest row of P (both row distributions)."""
    return js_cross(Q, P).min(axis=1)


def fit_dirichlet(P) -> np.ndarray:
    """Dirichlet parameters alpha [K] matching the mean and the spread of the rows of P.

    Method of moments: alpha = s * mean, with the precision s the geometric mean over answers
    of mean (1 - mean) / var - 1 (each answer's variance under Dirichlet(alpha) is
    mean (1 - mean) / (s + 1)). Moments, not the likelihood: exact distributions put
    probabilities of 1e-30 on answers, whose logarithms would dominate a likelihood fit."""
    P = np.asarray(P, np.float64)
    mean = P.mean(axis=0)
    var = P.var(axis=0, ddof=1) if P.shape[0] > 1 else np.zeros_like(mean)
    usable = (var > 0) & (mean > 0) & (mean < 1)
    if not usable.any():
        precision = MAX_PRECISION  # the prompts agree exactly
    else:
        s = mean[usable] * (1 - mean[usable]) / var[usable] - 1.0
        precision = float(np.exp(np.mean(np.log(np.clip(s, 1e-6, MAX_PRECISION)))))
    return np.maximum(precision * mean, MIN_ALPHA)


def draw_rng(*names) -> np.random.Generator:
    """A generator seeded by names (ladder, task), so that each task's numbers are the same
    whatever else is analysed beside it."""
    return np.random.default_rng([zlib.crc32(str(n).encode()) for n in names])


def null_distances(base, rng, draws=NULL_DRAWS) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-base-prompt JS of `draws` distributions of each null family, each sorted:
    new phrasings (the fitted Dirichlet) and consensuses of other samples of phrasings (the
    base prompts resampled with replacement and averaged)."""
    n, k = base.shape
    phrasings = rng.dirichlet(fit_dirichlet(base), size=draws)
    blends = rng.multinomial(n, np.full(n, 1.0 / n), size=draws) @ base / n
    out = []
    for q in (phrasings, blends):
        q = np.maximum(q, 0.0)
        q /= q.sum(axis=1, keepdims=True)
        out.append(np.sort(nearest_js(q, base)))
    return out[0], out[1]


def noise_floor(stage, rng, resamples=NOISE_RESAMPLES) -> float:
    """Median JS between a stage's consensus and the consensus of its prompts resampled."""
    n = stage.shape[0]
    consensus = stage.mean(axis=0)
    picks = rng.integers(0, n, size=(resamples, n))
    resampled = stage[picks].mean(axis=1)
    resampled /= resampled.sum(axis=1, keepdims=True)
    return float(np.median(nearest_js(resampled, consensus[None, :] / consensus.sum())))


def p_value(distance, nulls) -> float:
    """The larger, over the null families (sorted distances), of the share at or below
    `distance`, counting the observed: a p-value valid under either family."""
    return max((1 + int(np.searchsorted(null, distance, side="right"))) / (len(null) + 1)
               for null in nulls)


def seed_test(base, stage, distance, rng, level=LEVEL, draws=NULL_DRAWS):
    """(p_value, floor, resolvable) for a seed stage `stage` [N', K] whose consensus lies at
    `distance` from its nearest base prompt, the base being `base` [N, K]."""
    nulls = null_distances(base, rng, draws)
    floor = noise_floor(stage, rng)
    return p_value(distance, nulls), floor, p_value(floor, nulls) < level
