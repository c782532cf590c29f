"""Crystallization as a trajectory: order parameters along many checkpoints, and where they jump.

A series is an ordered list of labels, each with a position (training step, tokens seen, any
number) and optionally its stage (base, sft, dpo, rl). For every task, at every point:

- the order parameters (ORDER_PARAMETERS): liquidity, seed_overlap = 1 - JS(consensus, seed),
  entropy_norm, effective_support, retention (consensus mass inside the seed's 90% support)
  and coverage, each with its bootstrap interval over phrasings (analysis/bootstrap.py, the
  same prompts drawn at every point);
- beside each, its susceptibility: the standard deviation across the prompts of the
  per-prompt value of that parameter (a prompt's mean JS to the other prompts, its own
  1 - JS to the seed, entropy, perplexity, retained mass, coverage): how unevenly the
  phrasings respond at that point.

The seed is the base prompt (of the first point) nearest to the consensus of the seed point:
the last point of stage "sft" when stages are given, else the last point of the series.

Transitions (`locate`): for each series, task and order parameter, a step a + b [x > c] is
fitted by least squares over every split between consecutive points, and compared by AIC with
a straight line a + b x. Only points that answer (coverage at least min_coverage) enter the
fits of the parameters other than coverage: below it, the answer distribution is what is left
after renormalising a model that does not yet answer in this format (an SFT checkpoint a few
steps in, scored in chat mode), and it would place a transition at the format switch. The
position is the midpoint of the best split, its interval the central 95% of the positions
located in bootstrap resamples of the prompts, never narrower than the two checkpoints around
it (the resolution limit); `delta_aic` = AIC(line) - AIC(step) (Gaussian residuals, 2 and 3
parameters): below 0 a line fits better and no transition is located; the transition is
`sharp` when delta_aic >= SHARP_AIC, a crossover otherwise. docs/metrics.md ("Trajectories").
"""

from __future__ import annotations

import fnmatch
import json
import math
import numbers
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from answerdist.analysis.bootstrap import (
    BOOTSTRAP,
    COVERAGE,
    EFFECTIVE_SUPPORT,
    ENTROPY_NORM,
    LIQUIDITY,
    RETENTION,
    SEED_JS,
    check_resamples,
    interval,
    resample_counts,
)
from answerdist.analysis.checks import number_in, short
from answerdist.analysis.metrics import entropy, js_divergence, mass_within, pairwise_js, support
from answerdist.analysis.null import draw_rng
from answerdist.analysis.phases import (
    SUPPORT_MASS,
    TAU,
    Results,
    TaskData,
    check_results,
    consistent,
    ladder_values,
    weights,
)
from answerdist.engine.results.schema import step_in_name
from answerdist.errors import AnalysisError
from answerdist.files import read_user_text

ORDER_PARAMETERS = ("liquidity", "seed_overlap", "entropy_norm", "effective_support",
                    "retention", "coverage")
_COLUMN = {"liquidity": LIQUIDITY, "entropy_norm": ENTROPY_NORM,
           "effective_support": EFFECTIVE_SUPPORT, "retention": RETENTION, "coverage": COVERAGE}
# A point whose answers hold less mass than this does not answer yet, for the fits: it enters
# no fit but coverage's (`--min-coverage` of `answerdist trajectory`, min_coverage=). Higher
# than the phase analysis's no-answer threshold (phases.MIN_COVERAGE): an SFT checkpoint a few
# steps in, half in the format, would place the fits' transitions at the format switch.
MIN_COVERAGE = 0.5
SHARP_AIC = 10.0  # "very strong" evidence for a step over a line (Burnham and Anderson)
MIN_POINTS = 3
FLAT = 1e-9  # an order parameter moving less than this along a series has no transition


@dataclass
class TrajectoryResult:
    """points: one row per (series, task, label); transitions: one row per (series, task,
    order parameter). Columns in docs/metrics.md ("Trajectories")."""

    points: pa.Table
    transitions: pa.Table

    def to_pandas(self) -> dict:
        return {"points": self.points.to_pandas(), "transitions": self.transitions.to_pandas()}


# ---------------------------------------------------------------------------- series specs


def position_of(label: str) -> float:
    """The training step a label names: `step1000`, or OLMo's `stepNNN-tokensNNNB`."""
    step = step_in_name(label)
    if step is None:
        raise AnalysisError(f"label '{label}': no position in its name (stepNNN); give it as "
                            f"{label}@POSITION")
    return float(step)


def parse_series(spec: str, labels) -> tuple[str, list[tuple[str, float, str | None]]]:
    """'NAME=SPEC' -> (name, [(label, position, stage), ...]) ordered by position. SPEC is a
    label glob or a comma list of labels, each optionally `label@position`."""
    name, sep, body = spec.partition("=")
    if not sep or not name or not body:
        raise AnalysisError(f"--series {spec!r}: expected NAME=SPEC, e.g. "
                            "olmo2=stage1-step*  or  run=base@0,sft-step100@100,sft-step200@200")
    if body.endswith(".json") and "," not in body:
        return name, read_series_file(body)
    points = []
    for part in body.split(","):
        label, at, position = part.strip().partition("@")
        matched = sorted(fnmatch.filter(labels, label)) if any(c in label for c in "*?[") \
            else [label]
        if not matched:
            raise AnalysisError(f"--series {spec!r}: no label matches {label!r}")
        for one in matched:
            if at:
                try:
                    where = float(position)
                except ValueError:
                    raise AnalysisError(f"--series {spec!r}: position {position!r} of "
                                        f"{one!r} is not a number") from None
            else:
                where = position_of(one)
            points.append((one, where, None))
    return name, sorted(points, key=lambda p: p[1])


def read_series_file(path) -> list[tuple[str, float, str | None]]:
    """The points of a series file as answerdist.engine.run.sweep writes it: {"points": [{"label",
    "position", "stage"}, ...]} (stage may be null)."""
    try:
        body = json.loads(read_user_text(path))
        points = [(str(p["label"]), float(p["position"]), p.get("stage")) for p in body["points"]]
        if any(stage is not None and not isinstance(stage, str) for *_, stage in points):
            raise TypeError("a stage is neither a string nor null")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AnalysisError(f"series file {path}: {err.__class__.__name__}: {err}; give the "
                            "file answerdist.engine.run.sweep wrote ({\"points\": [{\"label\", "
                            "\"position\", \"stage\"}]})") from None
    return sorted(points, key=lambda p: p[1])


def check_series(name: str, points) -> None:
    """At least MIN_POINTS points, positions strictly increasing, each label once."""
    if len(points) < MIN_POINTS:
        raise AnalysisError(f"series {name}: {len(points)} point(s); locating a transition "
                            f"needs at least {MIN_POINTS}")
    positions = [p[1] for p in points]
    bad = next((x for x in positions if not isinstance(x, numbers.Real) or isinstance(x, bool)
                or not math.isfinite(x)), None)
    if bad is not None:
        raise AnalysisError(f"series {name}: position {bad!r} is not a finite number; give "
                            "each point a training step, tokens seen or any finite number")
    if any(b <= a for a, b in zip(positions, positions[1:], strict=False)):
        raise AnalysisError(f"series {name}: positions must increase along the series, got "
                            f"{positions[:8]}{' ...' if len(positions) > 8 else ''}")
    labels = [p[0] for p in points]
    if len(set(labels)) != len(labels):
        raise AnalysisError(f"series {name}: a label appears twice")


# ---------------------------------------------------------------------- order parameters


def _seed_point(points) -> int:
    sft = [i for i, p in enumerate(points) if len(p) > 2 and p[2] == "sft"]
    return sft[-1] if sft else len(points) - 1


def _susceptibility(P, coverage, seed) -> dict:
    """Per-prompt values of each order parameter, their standard deviation across prompts."""
    n, k = P.shape
    h = entropy(P)
    per_prompt = {
        "liquidity": pairwise_js(P).sum(axis=1) / max(n - 1, 1),
        "seed_overlap": 1.0 - js_divergence(P, np.broadcast_to(seed, P.shape)),
        "entropy_norm": h / math.log2(k) if k > 1 else np.zeros(n),
        "effective_support": np.exp2(h),
        "retention": mass_within(P, np.broadcast_to(support(seed, SUPPORT_MASS), P.shape)),
        "coverage": np.asarray(coverage, np.float64),
    }
    return {name: float(np.std(v, ddof=1)) if n > 1 else 0.0 for name, v in per_prompt.items()}


def _task_points(name, task, points, data, bootstrap):
    """The order parameters of `task` at each point of series `name` ([TaskData] checked by
    `consistent`), at the point estimate and over resampled prompts."""
    ids = data[0].prompt_ids
    data = [td if td.prompt_ids == ids else _reorder(td, ids) for td in data]
    seed_at = _seed_point(points)
    consensus = data[seed_at].P.mean(axis=0)
    consensus /= consensus.sum()
    seed_index = int(np.argmin(js_divergence(data[0].P,
                                             np.broadcast_to(consensus, data[0].P.shape))))
    seed = data[0].P[seed_index]
    arrays = [(td.P, td.coverage) for td in data]
    n = len(ids)
    point, _ = ladder_values(arrays, seed_at, TAU, weights([np.ones((1, n))] * len(data)),
                             seed_index, settle_from=0, everything=False)
    counts = resample_counts(n, bootstrap, draw_rng("trajectory", name, task))
    resampled, _ = ladder_values(arrays, seed_at, TAU, weights([counts] * len(data)),
                                 seed_index, settle_from=0, everything=False)
    return data, seed, point[0], resampled


def _reorder(td, ids):
    rows = [td.prompt_ids.index(pid) for pid in ids]
    return TaskData(td.label, td.task, list(ids), td.answers, td.P[rows], td.coverage[rows])


def _parameter(values, name):
    """[..., S] values of an order parameter from kernel output [..., S, metrics]."""
    if name == "seed_overlap":
        return 1.0 - values[..., SEED_JS]
    return values[..., _COLUMN[name]]


# ---------------------------------------------------------------------------- transitions


def _aic(rss, n, k):
    return n * math.log(max(rss, 1e-300) / n + 1e-12) + 2 * k


def step_splits(Y):
    """[...] best split (1..n-1) of a step a + b [i >= split] fitted to each row of Y [..., n]
    by least squares, and its residual sum of squares; from cumulative sums, in O(n) a row."""
    Y = np.asarray(Y, np.float64)
    n = Y.shape[-1]
    total, square = Y.sum(axis=-1, keepdims=True), (Y**2).sum(axis=-1)
    left = np.cumsum(Y, axis=-1)[..., :-1]
    sizes = np.arange(1, n)
    rss = square[..., None] - left**2 / sizes - (total - left) ** 2 / (n - sizes)
    split = np.argmin(rss, axis=-1)
    return split + 1, np.maximum(np.take_along_axis(rss, split[..., None], -1)[..., 0], 0.0)


def line_rss(x, y):
    """Residual sum of squares of the least-squares line through (x, y); x is standardised
    first (after scaling by its largest magnitude, so that its variance cannot overflow), so
    that positions such as 1e15 tokens, or 1e200, fit as well as steps."""
    x = x / np.abs(x).max()
    z = (x - x.mean()) / x.std()
    slope, intercept = np.polyfit(z, y, 1)
    return float(((y - (slope * z + intercept)) ** 2).sum())


def locate(positions, y, resampled, prompts):
    """(position, [lo, hi], sharp, delta_aic) of the transition in y along positions, the
    interval from its resamples [B, points] over `prompts` phrasings, widened to the two
    checkpoints around the position (nothing between them was measured: the resolution
    limit). No position when y is flat, has fewer than MIN_POINTS points, or a straight line
    fits it at least as well as a step (delta_aic < 0: nothing to locate)."""
    x = np.asarray(positions, np.float64)
    if len(y) < MIN_POINTS or np.ptp(y) <= FLAT:
        return None, None, False, 0.0  # too few points answer, or the parameter does not move
    split, rss = step_splits(y)
    midpoints = 0.5 * (x[:-1] + x[1:])
    delta = _aic(line_rss(x, y), len(y), 2) - _aic(float(rss), len(y), 3)
    if delta < 0:
        return None, None, False, float(delta)  # a line fits better: a drift, not a jump
    finite = resampled[np.all(np.isfinite(resampled), axis=1)]
    located = midpoints[step_splits(finite)[0] - 1] if len(finite) else np.empty(0)
    at = float(midpoints[int(split) - 1])
    ci = interval(located, at, prompts) if len(located) else None
    before, after = float(x[int(split) - 1]), float(x[int(split)])
    ci = [before, after] if ci is None else [min(ci[0], before), max(ci[1], after)]
    return at, ci, bool(delta >= SHARP_AIC), float(delta)


# -------------------------------------------------------------------------------- public


SERIES_SHAPE = "give {name: [(label, position), ...]} (or (label, position, stage) points)"


def trajectory(results: Results, series: dict, bootstrap: int = BOOTSTRAP,
               min_coverage: float = MIN_COVERAGE) -> TrajectoryResult:
    """Order parameters and located transitions of `series` ({name: [(label, position[,
    stage]), ...]}) over loaded results (`answerdist.analysis.load` or
    `answerdist.analysis.from_table`). A point whose coverage is below `min_coverage` does not
    answer (its `answering` is false) and enters no fit but coverage's."""
    check_resamples(bootstrap)
    number_in(min_coverage, "min_coverage", 0.0, 1.0, default=MIN_COVERAGE)
    check_results(results)
    if not isinstance(series, dict) or not series:
        raise AnalysisError(f"series {short(series)}: {SERIES_SHAPE}")
    point_rows, transition_rows = [], []
    checked = {}  # name -> task -> [TaskData]
    for name, points in series.items():
        if not isinstance(name, str) or not isinstance(points, list | tuple) or not all(
                isinstance(p, list | tuple) and len(p) in (2, 3) and isinstance(p[0], str)
                and (len(p) == 2 or p[2] is None or isinstance(p[2], str)) for p in points):
            raise AnalysisError(f"series {short(name)}: points {short(points)}: {SERIES_SHAPE}")
        points = [tuple(p) for p in points]
        check_series(name, points)
        for label, *_ in points:
            if label not in results.data:
                raise AnalysisError(f"series {name}: label '{label}' is not in the results")
        tasks = sorted(set.intersection(*(set(results.data[p[0]]) for p in points)))
        if not tasks:
            raise AnalysisError(f"series {name}: no task is present at every point")
        roles = [(f"position {float(p[1]):g}", p[0]) for p in points]
        checked[name] = {task: consistent(results, f"series {name}", task, roles)
                         for task in tasks}
    for name, points in series.items():  # every series checked before any figure is computed
        points = [tuple(p) for p in points]
        positions = [float(p[1]) for p in points]
        for task, data in checked[name].items():
            data, seed, point, resampled = _task_points(name, task, points, data, bootstrap)
            for s, (label, position, *stage) in enumerate(points):
                row = {"series": name, "task": task, "label": label, "position": float(position),
                       "stage": stage[0] if stage else None}
                chi = _susceptibility(data[s].P, data[s].coverage, seed)
                for param in ORDER_PARAMETERS:
                    value = float(_parameter(point[s], param))
                    ci = (interval(_parameter(resampled[:, s], param), value,
                                   data[s].P.shape[0]) or (None, None))
                    row.update({param: value, f"{param}_lo": ci[0], f"{param}_hi": ci[1],
                                f"{param}_susceptibility": chi[param]})
                point_rows.append(row)
            answering = point[:, COVERAGE] >= min_coverage
            for row, answers in zip(point_rows[-len(points):], answering, strict=True):
                row["answering"] = bool(answers)
            for param in ORDER_PARAMETERS:
                keep = slice(None) if param == "coverage" else answering
                y = _parameter(point[keep], param)
                at, ci, sharp, delta = locate(np.asarray(positions)[keep], y,
                                              _parameter(resampled[:, keep], param),
                                              data[0].P.shape[0])
                transition_rows.append({"series": name, "task": task, "metric": param,
                                        "position": at, "position_lo": ci[0] if ci else None,
                                        "position_hi": ci[1] if ci else None, "sharp": sharp,
                                        "delta_aic": delta})
    return TrajectoryResult(pa.Table.from_pylist(point_rows, schema=POINTS_SCHEMA),
                            pa.Table.from_pylist(transition_rows, schema=TRANSITIONS_SCHEMA))


POINTS_SCHEMA = pa.schema(
    [("series", pa.string()), ("task", pa.string()), ("label", pa.string()),
     ("position", pa.float64()), ("stage", pa.string())]
    + [(f"{p}{suffix}", pa.float64()) for p in ORDER_PARAMETERS
       for suffix in ("", "_lo", "_hi", "_susceptibility")]
    + [("answering", pa.bool_())])
TRANSITIONS_SCHEMA = pa.schema(
    [("series", pa.string()), ("task", pa.string()), ("metric", pa.string()),
     ("position", pa.float64()), ("position_lo", pa.float64()), ("position_hi", pa.float64()),
     ("sharp", pa.bool_()), ("delta_aic", pa.float64())])
