"""A task's target distribution: declared in its file, recorded by the engine, measured against
by the analysis (tv_target, kl_target), never part of the task's identity."""

import dataclasses
import math

import numpy as np
import pyarrow as pa
import pytest

import answerdist.analysis
from answerdist.analysis.phases import analyse, load_results, task_metrics
from answerdist.analysis.synthetic import write_manifest, write_task
from answerdist.engine.results.schema import task_hash
from answerdist.engine.tasks.loader import parse_tasks
from answerdist.errors import AnalysisError, TaskError

TASK = '''
name = "pick"
answers = ["a", "b", "c", "d"]
{target}
[[prompts]]
id = "p0"
text = "Pick one of {{options}}."
'''


def _task(target_line):
    return parse_tasks(TASK.format(target=target_line), "t.toml")[0]


def test_targets_parse_uniform_or_from_weights():
    assert _task('target = "uniform"').target == (0.25,) * 4
    assert _task("target = { a = 3, c = 1 }").target == (0.75, 0.0, 0.25, 0.0)
    assert _task("").target is None


@pytest.mark.parametrize(("line", "expected"), [
    ('target = "zipf"', 'must be "uniform" or a table'),
    ("target = { e = 1 }", "'e' is not an answer of the task"),
    ("target = { a = -1, b = 2 }", "finite numbers >= 0"),
    ("target = { a = 0 }", "not all 0"),
    ('target = { a = "1" }', "finite numbers >= 0"),
])
def test_bad_targets_are_one_line(line, expected):
    with pytest.raises(TaskError, match=expected):
        _task(line)


def test_a_target_is_not_part_of_the_task_identity():
    plain = _task("")
    assert task_hash(plain) == task_hash(dataclasses.replace(plain, target=(0.25,) * 4))


def test_distances_to_the_target():
    P = np.array([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    m = task_metrics(P, target=[0.5, 0.5, 0.0, 0.0])
    assert m["tv_target"] == pytest.approx((0.5 + 0.5) / 2)
    assert m["kl_target"] is None  # the uniform prompt puts mass where the target has none
    m = task_metrics(P, target=[0.25] * 4)
    assert m["tv_target"] == pytest.approx(m["tv_uniform"])
    assert m["kl_target"] == pytest.approx(m["kl_uniform"]) == pytest.approx(1.0)
    assert task_metrics(P)["tv_target"] is None


def test_the_target_travels_from_the_manifest_to_the_analysis(tmp_path):
    rng = np.random.default_rng(0)
    answers = ["a", "b", "c"]
    for label in ("base", "sft"):
        P = rng.dirichlet(np.ones(3), size=6)
        write_task(tmp_path, label, "pick", answers, P, np.ones(6), target=[1 / 3] * 3)
        write_manifest(tmp_path, label)
    results = load_results(tmp_path)
    assert np.allclose(results.data["base"]["pick"].target, 1 / 3)
    stage = analyse(results, [("l", [("base", "base"), ("sft", "sft")])],
                    bootstrap=100).ladders["l"].tasks["pick"].stages["base"]
    assert stage.value("kl_target") == pytest.approx(stage.value("kl_uniform"))
    lo, hi = stage.figures["tv_target"].ci
    assert lo <= stage.value("tv_target") <= hi and math.isfinite(hi)


def test_from_table_reads_a_target_column():
    rows = [{"label": "x", "task": "coin", "prompt_id": p, "answer": a, "prob": v, "target": 0.5}
            for p, probs in (("p0", (0.9, 0.1)), ("p1", (0.6, 0.4)))
            for a, v in zip(("H", "T"), probs, strict=True)]
    td = answerdist.analysis.from_table(pa.Table.from_pylist(rows)).data["x"]["coin"]
    assert np.allclose(td.target, [0.5, 0.5])
    rows[0]["target"] = 0.9
    with pytest.raises(AnalysisError, match="target column is not a distribution"):
        answerdist.analysis.from_table(pa.Table.from_pylist(rows))


def _tv(P, target):
    return float(np.mean(0.5 * np.abs(P - np.asarray(target)).sum(axis=1)))


@pytest.mark.parametrize("seed", range(6))
def test_every_stage_is_measured_against_its_own_target(tmp_path, seed):
    """Stages that recorded different targets (or none): each stage's tv_target is its own
    target's, and one warning line says the targets differ; fresh ladders each seed."""
    rng = np.random.default_rng(seed)
    k, stages = int(rng.integers(2, 6)), ["base", "sft", "dpo"][: int(rng.integers(2, 4))]
    answers = [f"a{i}" for i in range(k)]
    targets, P = {}, {}
    for stage in stages:
        targets[stage] = (None if rng.random() < 0.25
                          else [1 / k] * k if rng.random() < 0.5
                          else list(rng.dirichlet(np.ones(k))))
        P[stage] = rng.dirichlet(np.ones(k), size=5)
        write_task(tmp_path, stage, "pick", answers, P[stage], np.ones(5), target=targets[stage])
        write_manifest(tmp_path, stage)
    phases = analyse(load_results(tmp_path), [("l", [(s, s) for s in stages])], bootstrap=100)
    for stage in stages:
        got = phases.ladders["l"].tasks["pick"].stages[stage].value("tv_target")
        if targets[stage] is None:
            assert got is None
        else:
            assert got == pytest.approx(_tv(P[stage], targets[stage]), abs=1e-12)
    differ = len({None if t is None else tuple(np.round(t, 12)) for t in targets.values()}) > 1
    said = [w for w in phases.warnings if "record different targets" in w]
    assert len(said) == (1 if differ else 0)


def test_coin_stages_with_uniform_then_one_sided_targets(tmp_path):
    """A base recorded as uniform and an SFT stage recorded as {Heads = 1, Tails = 0}."""
    answers = ["Heads", "Tails"]
    P = {"base": np.array([[0.5, 0.5], [0.6, 0.4]]), "sft": np.array([[0.9, 0.1], [0.8, 0.2]])}
    for stage, target in (("base", [0.5, 0.5]), ("sft", [1.0, 0.0])):
        write_task(tmp_path, stage, "coin", answers, P[stage], np.ones(2), target=target)
        write_manifest(tmp_path, stage)
    phases = analyse(load_results(tmp_path), [("l", [("base", "base"), ("sft", "sft")])],
                     bootstrap=100)
    sft = phases.ladders["l"].tasks["coin"].stages["sft"]
    assert sft.value("tv_target") == pytest.approx(0.15)  # against {1, 0}, not uniform's 0.35
    (line,) = [w for w in phases.warnings if "record different targets" in w]
    assert "stage base: [0.5, 0.5]" in line and "stage sft: [1.0, 0.0]" in line


def test_from_table_refuses_prompts_that_give_different_targets():
    table = pa.table({"label": ["m"] * 4, "task": ["t"] * 4, "prompt_id": ["p", "p", "q", "q"],
                      "answer": ["x", "y", "x", "y"], "prob": [0.5, 0.5, 0.3, 0.7],
                      "target": [0.5, 0.5, 1.0, 0.0]})
    with pytest.raises(AnalysisError, match="prompt q gives another target than prompt p"):
        answerdist.analysis.from_table(table)
