"""One consistency check for every analysis entry point: `analyse` (a ladder's stages) and
`trajectory` (a series' points) refuse the same inconsistencies with the same line, before any
figure is computed. Each case is a fresh random store (its labels, answers and prompts drawn
from the seed), damaged in one way."""

import json

import numpy as np
import pytest

from answerdist.analysis.dynamics import trajectory
from answerdist.analysis.phases import analyse, load_results
from answerdist.analysis.synthetic import write_manifest, write_task
from answerdist.errors import AnalysisError
from tests.test_adversarial import edit_manifest


def _store(root, rng):
    """Three checkpoints step0, step100, step200 with tasks 'pick' and 'other'."""
    labels = ["step0", "step100", "step200"]
    k, n = int(rng.integers(2, 7)), int(rng.integers(3, 9))
    answers = [f"w{int(i)}" for i in rng.choice(1000, size=k, replace=False)]
    for label in labels:
        for task in ("pick", "other"):
            write_task(root, label, task, answers, rng.dirichlet(np.ones(k), size=n), np.ones(n))
        write_manifest(root, label)
    return labels, answers, n


def _damage(root, kind, labels, answers, n, rng):
    """One inconsistency at a random later point; the expected line's words."""
    victim = labels[int(rng.integers(1, len(labels)))]
    if kind == "definition":
        for i, label in enumerate(labels):
            edit_manifest(root, label, "pick", task_hash=f"hash{i if label == victim else 0}")
        return "different definitions of the task"
    if kind == "checkpoint":
        edit_manifest(root, victim, "other", fingerprint="another checkpoint")
        return f"'{victim}' holds tasks of different checkpoints"
    if kind == "settings":
        path = root / victim / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["tasks"]["other"]["run"]["mode"] = "base"
        path.write_text(json.dumps(manifest))
        return f"'{victim}' holds tasks scored with different settings"
    k = len(answers)
    if kind == "prompts":
        write_task(root, victim, "pick", answers, rng.dirichlet(np.ones(k), size=n + 1),
                   np.ones(n + 1))
        return "has other prompts than"
    if kind == "answers":
        other = [*answers[:-1], answers[-1] + "x"]
        write_task(root, victim, "pick", other, rng.dirichlet(np.ones(k), size=n), np.ones(n))
        return "mismatched answer sets: task pick"
    raise AssertionError(kind)


KINDS = ["definition", "checkpoint", "settings", "prompts", "answers"]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", KINDS)
def test_analyse_and_trajectory_refuse_the_same_inconsistency(tmp_path, kind, seed):
    rng = np.random.default_rng(seed * 31 + KINDS.index(kind))
    labels, answers, n = _store(tmp_path, rng)
    expected = _damage(tmp_path, kind, labels, answers, n, rng)
    results = load_results(tmp_path)
    ladder = [("l", list(zip(["base", "sft", "dpo"], labels, strict=True)))]
    series = {"s": [(label, 100.0 * i) for i, label in enumerate(labels)]}
    with pytest.raises(AnalysisError) as from_analyse:
        analyse(results, ladder, bootstrap=100)
    with pytest.raises(AnalysisError) as from_trajectory:
        trajectory(results, series, bootstrap=100)
    for err in (from_analyse.value, from_trajectory.value):
        assert expected in str(err) and "\n" not in str(err)


@pytest.mark.parametrize("seed", range(3))
def test_a_consistent_store_passes_both(tmp_path, seed):
    rng = np.random.default_rng(100 + seed)
    labels, _, _ = _store(tmp_path, rng)
    results = load_results(tmp_path)
    phases = analyse(results, [("l", list(zip(["base", "sft", "dpo"], labels, strict=True)))],
                     bootstrap=100)
    assert set(phases.ladders["l"].tasks) == {"pick", "other"}
    points = trajectory(results, {"s": [(label, 100.0 * i) for i, label in enumerate(labels)]},
                        bootstrap=100).points
    assert points.num_rows == 2 * len(labels)
