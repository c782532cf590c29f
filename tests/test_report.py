"""The HTML report, built on a synthetic store with planted phases.

Planted: a liquid base (each prompt its own Dirichlet(0.3) distribution), SFT collapsed onto
one base prompt's distribution, DPO and RL sharpened inside that seed's support.
"""

import json
import re

import pytest

from analysis.phases import main, phase_summary
from analysis.synthetic import write_planted_store

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
    return rc, report, json.loads(out.read_text()), seeds


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
        assert f">{phase}</td>" in first
    assert first.index("trajectory_olmo.png") < first.index("trajectory_tulu.png")
    for tasks in seeds.values():
        for seed_id in tasks.values():
            assert f"<td>{seed_id} <small>" in first
    assert "Seeds of olmo vs tulu" in first
