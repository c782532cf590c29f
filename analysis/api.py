"""The Python API of the analysis layer: `analysis.load` and `analysis.analyse`.

    import analysis
    results = analysis.load("results")                     # every label of the store
    phases = analysis.analyse(results, {"olmo2": {"base": "olmo2-base", "sft": "olmo2-sft"}})
    phases.stages.to_pandas()                              # one row per ladder, task and stage

The numbers are those `python -m analysis` prints and writes to phases.json (`phases.phases`
is that very dict); the tables only lay them out in rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from analysis.bootstrap import BOOTSTRAP
from analysis.cli import ladder_list
from analysis.null import LEVEL
from analysis.phases import TAU, Results, load_results
from analysis.phases import analyse as _analyse

STAGE_COLUMNS = ("entropy_bits", "entropy_norm", "effective_support", "consensus_support",
                 "liquidity", "distinct", "dispersion", "coverage", "nucleation")
SETTLING_COLUMNS = ("retention", "drift", "spearman")
SEED_COLUMNS = ("found", "seed_prompt_id", "nearest_prompt_id", "js", "median_js", "margin")


@dataclass
class PhaseResult:
    """Phase metrics of one or more ladders.

    phases: the phases.json dict. stages: one row per (ladder, task, stage) with the
    per-checkpoint metrics, the settling metrics (null before the seed stage) and the phase.
    seeds: one row per (ladder, task). cross_ladder: one row per (ladder pair, task)."""

    phases: dict
    stages: pa.Table
    seeds: pa.Table
    cross_ladder: pa.Table

    def to_pandas(self) -> dict:
        """{"stages", "seeds", "cross_ladder"} as pandas DataFrames (needs pandas)."""
        try:
            import pandas  # noqa: F401
        except ModuleNotFoundError:
            raise ModuleNotFoundError("PhaseResult.to_pandas needs pandas: pip install "
                                      "'answerdist[pandas]' (or use the Arrow tables)") from None
        return {name: getattr(self, name).to_pandas()
                for name in ("stages", "seeds", "cross_ladder")}


def load(results_dir, labels=None) -> Results:
    """Every task of every label (or of `labels`) of a results store, validated."""
    return load_results(results_dir, labels)


def analyse(results: Results, ladders, tau: float = TAU, level: float = LEVEL,
            bootstrap: int = BOOTSTRAP) -> PhaseResult:
    """Phase metrics of ladders over loaded results.

    ladders: {name: {stage: label, ...}} (stages in ladder order, the base first), or a list of
    "[name:]base=LABEL,sft=LABEL,..." strings as `--ladder` takes them."""
    phases = _analyse(results, ladder_list(ladders), tau, level, bootstrap)
    return PhaseResult(phases, _stage_table(phases), _seed_table(phases), _cross_table(phases))


def _stage_table(phases: dict) -> pa.Table:
    rows = []
    for ladder, body in phases["ladders"].items():
        for task, t in body["tasks"].items():
            for stage, m in t["stages"].items():
                settling = t["settling"].get(stage, {})
                rows.append({"ladder": ladder, "task": task, "stage": stage, "label": m["label"],
                             **{k: m[k] for k in STAGE_COLUMNS},
                             **{k: settling.get(k) for k in SETTLING_COLUMNS}, "phase": m["phase"]})
    numbers = [(k, pa.int64() if k == "distinct" else pa.float64())
               for k in STAGE_COLUMNS + SETTLING_COLUMNS]
    schema = pa.schema([("ladder", pa.string()), ("task", pa.string()), ("stage", pa.string()),
                        ("label", pa.string()), *numbers, ("phase", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


def _seed_table(phases: dict) -> pa.Table:
    rows = [{"ladder": ladder, "task": task, "seed_stage": t["seed"]["stage"],
             **{k: t["seed"][k] for k in SEED_COLUMNS}}
            for ladder, body in phases["ladders"].items() for task, t in body["tasks"].items()]
    schema = pa.schema([("ladder", pa.string()), ("task", pa.string()), ("seed_stage", pa.string()),
                        ("found", pa.bool_()), ("seed_prompt_id", pa.string()),
                        ("nearest_prompt_id", pa.string()), ("js", pa.float64()),
                        ("median_js", pa.float64()), ("margin", pa.float64())])
    return pa.Table.from_pylist(rows, schema=schema)


def _cross_table(phases: dict) -> pa.Table:
    rows = [{"ladder_a": pair["ladders"][0], "ladder_b": pair["ladders"][1], "task": task,
             "seed_prompt_id_a": c["seed_prompt_ids"][0],
             "seed_prompt_id_b": c["seed_prompt_ids"][1],
             "js_between_seeds": c["js_between_seeds"], "same_prompt": c["same_prompt"]}
            for pair in phases["cross_ladder"] for task, c in pair["tasks"].items()]
    schema = pa.schema([("ladder_a", pa.string()), ("ladder_b", pa.string()), ("task", pa.string()),
                        ("seed_prompt_id_a", pa.string()), ("seed_prompt_id_b", pa.string()),
                        ("js_between_seeds", pa.float64()), ("same_prompt", pa.bool_())])
    return pa.Table.from_pylist(rows, schema=schema)
