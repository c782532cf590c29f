"""The HTML report, built on a synthetic store with planted phases.

Planted: a liquid base (each prompt its own Dirichlet(0.3) distribution), SFT collapsed onto
one base prompt's distribution, DPO and RL sharpened inside that seed's support.
"""

import json
import re

import numpy as np
import pytest

from answerdist.analysis.phases import phase_summary
from answerdist.analysis.records import Phases
from answerdist.analysis.report import TOP_ANSWERS, top_answers
from answerdist.analysis.synthetic import write_planted_store
from answerdist.cli.analyse import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    ladders, seeds = write_planted_store(
        root / "results", n_prompts=12, tasks=["random_number", "random_color"]
    )
    flags = []
    for name, stages in ladders:
        flags += ["--ladder", f"{name}:" + ",".join(f"{s}={label}" for s, label in stages)]
    report = root / "report"
    out = root / "phases.json"
    rc = main([str(root / "results"), *flags, "--out", str(out), "--report", str(report)])
    return rc, report, Phases.from_json(json.loads(out.read_text())), seeds


def test_report_detects_planted_seeds_and_phases(built):
    rc, _, phases, seeds = built
    assert rc == 0
    summary = phase_summary(phases)
    for ladder, tasks in seeds.items():
        for task, seed_id in tasks.items():
            assert summary[ladder][task]["seed_prompt_id"] == seed_id
            assert summary[ladder][task]["phases"] == {
                "base": "liquid",
                "sft": "nucleated",
                "dpo": "settled",
                "rl": "settled",
            }


def test_index_references_every_png_and_each_exists(built):
    _, report, _, _ = built
    page = (report / "index.html").read_text()
    referenced = set(re.findall(r'<img src="([^"]+)"', page))
    on_disk = {p.name for p in report.glob("*.png")}
    assert referenced == on_disk
    # Per ladder: one trajectory; per ladder and task: a heatmap and a seed/settling figure.
    assert len(on_disk) == 2 * (1 + 2 * 2)
    for name in on_disk:
        data = (report / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert not list(report.glob(".*tmp"))  # no temporary files left behind


def test_first_screen_shows_the_phases_and_seeds(built):
    _, report, _, seeds = built
    page = (report / "index.html").read_text()
    first = page[: page.index("Per task")]
    for phase in ("liquid", "nucleated", "settled"):
        assert f">{phase} <small>" in first
    assert first.index("trajectory_olmo.png") < first.index("trajectory_tulu.png")
    for tasks in seeds.values():
        for seed_id in tasks.values():
            assert f"<td>prompt {seed_id} (p " in first
    assert "Seeds of olmo vs tulu" in first
    # Every number shown carries its 95% interval.
    assert re.search(r"JS \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] vs median \d\.\d{3} \[", first)


# ------------------------------------------------------------------- a thousand answers


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """A planted store with one task of K = 1000 answers, analysed, with its report."""
    root = tmp_path_factory.mktemp("large")
    ladders, seeds = write_planted_store(root / "results", n_prompts=10,
                                         tasks=["random_number_1000"])
    flags = []
    for name, stages in ladders:
        flags += ["--ladder", f"{name}:" + ",".join(f"{s}={label}" for s, label in stages)]
    out = root / "phases.json"
    rc = main([str(root / "results"), *flags, "--out", str(out), "--report", str(root / "report")])
    assert rc == 0
    return root, Phases.from_json(json.loads(out.read_text())), seeds


@pytest.fixture(scope="module")
def figures(large):
    from answerdist.analysis.phases import load_results
    from answerdist.analysis.report import heatmap_figure, seed_figure

    root, phases, _ = large
    ladder = phases.ladders["olmo"]
    t = ladder.tasks["random_number_1000"]
    results = load_results(root / "results")
    data = {s: results.data[label]["random_number_1000"] for s, label in ladder.stages}
    base = np.array(t.stages["base"].consensus)
    return t, heatmap_figure(t, data, 0), seed_figure(t, base)


def test_large_answer_sets_are_planted_and_detected(large):
    _, phases, seeds = large
    summary = phase_summary(phases)
    for ladder, tasks in seeds.items():
        assert (summary[ladder]["random_number_1000"]["seed_prompt_id"]
                == tasks["random_number_1000"])
        assert summary[ladder]["random_number_1000"]["phases"] == {
            "base": "liquid", "sft": "nucleated", "dpo": "settled", "rl": "settled"}
        base = phases.ladders[ladder].tasks["random_number_1000"].stages["base"]
        # A liquid base: each prompt spreads over a few answers, the prompts over many more.
        assert base.value("effective_support") < 100 < base.value("consensus_support") <= 1000


def test_top_answers_are_the_most_consensus_mass_over_the_stages(figures):
    t, _, _ = figures
    total = sum(np.array(m.consensus) for m in t.stages.values())
    top = top_answers(t)
    assert len(top) == TOP_ANSWERS == len(set(top.tolist()))
    assert total[top].min() >= np.delete(total, top).max()
    assert list(total[top]) == sorted(total[top], reverse=True)


def test_heatmaps_show_top_answers_and_rank_curves_when_k_is_large(figures):
    t, heat, _ = figures
    stages = len(t.stages)
    images = [ax for ax in heat.axes if ax.images]
    assert len(images) == stages
    for ax in images:
        n_prompts = ax.images[0].get_array().shape[0]
        assert ax.images[0].get_array().shape == (n_prompts, TOP_ANSWERS)
        assert [label.get_text() for label in ax.get_xticklabels()] == [
            t.answers[a] for a in top_answers(t)]
    assert all(re.search(r"liquidity \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", ax.get_title())
               for ax in images)
    curves = [ax for ax in heat.axes if ax.get_xscale() == "log"]
    assert len(curves) == stages
    for ax in curves:
        assert ax.get_yscale() == "log"
        assert all(len(line.get_xdata()) == 1000 for line in ax.get_lines()
                   if len(line.get_xdata()) > 2)  # curves span every rank; vlines have 2 points


def test_seed_figure_bars_top_answers_and_settles_on_log_axes(figures):
    t, _, seed = figures
    left, right = seed.axes
    assert len(left.patches) == 3 * TOP_ANSWERS
    assert len(left.get_xticklabels()) == TOP_ANSWERS
    assert right.get_xscale() == "log" and right.get_yscale() == "log"
    assert {len(line.get_xdata()) for line in right.get_lines()} == {1000}


def test_small_answer_sets_keep_one_column_per_answer(built):
    from answerdist.analysis.phases import load_results
    from answerdist.analysis.report import heatmap_figure

    _, report, phases, _ = built
    ladder = phases.ladders["olmo"]
    t = ladder.tasks["random_color"]
    results = load_results(report.parent / "results")
    data = {s: results.data[label]["random_color"] for s, label in ladder.stages}
    heat = heatmap_figure(t, data, 0)
    assert len(heat.axes) == len(data) + 1  # heatmaps and the colour bar, no rank curves
    assert all(ax.images[0].get_array().shape[1] == len(t.answers)
               for ax in heat.axes if ax.images)


def test_large_report_pngs_exist(large):
    root, _, _ = large
    report = root / "report"
    page = (report / "index.html").read_text()
    referenced = set(re.findall(r'<img src="([^"]+)"', page))
    assert referenced == {p.name for p in report.glob("*.png")} and len(referenced) == 2 * 3
    for name in referenced:
        assert (report / name).read_bytes().startswith(PNG_MAGIC)


def test_figures_put_one_quantity_on_each_axis_and_intervals_on_the_seed_bars(built):
    """The phase figure gives each quantity its own axis and unit; the seed bars carry the
    95% interval of each consensus (the seed prompt's distribution is exact)."""
    from answerdist.analysis.phases import load_results
    from answerdist.analysis.report import (
        SERIES,
        consensus_band,
        seed_figure,
        trajectory_figure,
    )

    _, report, phases, _ = built
    ladder = phases.ladders["olmo"]
    fig = trajectory_figure(ladder)
    labels = [ax.get_ylabel() for ax in fig.get_axes() if ax.get_visible()]
    assert labels == [name for _, name, _, _ in SERIES] * len(ladder.tasks)
    assert all("(" in name or "/" in name for name in labels)  # a unit or a ratio on each

    results = load_results(report.parent / "results")
    t = ladder.tasks["random_color"]
    P = results.data[dict(ladder.stages)["sft"]]["random_color"].P
    band = consensus_band(P, np.random.default_rng(0))
    assert band.shape == (2, P.shape[1]) and (band >= 0).all() and band.sum() > 0
    base = np.array(t.stages["base"].consensus)
    left = seed_figure(t, base, {"base": band, "seed": band}).axes[0]
    bars = [c for c in left.containers if hasattr(c, "errorbar")]
    assert len(bars) == 3  # seed, seed-stage consensus, base consensus
    assert [c.errorbar is not None for c in bars] == [False, True, True]


def test_the_trajectory_figure_names_every_task_and_draws_points_that_do_not_answer(tmp_path):
    from answerdist.analysis.dynamics import trajectory
    from answerdist.analysis.phases import Results, TaskData
    from answerdist.analysis.report import order_parameter_figure

    rng = np.random.default_rng(0)
    tasks = [f"task{i:02d}" for i in range(15)]
    data = {}
    for step in range(6):
        label = f"step{step}"
        data[label] = {}
        for task in tasks:
            P = rng.dirichlet(np.full(6, 0.5), size=8)
            cover = np.full(8, 0.01 if step in (1, 2) else 0.9)
            data[label][task] = TaskData(label, task, [f"p{i}" for i in range(8)],
                                         [str(a) for a in range(6)], P, cover)
    result = trajectory(Results(None, data), {"s": [(f"step{s}", s) for s in range(6)]},
                        bootstrap=100)
    fig = order_parameter_figure(result.points.to_pylist(), result.transitions.to_pylist(), "s")
    names = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert set(tasks) <= set(names) and "does not answer yet (no fit)" in names
    liquidity = fig.axes[0]
    colours = {line.get_color() for line in liquidity.get_lines() if line.get_label() in tasks}
    assert len(colours) == 15  # each task a colour of its own
    hollow = [line for line in liquidity.get_lines()
              if line.get_linestyle() == "None" and line.get_markerfacecolor() == "none"]
    assert sum(len(line.get_xdata()) for line in hollow) == 2 * 15  # steps 1 and 2, all tasks
