"""The Python API of the analysis layer: `answerdist.analysis.load` and
`answerdist.analysis.analyse`.

    import answerdist.analysis
    results = answerdist.analysis.load("results")                     # every label of the store
    phases = answerdist.analysis.analyse(results, {"olmo2": {"base": "olmo2-base", "sft":
    "olmo2-sft"}}) phases.stages.to_pandas()                              # one row per ladder, task
    and stage

The numbers are those `answerdist analyse` prints and writes to phases.json: `phases.records`
holds them as dataclasses (analysis/records.py), `phases.phases` is the phases.json dict, and
the tables lay them out in rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from answerdist.analysis.bootstrap import BOOTSTRAP, SEED_METRICS, SETTLING_METRICS
from answerdist.analysis.ladders import ladder_list
from answerdist.analysis.null import LEVEL
from answerdist.analysis.phases import (
    CHECKPOINT_METRICS,
    MIN_COVERAGE,
    TAU,
    Results,
    load_results,
    task_from_rows,
)
from answerdist.analysis.phases import analyse as _analyse
from answerdist.analysis.records import Figure, Phases
from answerdist.errors import AnalysisError

STAGE_COLUMNS = CHECKPOINT_METRICS + ("nucleation",)
SEED_COLUMNS = ("found", "verdict", "seed_prompt_id", "seed_set", "nearest_prompt_id",
                "nearest_set", "js", "median_js", "margin", "p_value", "level", "noise_floor",
                "resolvable")
_TYPES = {"distinct": pa.int64(), "found": pa.bool_(), "resolvable": pa.bool_(),
          "verdict": pa.string(), "seed_prompt_id": pa.string(), "nearest_prompt_id": pa.string(),
          "seed_set": pa.list_(pa.string()), "nearest_set": pa.list_(pa.string())}


def _row(figures, intervals):
    """Columns of one row: each figure's value, and for the names in `intervals` its
    interval's ends as <name>_lo and <name>_hi."""
    out = {}
    for name, figure in figures.items():
        out[name] = figure.value
        if name in intervals:
            out[f"{name}_lo"], out[f"{name}_hi"] = figure.ci or (None, None)
    return out


def _fields(names, intervals):
    out = []
    for name in names:
        kind = _TYPES.get(name, pa.float64())
        out.append((name, kind))
        if name in intervals:
            out += [(f"{name}_lo", pa.float64()), (f"{name}_hi", pa.float64())]
    return out


@dataclass
class PhaseResult:
    """Phase metrics of one or more ladders.

    records: the results as dataclasses (analysis/records.py); phases: the same as the
    phases.json dict (`records.to_json()`). stages: one row per (ladder, task, stage) with the
    per-checkpoint metrics, the settling metrics (null before the seed stage), each followed
    by its 95% interval's ends `<metric>_lo` and `<metric>_hi`, the phase and its support.
    seeds: one row per (ladder, task), with the seed test's p_value. cross_ladder: one row per
    (ladder pair, task)."""

    phases: dict
    stages: pa.Table
    seeds: pa.Table
    cross_ladder: pa.Table
    records: Phases | None = None

    def to_pandas(self) -> dict:
        """{"stages", "seeds", "cross_ladder"} as pandas DataFrames (needs pandas)."""
        try:
            import pandas  # noqa: F401
        except ModuleNotFoundError:
            raise ModuleNotFoundError("PhaseResult.to_pandas needs pandas: pip install "
                                      "'answerdist[pandas]' (or use the Arrow tables)") from None
        return {name: getattr(self, name).to_pandas()
                for name in ("stages", "seeds", "cross_ladder")}


FROM_TABLE_COLUMNS = ("label", "task", "prompt_id", "answer", "prob")


def from_table(table) -> Results:
    """Distributions made elsewhere (sampled frequencies, another engine), as `load` returns
    them: an Arrow table or pandas DataFrame with one row per (label, task, prompt, answer)
    and at least the columns label, task, prompt_id, answer, prob (optionally coverage,
    default 1, prompt_text, and target: the task's target probability of the row's answer,
    for tv_target and kl_target). Each prompt's prob must be a distribution over the same
    answers, in the same order, as every other prompt of its task and label."""
    if not isinstance(table, pa.Table):
        try:
            table = pa.Table.from_pandas(table, preserve_index=False)
        except (TypeError, ValueError, AttributeError) as err:
            raise AnalysisError(f"from_table: expected an Arrow table or a pandas DataFrame, "
                                f"got {type(table).__name__} ({err})") from None
    missing = [c for c in FROM_TABLE_COLUMNS if c not in table.column_names]
    if missing:
        raise AnalysisError(f"from_table: missing column(s) {', '.join(missing)}; give at least "
                            f"{', '.join(FROM_TABLE_COLUMNS)}")
    if table.num_rows == 0:
        raise AnalysisError("from_table: the table has no rows")
    _check_column_types(table)
    cols = table.to_pydict()
    n = table.num_rows
    cols.setdefault("coverage", [1.0] * n)
    cols.setdefault("prompt_text", [""] * n)
    groups: dict = {}
    for r in range(n):
        key = (str(cols["label"][r]), str(cols["task"][r]))
        groups.setdefault(key, {}).setdefault(str(cols["prompt_id"][r]), []).append(r)
    data: dict = {}
    for (label, task), rows_of in groups.items():
        td = data.setdefault(label, {})[task] = task_from_rows(label, task, cols, rows_of)
        if "target" in cols:
            td.target = _task_target(label, task, cols["target"], rows_of)
    return Results(None, data)


NUMBER_COLUMNS = ("prob", "coverage", "target")


def _check_column_types(table: pa.Table) -> None:
    """Numbers where numbers belong (not bools, strings or lists), plain values elsewhere."""
    for name in table.column_names:
        kind = table.schema.field(name).type
        if name in NUMBER_COLUMNS:
            ok = pa.types.is_floating(kind) or pa.types.is_integer(kind)
            want = "numbers (floats or integers, not bools or strings)"
        elif name in FROM_TABLE_COLUMNS or name == "prompt_text":
            ok = (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                  or pa.types.is_integer(kind) or pa.types.is_dictionary(kind))
            want = "strings (or integers)"
        else:
            continue  # other columns are not read
        if not ok:
            raise AnalysisError(f"from_table: column {name} holds {kind}; give {want}")


def _task_target(label, task, column, rows_of) -> np.ndarray:
    """The target of one (label, task): one distribution over the answers, the same for every
    prompt (a task has one target; a stage's own is compared with the others' by `analyse`)."""
    (first, first_rows), *others = rows_of.items()
    target = np.array([column[r] for r in first_rows], float)
    if not np.all(np.isfinite(target)) or (target < 0).any() or abs(target.sum() - 1) > 1e-6:
        raise AnalysisError(f"from_table: {label}/{task}: the target column is not a "
                            f"distribution over the answers (sum {target.sum()!r})")
    for pid, rows in others:
        if not np.array_equal(np.array([column[r] for r in rows], float), target):
            raise AnalysisError(f"from_table: {label}/{task}: prompt {pid} gives another target "
                                f"than prompt {first}; give one target per task and label")
    return target


def load(results_dir, labels=None) -> Results:
    """Every task of every label (or of `labels`) of a results store, validated."""
    return load_results(results_dir, labels)


def analyse(results: Results, ladders, tau: float = TAU, level: float = LEVEL,
            bootstrap: int = BOOTSTRAP, min_coverage: float = MIN_COVERAGE) -> PhaseResult:
    """Phase metrics of ladders over loaded results.

    ladders: {name: {stage: label, ...}} (stages in ladder order, the base first), or a list of
    "[name:]base=LABEL,sft=LABEL,..." strings as `--ladder` takes them. A stage whose coverage
    is below `min_coverage` does not answer in the scored format: its phase is "no_answer"."""
    phases = _analyse(results, ladder_list(ladders), tau, level, bootstrap, min_coverage)
    return PhaseResult(phases.to_json(), _stage_table(phases), _seed_table(phases),
                       _cross_table(phases), phases)


def _stage_table(phases: Phases) -> pa.Table:
    rows = []
    for ladder, body in phases.ladders.items():
        for task, t in body.tasks.items():
            for stage, m in t.stages.items():
                settling = t.settling.get(stage) or {
                    name: Figure(None) for name in SETTLING_METRICS}
                rows.append({"ladder": ladder, "task": task, "stage": stage, "label": m.label,
                             **_row(m.figures, STAGE_COLUMNS),
                             **_row(settling, SETTLING_METRICS),
                             "phase": m.phase, "phase_support": m.phase_support})
    schema = pa.schema([("ladder", pa.string()), ("task", pa.string()), ("stage", pa.string()),
                        ("label", pa.string()), *_fields(STAGE_COLUMNS, STAGE_COLUMNS),
                        *_fields(SETTLING_METRICS, SETTLING_METRICS), ("phase", pa.string()),
                        ("phase_support", pa.float64())])
    return pa.Table.from_pylist(rows, schema=schema)


def _seed_table(phases: Phases) -> pa.Table:
    rows = []
    for ladder, body in phases.ladders.items():
        for task, t in body.tasks.items():
            s = t.seed
            rows.append({"ladder": ladder, "task": task, "seed_stage": s.stage, "found": s.found,
                         "verdict": s.verdict, "seed_prompt_id": s.seed_prompt_id,
                         "seed_set": list(s.seed_set), "nearest_prompt_id": s.nearest_prompt_id,
                         "nearest_set": list(s.nearest_set),
                         **_row(s.figures, SEED_METRICS), "p_value": s.p_value,
                         "level": s.level, "noise_floor": s.noise_floor,
                         "resolvable": s.resolvable})
    schema = pa.schema([("ladder", pa.string()), ("task", pa.string()), ("seed_stage", pa.string()),
                        *_fields(SEED_COLUMNS, SEED_METRICS)])
    return pa.Table.from_pylist(rows, schema=schema)


def _cross_table(phases: Phases) -> pa.Table:
    rows = [{"ladder_a": pair.ladders[0], "ladder_b": pair.ladders[1], "task": task,
             "seed_prompt_id_a": c.seed_prompt_ids[0], "seed_prompt_id_b": c.seed_prompt_ids[1],
             "seed_set_a": list(c.seed_sets[0]), "seed_set_b": list(c.seed_sets[1]),
             "js_between_seeds": c.js_between_seeds, "same_prompt": c.same_prompt,
             "compatible": c.compatible, "p_value": c.p_value}
            for pair in phases.cross_ladder for task, c in pair.tasks.items()]
    schema = pa.schema([("ladder_a", pa.string()), ("ladder_b", pa.string()), ("task", pa.string()),
                        ("seed_prompt_id_a", pa.string()), ("seed_prompt_id_b", pa.string()),
                        ("seed_set_a", pa.list_(pa.string())),
                        ("seed_set_b", pa.list_(pa.string())),
                        ("js_between_seeds", pa.float64()), ("same_prompt", pa.bool_()),
                        ("compatible", pa.bool_()), ("p_value", pa.float64())])
    return pa.Table.from_pylist(rows, schema=schema)
