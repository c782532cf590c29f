"""Phase metrics, seed identification and the analysis CLI, on synthetic distributions."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from scipy.stats import spearmanr

from answerdist.analysis.ladders import parse_ladder
from answerdist.analysis.metrics import entropy, js_divergence, pairwise_js
from answerdist.analysis.phases import (
    TaskData,
    count_clusters,
    ladder_metrics,
    load_results,
    phase_summary,
    spearman,
    task_metrics,
)
from answerdist.analysis.records import Phases
from answerdist.analysis.synthetic import TASKS, planted_ladder, write_planted_store, write_task
from answerdist.cli.analyse import main
from answerdist.engine.results.schema import MAIN_SCHEMA
from answerdist.engine.results.store import ResultsStore
from answerdist.errors import AnalysisError

PROPERTY = settings(max_examples=100, deadline=None)


# ------------------------------------------------------------------------- building blocks


@PROPERTY
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 25),
    st.integers(2, 8),
    st.floats(0.0, 0.6),
)
def test_count_clusters_matches_scipy_complete_linkage(rng_seed, n, k, tau):
    P = np.random.default_rng(rng_seed).dirichlet(np.full(k, 0.5), size=n)
    D = pairwise_js(P)
    if n == 1:
        expected = 1
    else:
        tree = linkage(squareform(D, checks=False), method="complete")
        expected = len(set(fcluster(tree, t=tau, criterion="distance")))
    assert count_clusters(D, tau) == expected


@PROPERTY
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=2, max_size=15))
def test_spearman_matches_scipy_with_ties(pairs):
    x, y = (np.array(v, dtype=float) for v in zip(*pairs, strict=True))
    got = spearman(x, y)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        assert got is None
    else:
        assert got == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_task_metrics_on_two_planted_groups():
    P = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    m = task_metrics(P, coverage=np.array([0.2, 0.4, 0.6, 0.8]))
    # 8 of the 12 ordered pairs are across the groups, at JS = 1 bit.
    assert m["liquidity"] == pytest.approx(8 / 12)
    assert m["distinct"] == 2
    assert m["entropy_bits"] == 0.0 and m["entropy_norm"] == 0.0
    assert m["consensus"] == [0.5, 0.5]
    assert m["dispersion"] == pytest.approx(js_divergence(np.array([1.0, 0.0]), [0.5, 0.5]))
    assert m["coverage"] == pytest.approx(0.5)
    assert (m["n_prompts"], m["n_answers"]) == (4, 2)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.integers(1, 1000),
       st.sampled_from([0.01, 0.1, 1.0, 10.0]))
def test_effective_supports_are_ordered_and_count_answers(rng_seed, n, k, alpha):
    """1 <= effective_support <= consensus_support <= K (entropy is concave), effective_support
    is 2^entropy_bits, and log2 of their ratio is the information radius H(C) - mean H(P_i),
    which for two prompts is their JS divergence, i.e. the liquidity."""
    P = np.random.default_rng(rng_seed).dirichlet(np.full(k, alpha), size=n)
    P /= P.sum(axis=1, keepdims=True)
    m = task_metrics(P)
    eff, cons = m["effective_support"], m["consensus_support"]
    assert 1.0 - 1e-9 <= eff <= cons * (1 + 1e-9) and cons <= k * (1 + 1e-9)
    assert eff == pytest.approx(2.0 ** m["entropy_bits"], rel=1e-12)
    if k > 1:
        assert np.log(eff) / np.log(k) == pytest.approx(m["entropy_norm"], abs=1e-9)
    radius = entropy(np.array(m["consensus"])) - m["entropy_bits"]
    assert np.log2(cons / eff) == pytest.approx(radius, abs=1e-9)
    if n == 2:
        assert np.log2(cons / eff) == pytest.approx(m["liquidity"], abs=1e-9)


def test_effective_supports_of_planted_distributions():
    """Three prompts each uniform over its own 10 of 1000 answers: every prompt spreads over 10
    answers, the checkpoint over 30. The same prompts all equal: 10 and 10."""
    P = np.zeros((3, 1000))
    for i in range(3):
        P[i, 10 * i : 10 * i + 10] = 0.1
    m = task_metrics(P)
    assert m["effective_support"] == pytest.approx(10.0, rel=1e-12)
    assert m["consensus_support"] == pytest.approx(30.0, rel=1e-12)
    same = task_metrics(np.tile(P[0], (3, 1)))
    assert same["effective_support"] == pytest.approx(10.0, rel=1e-12)
    assert same["consensus_support"] == pytest.approx(10.0, rel=1e-12)


def test_task_metrics_identical_prompts_and_single_prompt():
    same = task_metrics(np.tile([0.25, 0.25, 0.5], (5, 1)))
    assert same["liquidity"] == 0.0 and same["distinct"] == 1 and same["dispersion"] == 0.0
    assert same["entropy_norm"] == pytest.approx(1.5 / np.log2(3))
    one = task_metrics(np.array([[0.5, 0.5]]))
    assert one["liquidity"] == 0.0 and one["distinct"] == 1


def test_parse_ladder_plain_and_named():
    assert parse_ladder("base=a,sft=b,dpo=c,rl=d") == (
        "a",
        [("base", "a"), ("sft", "b"), ("dpo", "c"), ("rl", "d")],
    )
    assert parse_ladder("olmo2:base=a,sft=b") == ("olmo2", [("base", "a"), ("sft", "b")])
    for bad in ("base=a", "base=a,sft", "base=a,base=b", "base=a,=b"):
        with pytest.raises(AnalysisError):
            parse_ladder(bad)


# ---------------------------------------------------------------------------- one ladder


def _ladder(planted, stages=("base", "sft", "dpo", "rl")):
    """{stage: TaskData} from planted {stage: (P, coverage)}."""
    out = {}
    for stage in stages:
        P, cov = planted[stage]
        ids = [f"p{i:02d}" for i in range(P.shape[0])]
        out[stage] = TaskData(f"x-{stage}", "t", ids, [str(a) for a in range(P.shape[1])], P, cov)
    return out


def test_planted_ladder_gives_liquid_nucleated_settled_and_the_seed():
    rng = np.random.default_rng(1)
    result = ladder_metrics(_ladder(planted_ladder(rng, 12, 10, seed_index=5))).to_json()
    seed = result["seed"]
    assert seed["found"] and seed["seed_prompt_id"] == "p05" and seed["stage"] == "sft"
    assert seed["margin"] > 0.1
    phases = [result["stages"][s]["phase"] for s in ("base", "sft", "dpo", "rl")]
    assert phases == ["liquid", "nucleated", "settled", "settled"]
    assert result["stages"]["sft"]["nucleation"] > 0.9
    assert result["stages"]["base"]["distinct"] >= 10 and result["stages"]["sft"]["distinct"] == 1
    assert result["settling"]["dpo"]["retention"] > 0.9
    assert result["settling"]["rl"]["spearman"] > 0.8
    assert result["settling"]["sft"]["drift"] == 0.0
    assert 0 < result["settling"]["dpo"]["drift"] < result["settling"]["rl"]["drift"]
    assert set(result["settling"]) == {"sft", "dpo", "rl"}


def test_consensus_that_no_base_prompt_gave_is_no_seed():
    rng = np.random.default_rng(2)
    planted = planted_ladder(rng, 12, 10, seed_index=0)
    base, cov = planted["base"]
    mean = base.mean(axis=0)
    planted["sft"] = (np.tile(mean, (12, 1)), cov)  # collapsed, but onto no prompt's distribution
    result = ladder_metrics(_ladder(planted)).to_json()
    assert not result["seed"]["found"] and result["seed"]["seed_prompt_id"] is None
    phases = [result["stages"][s]["phase"] for s in ("base", "sft", "dpo", "rl")]
    assert phases == ["liquid", "unclear", "unclear", "unclear"]


def test_still_liquid_sft_and_a_stage_leaving_the_support():
    rng = np.random.default_rng(3)
    planted = planted_ladder(rng, 12, 10, seed_index=4)
    base, cov = planted["base"]
    still = dict(planted, sft=(base[::-1].copy(), cov))
    assert ladder_metrics(_ladder(still)).stages["sft"].phase == "liquid"
    # RL puts its mass on the seed's least likely answer: outside the seed's support.
    seed = base[4]
    outside = np.full(10, 0.02)
    outside[np.argmin(seed)] = 0.82
    moved = dict(planted, rl=(np.tile(outside, (12, 1)), cov))
    result = ladder_metrics(_ladder(moved)).to_json()
    assert result["stages"]["rl"]["phase"] == "unclear"
    assert result["settling"]["rl"]["retention"] < 0.2
    assert result["stages"]["dpo"]["phase"] == "settled"


def test_seed_stage_is_second_stage_without_sft():
    rng = np.random.default_rng(4)
    planted = planted_ladder(rng, 10, 8, seed_index=2)
    renamed = {"pre": planted["base"], "tuned": planted["sft"], "pref": planted["dpo"]}
    result = ladder_metrics(_ladder(renamed, stages=("pre", "tuned", "pref")))
    assert result.seed.stage == "tuned" and result.seed.seed_prompt_id == "p02"
    assert [m.phase for m in result.stages.values()] == ["liquid", "nucleated", "settled"]


# -------------------------------------------------------------------------- store and CLI


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    ladders, seeds = write_planted_store(root / "results", n_prompts=10, tasks=list(TASKS)[:2])
    return root / "results", ladders, seeds


def _flags(ladders):
    out = []
    for name, stages in ladders:
        out += ["--ladder", f"{name}:" + ",".join(f"{s}={label}" for s, label in stages)]
    return out


def _copy(store, tmp_path):
    results, ladders, seeds = store
    dst = tmp_path / "results"
    shutil.copytree(results, dst)
    return dst, ladders, seeds


def test_load_results_reads_the_store(store):
    results, _, _ = store
    loaded = load_results(results, ["olmo-base"])
    td = loaded.data["olmo-base"]["random_number"]
    assert td.answers == TASKS["random_number"]
    assert td.prompt_ids == [f"p{i:02d}" for i in range(10)]
    assert td.P.shape == (10, 10) and np.allclose(td.P.sum(axis=1), 1.0)
    assert np.all((td.coverage > 0.2) & (td.coverage < 0.6))


def test_cli_writes_phases_json_with_planted_seeds(store, tmp_path, capsys):
    results, ladders, seeds = store
    out = tmp_path / "deep" / "phases.json"
    assert main([str(results), *_flags(ladders), "--out", str(out)]) == 0
    phases = json.loads(out.read_text())
    summary = phase_summary(Phases.from_json(phases))
    for name, _ in ladders:
        for task, planted in seeds[name].items():
            assert summary[name][task]["seed_prompt_id"] == planted
            assert list(summary[name][task]["phases"].values()) == [
                "liquid",
                "nucleated",
                "settled",
                "settled",
            ]
    (pair,) = phases["cross_ladder"]
    assert pair["ladders"] == ["olmo", "tulu"]
    assert pair["tasks"]["random_number"]["same_prompt"] is True
    assert pair["tasks"]["random_color"]["same_prompt"] is False
    assert 0 < pair["tasks"]["random_color"]["js_between_seeds"] <= 1
    printed = capsys.readouterr().out
    assert "ladder olmo" in printed and "nucleated" in printed and "settled" in printed
    # The effective support sizes are printed, one decimal, beside the entropies.
    header = next(line for line in printed.splitlines() if "H/logK" in line).split()
    assert header[header.index("H/logK") + 1 : header.index("H/logK") + 3] == ["effK", "consK"]
    base = phases["ladders"]["olmo"]["tasks"]["random_number"]["stages"]["base"]
    lines = printed.splitlines()
    block = lines[next(i for i, line in enumerate(lines) if "task random_number" in line):]
    row = next(line for line in block if line.split()[:2] == ["base", "olmo-base"])
    cells = row.split()
    assert cells[4:6] == [f"{base['effective_support']:.1f}", f"{base['consensus_support']:.1f}"]


def test_cli_plain_ladder_default_output(store, tmp_path):
    results, ladders, _ = _copy(store, tmp_path)
    stages = ladders[0][1]
    assert main([str(results), "--ladder", ",".join(f"{s}={lab}" for s, lab in stages)]) == 0
    phases = json.loads((results / "phases.json").read_text())
    assert list(phases["ladders"]) == ["olmo-base"]  # named by its base label
    assert phases["cross_ladder"] == []


def test_cli_task_missing_at_one_stage_is_named_and_left_out(store, tmp_path, capsys):
    results, ladders, _ = _copy(store, tmp_path)
    _drop_task(results / "olmo-dpo", "random_color")  # as if that label was scored without it
    assert main([str(results), *_flags(ladders)]) == 0
    err = capsys.readouterr().err
    assert "random_color" in err and "olmo-base" in err
    phases = json.loads((results / "phases.json").read_text())
    assert list(phases["ladders"]["olmo"]["tasks"]) == ["random_number"]
    assert sorted(phases["ladders"]["tulu"]["tasks"]) == ["random_color", "random_number"]


def _drop_task(label_dir, task):
    manifest = json.loads((label_dir / "manifest.json").read_text())
    del manifest["tasks"][task]
    (label_dir / "manifest.json").write_text(json.dumps(manifest))
    (label_dir / f"{task}.parquet").unlink()


def _rewrite(path, change):
    """Change a task's table and store it as a (buggy) writer would: through the results store,
    so that the file is valid and only its content is inconsistent."""
    store = ResultsStore(path.parent.parent, path.parent.name)
    table = store.read_task(path.stem).to_pydict()
    change(table)
    store.write_tables(path.stem, pa.table(table, schema=MAIN_SCHEMA),
                       store.read_task(path.stem, variants=True))


def _rename_answer(path, old, new):
    _rewrite(path, lambda t: t.update(answer=[new if a == old else a for a in t["answer"]]))


def _scale_column(path, column, factor):
    _rewrite(path, lambda t: t.update({column: [v * factor for v in t[column]]}))


def _break_prompt_order(path):
    def swap(table):
        k = len(TASKS["random_number"])
        for col in table.values():  # swap the first two answers of the second prompt only
            col[k], col[k + 1] = col[k + 1], col[k]
    _rewrite(path, swap)


@pytest.mark.parametrize(
    ("damage", "ladder_override", "expected"),
    [
        (None, "base=olmo-base,sft=olmo-sftx", "label 'olmo-sftx'"),
        (
            lambda r: _rename_answer(r / "olmo-dpo" / "random_number.parquet", "7", "seven"),
            None,
            "mismatched answer sets: task random_number",
        ),
        (
            lambda r: _break_prompt_order(r / "olmo-sft" / "random_number.parquet"),
            None,
            "mismatched answer sets: prompt p01",
        ),
        (
            lambda r: (r / "olmo-rl" / "random_number.parquet").write_bytes(b"not parquet"),
            None,
            "random_number.parquet: damaged or changed since it was written; "
            "rerun answerdist score",
        ),
        (lambda r: [p.unlink() for p in r.glob("*/*.parquet")], None, ".parquet: missing"),
        (
            lambda r: [p.unlink() for p in r.glob("*/manifest.json")],
            None,
            "no <label>/manifest.json",
        ),
        (
            lambda r: _scale_column(r / "tulu-sft" / "random_color.parquet", "prob", 0.5),
            None,
            "tulu-sft/random_color prompt p00: prob column is not a distribution (sum 0.5",
        ),
        (
            lambda r: _scale_column(r / "tulu-rl" / "random_color.parquet", "coverage", 2.0),
            None,
            "tulu-rl/random_color prompt p00: coverage",
        ),
        (None, "base=olmo-base;sft=olmo-sft", "expected stage=label pairs"),
        (None, "base=olmo-base,sft=olmo-base", "label 'olmo-base' is given for two stages"),
        (None, "base=olmo-base,sft=olmo-sft --tau -1", "--tau -1.0: must be in [0, 1]"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(
    store, tmp_path, capsys, damage, ladder_override, expected
):
    results, ladders, _ = _copy(store, tmp_path)
    if damage:
        damage(results)
    flags = ["--ladder", *ladder_override.split()] if ladder_override else _flags(ladders)
    report = tmp_path / "report"
    assert main([str(results), *flags, "--report", str(report)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err
    assert not (results / "phases.json").exists() and not report.exists()


def test_tasks_with_no_common_ground_is_an_error(tmp_path, capsys):
    rng = np.random.default_rng(5)
    planted = planted_ladder(rng, 4, 3, seed_index=0)
    write_task(tmp_path, "a", "task_one", ["x", "y", "z"], *planted["base"])
    write_task(tmp_path, "b", "task_two", ["x", "y", "z"], *planted["sft"])
    assert main([str(tmp_path), "--ladder", "base=a,sft=b"]) == 2
    assert "no task is present for every label" in capsys.readouterr().err
    assert not (tmp_path / "phases.json").exists()


def test_phase_rules_at_the_thresholds():
    rng = np.random.default_rng(6)
    planted = planted_ladder(rng, 12, 10, seed_index=1)
    base, cov = planted["base"]
    # A base whose prompts all agree: nothing to nucleate from, every stage is unclear.
    frozen = dict(planted, base=(np.tile(base[1], (12, 1)), cov))
    result = ladder_metrics(_ladder(frozen))
    assert result.stages["sft"].value("nucleation") is None
    assert {m.phase for m in result.stages.values()} == {"unclear"}
    # Half way to the seed: liquidity fell by more than half but stays above LIQUID_MIN.
    half = 0.5 * base + 0.5 * base[1]
    assert task_metrics(half)["liquidity"] > 0.1
    result = ladder_metrics(_ladder(dict(planted, sft=(half, cov))))
    assert result.stages["sft"].value("nucleation") > 0.5
    assert result.stages["sft"].phase == "liquid"
