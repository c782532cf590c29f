"""`python -m answerdist sweep`: the same files alone or on 2 ranks, resumable after a rank is
killed, a failing checkpoint recorded without stopping the others, two sweeps sharing one store,
and bad sweep files refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from answerdist.cli import sweep as sweep_cli
from answerdist.engine.results.store import ResultsStore
from answerdist.engine.run import sweep
from answerdist.files import TEMPORARY
from tests import launch, tiny

STEPS = ("step100", "step200", "step300", "step1000")  # natural order: 1000 last
TASKS = "coin,die,rps,suit,weekday,card"


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ladder")
    for seed, step in enumerate(STEPS):
        tiny.make_checkpoint(root / "run" / step, arch="llama", hidden=32, heads=4, kv_heads=2,
                             init=0.1, seed=seed)
    return root


def sweep_file(root: Path, out: str, tasks: str = TASKS, **extra) -> Path:
    path = root / f"{out}.toml"
    lines = ['checkpoints = ["run/step*"]', f'tasks = "{tasks}"', 'modes = ["chat", "base"]',
             f'out = "{out}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def files(out: Path) -> dict[str, bytes]:
    """Every results file of a results directory (manifests aside), by relative path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.parquet"))}


def task_entries(out: Path) -> dict:
    """What each manifest says about its tasks, without the times."""
    entries = {}
    for manifest in sorted(out.glob("*/manifest.json")):
        for name, entry in json.loads(manifest.read_text())["tasks"].items():
            entries[f"{manifest.parent.name}/{name}"] = {k: v for k, v in entry.items()
                                                        if k not in ("seconds", "finished_at")}
    return entries


@pytest.fixture(scope="module")
def serial(ladder):
    result = launch.python("sweep", sweep_file(ladder, "serial"))
    assert result.returncode == 0, result.stderr
    return ladder / "serial", result


def test_serial_sweep_scores_every_checkpoint_in_order(serial):
    out, result = serial
    labels = [line.split()[0] for line in result.stdout.splitlines()[1:9]]
    assert labels == [f"{s}-{m}" for s in STEPS for m in ("chat", "base")]
    assert ("8 labels on 1 rank(s) (1 group(s) of tp 1): 8 scored, 0 skipped, 0 failed"
            in result.stdout)
    assert len(files(out)) == 8 * 6 * 2


def test_a_rerun_skips_everything_without_rescoring(serial, ladder):
    out, _ = serial
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    again = launch.python("sweep", sweep_file(ladder, "serial"))
    assert again.returncode == 0, again.stderr
    assert "0 scored, 8 skipped, 0 failed" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == stamps
    # On the CPU every run is batch-invariant already: asking for it is the same run.
    invariant = launch.python("sweep", sweep_file(ladder, "serial", batch_invariant=True))
    assert "0 scored, 8 skipped, 0 failed" in invariant.stdout, invariant.stderr


def test_two_ranks_write_the_serial_sweeps_files(serial, ladder):
    result = launch.torchrun(2, "sweep", sweep_file(ladder, "parallel"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines()[1:9]]
    assert [r[0] for r in rows] == [f"{s}-{m}" for s in STEPS for m in ("chat", "base")]
    assert {r[2] for r in rows} == {"scored"} and {r[1] for r in rows} <= {"0", "1"}
    assert files(ladder / "parallel") == files(serial[0])
    assert task_entries(ladder / "parallel") == task_entries(serial[0])


def test_a_killed_rank_then_a_rerun_gives_the_serial_files(serial, ladder):
    """Rank 1 is killed while it scores; torchrun stops rank 0. Nothing listed as finished is
    partial, and the rerun completes without redoing finished tasks, to the serial files."""
    config = sweep_file(ladder, "killed")
    proc = subprocess.Popen(launch.torchrun_command(2, "sweep", config), env=launch.ENV,
                            cwd=launch.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = ladder / "killed"
    deadline, victim = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        manifest = out / "step200-chat" / "manifest.json"  # rank 1's first label
        if manifest.exists() and 1 <= len(json.loads(manifest.read_text())["tasks"]) < 6:
            victim = launch.worker_pids(proc.pid).get(1)
            if victim:
                break
        time.sleep(0.01)
    assert victim, "rank 1 finished its first label before it could be killed"
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=120) != 0
    finished_before = {}
    for manifest in out.glob("*/manifest.json"):
        store = ResultsStore(out, manifest.parent.name)
        for name in store.tasks:
            assert store.problem(name) is None, (manifest.parent.name, name)  # never a partial file
            finished_before[out / manifest.parent.name / f"{name}.parquet"] = None
    assert 1 <= len(finished_before) < 8 * 6
    stamps = {p: p.stat().st_mtime_ns for p in finished_before}
    rerun = launch.torchrun(2, "sweep", config)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert files(out) == files(serial[0])
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished work was not redone
    assert not list(out.rglob(f"*{TEMPORARY}*"))


def test_a_failing_checkpoint_is_recorded_and_the_others_are_scored(ladder, tmp_path):
    for name, step in (("a", "step100"), ("b", "step200"), ("c", "step300")):
        shutil.copytree(ladder / "run" / step, tmp_path / "run" / name)
    broken = tmp_path / "run" / "b"
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:5000])
    config = tmp_path / "s.toml"
    config.write_text('checkpoints = ["run/*"]\ntasks = "coin"\nmodes = ["base"]\nout = "out"\n')
    result = launch.python("sweep", config)
    assert result.returncode == 1, result.stderr
    rows = {line.split()[0]: line.split()[2] for line in result.stdout.splitlines()[1:4]}
    assert rows == {"a": "scored", "b": "failed", "c": "scored"}
    assert "2 scored, 0 skipped, 1 failed" in result.stdout
    assert f"failed: b: {broken / 'model.safetensors'}: corrupt or truncated" in result.stdout
    assert not (tmp_path / "out" / "b").exists()


def test_edited_weights_are_never_skipped_as_finished(ladder, tmp_path):
    """A checkpoint is skipped unread only while its weight files keep the sizes and times its
    manifest records: edited weights are read, and then refused as another checkpoint's."""
    shutil.copytree(ladder / "run" / "step100", tmp_path / "run" / "step100")
    config = tmp_path / "s.toml"
    config.write_text('checkpoints = ["run/*"]\ntasks = "coin"\nmodes = ["base"]\nout = "out"\n')
    assert launch.python("sweep", config).returncode == 0
    weights = tmp_path / "run" / "step100" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 1  # a weight's low bits: same size
    weights.write_bytes(data)
    again = launch.python("sweep", config)
    assert again.returncode == 1, again.stderr
    assert "0 scored, 0 skipped, 1 failed" in again.stdout
    assert "holds results of another checkpoint" in again.stdout


def test_two_sweeps_share_one_results_directory(serial, ladder):
    """Two sweeps started together on one store split its labels by claims: each label is
    scored by one of them, and the store is the serial sweep's."""
    config = sweep_file(ladder, "shared")
    first, second = launch.concurrently(launch.python_command("sweep", config),
                                        launch.python_command("sweep", config))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    scored = [line.split()[0] for result in (first, second)
              for line in result.stdout.splitlines()[1:9] if line.split()[2] == "scored"]
    assert sorted(scored) == sorted(f"{s}-{m}" for s in STEPS for m in ("chat", "base"))
    assert files(ladder / "shared") == files(serial[0])
    assert task_entries(ladder / "shared") == task_entries(serial[0])


# ---------------------------------------------------------------------------------- sweep files


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,fragment", [
    ('checkpoints = ["run/step*"]\nmode = "base"\n', "unknown key 'mode'"),
    ('tasks = "coin"\n', "'checkpoints' must be"),
    ('checkpoints = ["run/nothing*"]\n', "matches no directory"),
    ('checkpoints = ["run/step100", "run/absent"]\n', "is not a directory"),
    ('checkpoints = ["run/*"]\ntasks = "coin,dice"\n', "dice"),
    ('checkpoints = ["run/*"]\nmodes = ["chat", "base"]\nlabel = "{name}"\n', "{mode}"),
    ('checkpoints = ["run/*"]\nlabel = "x"\n', "would both be labelled 'x'"),
    ('checkpoints = ["run/*"]\nlabel = "{step}"\n', "{step}"),
    ('checkpoints = ["run/*"]\ntp = 0\n', "'tp' must be an integer from 1 to 4,096"),
    ('checkpoints = ["run/*"]\ndtype = "float64"\n', "'dtype' must be one of"),
    ('checkpoints = ["run/*"]\nbatch_invariant = 1\n', "'batch_invariant' must be true or false"),
    ('checkpoints = [', "not valid TOML"),
])
def test_bad_sweep_files_are_one_line(ladder, tmp_path, capsys, text, fragment):
    (tmp_path / "run").symlink_to(ladder / "run", target_is_directory=True)
    assert sweep_cli.main([str(write(tmp_path, text))]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert not (tmp_path / "results").exists()


def test_list_shows_labels_groups_and_natural_order(ladder, capsys):
    config = sweep_file(ladder, "listed", label="{parent}-{name}-{mode}")
    assert sweep_cli.main([str(config), "--list"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [r[0] for r in rows] == [f"run-{s}-{m}" for s in STEPS for m in ("chat", "base")]
    assert not (ladder / "listed").exists()


def test_world_not_a_multiple_of_tp_is_one_line(ladder, tmp_path):
    config = sweep_file(ladder, "odd", tp=3)
    ranks = launch.ranks("sweep", [[config], [config]], tmp_path)
    assert [r.returncode for r in ranks] == [2, 2]
    assert (len(ranks[0].lines()) == 1 and "world size 2" in ranks[0].lines()[0]
            and not ranks[1].lines())


def test_a_sweep_writes_its_series_for_the_trajectory_command(ladder, capsys):
    from answerdist.cli.trajectory import main as trajectory_main

    path = ladder / "traj.toml"
    path.write_text('checkpoints = ["run/step*"]\ntasks = "die,weekday"\nmodes = ["base"]\n'
                    'out = "traj"\nstages = ["sft"]\nseries = "traj-series.json"\n')
    result = launch.python("sweep", path)
    assert result.returncode == 0, result.stderr
    body = json.loads((ladder / "traj-series.json").read_text())
    assert body["mode"] == "base"
    assert body["points"] == [{"label": s, "position": float(s[4:]), "stage": "sft"}
                              for s in STEPS]
    out = ladder / "trajectory.json"
    assert trajectory_main([str(ladder / "traj"), "--series",
                            f"run={ladder / 'traj-series.json'}", "--bootstrap", "100",
                            "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert {p["label"] for p in written["points"]} == set(STEPS)
    assert {(t["task"], t["metric"]) for t in written["transitions"]} >= {("die", "liquidity")}
    assert "crossover" in capsys.readouterr().out or "sharp" in capsys.readouterr().out


def test_series_positions_come_from_step_names_or_the_order():
    assert sweep.series_positions(["/m/step100", "/m/step1000-tokens4B"]) == [100.0, 1000.0]
    assert sweep.series_positions(["/m/base", "/m/step100"]) == [0.0, 1.0]
    assert sweep.series_positions(["/m/sft/step200", "/m/dpo/step100"]) == [0.0, 1.0]


def test_series_positions_fall_back_on_the_trainer_state(tmp_path):
    """Directories without steps in their names (base, sft, checkpoint-500) take the
    global_step of their trainer_state.json when every one has an increasing one."""
    dirs = []
    for name, state in [("base", {"global_step": 0}), ("checkpoint-500", {"global_step": 500}),
                        ("sft", {"global_step": 1200, "epoch": 3.0})]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "trainer_state.json").write_text(json.dumps(state))
        dirs.append(str(tmp_path / name))
    assert sweep.series_positions(dirs) == [0.0, 500.0, 1200.0]
    (tmp_path / "sft" / "trainer_state.json").write_text('{"global_step": 100}')  # decreasing
    assert sweep.series_positions(dirs) == [0.0, 1.0, 2.0]
    (tmp_path / "sft" / "trainer_state.json").write_text("{not json")  # damaged: the order
    assert sweep.series_positions(dirs) == [0.0, 1.0, 2.0]


@pytest.mark.parametrize(("extra", "expected"), [
    ({"stages": ["base", "sft"]}, "'stages' names 2 stage(s) for 1 'checkpoints' entries"),
    ({"series": "series.txt"}, "'series' must be a file name ending in .json"),
    ({"series": "s.json"}, "several modes need '{mode}' in 'series'"),
])
def test_bad_series_settings_are_one_line(ladder, extra, expected):
    with pytest.raises(sweep.SweepError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        sweep.load_sweep(sweep_file(ladder, "bad", **extra))


@pytest.mark.parametrize("seed", range(3))
def test_a_bare_task_directory_name_is_found_beside_the_sweep_file(tmp_path, monkeypatch, seed):
    """`tasks = "NAME"` naming a prompt directory (no `/`, no suffix) is the one beside the sweep
    file, never a directory of that name in the working directory."""
    import json as _json
    import random

    from answerdist.engine.run.sweep import load_sweep

    name = f"zp{seed}x{random.Random(seed).randrange(1000)}"
    for where, request in ((tmp_path / "sweepdir", "Beside the sweep: pick 1 or 2."),
                           (tmp_path / "cwd", "In the working directory: pick 1 or 2.")):
        (where / name).mkdir(parents=True)
        (where / name / "p.json").write_text(_json.dumps({"request": request,
                                                          "targets": ["1", "2"]}))
    (tmp_path / "sweepdir" / "sweep.toml").write_text(
        f'checkpoints = ["c"]\ntasks = "{name}"\n')
    monkeypatch.chdir(tmp_path / "cwd")
    (task,) = load_sweep(tmp_path / "sweepdir" / "sweep.toml").spec.tasks
    assert [p.text for p in task.prompts] == ["Beside the sweep: pick 1 or 2."]
