"""The analysis results as dataclasses (analysis/records.py): phases.json is their JSON form,
reads back into them unchanged, and every metric the kernel registers reaches every output."""

import json

import pytest

import answerdist.analysis
from answerdist.analysis.bootstrap import SEED_METRICS, SETTLING_METRICS
from answerdist.analysis.phases import CHECKPOINT_METRICS, analyse, load_results
from answerdist.analysis.records import Figure, Phases, Seed, Stage, TaskLadder
from answerdist.analysis.synthetic import write_planted_store
from answerdist.cli.analyse import main


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    ladders, _ = write_planted_store(root, n_prompts=8, tasks=["random_number"])
    return root, ladders


def test_phases_json_is_the_dataclasses_json_form_and_reads_back(store, tmp_path):
    root, ladders = store
    flags = [f for name, stages in ladders
             for f in ("--ladder", f"{name}:" + ",".join(f"{s}={lab}" for s, lab in stages))]
    out = tmp_path / "phases.json"
    assert main([str(root), *flags, "--bootstrap", "100", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    phases = analyse(load_results(root), ladders, bootstrap=100)
    assert isinstance(phases, Phases) and phases.to_json() == written
    again = Phases.from_json(written)
    assert again == phases and again.to_json() == written


def test_the_tree_is_typed_down_to_each_figure(store):
    root, ladders = store
    phases = analyse(load_results(root), ladders, bootstrap=100)
    task = phases.ladders["olmo"].tasks["random_number"]
    assert isinstance(task, TaskLadder) and isinstance(task.seed, Seed)
    assert all(isinstance(s, Stage) for s in task.stages.values())
    liquidity = task.stages["base"].figures["liquidity"]
    assert isinstance(liquidity, Figure) and liquidity.ci[0] <= liquidity.value <= liquidity.ci[1]
    assert task.seed.found and task.seed.stage == "sft"
    assert list(task.settling) == ["sft", "dpo", "rl"]
    assert phases.cross_ladder[0].ladders == ("olmo", "tulu")


def test_every_registered_metric_reaches_phases_json_and_the_tables(store):
    """A metric is a name in the kernel's registry (analysis/bootstrap.py): nothing else names
    it, yet it appears with its interval in the dataclasses, in phases.json and in the Arrow
    tables."""
    root, ladders = store
    result = answerdist.analysis.analyse(answerdist.analysis.load(root), {n: dict(s) for n,
                                                                          s in ladders},
                              bootstrap=100)
    task = result.records.ladders["olmo"].tasks["random_number"]
    written = result.phases["ladders"]["olmo"]["tasks"]["random_number"]
    stage_columns = set(result.stages.column_names)
    for name in (*CHECKPOINT_METRICS, "nucleation"):
        assert name in task.stages["sft"].figures
        assert {name, f"{name}_ci"} <= set(written["stages"]["sft"])
        assert {name, f"{name}_lo", f"{name}_hi"} <= stage_columns
    for name in SETTLING_METRICS:
        assert name in task.settling["dpo"]
        assert {name, f"{name}_ci"} <= set(written["settling"]["dpo"])
        assert {name, f"{name}_lo", f"{name}_hi"} <= stage_columns
    for name in SEED_METRICS:
        assert name in task.seed.figures
        assert {name, f"{name}_ci"} <= set(written["seed"])
        assert {name, f"{name}_lo", f"{name}_hi"} <= set(result.seeds.column_names)
