"""Intervals on every figure: the bootstrap over phrasings (analysis/bootstrap.py)."""

import json
import math

import numpy as np
import pytest

from answerdist.analysis.bootstrap import sharpening_fit, widening
from answerdist.analysis.metrics import entropy, pairwise_js
from answerdist.analysis.phases import TaskData, analyse, ladder_metrics, load_results, task_metrics
from answerdist.analysis.synthetic import planted_ladder, write_planted_store
from answerdist.cli.analyse import main
from answerdist.errors import AnalysisError

# Figures without an interval: counts fixed by the input, the test's own numbers, the phase.
NO_INTERVAL = {"n_prompts", "n_answers", "p_value", "level", "noise_floor", "phase_support"}


def _stages(arrays, labels=None):
    names = list(arrays)
    out = {}
    for i, name in enumerate(names):
        P, cov = arrays[name]
        ids = [f"p{j:02d}" for j in range(len(P))]
        out[name] = TaskData((labels or names)[i], "t", ids, [str(a) for a in range(P.shape[1])],
                             P, cov)
    return out


def test_intervals_cover_the_population_value_95_percent_of_the_time():
    """Phrasings drawn from a known population: the interval of a 15-prompt sample holds the
    population's liquidity and normalised entropy about 95% of the time."""
    rng = np.random.default_rng(0)
    k, n, trials = 10, 15, 200
    population = rng.dirichlet(np.full(k, 0.4), size=2000)
    population = np.maximum(population, 1e-12) / np.maximum(population, 1e-12).sum(1)[:, None]
    D = pairwise_js(population)
    truth = {"liquidity": D.sum() / (len(D) * (len(D) - 1)),
             "entropy_norm": entropy(population).mean() / math.log2(k)}
    covered = dict.fromkeys(truth, 0)
    for t in range(trials):
        P = population[rng.choice(len(population), n, replace=False)]
        stages = _stages({"base": (P, np.ones(n)), "sft": (P, np.ones(n))},
                         labels=[f"b{t}", f"s{t}"])
        m = ladder_metrics(stages, bootstrap=500).stages["base"]
        for metric, value in truth.items():
            lo, hi = m.figures[metric].ci
            covered[metric] += lo <= value <= hi
    for metric, count in covered.items():
        assert 0.88 <= count / trials <= 0.995, (metric, count)


def test_every_figure_of_phases_json_carries_an_interval(tmp_path):
    ladders, _ = write_planted_store(tmp_path, n_prompts=10, tasks=["random_number"])
    phases = json.loads(json.dumps(analyse(load_results(tmp_path), ladders,
                                           bootstrap=100).to_json()))
    task = phases["ladders"]["olmo"]["tasks"]["random_number"]
    blocks = [*task["stages"].values(), *task["settling"].values(), task["seed"]]
    checked = 0
    for block in blocks:
        for key, value in block.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if number and key not in NO_INTERVAL and not key.endswith("_ci"):
                ci = block[f"{key}_ci"]
                checked += 1
                if key != "nucleation" or block is not task["stages"]["base"]:
                    assert ci[0] <= value + 1e-12 and value - 1e-12 <= ci[1], (key, value, ci)
    assert checked >= 4 * 12 + 3 * 5 + 3


def test_a_planted_ladder_has_narrow_intervals_where_the_stage_collapsed():
    rng = np.random.default_rng(3)
    result = ladder_metrics(_stages(planted_ladder(rng, 12, 10, seed_index=4)), bootstrap=200)
    base, sft = result.stages["base"], result.stages["sft"]
    assert base.figures["liquidity"].ci[0] > 0.1 > sft.figures["liquidity"].ci[1]  # collapsed
    assert base.phase == "liquid" and base.phase_support > 0.95
    assert result.settling["dpo"]["retention"].ci[0] > 0.9


def test_the_same_input_gives_the_same_intervals_and_prompt_order_does_not_matter():
    rng = np.random.default_rng(4)
    arrays = planted_ladder(rng, 12, 6, seed_index=2)
    first = ladder_metrics(_stages(arrays), bootstrap=200)
    assert ladder_metrics(_stages(arrays), bootstrap=200) == first
    shuffled = _stages(arrays)
    order = rng.permutation(12)
    sft = shuffled["sft"]
    shuffled["sft"] = TaskData(sft.label, sft.task, [sft.prompt_ids[i] for i in order],
                               sft.answers, sft.P[order], sft.coverage[order])
    again = ladder_metrics(shuffled, bootstrap=200)
    for stage in first.stages:
        assert again.stages[stage].figures["liquidity"].ci == pytest.approx(
            first.stages[stage].figures["liquidity"].ci, rel=1e-9)


def test_sharpening_fit_recovers_the_exponent_of_a_sharpened_seed():
    seed = np.array([0.5, 0.25, 0.15, 0.07, 0.03])
    for gamma in (0.5, 1.0, 2.0, 3.0, 7.0):
        target = seed**gamma / (seed**gamma).sum()
        fitted, js = sharpening_fit(seed, target)
        assert fitted == pytest.approx(gamma, rel=1e-4) and js < 1e-9
    rng = np.random.default_rng(5)
    result = ladder_metrics(_stages(planted_ladder(rng, 12, 10, seed_index=1, sigma=0.01)),
                            bootstrap=100)
    for stage, beta in (("dpo", 2.0), ("rl", 3.0)):
        gamma, residual = result.settling[stage]["gamma"], result.settling[stage]["gamma_js"]
        assert gamma.value == pytest.approx(beta, rel=0.05) and residual.value < 1e-3
        assert gamma.ci[0] <= beta <= gamma.ci[1]


def test_peer_metrics_distinct_k_and_distance_to_uniform():
    P = np.array([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    m = task_metrics(P)
    uniform_distinct = 4 * (1 - (1 - 0.25) ** 10)  # E[distinct answers in 10 draws]
    assert m["distinct_k"] == pytest.approx((1.0 + uniform_distinct) / 2, rel=1e-12)
    assert m["tv_uniform"] == pytest.approx((0.75 + 0.0) / 2, rel=1e-12)
    assert m["kl_uniform"] == pytest.approx((2.0 + 0.0) / 2, rel=1e-12)


def test_widening_is_the_t_over_normal_quantile_times_the_resample_variance_factor():
    assert widening(15) == pytest.approx(2.1448 / 1.95996 * math.sqrt(15 / 14), rel=1e-3)
    assert widening(1000) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("count", [99, 10**6, 500.0, True, "1000"])
def test_a_resample_count_out_of_range_or_not_an_integer_is_refused(count):
    rng = np.random.default_rng(6)
    with pytest.raises(AnalysisError, match="at least 100 resamples and at most 100,000"):
        ladder_metrics(_stages(planted_ladder(rng, 6, 4, seed_index=1)), bootstrap=count)


@pytest.mark.parametrize(("flag", "expected"), [("--bootstrap=99", "--bootstrap 99: give at "
                                                 "least 100"),
                                                ("--bootstrap=1000000", "at most 100,000"),
                                                ("--level=0", "--level 0.0: must be in (0, 1)")])
def test_cli_refuses_bad_bootstrap_or_level_and_writes_nothing(tmp_path, capsys, flag, expected):
    ladders, _ = write_planted_store(tmp_path / "r", n_prompts=6, tasks=["random_number"])
    spec = ",".join(f"{s}={label}" for s, label in ladders[0][1])
    out = tmp_path / "phases.json"
    assert main([str(tmp_path / "r"), "--ladder", spec, flag, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err
    assert not out.exists()
