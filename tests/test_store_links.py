"""The results store follows no link below its root (answerdist/engine/results/guard.py): a
symbolic link planted at any component (a label directory, `variants/`, `discovery/`, a results
file, the manifest, the lock, a temporary) is refused in one line, and nothing outside the root
is ever written, renamed or deleted, whatever the store is asked to do."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from answerdist.analysis.synthetic import write_manifest, write_task
from answerdist.cli import score
from answerdist.engine.results.guard import StoreFiles
from answerdist.engine.results.store import LabelLock, ResultsStore, read_results
from answerdist.errors import EngineError
from answerdist.files import TEMPORARY

COMPONENTS = ["{label}", "{label}/variants", "{label}/discovery", "{label}/{task}.parquet",
              "{label}/variants/{task}.parquet", "{label}/manifest.json", "{label}/.lock",
              "{label}/.{task}.parquet" + TEMPORARY + "{pid}"]  # this process's temporary


def snapshot(root: Path) -> dict:
    """Every entry under `root` with its bytes (files) or its kind, links not followed."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = path.read_bytes() if path.is_file() and not path.is_symlink() else (
            "link" if path.is_symlink() else "dir")
    return out


def store_everything(root: Path, label: str, task: str, rng) -> None:
    """All a run does to a label: lock it, clear temporaries, write tables and the manifest,
    write a discovery file, read every task back."""
    with LabelLock(root, label):
        ResultsStore(root, label).begin()
        P = rng.dirichlet(np.ones(3), size=4)
        write_task(root, label, task, ["a", "b", "c"], P, np.ones(4))
        write_manifest(root, label)
        StoreFiles(root, label).write(f"discovery/{task}.parquet", b"x")
    read_results(root, [label])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("target", ["directory", "file"])
@pytest.mark.parametrize("component", COMPONENTS)
def test_a_link_at_any_component_never_reaches_outside(tmp_path, component, target, seed):
    rng = np.random.default_rng(seed)
    label, task = f"L{int(rng.integers(1000))}", f"t{int(rng.integers(1000))}"
    root, outside = tmp_path / "store", tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious")
    (outside / f"{task}.parquet").write_bytes(b"not yours")
    (outside / "manifest.json").write_text("{}")
    if seed:  # a store that already holds a finished task of the label
        store_everything(root, label, task, rng)
    link = root / component.format(label=label, task=task, pid=os.getpid())
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_dir() and not link.is_symlink():
        os.rename(link, tmp_path / "moved-away")
    elif link.exists() or link.is_symlink():
        link.unlink()
    link.symlink_to(outside if target == "directory" else outside / "keep.txt")
    before = snapshot(outside)
    try:
        store_everything(root, label, task, rng)
    except EngineError as err:
        assert "\n" not in str(err)
    assert snapshot(outside) == before


def test_a_run_into_a_symlinked_variants_directory_is_one_line(tiny_checkpoint, tmp_path,
                                                                capsys):
    """The command line: exit 2, one line, and the directory the link points to untouched."""
    ckpt = tiny_checkpoint(arch="olmo2", hidden=32, heads=2, kv_heads=2, init=0.1)
    out, outside = tmp_path / "res", tmp_path / "outside"
    outside.mkdir()
    (out / "L").mkdir(parents=True)
    (out / "L" / "variants").symlink_to(outside)
    assert score.main([str(ckpt), "--tasks", "coin", "--out", str(out), "--label", "L"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("error:")]) == 1
    assert "follows no link" in err[-1] and list(outside.iterdir()) == []
