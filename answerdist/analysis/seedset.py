"""Which base prompt is the seed: a confidence set, not just the nearest one.

The seed test (analysis/null.py) asks whether the seed stage's consensus C comes nearer to SOME
base prompt than chance allows. It does not say WHICH: two base prompts 0.03 bits apart are
both nearly as near to C, and the nearest of them depends on which phrasings the seed stage
happened to be scored with. This module gives the set of base prompts that cannot be told
apart from the nearest one.

The seed stage's M prompts are a sample of phrasings, and C* = E[C] is the consensus over all
phrasings. Let d_i = JS(P_i, C) for the base prompts P_1..P_N (exact, fixed). For each
candidate i the null hypothesis is

    H_i: JS(P_i, C*) <= JS(P_j, C*) for every j  (prompt i is the nearest to C*)

tested with the studentised largest difference T_i = max_{j != i} (d_i - d_j) / s_ij, s_ij the
bootstrap standard deviation of d_i - d_j, against the paired bootstrap over the seed stage's
prompts (the same resampled consensus for every base prompt), centred at the observed
differences. The p-value of H_i is the share of resamples whose centred maximum reaches T_i.
The set keeps every i whose H_i is not rejected at `level`; the nearest prompt is always in it.
Whatever the truth, the nearest prompt under C* (any of them, if tied) is kept with probability
at least 1 - level: that is the test of its own H_i, which is true. (The max over every j is
conservative where some j are far: those differences only lower the maximum's quantile less
than they lower T_i.) This is the one-step procedure of Mogstad, Romano, Shaikh and Wilhelm
(2024, "Inference for ranks ...", the confidence set for the best population).

Where two base prompts differ by a deterministic amount (s_ij = 0: the seed stage's prompts all
agree, so no resample moves C), the farther one is out of the set outright.

docs/metrics.md ("Seed set") has its measured miss rate, wrong-singleton rate and power.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from answerdist.analysis.bootstrap import widening
from answerdist.analysis.null import js_cross

SET_RESAMPLES = 2000  # bootstrap resamples of the seed stage's prompts; p-values resolve to 1/2001
TIE = 1e-12  # bits: differences below this are rounding, not a difference


@njit(cache=True, parallel=True)
def _p_values(d, D, sd, shrink):
    """p-value of H_i for every base prompt i: d [N] observed distances, D [B, N] resampled,
    sd [N, N] bootstrap standard deviations of the differences, `shrink` their small-sample
    correction. Rejected outright (p = 0):
    a prompt farther than another by a difference that no resample moves."""
    n = d.shape[0]
    b = D.shape[0]
    out = np.ones(n)
    for i in prange(n):
        t = -np.inf
        fixed = False
        for j in range(n):
            if j == i:
                continue
            delta = d[i] - d[j]
            if sd[i, j] > 0.0:
                t = max(t, shrink * delta / sd[i, j])
            elif delta > TIE:
                fixed = True
        if fixed:
            out[i] = 0.0
            continue
        if t <= 0.0:  # nearest, or tied with it: H_i cannot be rejected
            continue
        reach = 0
        for r in range(b):
            m = -np.inf
            for j in range(n):
                if j != i and sd[i, j] > 0.0:
                    m = max(m, (D[r, i] - D[r, j] - (d[i] - d[j])) / sd[i, j])
            reach += m >= t
        out[i] = (1.0 + reach) / (b + 1.0)
    return out


def set_p_values(base, stage, counts, level) -> tuple[np.ndarray, np.ndarray]:
    """([N] p-values of "base prompt i is the nearest to the seed stage's consensus", [N] its
    distances d_i), from the base [N, K], the seed stage [M, K] and bootstrap counts [B, M]
    of its prompts, the small-sample correction taken at `level`."""
    base = np.ascontiguousarray(base, np.float64)
    stage = np.asarray(stage, np.float64)
    consensus = stage.mean(axis=0)
    d = js_cross(consensus[None, :] / consensus.sum(), base)[0]
    if base.shape[0] < 2:
        return np.ones(base.shape[0]), d
    resampled = counts @ stage
    resampled /= resampled.sum(axis=1, keepdims=True)
    D = js_cross(resampled, base)
    cov = np.cov(D, rowvar=False)
    var = np.diag(cov)
    sd = np.sqrt(np.maximum(var[:, None] + var[None, :] - 2 * cov, 0.0))
    # Few prompts: the bootstrap's spread is (M-1)/M of the sample's and its tails are the
    # normal's, not Student's t; the statistic is shrunk by the widening the intervals use,
    # taken at the one-sided quantile 1 - level (kept within [0.75, 1 - 1e-9]: a level near 0
    # has no finite quantile, and at 0.5 the ratio of quantiles is 0 / 0).
    q = min(max(1.0 - level, 0.75), 1.0 - 1e-9)
    return _p_values(d, D, sd, 1.0 / widening(stage.shape[0], q)), d


def seed_set(base, stage, counts, level) -> list[int]:
    """Indices of the base prompts kept at `level`, nearest first."""
    p, d = set_p_values(base, stage, counts, level)
    order = np.argsort(d, kind="stable")
    return [int(i) for i in order if p[i] > level or i == order[0]]
