"""The seed set's calibration on planted ladders where the truth is known.

The seed stage's prompts are noisy copies of one base prompt, the planted seed, with noise
whose mean is exactly zero (so the seed stage's consensus over all phrasings IS the planted
prompt's distribution), and one to three other base prompts lie within a small JS of it. The
set at `level` must miss the planted prompt at most `level` of the time, and name a single
wrong prompt at most `level` of the time; with well separated base prompts it should be a
single prompt nearly always (power). docs/metrics.md ("Seed set") quotes these numbers;
`python -m tests.test_seed_set` prints them.
"""

import sys

import numpy as np
import pytest

from answerdist.analysis.bootstrap import resample_counts
from answerdist.analysis.metrics import js_divergence
from answerdist.analysis.phases import TaskData, _cross_ladder, ladder_metrics, seed_verdict
from answerdist.analysis.records import Ladder
from answerdist.analysis.seedset import SET_RESAMPLES, seed_set
from tests.test_seed_null import binomial_upper

TRIALS = 300


def mean_exact_noise(p, rng, m, sigma):
    """m noisy copies of p whose mean is exactly p: p * (1 + sigma (z - p.z)), z a standard
    normal clipped symmetrically so that every entry stays positive."""
    c = 0.45 / sigma
    z = np.clip(rng.standard_normal((m, p.shape[0])), -c, c)
    return p * (1 + sigma * (z - (z * p).sum(axis=1, keepdims=True)))


def near_base(rng, k, n, alpha, near, mix):
    """A base of n Dirichlet(alpha) prompts whose rows 1..near are the planted row 0 mixed
    with a fresh draw at weight `mix`: the near ties."""
    base = np.maximum(rng.dirichlet(np.full(k, alpha), n), 1e-12)
    base /= base.sum(axis=1, keepdims=True)
    for j in range(1, near + 1):
        other = np.maximum(rng.dirichlet(np.full(k, alpha)), 1e-12)
        base[j] = (1 - mix) * base[0] + mix * other / other.sum()
    return base


def rates(k, n, m, sigma, near, mix, level, trials=TRIALS, seed=0):
    """(miss, wrong singleton, singleton, mean size, median JS of the near prompts)."""
    rng = np.random.default_rng([seed, k, n, m, int(sigma * 100), near, int(mix * 1000)])
    miss = wrong = single = size = 0
    gaps = []
    for _ in range(trials):
        base = near_base(rng, k, n, 0.4, near, mix)
        stage = mean_exact_noise(base[0], rng, m, sigma)
        kept = seed_set(base, stage, resample_counts(m, SET_RESAMPLES, rng), level)
        miss += 0 not in kept
        wrong += kept != [0] and len(kept) == 1
        single += len(kept) == 1
        size += len(kept)
        if near:
            gaps.append(js_divergence(base[0], base[1]))
    return (miss / trials, wrong / trials, single / trials, size / trials,
            float(np.median(gaps)) if gaps else None)


# (K answers, N base prompts, M seed-stage prompts, noise sigma, near ties, their mix weight)
NEAR = [(10, 15, 15, 0.5, 2, 0.02), (10, 15, 15, 0.5, 1, 0.05), (10, 15, 15, 0.1, 3, 0.02),
        (4, 6, 5, 0.5, 2, 0.02), (4, 6, 10, 0.5, 1, 0.1), (52, 15, 15, 0.5, 2, 0.02),
        (10, 8, 8, 0.3, 3, 0.05), (4, 6, 3, 0.5, 2, 0.02)]
SEPARATED = [(10, 15, 15, 0.1), (10, 15, 15, 0.3), (52, 15, 15, 0.3), (10, 8, 8, 0.3),
             (4, 6, 10, 0.3), (20, 30, 30, 0.5)]


@pytest.mark.parametrize("level", [0.01, 0.05])
@pytest.mark.parametrize(("k", "n", "m", "sigma", "near", "mix"), NEAR)
def test_the_planted_seed_is_missed_and_a_wrong_one_named_at_most_level(k, n, m, sigma, near,
                                                                        mix, level):
    miss, wrong, *_ = rates(k, n, m, sigma, near, mix, level)
    assert miss * TRIALS <= binomial_upper(TRIALS, level), miss
    assert wrong * TRIALS <= binomial_upper(TRIALS, level), wrong


def test_exact_ties_are_all_kept():
    """Base prompts identical to the planted one are exactly as near: never told apart."""
    _, _, single, size, _ = rates(10, 15, 15, 0.3, 2, 0.0, 0.01, trials=40)
    assert single == 0 and size >= 3


@pytest.mark.parametrize(("k", "n", "m", "sigma"), SEPARATED[:4])
def test_a_well_separated_seed_is_named_alone(k, n, m, sigma):
    _, wrong, single, *_ = rates(k, n, m, sigma, 0, 0.0, 0.01, trials=100)
    assert single >= 0.9 and wrong == 0, single


def test_a_seed_stage_whose_prompts_all_agree_keeps_only_the_nearest():
    """No resample moves a consensus of identical prompts: any farther prompt is out."""
    rng = np.random.default_rng(3)
    base = near_base(rng, 6, 5, 0.5, 1, 1e-4)
    stage = np.tile(base[1], (4, 1))
    assert seed_set(base, stage, resample_counts(4, 200, rng), 0.01) == [1]
    assert seed_set(base, stage[:1], resample_counts(1, 200, rng), 0.01) == [1]
    assert seed_set(base[:1], stage, resample_counts(4, 200, rng), 0.01) == [0]


def _ladder(base, stage, tag):
    n, k = base.shape
    ids, answers = [f"p{i:02d}" for i in range(n)], [str(a) for a in range(k)]
    stages = {"base": TaskData(f"base-{tag}", "t", ids, answers, base, np.ones(n)),
              "sft": TaskData(f"sft-{tag}", "t", ids[: len(stage)], answers, stage,
                              np.ones(len(stage)))}
    return ladder_metrics(stages, bootstrap=100)


def test_a_seed_among_near_ties_is_reported_as_a_set_and_not_named():
    rng = np.random.default_rng(11)
    base = near_base(rng, 10, 15, 0.3, 2, 0.0005)
    seed = _ladder(base, mean_exact_noise(base[0], rng, 15, 0.3), "near").seed
    assert seed.found and seed.seed_prompt_id is None
    assert {"p00", "p01", "p02"} <= set(seed.seed_set) and seed.seed_set == seed.nearest_set
    assert seed_verdict(seed).startswith("seed in {") and "p00" in seed_verdict(seed)


def test_a_set_is_listed_even_when_no_seed_is_found():
    rng = np.random.default_rng(12)
    base = near_base(rng, 10, 15, 0.3, 0, 0.0)
    consensus = base.mean(axis=0)  # the base's own consensus: no particular prompt
    seed = _ladder(base, mean_exact_noise(consensus, rng, 15, 0.1), "none").seed
    assert not seed.found and seed.seed_set == [] and seed.seed_prompt_id is None
    assert seed.nearest_set[0] == seed.nearest_prompt_id


def test_across_ladders_same_needs_two_single_seeds_and_compatible_needs_a_shared_prompt():
    rng = np.random.default_rng(13)
    base = near_base(rng, 10, 15, 0.3, 1, 1e-5)  # p00 and p01 cannot be told apart
    far = near_base(rng, 10, 15, 0.3, 0, 0.0)
    tasks = {}
    for name, b, row in (("a", base, 0), ("b", base, 1), ("c", far, 4), ("d", far, 4)):
        tasks[name] = Ladder([("base", f"base-{name}"), ("sft", f"sft-{name}")], "sft",
                             {"t": _ladder(b, mean_exact_noise(b[row], rng, 15, 0.2), name)})
    pairs = {p.ladders: p.tasks["t"] for p in _cross_ladder(tasks)}
    ab, cd, ac = pairs[("a", "b")], pairs[("c", "d")], pairs[("a", "c")]
    assert not ab.same_prompt and ab.compatible and set(ab.seed_sets[0]) >= {"p00", "p01"}
    assert cd.same_prompt and cd.compatible and cd.seed_sets == (["p04"], ["p04"])
    assert not ac.same_prompt and not ac.compatible


def calibration_table():
    """The tables of docs/metrics.md ("Seed set")."""
    print("| K | N | M | sigma | near ties (median JS, bits) | level | miss | wrong single "
          "| single | mean size |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k, n, m, sigma, near, mix in NEAR:
        for level in (0.01, 0.05):
            miss, wrong, single, size, gap = rates(k, n, m, sigma, near, mix, level)
            print(f"| {k} | {n} | {m} | {sigma} | {near} ({gap:.4f}) | {level} | {miss:.3f} "
                  f"| {wrong:.3f} | {single:.2f} | {size:.2f} |")
    print()
    print("| K | N | M | sigma | single at level 0.01 | mean size |")
    print("|---|---|---|---|---|---|")
    for k, n, m, sigma in SEPARATED:
        _, _, single, size, _ = rates(k, n, m, sigma, 0, 0.0, 0.01)
        print(f"| {k} | {n} | {m} | {sigma} | {single:.2f} | {size:.2f} |")


if __name__ == "__main__":
    sys.exit(calibration_table())


def test_phases_json_carries_the_sets_and_reads_files_written_before_them():
    from answerdist.analysis.records import LadderPair, Seed

    rng = np.random.default_rng(14)
    base = near_base(rng, 10, 15, 0.3, 2, 1e-6)
    seed = _ladder(base, mean_exact_noise(base[0], rng, 15, 0.3), "json").seed
    d = seed.to_json()
    assert d["seed_set"] == seed.seed_set and len(d["nearest_set"]) >= 3
    assert Seed.from_json(d) == seed
    old = {k: v for k, v in d.items() if k not in ("seed_set", "nearest_set")}
    assert Seed.from_json(old).nearest_set == [seed.nearest_prompt_id]
    pair = {"ladders": ["a", "b"], "tasks": {"t": {"seed_prompt_ids": ["p1", "p1"],
                                                   "js_between_seeds": 0.0,
                                                   "same_prompt": True, "p_value": 0.001}}}
    assert LadderPair.from_json(pair).tasks["t"].compatible
    assert LadderPair.from_json(pair).to_json()["tasks"]["t"]["compatible"] is True
