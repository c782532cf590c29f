"""`answerdist sweep` with 1 worker against 2 workers sharing one store, side by side in one run.

Twelve tiny random checkpoints (written by tests/tiny.py through transformers), scored in chat
and base mode on six built-in tasks: once by one `answerdist sweep` process, once by two started
together on another store (each process on one thread, `OMP_NUM_THREADS=1`, as a worker on a
core of its own would run). The two runs alternate `--repeats` times; medians of the whole
processes' wall times (start-up included) and their ratio are printed, with the target (at
least 1.6x on 2 cores) met or not. Both stores must hold the same files, byte for byte: the
benchmark fails otherwise.

    python -m benchmarks.bench_sweep [--repeats 3] [--checkpoints 12] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
TASKS = "coin,die,rps,suit,weekday,card"
TARGET = 1.6


def build(root: Path, n: int) -> None:
    from tests import tiny

    for i in range(n):
        tiny.make_checkpoint(root / "run" / f"step{100 * (i + 1)}", arch="llama", hidden=128,
                             heads=4, kv_heads=2, layers=4, init=0.1, seed=i)


def sweep_file(root: Path, out: str) -> Path:
    path = root / f"{out}.toml"
    path.write_text(f'checkpoints = ["run/step*"]\ntasks = "{TASKS}"\n'
                    f'modes = ["chat", "base"]\nout = "{out}"\n')
    return path


def timed(workers: int, config: Path) -> float:
    """Seconds from starting `workers` sweep processes on one store to the last one's end."""
    out = config.parent / config.stem
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "answerdist", "sweep", str(config)], env=env,
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(workers)]
    errors = [p.communicate()[1] for p in procs]
    seconds = time.perf_counter() - started
    for p, err in zip(procs, errors, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"a sweep worker failed (exit {p.returncode}): {err[-2000:]}")
    return seconds


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.parquet"))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_sweep")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoints", type=int, default=12)
    parser.add_argument("--record", action="store_true",
                        help="write benchmarks/results/sweep-cpu-DATE.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, args.checkpoints)
        one, two = sweep_file(root, "one"), sweep_file(root, "two")
        timed(1, one)  # warm the file cache and Numba/torch caches before timing
        times = {1: [], 2: []}
        for _ in range(args.repeats):
            times[1].append(timed(1, one))
            times[2].append(timed(2, two))
        if files(root / "one") != files(root / "two"):
            raise SystemExit("the two-worker store differs from the one-worker store")
        labels = len(list((root / "one").glob("*/manifest.json")))
    median = {w: statistics.median(t) for w, t in times.items()}
    ratio = median[1] / median[2]
    row = {"checkpoints": args.checkpoints, "labels": labels, "tasks": TASKS,
           "repeats": args.repeats, "cores": os.cpu_count(),
           "one_worker_s": [round(t, 2) for t in times[1]],
           "two_workers_s": [round(t, 2) for t in times[2]],
           "median_one_worker_s": round(median[1], 2), "median_two_workers_s": round(median[2], 2),
           "ratio": round(ratio, 2), "target": TARGET,
           "machine": platform.processor() or platform.machine()}
    print(f"{args.checkpoints} checkpoints x 2 modes x {len(TASKS.split(','))} tasks, "
          f"{args.repeats} repeats, {os.cpu_count()} cores, 1 thread per worker")
    print(f"{'workers':>7}  {'median s':>8}  runs")
    for w in (1, 2):
        print(f"{w:>7}  {median[w]:>8.2f}  {' '.join(f'{t:.2f}' for t in times[w])}")
    print(f"1 worker / 2 workers = {ratio:.2f}x (target >= {TARGET}x: "
          f"{'met' if ratio >= TARGET else 'NOT met'}); the two stores are identical")
    if args.record:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"sweep-cpu-{date.today()}.json"
        path.write_text(json.dumps(row, indent=1) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
