"""HTML report of the phase analysis: DIR/index.html beside PNG plots (matplotlib, Agg).

First screen: per ladder, a table of phase labels (one coloured cell per task and stage) with
the detected seed, then the phase trajectory (normalised entropy, liquidity, coverage along
the ladder, one small panel per task, each stage column tinted by its phase). Below, per
ladder and task: a prompts x answers heatmap per stage, and the seed match beside the
settling picture (stage consensus against its seed, answers ordered by seed probability
with the seed's 90% support shaded).

Large answer sets (more than LARGE_K answers, e.g. a thousand) would give heatmaps and bar
charts with one sub-pixel column per answer. There, the heatmaps and the seed bars show the
TOP_ANSWERS answers with the most consensus mass over the stages (titles say how much mass
they hold), the heatmaps gain a row of sorted rank-probability curves per stage (log-log, one
line per prompt, the consensus in black, its effective support sizes marked), and the settling
panel plots all answers by rank under the seed on log-log axes.

Entry point: ``build_report(phases, results, out_dir)``, called by ``answerdist analyse
... --report DIR``. Every file is written atomically; index.html is written last.
"""

import html
import io
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from answerdist.analysis.bootstrap import interval, resample_counts
from answerdist.analysis.metrics import support
from answerdist.analysis.null import draw_rng
from answerdist.analysis.phases import SUPPORT_MASS, seed_verdict
from answerdist.files import write_output

PHASE_COLOURS = {
    "liquid": "#6baed6",
    "nucleated": "#fd8d3c",
    "settled": "#74c476",
    "unclear": "#bdbdbd",
    "no_answer": "#ffffff",
}
# One colour per task along a trajectory: matplotlib's tab20, its dark shades first.
TASK_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
                "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]
LARGE_K = 60  # above this many answers, plots switch to top answers and rank curves
TOP_ANSWERS = 30  # answers named in heatmaps and bars of a large answer set
MOST_HEATMAPS = 8  # stages drawn as heatmaps per task; a longer ladder shows evenly spaced ones
MOST_PHASE_LABELS = 12  # a trajectory with more stages tints phases without naming each
PROB_FLOOR = 1e-6  # the bottom of log probability axes; smaller values are drawn on it
MOST_WORKERS = 8  # processes drawing a report's figures ...
FIGURES_PER_WORKER = 6  # ... one per this many figures: a process takes a second to start
SERIES = (  # (metric key, axis label with unit, colour, least top of the axis)
    ("entropy_norm", "entropy / log2 K", "#3f007d", 1.0),
    ("liquidity", "liquidity (bits)", "#d94801", 0.1),
    ("coverage", "coverage (mass)", "#525252", 1.0),
)


def _slug(*parts):
    return "_".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", str(p)) for p in parts)


def _save(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_output(path, buf.getvalue())


def _ticks(ax, names, axis="x", most=25):
    """Label every position when there are few, else about `most` evenly spaced ones."""
    idx = np.arange(0, len(names), max(1, -(-len(names) // most)))
    labels = [str(names[i]) for i in idx]
    if axis == "x":
        ax.set_xticks(idx, labels, rotation=90, fontsize=8)
    else:
        ax.set_yticks(idx, labels, fontsize=7)


def _clamp(x, low, high):
    return min(max(x, low), high)


def _draw(job):
    figure, args, path = job
    _save(figure(*args), path)


def render(jobs):
    """Draw and save each (figure function, arguments, path), in parallel processes when
    there are many: matplotlib's layout and text take most of a report's time, and figures
    are independent. Spawned, not forked: forking after Numba or BLAS started threads can
    deadlock."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    workers = min(cores, MOST_WORKERS, len(jobs) // FIGURES_PER_WORKER)
    if workers < 2:
        for job in jobs:
            _draw(job)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_draw, jobs))


# -------------------------------------------------------------------------------- figures


def trajectory_figure(ladder):
    """Small multiples: a block per task, one axis per quantity of SERIES (each with its own
    unit and range); x = stages; tint = phase, named above the block's first axis."""
    tasks = list(ladder.tasks)
    stages = [s for s, _ in ladder.stages]
    ncols = min(4, len(tasks))
    nrows = -(-len(tasks) // ncols)
    panel = _clamp(0.25 * len(stages), 3.4, 6.0)  # a long trajectory gets wider panels
    fig = Figure(figsize=(panel * ncols, 4.6 * nrows + 0.3), layout="constrained")
    blocks = fig.subfigures(nrows, ncols, squeeze=False)
    x = np.arange(len(stages))
    named = len(stages) <= MOST_PHASE_LABELS
    for block, task in zip(blocks.flat, tasks, strict=False):
        axes = block.subplots(len(SERIES), 1, sharex=True)
        block.suptitle(task, fontsize=10)
        per_stage = ladder.tasks[task].stages
        for row, (ax, (key, name, colour, top)) in enumerate(zip(axes, SERIES, strict=True)):
            for i, stage in enumerate(stages):
                ax.axvspan(i - 0.5, i + 0.5, color=PHASE_COLOURS[per_stage[stage].phase],
                           alpha=0.35, lw=0)
                if named and row == 0:
                    ax.text(i, 1.02, per_stage[stage].phase, ha="center", va="bottom",
                            fontsize=7, transform=ax.get_xaxis_transform())
            figures = [per_stage[s].figures[key] for s in stages]
            ax.plot(x, [np.nan if f.value is None else f.value for f in figures],
                    marker="o" if named else None, ms=4, color=colour)
            bands = [f.ci or (np.nan, np.nan) for f in figures]
            ax.fill_between(x, [b[0] for b in bands], [b[1] for b in bands], color=colour,
                            alpha=0.25, lw=0)  # the 95% bootstrap interval over phrasings
            values = [v for f in figures for v in (f.value, *(f.ci or ())) if v is not None]
            ax.set_ylim(0, max(top, 1.1 * max(values, default=0.0)))
            ax.set_ylabel(name, fontsize=7)
            ax.tick_params(labelsize=7)
            ax.set_xlim(-0.5, len(stages) - 0.5)
        if named:
            axes[-1].set_xticks(x, stages)
        else:
            _ticks(axes[-1], stages, most=MOST_PHASE_LABELS)
    for block in blocks.flat[len(tasks):]:
        block.set_visible(False)
    return fig


def top_answers(task_phase, n=TOP_ANSWERS):
    """Indices of the n answers with the most consensus mass summed over the stages, most
    first (ties: lower index first)."""
    total = sum(np.array(m.consensus) for m in task_phase.stages.values())
    return np.argsort(-total, kind="mergesort")[:n]


def _shown_answers(task_phase):
    """(answer indices to draw, whether the answer set is large): all of them, or the top."""
    k = len(task_phase.answers)
    return (top_answers(task_phase), True) if k > LARGE_K else (np.arange(k), False)


def heatmap_figure(task_phase, stage_data, seed_row):
    """One prompts x answers heatmap per stage, on one colour scale; seed row outlined. For a
    large answer set: the top answers only, and below each heatmap the rank curves."""
    stages = list(stage_data)
    answers = task_phase.answers
    shown, large = _shown_answers(task_phase)
    names = [answers[a] for a in shown]
    n = max(td.P.shape[0] for td in stage_data.values())
    # 0 to the largest probability shown: with K = 100 answers a 0..1 scale is all dark.
    top = max(float(td.P[:, shown].max()) for td in stage_data.values())
    # Figure size grows with K and N, within bounds that keep it on a screen.
    width = _clamp(0.3 * len(shown), 2.5, 5.0) * len(stages) + 1.5
    height = _clamp(0.25 * n + 2.2, 4.0, 12.0)
    fig = Figure(figsize=(width, height + 3.2 * large), layout="constrained")
    grid = fig.subplots(1 + large, len(stages), squeeze=False,
                        height_ratios=[height, 3.2] if large else None)
    for j, (ax, stage) in enumerate(zip(grid[0], stages, strict=True)):
        td = stage_data[stage]
        image = ax.imshow(
            td.P[:, shown], aspect="auto", vmin=0, vmax=top, cmap="viridis", interpolation="none"
        )
        m = task_phase.stages[stage]
        title = f"{stage}: {m.phase}\nliquidity {_with_ci(m.figures['liquidity'])}"
        if large:
            held = float(td.P[:, shown].sum(axis=1).mean())
            title += f"\ntop {len(shown)} of {len(answers)} answers: {held:.0%} of the mass"
        ax.set_title(title, fontsize=9)
        _ticks(ax, names, most=TOP_ANSWERS)
        _ticks(ax, td.prompt_ids, axis="y", most=40)
        if j == 0 and seed_row is not None:
            ax.add_patch(
                Rectangle((-0.5, seed_row - 0.5), len(shown), 1, fill=False, ec="red", lw=2)
            )
            ax.set_ylabel("prompt (seed outlined in red)", fontsize=8)
        if large:
            _rank_curves(grid[1, j], td.P, m, seed_row if j == 0 else None)
    fig.colorbar(image, ax=grid[0].tolist(), shrink=0.8, label="P(answer | prompt)")
    return fig


def _log_axes(ax, k):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(0.8, k * 1.25)
    ax.set_ylim(PROB_FLOOR, 1.5)


def _rank_curves(ax, P, stage, seed_row):
    """Each prompt's probabilities sorted, against their rank (log-log): how many answers
    carry its mass, whatever they are. Consensus in black, its support sizes as lines."""
    ranks = np.arange(1, P.shape[1] + 1)
    for row in P:
        ax.plot(ranks, np.maximum(np.sort(row)[::-1], PROB_FLOOR), color="#969696", lw=0.7)
    if seed_row is not None:
        ax.plot(ranks, np.maximum(np.sort(P[seed_row])[::-1], PROB_FLOOR), color="red", lw=1.2,
                label="seed prompt")
    consensus = np.sort(np.array(stage.consensus))[::-1]
    ax.plot(ranks, np.maximum(consensus, PROB_FLOOR), color="black", lw=1.8, label="consensus")
    effective, whole = stage.value("effective_support"), stage.value("consensus_support")
    ax.axvline(effective, color="#3f007d", ls=":",
               label=f"effective support {_with_ci(stage.figures['effective_support'], 1)}")
    ax.axvline(whole, color="#d94801", ls="--",
               label=f"consensus support {_with_ci(stage.figures['consensus_support'], 1)}")
    _log_axes(ax, P.shape[1])
    ax.set_xlabel("rank of the answer (prompts in grey)", fontsize=8)
    ax.set_ylabel("probability", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="lower left")


BAND_RESAMPLES = 400  # resamples of the prompts behind the error bars of a consensus


def consensus_band(P, rng) -> np.ndarray:
    """[2, K] distances from the consensus of P [N, K] down and up to the ends of each answer's
    95% interval over resamples of the prompts (bootstrap.interval), for error bars."""
    P = np.asarray(P, np.float64)
    counts = resample_counts(P.shape[0], BAND_RESAMPLES, rng)
    resampled = counts @ P / P.shape[0]
    point = P.mean(axis=0)
    ends = np.array([interval(resampled[:, a], point[a], P.shape[0]) for a in range(P.shape[1])])
    return np.abs(ends.T - point)


def seed_figure(task_phase, base_consensus, bands=None):
    """Left: seed-stage consensus beside its seed, each consensus with its 95% interval
    (`bands`: {"base": [2, K], "seed": [2, K]} from consensus_band; the seed prompt's
    distribution is exact). Right: settling of the later stages."""
    seed = task_phase.seed
    answers = task_phase.answers
    seed_dist = np.array(seed.distribution)
    who = "seed, base prompt" if seed.seed_prompt_id is not None else "nearest base prompt"
    k = len(answers)
    shown, large = _shown_answers(task_phase)
    fig = Figure(figsize=(_clamp(len(shown) + 3.0, 9.0, 18.0), 3.8 + 0.4 * large),
                 layout="constrained")
    left, right = fig.subplots(1, 2)

    x = np.arange(len(shown))
    target = np.array(task_phase.stages[seed.stage].consensus)
    bands = bands or {}
    bar = {"ecolor": "#333333", "capsize": 1.5, "error_kw": {"lw": 0.8}}
    left.bar(x - 0.27, seed_dist[shown], 0.27, color="#d62728",
             label=f"{who} {seed.nearest_prompt_id} (exact)")
    left.bar(x, target[shown], 0.27, color=PHASE_COLOURS["nucleated"],
             yerr=bands["seed"][:, shown] if "seed" in bands else None, **bar,
             label=f"{seed.stage} consensus, 95% interval")
    left.bar(x + 0.27, base_consensus[shown], 0.27, color=PHASE_COLOURS["liquid"],
             yerr=bands["base"][:, shown] if "base" in bands else None, **bar,
             label="base consensus, 95% interval")
    verdict = seed_verdict(seed) if seed.found else f"{seed.verdict} (p {seed.p_value:.2g})"
    title = (f"{verdict}\nJS {_with_ci(seed.figures['js'], 4)} bits vs "
             f"median {_with_ci(seed.figures['median_js'])}")
    if large:
        title += (f"\ntop {len(shown)} of {k} answers, holding {seed_dist[shown].sum():.0%} of "
                  f"the seed and {target[shown].sum():.0%} of the {seed.stage} consensus")
    left.set_title(title, fontsize=9)
    _ticks(left, [answers[a] for a in shown], most=TOP_ANSWERS)
    left.set_ylabel("probability")
    left.legend(fontsize=7)

    order = np.argsort(-seed_dist, kind="mergesort")
    inside = int(support(seed_dist, SUPPORT_MASS).sum())
    # Large: x is the rank 1..K on a log axis (answer names cannot be read there), y is log.
    x = np.arange(1, k + 1) if large else np.arange(k)
    lift = (lambda p: np.maximum(p, PROB_FLOOR)) if large else (lambda p: p)
    marker, small = (None, None) if large else (".", 3)
    right.axvspan(
        x[0] - 0.5, x[0] + inside - 0.5, color="#fee6ce",
        label=f"its {int(SUPPORT_MASS * 100)}% support",
    )
    right.plot(x, lift(seed_dist[order]), "k--", marker=marker,
               label=f"{who} {seed.nearest_prompt_id}")
    settling = task_phase.settling
    for stage in heatmap_stages(list(settling)):  # a long run: evenly spaced stages only
        s = settling[stage]
        c = np.array(task_phase.stages[stage].consensus)[order]
        right.plot(
            x,
            lift(c),
            marker="o" if small else None,
            ms=small,
            label=f"{stage}: keeps {_with_ci(s['retention'], 2)}, drift {_with_ci(s['drift'])}",
        )
    if large:
        _log_axes(right, k)
        right.set_xlabel(f"rank of the answer under P(answer | {seed.nearest_prompt_id})")
        right.set_ylabel("probability")
    else:
        _ticks(right, [answers[i] for i in order])
        right.set_ylabel("probability")
    right.set_title(
        f"settling: stage consensus, answers by P(answer | {seed.nearest_prompt_id})",
        fontsize=9,
    )
    right.legend(fontsize=7)
    return fig


# ---------------------------------------------------------------------------------- html


def _phase_table(name, ladder):
    head = "".join(f"<th>{html.escape(s)}<br><small>{html.escape(label)}</small></th>"
                   for s, label in ladder.stages)
    rows = []
    for task, t in ladder.tasks.items():
        cells = "".join(
            f'<td style="background:{PHASE_COLOURS[m.phase]}">'
            f"{m.phase} <small>{m.phase_support:.0%}</small></td>"
            for m in (t.stages[s] for s, _ in ladder.stages)
        )
        seed = t.seed
        found = html.escape(seed_verdict(seed))
        rows.append(
            f"<tr><td>{html.escape(task)}</td>{cells}<td>{found} "
            f"<small>(JS {_with_ci(seed.figures['js'])} vs median "
            f"{_with_ci(seed.figures['median_js'])})</small></td></tr>"
        )
    return (
        f"<h2>Ladder {html.escape(name)}</h2><table><tr><th>task</th>{head}<th>seed</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _with_ci(figure, digits=3):
    """'0.123 [0.101, 0.150]': a figure beside its 95% interval, as every number is shown."""
    if figure.value is None:
        return "-"
    ci = "" if figure.ci is None else f" [{figure.ci[0]:.{digits}f}, {figure.ci[1]:.{digits}f}]"
    return f"{figure.value:.{digits}f}{ci}"


def _number(x):
    return "-" if x is None else f"{x:.3f}"


def _set_text(ids):
    return "{" + ", ".join(map(str, ids)) + "}" if ids else "none"


def _cross_table(pairs):
    parts = []
    for pair in pairs:
        a, b = (html.escape(x) for x in pair.ladders)
        rows = "".join(
            f"<tr><td>{html.escape(task)}</td>"
            f"<td>{' / '.join(html.escape(_set_text(s)) for s in c.seed_sets)}</td>"
            f"<td>{_number(c.js_between_seeds)}</td>"
            f"<td>{'yes' if c.same_prompt else 'compatible' if c.compatible else 'no'}</td></tr>"
            for task, c in pair.tasks.items()
        )
        parts.append(
            f"<h3>Seeds of {a} vs {b}</h3><table><tr><th>task</th><th>seed sets</th>"
            f"<th>JS between seeds</th><th>same prompt</th></tr>{rows}</table>"
        )
    return "".join(parts)


STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: center; font-size: 13px; }
img { max-width: 100%; border: 1px solid #eee; margin: 4px 0; }
.legend span { padding: 2px 8px; margin-right: 6px; }
"""


def _legend():
    spans = "".join(f'<span style="background:{c}">{p}</span>' for p, c in PHASE_COLOURS.items())
    return (
        f'<p class="legend">{spans}</p><p><b>liquid</b>: prompts select different answer '
        "distributions (high liquidity). <b>nucleated</b>: the seed stage collapsed onto one "
        "distribution that a base prompt already gave (the seed). <b>settled</b>: later stages "
        "keep their mass inside the seed's support. Beside each phase: the share of bootstrap "
        "resamples of the prompts that give the same phase. A seed is found when the null test "
        "gives p below the level and the margin rules hold; bands and brackets are 95% "
        "intervals over the phrasings. Definitions and thresholds: docs/metrics.md.</p>"
    )


def heatmap_stages(stages: list[str], most: int = MOST_HEATMAPS) -> list[str]:
    """The stages drawn as heatmaps: all of a short ladder; of a long one (50 checkpoints along
    a run) `most` evenly spaced, the first and the last among them."""
    if len(stages) <= most:
        return stages
    picks = np.unique(np.round(np.linspace(0, len(stages) - 1, most)).astype(int))
    return [stages[i] for i in picks]


def build_report(phases, results, out_dir):
    """Write out_dir/index.html and its PNGs from a Phases result (analysis/records.py) and
    the loaded Results."""
    out = Path(out_dir)
    top, detail, figures = [], [], []
    for name, ladder in phases.ladders.items():
        png = f"trajectory_{_slug(name)}.png"
        figures.append((trajectory_figure, (ladder,), out / png))
        top.append(_phase_table(name, ladder) + f'<img src="{png}" alt="phase trajectory">')
        labels = ladder.labels()
        for task, t in ladder.tasks.items():
            drawn = heatmap_stages(list(labels))
            data = {stage: results.data[labels[stage]][task] for stage in drawn}
            base = next(iter(data.values()))
            seed_row = base.prompt_ids.index(t.seed.nearest_prompt_id)
            heat = f"heatmap_{_slug(name, task)}.png"
            seed = f"seed_{_slug(name, task)}.png"
            base_consensus = np.array(next(iter(t.stages.values())).consensus)
            rng = draw_rng("report", name, task)
            bands = {"base": consensus_band(results.data[next(iter(labels.values()))][task].P, rng),
                     "seed": consensus_band(results.data[labels[t.seed.stage]][task].P, rng)}
            figures += [(heatmap_figure, (t, data, seed_row), out / heat),
                        (seed_figure, (t, base_consensus, bands), out / seed)]
            some = (f" <small>({len(drawn)} of {len(labels)} stages drawn, evenly spaced)</small>"
                    if len(drawn) < len(labels) else "")
            detail.append(
                f"<h3>{html.escape(name)} / {html.escape(task)}{some}</h3>"
                f'<img src="{heat}" alt="prompts x answers heatmaps"><br>'
                f'<img src="{seed}" alt="seed match and settling">'
            )
    render(figures)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Phase report</title>"
        f"<style>{STYLE}</style></head><body><h1>Crystallization phases</h1>{_legend()}"
        + "".join(top)
        + _cross_table(phases.cross_ladder)
        + "<h2>Per task: heatmaps, seed match, settling</h2>"
        + "".join(detail)
        + "</body></html>"
    )
    write_output(out / "index.html", page)
    return out / "index.html"


# --------------------------------------------------------------------------- trajectories

ORDER_TITLES = {"liquidity": "liquidity (bits)", "seed_overlap": "seed overlap, 1 - JS (bits)",
                "entropy_norm": "entropy / log2 K (share of the maximum)",
                "effective_support": "effective support (answers)",
                "retention": "retention (mass in the seed's 90% support)",
                "coverage": "coverage (mass on the task's answers)"}


def order_parameter_figure(points, transitions, series):
    """One panel per order parameter along the series: a thin line and 95% band per task (a
    colour of its own, named in the legend below), the mean over tasks in black, stage
    boundaries dotted (after each stage's last point) and named, each task's located
    transition of that parameter marked on the axis (filled: sharp, open: crossover). Points
    that do not answer yet (answerdist.analysis.dynamics.MIN_COVERAGE) are drawn as open
    circles off the lines: they enter no fit and no mean but coverage's.

    The points are spaced evenly in their order and labelled by position: checkpoints are
    often saved densely early in a stage and sparsely later, which a linear axis of steps
    would crowd into one corner. A located position is placed by linear interpolation."""
    rows = [r for r in points if r["series"] == series]
    tasks = sorted({r["task"] for r in rows})
    jumps = [t for t in transitions if t["series"] == series and t["position"] is not None]
    params = list(ORDER_TITLES)
    fig = Figure(figsize=(13, 7.4), layout="constrained")
    axes = fig.subplots(2, 3, squeeze=False)
    by_task = {task: sorted((r for r in rows if r["task"] == task), key=lambda r: r["position"])
               for task in tasks}
    first = by_task[tasks[0]]
    positions = np.array([r["position"] for r in first])
    index = np.arange(len(first), dtype=float)
    boundaries = [i for i, (a, b) in enumerate(zip(first, first[1:], strict=False))
                  if a["stage"] != b["stage"]]
    starts = [0, *(b + 1 for b in boundaries)]
    colours = [TASK_COLOURS[i % len(TASK_COLOURS)] for i in range(len(tasks))]
    for ax, param in zip(axes.flat, params, strict=True):
        grid = []
        for task, colour in zip(tasks, colours, strict=True):
            column = lambda key, t=task, p=param: [
                np.nan if r[key] is None or (p != "coverage" and not r["answering"])
                else r[key] for r in by_task[t]]
            y = column(param)
            ax.plot(index, y, lw=0.9, alpha=0.8, marker=".", ms=3, color=colour,
                    label=task)  # a point alone shows too
            ax.fill_between(index, column(f"{param}_lo"), column(f"{param}_hi"), alpha=0.08,
                            lw=0, color=colour)
            silent = [(i, r[param]) for i, r in enumerate(by_task[task])
                      if not r["answering"] and r[param] is not None and param != "coverage"]
            if silent:
                ax.plot(*zip(*silent, strict=True), ls="none", marker="o", ms=4, mfc="none",
                        color=colour, alpha=0.8)
            grid.append(y)
        grid = np.array(grid, dtype=float)
        answered = np.isfinite(grid).sum(axis=0)
        mean = np.where(answered > 0, np.nansum(grid, axis=0) / np.maximum(answered, 1), np.nan)
        ax.plot(index, mean, color="black", lw=2, marker="o", ms=3, label="mean over tasks")
        for b in boundaries:
            ax.axvline(b + 0.5, color="grey", ls=":", lw=1)
        for start, end in zip(starts, [*(b + 1 for b in boundaries), len(first)], strict=True):
            if first[start]["stage"]:
                ax.text(0.5 * (start + end - 1), 0.98, first[start]["stage"], ha="center",
                        va="top", transform=ax.get_xaxis_transform(), fontsize=9,
                        color="#333333", bbox={"fc": "white", "ec": "none", "alpha": 0.8,
                                               "pad": 1})
        for j in (t for t in jumps if t["metric"] == param):
            ax.plot(np.interp(j["position"], positions, index), 0, marker="^",
                    transform=ax.get_xaxis_transform(), color="#d62728",
                    mfc="#d62728" if j["sharp"] else "none", ms=7, clip_on=False)
        ax.set_title(ORDER_TITLES[param], fontsize=10)
        _ticks(ax, [f"{x:.6g}" for x in positions], most=12)
        ax.set_xlabel("position (checkpoints evenly spaced)")
    handles, names = axes.flat[0].get_legend_handles_labels()
    handles.append(Line2D([], [], ls="none", marker="o", mfc="none", color="grey"))
    names.append("does not answer yet (no fit)")
    fig.legend(handles, names, loc="outside lower center", ncols=min(8, len(names)), fontsize=8)
    return fig


def _position(x):
    return "-" if x is None else f"{x:.6g}"


def _transition_table(transitions, series):
    rows = "".join(
        f"<tr><td>{html.escape(t['task'])}</td><td>{html.escape(t['metric'])}</td>"
        + ("<td>-</td><td>-</td><td>-</td><td>flat</td>" if t["position"] is None else
           f"<td>{t['position']:.6g}</td><td>{_position(t['position_lo'])} - "
           f"{_position(t['position_hi'])}</td><td>{t['delta_aic']:.1f}</td>"
           f"<td>{'sharp' if t['sharp'] else 'crossover'}</td>")
        + "</tr>"
        for t in transitions if t["series"] == series)
    return ("<table><tr><th>task</th><th>parameter</th><th>position</th><th>95% interval</th>"
            f"<th>ΔAIC</th><th>kind</th></tr>{rows}</table>")


def build_trajectory_report(result, out_dir):
    """out_dir/index.html: per series the order parameters against position (with intervals,
    stage boundaries and located transitions) and the table of transitions."""
    out = Path(out_dir)
    points, transitions = result.points.to_pylist(), result.transitions.to_pylist()
    parts = []
    for series in dict.fromkeys(r["series"] for r in points):
        png = f"order_{_slug(series)}.png"
        _save(order_parameter_figure(points, transitions, series), out / png)
        parts.append(f"<h2>Series {html.escape(series)}</h2>"
                     f'<img src="{png}" alt="order parameters along the series">'
                     + _transition_table(transitions, series))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Trajectory report</title>"
            f"<style>{STYLE}</style></head><body><h1>Crystallization along training</h1>"
            "<p>Bands: 95% intervals over the phrasings. Triangles: each task's located "
            "transition of that parameter (filled: sharp, a step beats a line by ΔAIC ≥ 10; "
            "open: a crossover). Dotted lines: stage boundaries, after each stage's last "
            "checkpoint. A point whose coverage is under --min-coverage (default 0.5) does not "
            "answer yet: outside the coverage panel it is an open circle off the lines, and it "
            "enters no fit but coverage's, whose transition is the format switch. Definitions: "
            "docs/metrics.md.</p>" + "".join(parts) + "</body></html>")
    write_output(out / "index.html", page)
    return out / "index.html"
