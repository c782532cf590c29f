"""Phase metrics: from exact answer distributions to the crystallization picture.

Formulas and thresholds are documented in docs/metrics.md. In short, for one checkpoint and
task with N prompt variants P_1..P_N over K answers (all in bits):

- entropy_bits = mean_i H(P_i); entropy_norm = entropy_bits / log2 K
- effective_support = 2 ** entropy_bits (answers a prompt spreads over, geometric mean over
  prompts); consensus_support = 2 ** H(C) (answers the checkpoint uses over all prompts)
- liquidity    = mean over pairs i != j of JS(P_i, P_j)
- distinct     = number of complete-linkage clusters of prompts at JS <= tau
- consensus    = C = mean_i P_i;  dispersion = mean_i JS(P_i, C);  coverage = mean coverage

Along a ladder (ordered stages; the first is the base; the seed stage is `sft` if present,
else the second stage):

- nucleation(stage) = 1 - liquidity(stage) / liquidity(base)  (null if the base has < 1e-6)
- seed: the base prompt s minimising JS(P_base_s, C_seedstage), reported with the median JS
  over all base prompts and margin = median - JS; found iff the null test of analysis/null.py
  gives p < level, margin >= tau and JS <= SEED_RATIO * median, else "no seed", or
  "unresolved" when the prompts cannot resolve a seed; seed_set, the base prompts compatible
  with being it at `level` (analysis/seedset.py); seed_prompt_id names it only when that set
  holds one prompt
- settling, for the seed stage and every later stage: retention = mass of C_stage inside
  support(P_base_s, 0.9); drift = JS(C_stage, C_seedstage); spearman = rank correlation of
  C_stage with P_base_s
- phase label per stage: "liquid", "nucleated", "settled" or "unclear" (see `_phase`), and
  phase_support, the share of bootstrap resamples giving the same label
- every figure computed by one kernel (analysis/bootstrap.py), for the point estimate and for
  each resample of the prompts: `<metric>_ci` is its 95% interval

Public API (computation; the CLI and its text tables are in answerdist/cli/analyse.py, the report
in analysis/report.py, reading the results store in answerdist/engine/results/):
- ``load_results(results_dir, labels)`` -> Results (label -> task -> TaskData)
- ``task_metrics(P, coverage=None, tau=0.05)`` -> dict of the per-checkpoint metrics
- ``ladder_metrics(stages, tau=0.05, level=0.01, bootstrap=1000)`` -> TaskLadder for one task
  along one ladder, where stages is an ordered {stage name: TaskData}
- ``analyse(results, ladders, tau=0.05, level=0.01, bootstrap=1000)`` -> Phases, whose
  ``to_json()`` is phases.json (the dataclasses are in analysis/records.py)
- ``phase_summary(phases)`` -> {ladder: {task: {"seed_prompt_id": id or None,
  "phases": {stage: label}}}}, from a Phases result (what a demo checks)
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from answerdist.analysis.bootstrap import (
    BOOTSTRAP,
    CONFIDENCE,
    COVERAGE,
    DISTINCT_K,
    LIQUIDITY,
    NUCLEATION,
    RETENTION,
    SEED_METRICS,
    SETTLING_METRICS,
    STAGE_METRICS,
    _spearman,
    check_resamples,
    interval,
    resample_counts,
    resampled_ladder,
    stack,
)
from answerdist.analysis.checks import number_in, path_argument, text_list
from answerdist.analysis.metrics import (
    complete_linkage,
    js_divergence,
)
from answerdist.analysis.null import LEVEL, draw_rng, seed_test
from answerdist.analysis.records import (
    Figure,
    Ladder,
    LadderPair,
    Phases,
    Seed,
    SeedMatch,
    Stage,
    TaskLadder,
)
from answerdist.analysis.seedset import SET_RESAMPLES, seed_set
from answerdist.engine.results.schema import Col
from answerdist.engine.results.store import ResultsStore, read_results
from answerdist.errors import AnalysisError

TAU = 0.05  # bits: prompts closer than this (complete linkage) count as one distribution
LIQUID_MIN = 0.1  # bits of liquidity from which a stage counts as liquid
NUCLEATION_MIN = 0.5  # liquidity must have fallen by at least half from the base
SEED_RATIO = 0.5  # the seed must be at least twice as near as the median base prompt
SUPPORT_MASS = 0.9  # the seed's support: its smallest set of answers holding 90% of its mass
RETENTION_MIN = 0.8  # a settled stage keeps at least 80% of its mass inside that support
# Below this base liquidity (bits) the ratio in `nucleation` is noise over noise: null instead.
BASE_LIQUIDITY_MIN = 1e-6
PHASES = ("liquid", "nucleated", "settled", "unclear", "no_answer")
# A stage whose answers hold less of the model's mass than this does not answer in the scored
# format (a chat checkpoint scored in base mode holds ~0): it gets the phase "no_answer", and a
# ladder whose seed stage does not answer is refused. Low on purpose: a base model answering in
# its own words still answers (0.2 to 0.6 is common). `--min-coverage` (min_coverage=) sets it.
MIN_COVERAGE = 0.1
# The metrics of one checkpoint (the rest of STAGE_METRICS are measured along a ladder).
CHECKPOINT_METRICS = tuple(m for m in STAGE_METRICS
                           if m != "nucleation" and m not in SETTLING_METRICS)
REQUIRED_COLUMNS = ("prompt_id", "prompt_text", "answer", "prob", "coverage")


@dataclass
class TaskData:
    """One task at one checkpoint: N prompts x K answers."""

    label: str
    task: str
    prompt_ids: list
    answers: list
    P: np.ndarray  # [N, K] distributions, rows sum to 1
    coverage: np.ndarray  # [N]
    prompt_texts: list = field(default_factory=list)
    target: np.ndarray | None = None  # [K] the distribution the task asks for, if it gives one


@dataclass
class Results:
    # None for distributions from elsewhere (answerdist.analysis.from_table)
    results_dir: Path | None
    data: dict  # label -> task -> TaskData
    # label -> task -> what the label's manifest records of the task (its run, task_hash), when
    # the results come from the store; empty for distributions from elsewhere
    entries: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ loading


def check_results(results) -> None:
    if not isinstance(results, Results):
        raise AnalysisError(f"results: expected what answerdist.analysis.load or from_table "
                            f"returns, got {type(results).__name__}")


def load_results(results_dir, labels=None):
    """Read RESULTS_DIR/<label>/<task>.parquet for each label (all labels if None), every file
    validated by the results store (answerdist/engine/results/)."""
    root = path_argument(results_dir, "results_dir")
    if labels is not None:
        labels = text_list(labels, "labels")
    tables = read_results(root, labels)
    entries = {label: ResultsStore(root, label).manifest["tasks"] for label in tables}
    data = {}
    for label, tasks in tables.items():
        data[label] = {}
        for task, table in tasks.items():
            td = data[label][task] = task_data(table, label, task)
            target = entries[label].get(task, {}).get("target")
            if target is not None and len(target) == len(td.answers):
                td.target = np.asarray(target, np.float64)
    return Results(root, data, entries)


def task_data(table, label, task):
    """TaskData from a task's results table (one row per prompt and answer)."""
    if table.num_rows == 0:
        raise AnalysisError(f"{label}/{task}: no rows; rescore this task")
    cols = table.to_pydict()
    modes = cols[Col.mode]
    # Prompt ids are unique within a mode; only when a file mixes modes do they need prefixing.
    several_modes = len(set(modes)) > 1
    keys = [f"{m}:{p}" if several_modes else p
            for m, p in zip(modes, cols[Col.prompt_id], strict=True)]
    rows_of = {}
    for r, key in enumerate(keys):
        rows_of.setdefault(key, []).append(r)
    return task_from_rows(label, task, cols, rows_of)


def task_from_rows(label, task, cols, rows_of):
    """TaskData from columns (answer, prob, coverage, prompt_text) and the rows of each prompt,
    every prompt checked to be a distribution over the same answers."""
    path = f"{label}/{task}"
    answers = None
    P, cover, texts = [], [], []
    for pid, rows in rows_of.items():
        these = [str(cols[Col.answer][r]) for r in rows]
        if answers is None:
            answers, first = these, pid
        elif these != answers:
            raise AnalysisError(
                f"{label}/{task}: mismatched answer sets: prompt {pid} "
                f"{_difference(answers, these, first)}; rescore this task"
            )
        if len(set(these)) != len(these):
            raise AnalysisError(f"{path}: prompt {pid} lists an answer twice; rescore this task")
        P.append(_prompt_distribution([cols[Col.prob][r] for r in rows], label, task, pid))
        cover.append(_coverage(cols[Col.coverage][rows[0]], label, task, pid))
        texts.append(cols[Col.prompt_text][rows[0]])
    return TaskData(label, task, list(rows_of), answers, np.array(P), np.array(cover), texts)


def _prompt_distribution(probs, label, task, pid):
    p = np.array([math.nan if v is None else v for v in probs], dtype=np.float64)
    total = p.sum()
    if not np.all(np.isfinite(p)) or (p < 0).any() or abs(total - 1.0) > 1e-6:
        raise AnalysisError(
            f"{label}/{task} prompt {pid}: prob column is not a distribution "
            f"(sum {float(total)!r}); rescore this task"
        )
    return p / total


def _coverage(value, label, task, pid):
    if value is None or not 0.0 <= value <= 1.0 + 1e-6:
        raise AnalysisError(
            f"{label}/{task} prompt {pid}: coverage {value!r} is not in [0, 1]; rescore this task"
        )
    return float(value)


def _difference(a, b, pid_a):
    """Describe how answer list b differs from a, briefly."""
    if len(a) != len(b):
        return f"has {len(b)} answers where {pid_a} has {len(a)}"
    i = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    return f"has answer {b[i]!r} at position {i} where {pid_a} has {a[i]!r}"


# ----------------------------------------------------------------------- per checkpoint


def count_clusters(D, tau):
    """Complete-linkage clusters at threshold tau: N minus the merges at height <= tau."""
    heights = complete_linkage(np.ascontiguousarray(D, dtype=np.float64))
    return int(D.shape[0] - np.count_nonzero(heights <= tau))


def task_metrics(P, coverage=None, tau=TAU, target=None):
    """Metrics of one task at one checkpoint, over its N prompt distributions P [N, K] (and,
    for tv_target and kl_target, the task's target distribution [K])."""
    P = np.ascontiguousarray(P, dtype=np.float64)
    values, _ = ladder_values([(P, coverage)], seed_stage=1, tau=tau,
                              W=np.ones((1, 1, P.shape[0])), targets=[_target(target)])
    return _checkpoint_dict(P, values[0, 0])


def _target(target):
    return None if target is None else np.asarray(target, np.float64)


def _checkpoint_dict(P, row):
    consensus = P.mean(axis=0)
    n, k = P.shape
    return {"n_prompts": n, "n_answers": k,
            **{name: _plain(name, row[i]) for i, name in enumerate(STAGE_METRICS)
               if name in CHECKPOINT_METRICS},
            "consensus": (consensus / consensus.sum()).tolist()}


def _plain(name, value):
    """A kernel value as phases.json holds it: None where undefined, distinct an int."""
    if not math.isfinite(value):
        return None
    return int(value) if name == "distinct" else float(value)


def ladder_values(stages, seed_stage, tau, W, seed_index=0, settle_from=None,
                  everything=True, targets=None):
    """The kernel (analysis/bootstrap.py) over [(P, coverage), ...] stages and weights W;
    settling from the seed stage on, or from `settle_from` when earlier; without
    `everything`, only the figures a trajectory's order parameters need. `targets`: each
    stage's target distribution [K] or None, for tv_target and kl_target."""
    P, R, D, COV, sizes = stack(stages, targets)
    return resampled_ladder(P, R, D, COV, W, sizes, seed_stage, seed_index, tau, SUPPORT_MASS,
                            BASE_LIQUIDITY_MIN,
                            seed_stage if settle_from is None else settle_from, everything)


# --------------------------------------------------------------------------- along a ladder


def seed_stage_of(stage_names):
    """The stage whose consensus is traced back to a base prompt: `sft`, else the second."""
    names = list(stage_names)
    return "sft" if "sft" in names[1:] else names[1]


def spearman(x, y):
    """Spearman rank correlation (Pearson on average ranks); None when either is constant."""
    rho = _spearman(np.asarray(x, np.float64), np.asarray(y, np.float64))
    return None if math.isnan(rho) else float(rho)


def _seed(base, stage, tau, level=LEVEL):
    """Nearest base prompt to a stage consensus, and whether it stands out as a seed: the null
    test of analysis/null.py at `level`, and the margin rules (docs/metrics.md, "Seed")."""
    target = stage.P.mean(axis=0)
    target /= target.sum()
    js = js_divergence(base.P, np.broadcast_to(target, base.P.shape))
    i = int(np.argmin(js))
    median = float(np.median(js))
    margin = median - float(js[i])
    rng = draw_rng(base.task, base.label, stage.label)
    p, floor, resolvable = seed_test(base.P, stage.P, float(js[i]), rng, level)
    found = bool(resolvable and p < level and margin >= tau and js[i] <= SEED_RATIO * median)
    counts = resample_counts(stage.P.shape[0], SET_RESAMPLES, rng)
    nearest = [base.prompt_ids[r] for r in seed_set(base.P, stage.P, counts, level)]
    return i, Seed(
        stage="", found=found,
        verdict="found" if found else ("no seed" if resolvable else "unresolved"),
        # A seed is named only when no other base prompt is as compatible with being it.
        seed_prompt_id=base.prompt_ids[i] if found and len(nearest) == 1 else None,
        nearest_prompt_id=base.prompt_ids[i],
        seed_set=nearest if found else [], nearest_set=nearest,
        figures={"js": Figure(float(js[i])), "median_js": Figure(median),
                 "margin": Figure(margin)},
        p_value=p, level=level, noise_floor=floor, resolvable=bool(resolvable),
        distribution=base.P[i].tolist(),
    )


def _phase(position, seed_position, liquidity, nucleation, seed_found, retention,
           answers=True):
    """Phase label of a stage; the rules and thresholds are in docs/metrics.md."""
    if not answers:
        return "no_answer"  # its answers are what is left over: no phase is measured
    if liquidity >= LIQUID_MIN:
        return "liquid"  # the phrasing still selects clearly different distributions
    # Collapsed, but only a stage that lost most of a liquid base's diversity, onto a seed
    # that a base prompt already gave, counts as nucleated (or settled, later on).
    if position == 0 or nucleation is None or nucleation < NUCLEATION_MIN:
        return "unclear"
    if not seed_found or position < seed_position:
        return "unclear"
    if position == seed_position:
        return "nucleated"
    return "settled" if retention >= RETENTION_MIN else "unclear"


def ladder_metrics(stages, tau=TAU, level=LEVEL, bootstrap=BOOTSTRAP,
                   min_coverage=MIN_COVERAGE) -> TaskLadder:
    """Metrics of one task along one ladder; stages is an ordered {stage name: TaskData}.

    `level`: the p-value below which the seed test finds a seed; `bootstrap`: resamples of
    the prompts behind each figure's interval (analysis/bootstrap.py); `min_coverage`: the
    coverage below which a stage does not answer (phase "no_answer")."""
    names = list(stages)
    if len(names) < 2:
        raise AnalysisError(f"ladder {names}: needs a base and at least one later stage")
    check_resamples(bootstrap)
    seed_name = seed_stage_of(names)
    seed_pos = names.index(seed_name)
    data = _aligned([stages[name] for name in names])
    base = data[0]
    seed_index, seed = _seed(base, data[seed_pos], tau, level)
    seed.stage = seed_name
    arrays = [(td.P, td.coverage) for td in data]
    sizes = [td.P.shape[0] for td in data]
    targets = [_target(td.target) for td in data]  # each stage against its own target
    point, _ = ladder_values(arrays, seed_pos, tau, weights([np.ones((1, n)) for n in sizes]),
                             seed_index, targets=targets)
    rng = draw_rng(base.task, *(td.label for td in data))
    paired = len(set(sizes)) == 1 and all(td.prompt_ids == data[0].prompt_ids for td in data)
    if paired:  # the same phrasings drawn at every stage: ratios between stages are paired
        counts = [resample_counts(sizes[0], bootstrap, rng)] * len(data)
    else:
        counts = [resample_counts(n, bootstrap, rng) for n in sizes]
    resampled, seeds = ladder_values(arrays, seed_pos, tau, weights(counts), seed_index,
                                     targets=targets)

    def figures(s_i, metrics):
        out = {}
        for metric in metrics:
            column = STAGE_METRICS.index(metric)
            value = _plain(metric, point[0, s_i, column])
            out[metric] = Figure(value, interval(resampled[:, s_i, column], value, sizes[s_i]))
        return out

    per_stage = {}
    for s_i, name in enumerate(names):
        td = data[s_i]
        consensus = td.P.mean(axis=0)
        per_stage[name] = Stage(td.label, td.P.shape[0], td.P.shape[1],
                                figures(s_i, (*CHECKPOINT_METRICS, "nucleation")),
                                (consensus / consensus.sum()).tolist())
    seed.figures = {metric: Figure(seed.value(metric),
                                   interval(seeds[:, j], seed.value(metric), sizes[0]))
                    for j, metric in enumerate(SEED_METRICS)}
    settling = {names[s_i]: figures(s_i, SETTLING_METRICS) for s_i in range(seed_pos, len(names))}
    for pos, name in enumerate(names):
        stage = per_stage[name]
        retention = settling[name]["retention"].value if name in settling else None
        stage.phase = _phase(pos, seed_pos, stage.value("liquidity"), stage.value("nucleation"),
                             seed.found, retention, stage.value("coverage") >= min_coverage)
        stage.phase_support = _phase_support(pos, seed_pos, stage.phase, seed.found,
                                             resampled[:, pos], min_coverage)
    return TaskLadder(list(base.answers), per_stage, seed, settling)


def _aligned(data):
    """The stages with their prompts in the base's order, when they share the same prompts."""
    order = data[0].prompt_ids
    out = []
    for td in data:
        if td.prompt_ids == order or sorted(td.prompt_ids) != sorted(order):
            out.append(td)
            continue
        rows = [td.prompt_ids.index(pid) for pid in order]
        out.append(TaskData(td.label, td.task, list(order), td.answers, td.P[rows],
                            td.coverage[rows] if td.coverage is not None else None,
                            [td.prompt_texts[r] for r in rows] if td.prompt_texts else [],
                            td.target))
    return out


def weights(counts):
    """[S, B, n] prompt weights from per-stage [B, n_s] counts, padded with zero weights."""
    n = max(c.shape[1] for c in counts)
    W = np.zeros((len(counts), counts[0].shape[0], n))
    for s, c in enumerate(counts):
        W[s, :, : c.shape[1]] = c
    return W


def _phase_support(pos, seed_pos, phase, seed_found, values, min_coverage=MIN_COVERAGE):
    """Share of the resamples in which the stage gets the same phase label (the seed's verdict
    held fixed: the null test is not repeated per resample)."""
    same = 0
    for row in values:
        nucleation = None if math.isnan(row[NUCLEATION]) else row[NUCLEATION]
        retention = row[RETENTION] if pos >= seed_pos else None
        same += _phase(pos, seed_pos, row[LIQUIDITY], nucleation, seed_found, retention,
                       row[COVERAGE] >= min_coverage) == phase
    return same / len(values)


# ------------------------------------------------------------------------- whole analysis


def _common_tasks(results, name, stages):
    """Tasks present at every stage of a ladder; a warning line names the ones left out."""
    tasks = {label: set(results.data[label]) for _, label in stages}
    common = set.intersection(*tasks.values())
    if not common:
        raise AnalysisError(
            f"ladder {name}: no task is present for every label ({_listing(tasks)}); "
            "score the same tasks for each checkpoint"
        )
    warnings = []
    for label, have in tasks.items():
        if have - common:
            warnings.append(
                f"ladder {name}: task(s) {', '.join(sorted(have - common))} of label '{label}' "
                "missing elsewhere in the ladder, left out"
            )
    return sorted(common), warnings


def _listing(tasks):
    return "; ".join(f"{label}: {', '.join(sorted(t))}" for label, t in tasks.items())


def _check_one_checkpoint(results, label):
    """A label's tasks all come from one checkpoint and one set of settings (a label holds one
    run; results put together from several would be analysed as one model)."""
    runs = {task: entry["run"] for task, entry in results.entries.get(label, {}).items()
            if entry.get("run")}  # an entry without its run (written by hand) is not compared
    fingerprints = {task: run.get("fingerprint") for task, run in runs.items()}
    if len(set(fingerprints.values())) > 1:
        shown = ", ".join(f"{task} {str(fp)[:8]}" for task, fp in sorted(fingerprints.items()))
        raise AnalysisError(f"label '{label}' holds tasks of different checkpoints ({shown}); "
                            "score them again under one label, or use a label per checkpoint")
    if len({json.dumps(run, sort_keys=True) for run in runs.values()}) > 1:
        raise AnalysisError(f"label '{label}' holds tasks scored with different settings (mode, "
                            "dtype, template...); score them again under one label")


def consistent(results, where, task, points) -> list[TaskData]:
    """The one consistency check of every analysis entry point (`analyse` for each ladder,
    `trajectory` for each series), before any figure is computed. `points`: [(role, label)] in
    order, a role naming the point in messages ("stage sft", "position 1000"). Every label holds
    one checkpoint's run, and every point scored the same definition of `task` (its task_hash,
    where the store recorded it), on the same prompts, with the same answers; otherwise one
    AnalysisError line. Returns the points' TaskData, in order."""
    for _, label in points:
        _check_one_checkpoint(results, label)
    hashes = {label: results.entries.get(label, {}).get(task, {}).get("task_hash")
              for _, label in points}
    if len({h for h in hashes.values() if h is not None}) > 1:
        shown = ", ".join(f"{label} {h}" for label, h in hashes.items())
        raise AnalysisError(f"{where}, task {task}: the points scored different definitions of "
                            f"the task (task_hash {shown}); score every checkpoint with the same "
                            "task file")
    data = [results.data[label][task] for _, label in points]
    (first_role, _), first = points[0], data[0]
    for (role, label), td in zip(points[1:], data[1:], strict=True):
        if set(td.prompt_ids) != set(first.prompt_ids):
            missing = sorted(set(first.prompt_ids) ^ set(td.prompt_ids))[:3]
            raise AnalysisError(f"{where}, task {task}: {role} ('{label}') has other prompts "
                                f"than {first_role} (e.g. {', '.join(missing)}); score every "
                                "checkpoint with the same task file")
        if td.answers != first.answers:
            raise AnalysisError(
                f"mismatched answer sets: task {task}, {where}: label '{td.label}' "
                f"{_difference(first.answers, td.answers, repr(first.label))}; "
                "score every checkpoint with the same task file")
    return data


def target_mismatch(where, task, points, data) -> str | None:
    """A warning line when the points record different targets for `task` (a target is not
    part of a task's identity, so stages scored with edited task files can): each point's
    tv_target and kl_target are then measured against its own target."""
    shown = [None if td.target is None else np.round(td.target, 12).tolist() for td in data]
    if all(t == shown[0] for t in shown):
        return None
    listing = "; ".join(f"{role}: {'none' if t is None else t}"
                        for (role, _), t in zip(points, shown, strict=True))
    return (f"{where}, task {task}: the points record different targets ({listing}); each is "
            "measured against its own")


def check_settings(tau, level, bootstrap, spelling="", min_coverage=MIN_COVERAGE) -> None:
    """The analysis's settings; `spelling` "--" names them as the CLI's flags."""
    number_in(tau, f"{spelling}tau", 0.0, 1.0, default=TAU)
    number_in(level, f"{spelling}level", 0.0, 1.0, open_low=True, open_high=True, default=LEVEL)
    check_resamples(bootstrap, f"{spelling}bootstrap")
    number_in(min_coverage, f"{spelling}min{'-' if spelling else '_'}coverage", 0.0, 1.0,
              default=MIN_COVERAGE)


def analyse(results, ladders, tau=TAU, level=LEVEL, bootstrap=BOOTSTRAP,
            min_coverage=MIN_COVERAGE) -> Phases:
    """ladders: [(name, [(stage, label), ...]), ...] -> Phases (`.to_json()`: phases.json)."""
    check_settings(tau, level, bootstrap, min_coverage=min_coverage)
    check_results(results)
    out = Phases(tau, level, bootstrap, CONFIDENCE, {
        "liquid_min": LIQUID_MIN,
        "nucleation_min": NUCLEATION_MIN,
        "seed_ratio": SEED_RATIO,
        "support_mass": SUPPORT_MASS,
        "retention_min": RETENTION_MIN,
        "base_liquidity_min": BASE_LIQUIDITY_MIN,
        "distinct_k": DISTINCT_K,
        "min_coverage": min_coverage,
    })
    for label in dict.fromkeys(label for _, stages in ladders for _, label in stages):
        if label not in results.data:
            known = ", ".join(sorted(results.data)[:10])
            raise AnalysisError(f"label '{label}' is not in the results (they hold: {known}); "
                                "name the labels the distributions carry")
    checked = {}  # name -> task -> {stage: TaskData}: every ladder checked before any figure
    for name, stages in ladders:
        tasks, warnings = _common_tasks(results, name, stages)
        out.warnings += warnings
        points = [(f"stage {stage}", label) for stage, label in stages]
        for task in tasks:
            data = consistent(results, f"ladder {name}", task, points)
            mismatch = target_mismatch(f"ladder {name}", task, points, data)
            out.warnings += [mismatch] if mismatch else []
            checked.setdefault(name, {})[task] = dict(zip((stage for stage, _ in stages), data,
                                                          strict=True))
            check_seed_answers(name, task, stages, checked[name][task], min_coverage)
    for name, stages in ladders:
        per_task = {}
        for task, data in checked[name].items():
            for stage, td in data.items():
                if len(td.prompt_ids) < 2:
                    out.warnings.append(
                        f"ladder {name}, task {task}: stage {stage} has {len(td.prompt_ids)} "
                        "prompt; liquidity, dispersion and nucleation need at least 2 phrasings "
                        "and mean nothing here")
            for stage, td in data.items():
                cover = float(np.mean(td.coverage))
                if cover < min_coverage:
                    out.warnings.append(
                        f"ladder {name}, task {task}: stage {stage} ({td.label}) does not answer "
                        f"in this format (coverage {cover:.3f} < min coverage {min_coverage:g}): "
                        "phase no_answer, its other figures mean nothing")
            per_task[task] = ladder_metrics(data, tau, level, bootstrap, min_coverage)
        out.ladders[name] = Ladder([(s, label) for s, label in stages],
                                   seed_stage_of(s for s, _ in stages), per_task)
    out.cross_ladder = _cross_ladder(out.ladders)
    return out


def check_seed_answers(name, task, stages, data, min_coverage) -> None:
    """A ladder whose seed stage does not answer in the scored format has no seed to find:
    refused in one line."""
    seed = seed_stage_of(stage for stage, _ in stages)
    cover = float(np.mean(data[seed].coverage))
    if cover < min_coverage:
        raise AnalysisError(
            f"ladder {name}, task {task}: its seed stage {seed} ({data[seed].label}) does not "
            f"answer in this format (coverage {cover:.3f} < min coverage {min_coverage:g}); "
            "score it in the mode it answers in (answerdist score --mode chat for a chat "
            "checkpoint), or lower --min-coverage")


def _cross_ladder(ladders: dict[str, Ladder]) -> list[LadderPair]:
    """For each pair of ladders and common task: JS between their seeds, same prompt or not."""
    pairs = []
    names = list(ladders)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            tasks = {}
            for task in sorted(set(ladders[a].tasks) & set(ladders[b].tasks)):
                ta, tb = ladders[a].tasks[task], ladders[b].tasks[task]
                if ta.answers != tb.answers:
                    raise AnalysisError(
                        f"mismatched answer sets: task {task} differs between ladders {a} "
                        f"and {b}; score both with the same task file"
                    )
                sa, sb = ta.seed, tb.seed
                both = sa.found and sb.found
                tasks[task] = SeedMatch(
                    (sa.seed_prompt_id, sb.seed_prompt_id),
                    float(js_divergence(np.array(sa.distribution), sb.distribution))
                    if both else None,
                    # Named the same only when each set holds that one prompt.
                    bool(both and sa.seed_prompt_id is not None
                         and sa.seed_prompt_id == sb.seed_prompt_id),
                    # Both seeds found at the level: the larger p-value tests the two together.
                    max(sa.p_value, sb.p_value),
                    (list(sa.seed_set), list(sb.seed_set)),
                    bool(set(sa.seed_set) & set(sb.seed_set)),
                )
            pairs.append(LadderPair((a, b), tasks))
    return pairs


def phase_summary(phases: Phases):
    """{ladder: {task: {"seed_prompt_id": id or None, "phases": {stage: label}}}}."""
    return {
        ladder: {
            task: {
                "seed_prompt_id": t.seed.seed_prompt_id,
                "phases": {stage: m.phase for stage, m in t.stages.items()},
            }
            for task, t in body.tasks.items()
        }
        for ladder, body in phases.ladders.items()
    }


def seed_verdict(seed: Seed):
    """'prompt ID (p 0.0005)', 'seed in {A, B} (p 0.006)', 'no seed (p 0.4)' or
    'unresolved (...)', for tables."""
    p = f"p {seed.p_value:.2g}"
    if seed.found and seed.seed_prompt_id is None:
        return f"seed in {{{', '.join(map(str, seed.seed_set))}}} ({p})"
    if seed.found:
        return f"prompt {seed.seed_prompt_id} ({p})"
    if seed.verdict == "unresolved":
        return f"unresolved ({p}; the prompts cannot resolve a seed at level {seed.level:g})"
    return f"no seed ({p})"
