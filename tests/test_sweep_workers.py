"""Many sweep workers on one store: claims per label (no label scored by two workers at once, a
dead worker's label taken over at once), `--shard I/N`, `--status` (done, partial, failed,
claimed, pending; --json; exit 0/3), `--submit` through submitit's local executor, and the bad
inputs of these options in one line."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from answerdist.cli import sweep as sweep_cli
from answerdist.engine.run import ledger, sweep
from answerdist.engine.run.sweep import Item
from answerdist.files import TEMPORARY
from tests import launch, tiny

STEPS = tuple(f"step{100 * (i + 1)}" for i in range(12))
TASKS = "coin,die,rps,suit"
SCORING = re.compile(r"^scoring (.+) \(pid (\d+) on ")


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    for seed, step in enumerate(STEPS):
        tiny.make_checkpoint(root / "run" / step, arch="llama", hidden=32, heads=4, kv_heads=2,
                             init=0.1, seed=seed)
    return root


def sweep_file(root: Path, out: str, tasks: str = TASKS, pattern: str = "run/step*",
               modes=("chat", "base")) -> Path:
    path = root / f"{out}.toml"
    path.write_text(f'checkpoints = ["{pattern}"]\ntasks = "{tasks}"\n'
                    f'modes = {json.dumps(list(modes))}\nout = "{out}"\n')
    return path


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.parquet"))}


@pytest.fixture(scope="module")
def serial(ladder):
    result = launch.python("sweep", sweep_file(ladder, "serial"))
    assert result.returncode == 0, result.stderr
    return ladder / "serial"


def start_worker(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(launch.python_command("sweep", config), env=launch.ENV,
                            cwd=launch.ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def scoring_starts(logs: list[Path]) -> list[tuple[str, int]]:
    """(labels, pid) of every 'scoring' line the workers wrote."""
    starts = []
    for log in logs:
        for line in log.read_text().splitlines():
            match = SCORING.match(line)
            if match:
                starts.append((match[1], int(match[2])))
    return starts


def test_three_workers_and_a_killed_one_give_the_serial_store(serial, ladder, tmp_path):
    """Three workers start together; one is killed with -9 while it scores and is restarted.
    The store equals the one-process sweep's, file for file; every checkpoint was started once,
    but for the one the killed worker held, which the takeover started once more."""
    config = sweep_file(ladder, "three")
    logs = [tmp_path / f"w{i}.err" for i in range(4)]
    workers = [start_worker(config, logs[i]) for i in range(3)]
    victim, held, deadline = workers[0], None, time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        starts = [s for s in scoring_starts(logs[:1]) if s[1] == victim.pid]
        if starts:
            held = starts[-1][0]
            break
        time.sleep(0.005)
    assert held, "the first worker ended before it started a checkpoint"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    workers.append(start_worker(config, logs[3]))
    codes = [w.wait(timeout=600) for w in workers[1:]]
    assert codes == [0, 0, 0], [log.read_text()[-2000:] for log in logs]
    assert files(ladder / "three") == files(serial)
    assert not list((ladder / "three").rglob(f"*{TEMPORARY}*"))
    starts = scoring_starts(logs)
    counts = {labels: sum(s[0] == labels for s in starts) for labels, _ in starts}
    assert len(counts) == len(STEPS)
    assert all(n == 1 for labels, n in counts.items() if labels != held), counts
    # The killed worker's checkpoint was started once more only by a worker that took over
    # the claim the kernel freed when it died: never by two live workers.
    again = [pid for labels, pid in starts if labels == held and pid != victim.pid]
    assert len(again) == counts[held] - 1 <= 1
    if again:
        assert f"taking over the lock left by pid {victim.pid} on" in "".join(
            log.read_text() for log in logs[1:])


def holder_process(out: Path, labels: list[str]) -> subprocess.Popen:
    """A process that claims the labels as a worker would and then sleeps."""
    code = ("import sys, time\nfrom answerdist.engine.run import ledger\n"
            f"c = ledger.Claims({str(out)!r}, {labels!r})\nassert c.take()\n"
            "print('held', flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=launch.ENV, cwd=launch.ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_label_is_left_to_its_holder_and_taken_over_when_it_dies(ladder, tmp_path):
    config = sweep_file(ladder, "held", tasks="coin", pattern="run/step[12]00", modes=("base",))
    out = ladder / "held"
    holder = holder_process(out, ["step100"])
    try:
        first = launch.python("sweep", config)
        status = launch.python("sweep", config, "--status")
    finally:
        holder.kill()
        holder.wait()
    assert first.returncode == 0, first.stderr
    assert "1 scored, 0 skipped, 0 failed, 1 held by other workers" in first.stdout
    assert f"claimed: step100: by pid {holder.pid} on " in first.stdout
    assert status.returncode == 3
    row = next(line for line in status.stdout.splitlines() if line.startswith("step100 "))
    assert row.split()[1] == "claimed" and f"pid {holder.pid}" in row
    started = time.perf_counter()
    second = launch.python("sweep", config)
    assert second.returncode == 0, second.stderr
    assert "1 scored, 1 skipped, 0 failed, 0 held by other workers" in second.stdout
    assert f"taking over the lock left by pid {holder.pid} on" in second.stderr
    assert time.perf_counter() - started < 120  # no wait for a timeout: the kernel freed it
    assert launch.python("sweep", config, "--status").returncode == 0


@pytest.mark.parametrize("seed", range(40))
def test_shards_cover_every_checkpoint_exactly_once(seed):
    rng = random.Random(seed)
    items = [Item(i, f"/c/{i}", [("base", f"l{i}")], size=rng.randrange(10)) for i in
             range(rng.randrange(0, 30))]
    n = rng.randrange(1, 12)
    shards = [sweep.shard(items, (i, n)) for i in range(n)]
    taken = [item.index for s in shards for item in s]
    assert sorted(taken) == list(range(len(items)))  # each once, none left out
    assert all(abs(len(a) - len(b)) <= 1 for a in shards for b in shards)


def test_shards_through_the_cli(ladder, capsys):
    config = sweep_file(ladder, "shards", modes=("base",))
    seen = []
    for i in range(5):
        assert sweep_cli.main([str(config), "--list", "--shard", f"{i}/5"]) == 0
        seen += [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert sorted(seen) == sorted(STEPS)
    assert not (ladder / "shards").exists()


def test_status_shows_done_partial_failed_claimed_and_pending(ladder, tmp_path):
    for name, step in zip("abcde", STEPS, strict=False):
        (tmp_path / "run").mkdir(exist_ok=True)
        (tmp_path / "run" / name).symlink_to(ladder / "run" / step, target_is_directory=True)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in (ladder / "run" / STEPS[5]).iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\0" * 100)
    (tmp_path / "run" / "c").unlink()
    (tmp_path / "run" / "c").symlink_to(broken, target_is_directory=True)
    config = tmp_path / "s.toml"
    config.write_text('checkpoints = ["run/*"]\ntasks = "coin,die"\nmodes = ["base"]\n'
                      'out = "out"\n')
    partial = tmp_path / "p.toml"  # b gets coin only
    partial.write_text('checkpoints = ["run/b"]\ntasks = "coin"\nmodes = ["base"]\nout = "out"\n')
    assert launch.python("sweep", partial).returncode == 0
    only_a = tmp_path / "a.toml"
    only_a.write_text('checkpoints = ["run/[ac]"]\ntasks = "coin,die"\nmodes = ["base"]\n'
                      'out = "out"\n')
    failing = launch.python("sweep", only_a)
    assert failing.returncode == 1, failing.stderr
    holder = holder_process(tmp_path / "out", ["d"])
    try:
        result = launch.python("sweep", config, "--status", "--json")
        text = launch.python("sweep", config, "--status")
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 3 and text.returncode == 3, result.stderr
    report = json.loads(result.stdout)
    states = {row["label"]: row for row in report["labels"]}
    assert {label: row["state"] for label, row in states.items()} == {
        "a": "done", "b": "partial", "c": "failed", "d": "claimed", "e": "pending"}
    assert states["b"]["tasks_done"] == ["coin"] and states["b"]["tasks_missing"] == ["die"]
    assert "corrupt or truncated" in states["c"]["detail"] or "safetensors" in states["c"]["detail"]
    assert states["d"]["detail"].startswith(f"pid {holder.pid} on ")
    assert report["counts"] == {"done": 1, "claimed": 1, "failed": 1, "partial": 1, "pending": 1}
    rows = {line.split()[0]: line.split()[1] for line in text.stdout.splitlines()[1:6]}
    assert rows == {label: row["state"] for label, row in states.items()}
    # The store records the failure for every machine; scoring the label clears it.
    record = json.loads((tmp_path / "out" / ".sweep" / "c.failed").read_text())
    assert record["checkpoint"] == str(tmp_path / "run" / "c") and record["error"]
    (tmp_path / "run" / "c").unlink()
    (tmp_path / "run" / "c").symlink_to(ladder / "run" / STEPS[2], target_is_directory=True)
    assert launch.python("sweep", config).returncode == 0
    assert not (tmp_path / "out" / ".sweep" / "c.failed").exists()
    done = launch.python("sweep", config, "--status", "--json")
    assert done.returncode == 0, done.stdout
    assert json.loads(done.stdout)["counts"]["done"] == 5


def test_status_reads_no_weights_and_writes_nothing(ladder, tmp_path, capsys, monkeypatch):
    config = sweep_file(ladder, "unread", modes=("base",))
    from answerdist.engine.model import weights

    def refuse(*args, **kwargs):
        raise AssertionError("a weight file was opened")

    monkeypatch.setattr(weights.WeightFile, "__init__", refuse)
    assert sweep_cli.main([str(config), "--status"]) == 3
    out = capsys.readouterr().out
    assert "12 labels: 0 done, 0 claimed, 0 failed, 0 partial, 12 pending" in out
    assert not (ladder / "unread").exists()


def test_the_local_executor_runs_a_four_task_array_to_completion(serial, ladder, tmp_path):
    pytest.importorskip("submitit")
    config = sweep_file(ladder, "array", pattern="run/step[1-4]00")
    result = launch.python("sweep", config, "--submit", "--array", "4", "--cluster", "local",
                           "--gpus-per-task", "0", "--jobs", tmp_path / "jobs")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("submitted 4 array task(s) to local: ")
    assert "exit statuses of the tasks: 0 0 0 0" in result.stdout
    mine = {k: v for k, v in files(serial).items() if k.split("-")[0] in STEPS[:4]}
    assert files(ladder / "array") == mine
    assert launch.python("sweep", config, "--status").returncode == 0
    logs = "".join(p.read_text() for p in (tmp_path / "jobs").glob("*_log.err"))
    assert len([line for line in logs.splitlines() if SCORING.match(line)]) == 4


def exit_status(argv: list[str]) -> int:
    """sweep_cli.main's exit status, argparse's own refusals (SystemExit) included."""
    try:
        return sweep_cli.main(argv)
    except SystemExit as e:
        return e.code


def one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("argv,fragment", [
    (["--shard", "3/2"], "--shard 3/2: I must be from 0 to N - 1"),
    (["--shard", "0/0"], "--shard 0/0: I must be from 0 to N - 1 and N at least 1"),
    (["--shard", "1"], "give I/N"),
    (["--shard=-1/3"], "give I/N"),
    (["--json"], "--json goes with --status"),
    (["--partition", "gpu"], "--partition goes with --submit"),
    (["--submit", "--array", "0"], "--array 0: give a whole number"),
    (["--status", "--submit"], "not allowed with argument"),
])
def test_bad_options_are_one_line(ladder, capsys, argv, fragment):
    config = sweep_file(ladder, "badopts", modes=("base",))
    assert exit_status([str(config), *argv]) == 2
    assert fragment in one_line(capsys)
    assert not (ladder / "badopts").exists()


def test_submit_without_submitit_names_the_extra(ladder, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit: ImportError
    config = sweep_file(ladder, "nosubmitit", modes=("base",))
    assert sweep_cli.main([str(config), "--submit"]) == 2
    assert "pip install 'answerdist[slurm]'" in one_line(capsys)


@pytest.mark.parametrize("kind", ["directory", "fifo", "link"])
def test_a_claim_file_that_is_not_a_regular_file_is_one_line(ladder, tmp_path, capsys, kind):
    config = sweep_file(ladder, "odd", modes=("base",), pattern="run/step100")
    ledger_dir = ladder / "odd" / ".sweep"
    ledger_dir.mkdir(parents=True, exist_ok=True)
    claim = ledger_dir / "step100.claim"
    if claim.is_dir() and not claim.is_symlink():
        claim.rmdir()
    elif claim.exists() or claim.is_symlink():
        claim.unlink()
    {"directory": claim.mkdir, "fifo": lambda: os.mkfifo(claim),
     "link": lambda: claim.symlink_to(tmp_path / "elsewhere")}[kind]()
    for argv in ([], ["--submit", "--cluster", "local"]):
        assert sweep_cli.main([str(config), *argv]) == 2
        assert "step100.claim" in one_line(capsys)
    assert not (tmp_path / "elsewhere").exists()
    assert not list((ladder / "odd").glob("step100"))


def test_an_out_on_a_read_only_file_system_is_one_line(ladder, tmp_path):
    """`out` on a read-only tmpfs, mounted in a mount namespace of the sweep's own (unshare -m),
    so that nothing outlives the test."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("no mount namespace here (unshare -m needs CAP_SYS_ADMIN) to mount a "
                    "read-only file system in")
    where = tmp_path / "ro"
    where.mkdir()
    config = tmp_path / "s.toml"
    config.write_text(f'checkpoints = ["{ladder}/run/step100"]\ntasks = "coin"\n'
                      f'modes = ["base"]\nout = "{where}/results"\n')
    command = " ".join(map(shlex.quote, launch.python_command("sweep", config)))
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o ro,size=1m tmpfs {where} && {command}"],
        env=launch.ENV, cwd=launch.ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not writable" in lines[0] and str(where) in lines[0], lines
    assert not result.stdout


def test_a_store_without_working_locks_is_one_line(ladder, capsys, monkeypatch):
    """flock failing as on a file system without advisory locks (ENOLCK): refused before any
    work, naming what the file system must provide."""
    import fcntl

    real = fcntl.flock

    def no_locks(fd, operation):
        raise OSError(37, "No locks available")

    config = sweep_file(ladder, "nolocks", modes=("base",), pattern="run/step100")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    try:
        assert sweep_cli.main([str(config)]) == 2
    finally:
        monkeypatch.setattr(fcntl, "flock", real)
    line = one_line(capsys)
    assert "cannot take a lock (No locks available)" in line and "NFSv4" in line
    assert not list((ladder / "nolocks").glob("step100"))


def test_the_ledger_is_never_a_label(ladder, tmp_path):
    """OUT/.sweep holds claims and failure records, never results: analysis sees no label."""
    from answerdist.engine.results.guard import StoreFiles

    out = tmp_path / "out"
    ledger.record_failure(out, "x", "/c", "boom")
    assert StoreFiles(out).labels() == []
    assert ledger.read_failure(out, "x")["error"] == "boom"
    ledger.clear_failure(out, "x")
    assert ledger.read_failure(out, "x") is None


def doc_block(starting: str) -> str:
    """The fenced bash block of docs/cluster.md whose first line starts with `starting`."""
    text = (launch.ROOT / "docs" / "cluster.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return next(b for b in blocks if b.startswith(starting))


def test_the_documented_batch_script_and_local_submission_run_as_written(serial, ladder,
                                                                          tmp_path):
    """docs/cluster.md's sbatch script, run as Slurm would run its array tasks (the variables
    Slurm sets, three tasks at once), and its `--cluster local` command, run as written: each
    gives the serial sweep's files."""
    (tmp_path / "run").symlink_to(ladder / "run", target_is_directory=True)
    (tmp_path / "ladder.toml").write_text(
        'checkpoints = ["run/step[1-4]00"]\n'
        f'tasks = "{TASKS}"\nmodes = ["chat", "base"]\nout = "results"\n')
    script = tmp_path / "sweep.sbatch"
    script.write_text(doc_block("#!/bin/bash"))
    env = dict(launch.ENV, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               SLURM_SUBMIT_DIR=str(tmp_path), SLURM_ARRAY_TASK_COUNT="3")
    tasks = [subprocess.Popen(["bash", str(script)], env=dict(env, SLURM_ARRAY_TASK_ID=str(i)),
                              cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    outputs = [task.communicate(timeout=600) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0, 0], outputs
    mine = {k: v for k, v in files(serial).items() if k.split("-")[0] in STEPS[:4]}
    assert files(tmp_path / "results") == mine
    shards = [sorted(line.split()[0] for line in out.splitlines()[1:] if " scored " in line)
              for out, _ in outputs]
    assert shards == [["step100-base", "step100-chat", "step400-base", "step400-chat"],
                      ["step200-base", "step200-chat"], ["step300-base", "step300-chat"]]
    pytest.importorskip("submitit")
    shutil.rmtree(tmp_path / "results")
    command = next(line for line in doc_block("answerdist sweep ladder.toml --submit --array 2 "
                                              "--cluster local").splitlines())
    local = subprocess.run(command, shell=True, env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
    assert local.returncode == 0, local.stdout + local.stderr
    assert "exit statuses of the tasks: 0 0" in local.stdout
    assert files(tmp_path / "results") == mine


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(max_size=12),
                      st.builds(lambda i, n: f"{i}/{n}", st.integers(-3, 40), st.integers(-3, 40))))
def test_any_shard_text_is_a_shard_or_one_line(text):
    """--shard's one parser: a string gives (I, N) with 0 <= I < N, or one SweepError line."""
    try:
        i, n = sweep.parse_shard(text)
    except sweep.SweepError as e:
        assert "\n" not in str(e) and str(e).startswith("--shard ")
    else:
        assert 0 <= i < n
        assert [int(x) for x in re.sub(r"\s", "", text).split("/")] == [i, n]
