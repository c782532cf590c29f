"""Outputs all or nothing: `answerdist analyse` and `answerdist trajectory` write their JSON and
their report through one staging mechanism (answerdist/files.py `staged`). A failure at any
write (a full disk at the k-th file, an output path no file can be made in) leaves no report,
no JSON, no temporary and no directory made for them; a previous run's files stay as they were.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from answerdist import files
from answerdist.analysis.synthetic import write_manifest, write_planted_store, write_task
from answerdist.cli.analyse import main as analyse_main
from answerdist.cli.trajectory import main as trajectory_main


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(planted ladder store, its --ladder spec, a store of six checkpoints step0..step500)."""
    root = tmp_path_factory.mktemp("stores")
    ladders, _ = write_planted_store(root / "planted", n_prompts=6, tasks=["random_color"])
    name, stages = ladders[0]
    spec = f"{name}:" + ",".join(f"{stage}={label}" for stage, label in stages)
    rng = np.random.default_rng(0)
    base = rng.dirichlet(np.ones(5), size=6)
    for i in range(6):
        w = 0.0 if i < 3 else 0.9
        P = (1 - w) * base + w * base[2]
        write_task(root / "series", f"step{100 * i}", "pick", list("abcde"), P, np.ones(6))
        write_manifest(root / "series", f"step{100 * i}")
    return root / "planted", spec, root / "series"


def run(command, stores, out, report):
    planted, spec, series = stores
    if command == "analyse":
        argv = [str(planted), "--ladder", spec]
        main = analyse_main
    else:
        argv = [str(series), "--series", "run=step*"]
        main = trajectory_main
    return main([*argv, "--bootstrap", "100", "--out", str(out), "--report", str(report)])


def listing(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def count_writes(command, stores, tmp_path, monkeypatch) -> int:
    calls = []
    original = files._write_temporary
    monkeypatch.setattr(files, "_write_temporary",
                        lambda *a: calls.append(1) or original(*a))
    assert run(command, stores, tmp_path / "count" / "o.json", tmp_path / "count" / "r") == 0
    monkeypatch.setattr(files, "_write_temporary", original)
    return len(calls)


@pytest.mark.parametrize("command", ["analyse", "trajectory"])
def test_a_full_disk_at_any_write_leaves_nothing(stores, tmp_path, monkeypatch, capsys, command):
    """The disk fills at the k-th file written, for every k the run has: nothing lands, and a
    previous run's report and JSON are left byte for byte."""
    writes = count_writes(command, stores, tmp_path, monkeypatch)
    assert writes >= 3  # index.html, at least one PNG, the JSON
    original = files._write_temporary
    for fresh in (True, False):
        dest = tmp_path / f"dest-{fresh}"
        if not fresh:
            assert run(command, stores, dest / "o.json", dest / "deep" / "r") == 0
        before = listing(tmp_path / f"dest-{fresh}") if dest.exists() else {}
        for k in range(writes):
            seen = []

            def full(path, data, k=k, seen=seen):
                seen.append(path)
                if len(seen) > k:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                return original(path, data)

            monkeypatch.setattr(files, "_write_temporary", full)
            assert run(command, stores, dest / "o.json", dest / "deep" / "r") == 2
            monkeypatch.setattr(files, "_write_temporary", original)
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and "No space left on device" in err, (k, err)
            after = listing(dest) if dest.exists() else {}
            assert after == before, (k, set(after) ^ set(before))
            assert not dest.exists() or not [p for p in dest.rglob("*")
                                             if files.TEMPORARY in p.name]


@pytest.mark.parametrize("command", ["analyse", "trajectory"])
def test_a_json_path_no_file_can_be_made_in_leaves_no_report(stores, tmp_path, capsys, command):
    report = tmp_path / "report"
    assert run(command, stores, Path("/proc/answerdist-test.json"), report) == 2
    assert "/proc" in capsys.readouterr().err
    assert not report.exists() and not list(tmp_path.iterdir())
