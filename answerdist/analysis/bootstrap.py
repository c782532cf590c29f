"""Intervals on every figure: a bootstrap over the phrasings of a task.

The prompts of a task are a sample of the ways to ask it, so every metric computed over them
moves when other phrasings are chosen. One resample draws N prompts with replacement (the
same prompts at every stage of a ladder when the stages share their prompt ids, so that
ratios such as nucleation are paired) and recomputes every metric on it, exactly as the point
estimate is computed except that:

- liquidity averages JS over pairs of *different* original prompts (a prompt drawn twice is
  not a pair of phrasings that agree);
- distinct counts the clusters of the distinct prompts drawn, per prompt drawn, times N;
- the seed prompt is held at the one the full sample finds (the null test, not the bootstrap,
  says how sure that identification is); its JS to the resampled seed-stage consensus, the
  median JS of the base prompts drawn, and the settling metrics vary.

The interval of a metric is the central CONFIDENCE share of its resampled values (percentile
bootstrap); resamples where a metric is undefined (nucleation of a base without liquidity)
are left out, and a metric undefined in all of them has no interval. Resampling is seeded per
ladder and task (analysis/null.py `draw_rng`): the same input gives the same intervals.

Per stage the kernel returns one value per resample of each of STAGE_METRICS; SEED_METRICS are
per resample of the ladder.
"""

from __future__ import annotations

import math
import numbers
from statistics import NormalDist

import numpy as np
from numba import njit, prange

from answerdist.analysis.metrics import (
    _entropy_rows,
    _js_sum,
    _support_rows,
    complete_linkage,
    kl_divergence,
    pairwise_js,
)
from answerdist.errors import AnalysisError

BOOTSTRAP = 1000  # resamples (--bootstrap)
MIN_BOOTSTRAP = 100  # fewer resamples cannot place a 95% interval's ends
MAX_BOOTSTRAP = 100_000  # more only costs memory (resamples x stages x prompts weights)
CONFIDENCE = 0.95
DISTINCT_K = 10  # samples for the expected number of distinct answers (NoveltyBench's k)
GAMMA_RANGE = (1e-2, 1e2)  # sharpening exponents searched ...
GAMMA_GRID = 33  # ... first on this many log-spaced points

STAGE_METRICS = ("entropy_bits", "entropy_norm", "effective_support", "consensus_support",
                 "liquidity", "distinct", "dispersion", "coverage", "nucleation",
                 "distinct_k", "tv_uniform", "kl_uniform", "tv_target", "kl_target",
                 "retention", "drift", "spearman", "gamma", "gamma_js", "seed_js")
SETTLING_METRICS = ("retention", "drift", "spearman", "gamma", "gamma_js", "seed_js")
SEED_METRICS = ("js", "median_js", "margin")
# Column of each metric in the kernel's output (plain integers: constants to Numba).
(ENTROPY_BITS, ENTROPY_NORM, EFFECTIVE_SUPPORT, CONSENSUS_SUPPORT, LIQUIDITY, DISTINCT,
 DISPERSION, COVERAGE, NUCLEATION, DISTINCT_K_COL, TV_UNIFORM, KL_UNIFORM, TV_TARGET, KL_TARGET,
 RETENTION, DRIFT, SPEARMAN, GAMMA, GAMMA_JS, SEED_JS) = range(len(STAGE_METRICS))


@njit(cache=True)
def _average_ranks(x):
    """Ranks from 0, ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = 0.5 * (i + j)
        i = j + 1
    return ranks


@njit(cache=True)
def _spearman(x, y):
    rx = _average_ranks(x)
    ry = _average_ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt((rx * rx).sum() * (ry * ry).sum())
    return (rx * ry).sum() / denom if denom > 0 else np.nan


@njit(cache=True)
def _js(p, q):
    t = 0.0
    for a in range(len(p)):
        lp = math.log2(p[a]) if p[a] > 0 else 0.0
        lq = math.log2(q[a]) if q[a] > 0 else 0.0
        t += _js_sum(p[a], lp, q[a], lq)
    return min(max(0.5 * t, 0.0), 1.0)


@njit(cache=True)
def _sharpened(log_seed, gamma, out):
    """normalize(seed ** gamma) from log2 seed (-inf where the seed is 0), into out."""
    top = np.max(log_seed)
    total = 0.0
    for a in range(len(log_seed)):
        out[a] = 2.0 ** (gamma * (log_seed[a] - top)) if log_seed[a] > -np.inf else 0.0
        total += out[a]
    out /= total


@njit(cache=True)
def _sharpening_js(log_seed, log_gamma, target, buf):
    _sharpened(log_seed, math.exp(log_gamma), buf)
    return _js(buf, target)


@njit(cache=True)
def sharpening_fit(seed, target):
    """(gamma, JS) with normalize(seed ** gamma) nearest (JS) to target, gamma in GAMMA_RANGE:
    the best of GAMMA_GRID log-spaced exponents, refined by golden-section search between its
    neighbours (JS need not be unimodal in gamma when the target is no sharpened seed)."""
    log_seed = np.full(len(seed), -np.inf)
    for a in range(len(seed)):
        if seed[a] > 0:
            log_seed[a] = math.log2(seed[a])
    buf = np.empty(len(seed))
    grid = np.linspace(math.log(GAMMA_RANGE[0]), math.log(GAMMA_RANGE[1]), GAMMA_GRID)
    values = np.empty(GAMMA_GRID)
    for t in range(GAMMA_GRID):
        values[t] = _sharpening_js(log_seed, grid[t], target, buf)
    best = int(np.argmin(values))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, GAMMA_GRID - 1)]
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc = _sharpening_js(log_seed, c, target, buf)
    fd = _sharpening_js(log_seed, d, target, buf)
    for _ in range(40):
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - g * (hi - lo)
            fc = _sharpening_js(log_seed, c, target, buf)
        else:
            lo, c, fc = c, d, fd
            d = lo + g * (hi - lo)
            fd = _sharpening_js(log_seed, d, target, buf)
    log_gamma, value = (c, fc) if fc <= fd else (d, fd)
    if values[best] < value:  # the grid point itself (at an end of the range)
        log_gamma, value = grid[best], values[best]
    return math.exp(log_gamma), value


@njit(cache=True)
def _weighted_median(values, weights):
    order = np.argsort(values, kind="mergesort")
    total = weights.sum()
    cum = 0.0
    for t in range(len(order)):
        cum += weights[order[t]]
        if cum > 0.5 * total:
            return values[order[t]]
        if cum == 0.5 * total:  # an even count: the mean of the two middle values
            nxt = t + 1
            while weights[order[nxt]] == 0:
                nxt += 1
            return 0.5 * (values[order[t]] + values[order[nxt]])
    return values[order[-1]]


@njit(cache=True)
def _stage_values(P, R, D, cov, w, n, tau, everything, out, consensus):
    """The per-checkpoint metrics of one stage under prompt weights w (counts summing to n).
    R [n, ROW_METRICS]: each prompt's own entropy, distinct_k and tv_uniform. Without
    `everything`, only what the order parameters of a trajectory need."""
    k = P.shape[1]
    consensus[:] = 0.0
    entropy = distinct_k = tv_uniform = tv_target = kl_target = coverage = 0.0
    for i in range(P.shape[0]):
        if w[i] == 0:
            continue
        entropy += w[i] * R[i, 0]
        distinct_k += w[i] * R[i, 1]
        tv_uniform += w[i] * R[i, 2]
        tv_target += w[i] * R[i, 3]
        kl_target += w[i] * R[i, 4]
        coverage += w[i] * cov[i]
        for a in range(k):
            consensus[a] += w[i] * P[i, a]
    total = consensus.sum()
    h = 0.0
    for a in range(k):
        consensus[a] /= total
        if consensus[a] > 0.0:
            h -= consensus[a] * math.log2(consensus[a])
    entropy /= n
    out[ENTROPY_BITS] = entropy
    out[ENTROPY_NORM] = entropy / math.log2(k) if k > 1 else 0.0
    out[EFFECTIVE_SUPPORT] = 2.0 ** entropy
    out[KL_UNIFORM] = math.log2(k) - entropy
    out[COVERAGE] = coverage / n
    out[DISTINCT_K_COL] = distinct_k / n
    out[TV_UNIFORM] = tv_uniform / n
    out[TV_TARGET] = tv_target / n  # nan without a target, inf where KL is infinite
    out[KL_TARGET] = kl_target / n
    out[CONSENSUS_SUPPORT] = 2.0 ** max(h, 0.0)
    pairs = 0.0
    total = 0.0
    for i in range(P.shape[0]):
        if w[i] == 0:
            continue
        for j in range(P.shape[0]):
            if i != j:
                pairs += w[i] * w[j]
                total += w[i] * w[j] * D[i, j]
    out[LIQUIDITY] = total / pairs if pairs > 0 else 0.0
    if not everything:
        return
    dispersion = 0.0
    for i in range(P.shape[0]):
        if w[i] > 0:
            dispersion += w[i] * _js(P[i], consensus)
    out[DISPERSION] = dispersion / n
    drawn = np.flatnonzero(w > 0)
    heights = complete_linkage(D[drawn][:, drawn])
    # Clusters per distinct prompt drawn, scaled to n: a resample holds about 63% of the
    # prompts once or more, and the count of clusters among them would shrink with it.
    out[DISTINCT] = (len(drawn) - np.count_nonzero(heights <= tau)) * n / len(drawn)


@njit(cache=True, parallel=True)
def resampled_ladder(P, R, D, COV, W, sizes, seed_stage, seed_index, tau, support_mass,
                     base_min, settle_from, everything):
    """Every metric of a ladder under each resample of its prompts.

    P [S, n, K] stage distributions (rows past a stage's size are unused); R [S, n, 5] each
    prompt's entropy, distinct_k, tv_uniform, tv_target and kl_target (`stack`); D [S, n, n]
    their pairwise JS; COV [S, n] coverages; W [S, B, n] prompt counts of each resample
    (summing to sizes[s]).
    seed_index: the base prompt found nearest to the seed stage's consensus, against which
    the seed and settling are measured, from the seed stage on, or from stage `settle_from`
    if that is earlier; seed_stage = S (past the last stage) leaves them out. Without
    `everything`, dispersion, distinct, drift, spearman and the sharpening fit are skipped
    (nan).
    Returns (stages [B, S, len(STAGE_METRICS)], seeds [B, len(SEED_METRICS)]); settling
    metrics of stages before the seed stage are nan."""
    n_stages, n, k = P.shape
    b_count = W.shape[1]
    stages = np.full((b_count, n_stages, len(STAGE_METRICS)), np.nan)
    seeds = np.full((b_count, len(SEED_METRICS)), np.nan)
    mask = _support_rows(P[0, seed_index].reshape(1, k), support_mass)[0]  # the seed's support
    for b in prange(b_count):
        consensus = np.empty((n_stages, k))
        for s in range(n_stages):
            _stage_values(P[s], R[s], D[s], COV[s], W[s, b], sizes[s], tau, everything,
                          stages[b, s], consensus[s])
        base_liquidity = stages[b, 0, LIQUIDITY]
        for s in range(n_stages):
            if base_liquidity >= base_min:
                stages[b, s, NUCLEATION] = (1.0 - stages[b, s, LIQUIDITY]
                                                  / base_liquidity)
        if seed_stage >= n_stages:
            continue  # a single checkpoint: no seed, no settling
        # The seed prompt stays the one the full sample found (its identification is what
        # the null test covers); its JS and the base's median JS vary with the phrasings.
        js = np.empty(n)
        for i in range(n):
            js[i] = _js(P[0, i], consensus[seed_stage]) if W[0, b, i] > 0 else 0.0
        weights = W[0, b].astype(np.float64)
        median = _weighted_median(js, weights)
        nearest = seed_index
        own = _js(P[0, nearest], consensus[seed_stage])
        seeds[b, 0] = own
        seeds[b, 1] = median
        seeds[b, 2] = median - own
        seed = P[0, nearest]
        for s in range(min(settle_from, seed_stage), n_stages):
            out = stages[b, s]
            retained = 0.0
            for a in range(k):
                if mask[a]:
                    retained += consensus[s, a]
            out[RETENTION] = retained
            out[SEED_JS] = _js(consensus[s], seed)
            if everything:
                out[DRIFT] = _js(consensus[s], consensus[seed_stage])
                out[SPEARMAN] = _spearman(consensus[s], seed)
                out[GAMMA], out[GAMMA_JS] = sharpening_fit(seed, consensus[s])
    return stages, seeds


def check_resamples(value, name="bootstrap") -> None:
    """A resample count the analysis can run: an integer from MIN_BOOTSTRAP to MAX_BOOTSTRAP
    (`name` is how the caller spells the setting: `--bootstrap` on the command line)."""
    if (not isinstance(value, numbers.Integral) or isinstance(value, bool)
            or not MIN_BOOTSTRAP <= value <= MAX_BOOTSTRAP):
        raise AnalysisError(f"{name} {value!r}: give at least {MIN_BOOTSTRAP} resamples and at "
                            f"most {MAX_BOOTSTRAP:,} (default {BOOTSTRAP})")


def resample_counts(n, draws, rng):
    """[draws, n] counts of each prompt in `draws` resamples of n prompts with replacement."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)


def _t_quantile(q, dof):
    """Student's t quantile (Cornish-Fisher series in 1 / dof; within 1e-3 from dof = 5)."""
    z = NormalDist().inv_cdf(q)
    return (z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * dof**3))


def widening(n, q=1 - (1 - CONFIDENCE) / 2):
    """How much a bootstrap quantile q over n prompts is widened (by default, the upper end of
    a CONFIDENCE percentile interval): the t quantile over the normal one, times
    sqrt(n / (n - 1)) (a resample's spread is (n - 1) / n of the sample's)."""
    if n < 2:
        return 1.0
    return _t_quantile(q, n - 1) / NormalDist().inv_cdf(q) * math.sqrt(n / (n - 1))


def interval(values, point, n):
    """[lo, hi] around `point` from the finite resampled values, or None when there are none.

    The percentile interval (the central CONFIDENCE share of the resamples), its distances to
    the point estimate widened by `widening(n)`, kept within the range of the resamples and
    always holding the point estimate:
    with 15 prompts the plain percentile interval covers the population's value about 90% of
    the time where it should 95% (tests/test_bootstrap.py measures it)."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return None
    tail = 100 * (1 - CONFIDENCE) / 2
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    if point is None or not math.isfinite(point):
        return [float(lo), float(hi)]
    c = widening(n)
    lo = min(max(point - c * max(point - lo, 0.0), finite.min()), point)
    hi = max(min(point + c * max(hi - point, 0.0), finite.max()), point)
    return [float(lo), float(hi)]


def stack(stages, targets=None):
    """(P, R, D, COV, sizes) of a list of ([n_s, K] distributions, coverages) stages, padded to
    the largest n with zero rows (which no resample draws): R holds each prompt's entropy,
    E[distinct answers in DISTINCT_K samples], TV to the uniform distribution, and TV and KL
    to its stage's target distribution (`targets`: one [K] or None per stage; nan without)."""
    targets = [None] * len(stages) if targets is None else targets
    n = max(P.shape[0] for P, _ in stages)
    k = stages[0][0].shape[1]
    S = len(stages)
    P_all = np.zeros((S, n, k))
    R = np.zeros((S, n, 5))
    D = np.zeros((S, n, n))
    COV = np.zeros((S, n))
    sizes = np.zeros(S, np.int64)
    for s, ((P, cov), target) in enumerate(zip(stages, targets, strict=True)):
        m = P.shape[0]
        P_all[s, :m] = P
        R[s, :m, 0] = _entropy_rows(np.ascontiguousarray(P))
        R[s, :m, 1] = (1.0 - (1.0 - P) ** DISTINCT_K).sum(axis=1)
        R[s, :m, 2] = 0.5 * np.abs(P - 1.0 / k).sum(axis=1)
        if target is None:
            R[s, :m, 3:] = np.nan
        else:
            R[s, :m, 3] = 0.5 * np.abs(P - target).sum(axis=1)
            R[s, :m, 4] = kl_divergence(np.ascontiguousarray(P), np.broadcast_to(target, P.shape))
        D[s, :m, :m] = pairwise_js(P)
        COV[s, :m] = np.nan if cov is None else cov
        sizes[s] = m
    return P_all, R, D, COV, sizes
