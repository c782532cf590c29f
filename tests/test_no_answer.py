"""No phase without answers (docs/metrics.md, "Phases"): a stage whose answers hold less mass
than --min-coverage does not answer in the scored format. Its phase is "no_answer" (said in one
warning line per stage), and a ladder whose seed stage does not answer is refused in one line."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import answerdist.analysis as analysis
from answerdist.analysis.phases import MIN_COVERAGE, PHASES
from answerdist.errors import AnalysisError

ANSWERS = ("a", "b", "c", "d")


def table(coverages: dict[str, float], prompts: int = 8, seed: int = 0) -> pa.Table:
    """A ladder base -> sft -> dpo of one task whose stages answer with these coverages."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, coverage in coverages.items():
        for i in range(prompts):
            p = rng.dirichlet(np.ones(len(ANSWERS)) * (0.5 if label == "base" else 20))
            rows += [{"label": label, "task": "t", "prompt_id": f"p{i}", "answer": a,
                      "prob": float(x), "coverage": coverage} for a, x in zip(ANSWERS, p,
                                                                             strict=True)]
    return pa.Table.from_pylist(rows)


LADDER = {"run": {"base": "base", "sft": "sft", "dpo": "dpo"}}


def test_a_stage_that_does_not_answer_gets_no_phase():
    results = analysis.from_table(table({"base": 0.9, "sft": 0.8, "dpo": 0.01}))
    out = analysis.analyse(results, LADDER, bootstrap=200)
    phases = {r["stage"]: r["phase"] for r in out.stages.to_pylist()}
    assert phases["dpo"] == "no_answer" and phases["sft"] != "no_answer"
    assert "no_answer" in PHASES
    said = [w for w in out.records.warnings if "does not answer" in w]
    assert len(said) == 1 and "stage dpo (dpo)" in said[0] and "0.010" in said[0]
    support = {r["stage"]: r["phase_support"] for r in out.stages.to_pylist()}
    assert support["dpo"] == 1.0  # every resample of its prompts is below the threshold too


def test_the_threshold_is_a_setting():
    results = analysis.from_table(table({"base": 0.9, "sft": 0.8, "dpo": 0.3}))

    def phases(**settings):
        out = analysis.analyse(results, LADDER, bootstrap=100, **settings)
        return {r["stage"]: r["phase"] for r in out.stages.to_pylist()}

    assert phases()["dpo"] != "no_answer"  # 0.3 >= the default 0.1: it answers
    assert phases(min_coverage=0.4)["dpo"] == "no_answer"
    assert MIN_COVERAGE == 0.1
    for bad in (-0.1, 1.5, float("nan"), "x"):
        with pytest.raises(AnalysisError, match="min_coverage"):
            analysis.analyse(results, LADDER, min_coverage=bad)


def test_a_ladder_whose_seed_stage_does_not_answer_is_refused():
    results = analysis.from_table(table({"base": 0.9, "sft": 0.0, "dpo": 0.9}))
    with pytest.raises(AnalysisError) as info:
        analysis.analyse(results, LADDER, bootstrap=100)
    line = str(info.value)
    assert "\n" not in line and "seed stage sft (sft) does not answer" in line
    assert "--mode chat" in line and "--min-coverage" in line


def test_the_cli_says_it_in_one_line(tmp_path, capsys):
    from answerdist.analysis.synthetic import write_manifest, write_task
    from answerdist.cli import analyse as cli

    rng = np.random.default_rng(1)
    for label, coverage in (("base", 0.9), ("sft", 0.02)):
        P = rng.dirichlet(np.ones(4), size=6)
        write_task(tmp_path, label, "t", list(ANSWERS), P, np.full(6, coverage))
        write_manifest(tmp_path, label)
    assert cli.main([str(tmp_path), "--ladder", "base=base,sft=sft", "--bootstrap", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not answer in this format" in err[0]
    assert cli.main([str(tmp_path), "--ladder", "base=base,sft=sft", "--bootstrap", "100",
                     "--min-coverage", "0.01"]) == 0
    assert cli.main([str(tmp_path), "--ladder", "base=base,sft=sft",
                     "--min-coverage", "2"]) == 2
    assert "--min-coverage" in capsys.readouterr().err


def test_the_trajectory_takes_the_same_threshold():
    results = analysis.from_table(table({"base": 0.9, "sft": 0.3, "dpo": 0.9}))
    series = {"run": [("base", 0), ("sft", 1), ("dpo", 2)]}  # the fits' default is 0.5

    def answering(**settings):
        out = analysis.trajectory(results, series, bootstrap=100, **settings)
        rows = out.points.to_pylist()
        return [r["answering"] for r in rows if r["task"] == "t"]

    assert answering() == [True, False, True]
    assert answering(min_coverage=0.25) == [True, True, True]
    with pytest.raises(AnalysisError, match="min_coverage"):
        analysis.trajectory(results, series, min_coverage=-1)


def test_every_column_of_the_printed_tables_is_explained():
    from answerdist.cli.analyse import LEGEND, format_tables

    results = analysis.from_table(table({"base": 0.9, "sft": 0.8, "dpo": 0.01}))
    text = format_tables(analysis.analyse(results, LADDER, bootstrap=100).records)
    header = next(line for line in text.splitlines() if line.strip().startswith("stage"))
    legend = " ".join(LEGEND)
    assert text.endswith(legend)
    named = set(legend.replace(",", " ").replace(";", " ").split())
    for column in header.split()[2:]:  # after "stage" and "label"
        assert column in named, column
    assert "no_answer" in text and "no_answer: coverage below --min-coverage" in legend
