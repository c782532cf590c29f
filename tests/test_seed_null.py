"""The seed test's false-positive rate and power, on synthetic ladders where the truth is known.

Null ladders: the seed stage collapses (3% multiplicative noise) onto a distribution that no
base prompt has: one drawn like another phrasing (independently, from the base's Dirichlet),
or the base consensus itself. Planted ladders: it collapses onto one base prompt's. The
analysis runs through `ladder_metrics`, as a user's would.
"""

import math

import numpy as np
import pytest

from answerdist.analysis.metrics import js_divergence
from answerdist.analysis.null import fit_dirichlet, nearest_js, p_value
from answerdist.analysis.phases import TaskData, ladder_metrics

LEVEL = 0.01
TRIALS = 150


def binomial_upper(n, rate, confidence=0.999):
    """The largest count in n trials at `rate` that is not evidence (at `confidence`) of a
    higher rate: the bound a false-positive count must keep."""
    total = 0.0
    for k in range(n + 1):
        total += math.comb(n, k) * rate**k * (1 - rate) ** (n - k)
        if total >= confidence:
            return k
    return n


def _noisy(p, rng, sigma=0.03):
    q = p * np.exp(sigma * rng.standard_normal(p.shape))
    return q / q.sum(axis=-1, keepdims=True)


def _dirichlet(rng, alpha, k, size=None):
    p = np.maximum(rng.dirichlet(np.full(k, alpha), size=size), 1e-12)
    return p / p.sum(axis=-1, keepdims=True)


def _ladder(rng, k, n, alpha, kind):
    base = _dirichlet(rng, alpha, k, n)
    planted = int(rng.integers(n))
    target = {"planted": base[planted] if kind == "planted" else None,
              "phrasing": _dirichlet(rng, alpha, k), "consensus": base.mean(axis=0)}[kind]
    ids = [f"p{i:02d}" for i in range(n)]
    answers = [str(a) for a in range(k)]
    stages = {"base": TaskData("base", "t", ids, answers, base, np.ones(n)),
              "sft": TaskData("sft", "t", ids, answers, _noisy(np.tile(target, (n, 1)), rng),
                              np.ones(n))}
    return stages, ids[planted]


def _seeds(k, n, alpha, kind, trials=TRIALS, seed=0):
    rng = np.random.default_rng([seed, k, n, int(alpha * 100), len(kind)])
    out = []
    for t in range(trials):
        stages, planted = _ladder(rng, k, n, alpha, kind)
        # Distinct labels per trial: the analysis seeds its draws by labels and task.
        for stage in stages.values():
            stage.label = f"{stage.label}-{t}"
        out.append((ladder_metrics(stages, level=LEVEL, bootstrap=100).seed, planted))
    return out


@pytest.mark.parametrize("kind", ["phrasing", "consensus"])
@pytest.mark.parametrize(("k", "n", "alpha"), [(4, 15, 0.4), (10, 15, 0.4), (52, 15, 0.4),
                                               (10, 8, 0.2), (10, 30, 1.0), (20, 15, 0.1)])
def test_false_positive_rate_is_at_most_the_level(k, n, alpha, kind):
    found = sum(seed.found for seed, _ in _seeds(k, n, alpha, kind))
    assert found <= binomial_upper(TRIALS, LEVEL), (found, TRIALS)


@pytest.mark.parametrize(("k", "n", "alpha"), [(10, 15, 0.4), (52, 15, 0.4), (10, 8, 0.2),
                                               (20, 30, 1.0)])
def test_power_on_planted_seeds_with_ten_or_more_answers(k, n, alpha):
    seeds = _seeds(k, n, alpha, "planted", trials=60)
    right = sum(seed.found and seed.seed_prompt_id == planted for seed, planted in seeds)
    assert right >= 0.95 * len(seeds), right


def test_two_answers_and_fifteen_prompts_say_they_cannot_resolve_a_seed():
    seeds = _seeds(2, 15, 0.4, "planted", trials=60)
    unresolved = [s for s, _ in seeds if s.verdict == "unresolved"]
    assert len(unresolved) >= 0.5 * len(seeds)
    assert all(not s.found and s.seed_prompt_id is None for s in unresolved)
    null = _seeds(2, 15, 0.4, "phrasing", trials=TRIALS)
    assert sum(s.found for s, _ in null) <= binomial_upper(TRIALS, LEVEL)


def test_the_p_value_is_uniform_under_the_phrasing_null():
    """A draw of the null family itself gets a p-value that is (at least) uniform: the share
    below each level stays under it."""
    rng = np.random.default_rng(5)
    base = _dirichlet(rng, 0.4, 10, 15)
    alpha = fit_dirichlet(base)
    null = [np.sort(nearest_js(rng.dirichlet(alpha, size=2000), base))]
    fresh = nearest_js(rng.dirichlet(alpha, size=1000), base)
    p = np.array([p_value(d, null) for d in fresh])
    for level in (0.01, 0.05, 0.2, 0.5):
        assert (p <= level).mean() <= level + 3 * math.sqrt(level / len(p)) + 1e-9


def test_fit_dirichlet_recovers_mean_and_precision():
    rng = np.random.default_rng(1)
    alpha = np.array([0.5, 1.0, 2.0, 4.0])
    fitted = fit_dirichlet(rng.dirichlet(alpha, size=20000))
    assert np.allclose(fitted, alpha, rtol=0.05)
    assert np.all(fit_dirichlet(np.tile([0.5, 0.5], (4, 1))) > 1e5)  # prompts that all agree


def test_nearest_js_is_the_minimum_over_rows():
    rng = np.random.default_rng(2)
    Q, P = rng.dirichlet(np.ones(6), 7), rng.dirichlet(np.ones(6), 5)
    want = [min(js_divergence(q, p) for p in P) for q in Q]
    assert np.allclose(nearest_js(Q, P), want, rtol=1e-12, atol=1e-15)


def test_same_prompt_across_ladders_carries_the_larger_p_value(tmp_path):
    from answerdist.analysis.phases import analyse, load_results
    from answerdist.analysis.synthetic import write_planted_store

    ladders, seeds = write_planted_store(tmp_path, n_prompts=12, tasks=["random_number"])
    phases = analyse(load_results(tmp_path), ladders, bootstrap=100)
    pair = phases.cross_ladder[0].tasks["random_number"]
    a, b = (phases.ladders[name].tasks["random_number"].seed for name in ("olmo", "tulu"))
    assert pair.same_prompt and a.found and b.found
    assert pair.p_value == max(a.p_value, b.p_value) < LEVEL


def _same_prompt_rate(kind, trials=100, k=10, n=15):
    """Two ladders from one base whose seed stages both collapse: onto the same base prompt
    (planted) or each onto a fresh phrasing of its own (null)."""
    from answerdist.analysis.phases import _cross_ladder
    from answerdist.analysis.records import Ladder

    rng = np.random.default_rng([7, len(kind)])
    same = compatible = 0
    for t in range(trials):
        base = _dirichlet(rng, 0.4, k, n)
        row, other = (int(r) for r in rng.choice(n, 2, replace=False))
        ids, answers = [f"p{i:02d}" for i in range(n)], [str(a) for a in range(k)]
        tasks = {}
        for name in ("a", "b"):
            target = {"planted": base[row],
                      "different": base[row if name == "a" else other]}.get(
                kind, None)
            target = _dirichlet(rng, 0.4, k) if target is None else target
            stages = {"base": TaskData(f"base-{t}", "t", ids, answers, base, np.ones(n)),
                      "sft": TaskData(f"sft-{name}-{t}", "t", ids, answers,
                                      _noisy(np.tile(target, (n, 1)), rng), np.ones(n))}
            tasks[name] = Ladder([("base", f"base-{t}"), ("sft", f"sft-{name}-{t}")], "sft",
                                 {"t": ladder_metrics(stages, level=LEVEL, bootstrap=100)})
        match = _cross_ladder(tasks)[0].tasks["t"]
        same += match.same_prompt
        compatible += match.compatible
    return same, trials, compatible


def test_same_prompt_across_ladders_false_positive_rate_and_power():
    same, trials, _ = _same_prompt_rate("phrasing")
    assert same <= binomial_upper(trials, LEVEL), same
    same, trials, _ = _same_prompt_rate("planted")
    assert same >= 0.95 * trials, same


def test_compatible_seeds_false_positive_rate_and_power():
    """`compatible` (both seeds found, their seed sets share a prompt). Its nulls: each seed
    stage collapses onto a fresh phrasing of its own, or onto a different base prompt than
    the other ladder's; either way "compatible" stays within binomial error of the level.
    Power: both collapse onto the same base prompt, and it is compatible in 95% or more."""
    for kind in ("phrasing", "different"):
        same, trials, compatible = _same_prompt_rate(kind)
        assert compatible <= binomial_upper(trials, LEVEL), (kind, compatible)
        assert same <= compatible
    same, trials, compatible = _same_prompt_rate("planted")
    assert compatible >= 0.95 * trials and same <= compatible, (same, compatible)
