"""`answerdist sweep SWEEP.toml`: score a ladder of checkpoints, resumably, as one worker of any
number sharing the results store: alone, under torchrun, as Slurm array tasks (the sweep file's
keys: answerdist/engine/run/sweep.py; clusters: docs/cluster.md).

    answerdist sweep SWEEP.toml                 a worker: claims and scores checkpoints
    answerdist sweep SWEEP.toml --shard 2/8     a worker restricted to shard 2 of 8
    answerdist sweep SWEEP.toml --status        where every label stands (--json for scripts)
    answerdist sweep SWEEP.toml --submit --array 16 --partition gpu --time 240
                                                a Slurm job array of 16 workers (submitit)
    answerdist sweep SWEEP.toml --list          the labels and checkpoints

Exit status: 0 when every checkpoint was scored, skipped or held by another worker; 1 when the
sweep ran to the end but some checkpoints failed (each one named in the summary with its error);
2 for bad input before any work, with one line and nothing written. `--status`: 0 when every
label is done, 3 when not (a Slurm `afterok` step can gate the analysis on it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from answerdist.cli import keep_freed_memory
from answerdist.cli.tables import print_table
from answerdist.engine.model import distributed
from answerdist.engine.run.submit import CLUSTERS, ArraySettings, submit_array
from answerdist.engine.run.sweep import (
    STATES,
    Item,
    Row,
    SweepError,
    borrowed_labels,
    check_store,
    expand,
    label_states,
    load_sweep,
    parse_shard,
    run_group,
    shard,
    start,
    write_series,
)
from answerdist.errors import ArgumentParser, EngineError

PROG = "answerdist sweep"
NOT_DONE = 3  # --status: some label is not done

# The options of --submit, each with what it sets (answerdist/engine/run/submit.py).
SUBMIT_OPTIONS = ("array", "partition", "gpus_per_task", "cpus_per_task", "time", "max_parallel",
                  "cluster", "jobs")


def parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG,
                       description="Score a ladder of checkpoints, resumably, as one of any "
                                   "number of workers sharing the results store.")
    p.add_argument("sweep", help="sweep file (TOML; see README 'Scaling out')")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true",
                      help="print the labels, groups and checkpoints, and exit")
    what.add_argument("--status", action="store_true",
                      help="print where every label stands (done, claimed, failed, partial, "
                           "pending), reading no weights; exit 0 when all are done, 3 when not")
    what.add_argument("--submit", action="store_true",
                      help="submit a job array of workers through submitit "
                           "(pip install 'answerdist[slurm]'), print the job ids, and exit")
    p.add_argument("--json", action="store_true", help="with --status: JSON on stdout")
    p.add_argument("--shard", metavar="I/N",
                   help="only checkpoints I, I+N, I+2N, ... of the sweep's list (I from 0, as "
                        "sbatch --array=0-(N-1) numbers tasks)")
    sub = p.add_argument_group("--submit")
    sub.add_argument("--array", type=int, metavar="N",
                     help="array tasks, each a worker (default: one per checkpoint)")
    sub.add_argument("--partition", help="Slurm partition (default: the cluster's)")
    sub.add_argument("--gpus-per-task", type=int, metavar="G", help="GPUs per task (default 1)")
    sub.add_argument("--cpus-per-task", type=int, metavar="C", help="CPUs per task")
    sub.add_argument("--time", type=int, metavar="MINUTES",
                     help="time limit of a task (default: the partition's)")
    sub.add_argument("--max-parallel", type=int, metavar="K", help="at most K tasks at once")
    sub.add_argument("--cluster", choices=CLUSTERS,
                     help="slurm (default), or local: the same path as processes on this machine, "
                          "waited for")
    sub.add_argument("--jobs", metavar="DIR",
                     help="submitit's job files and the tasks' logs (default: OUT/.sweep/jobs)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        which = check_options(args)
        if args.status:
            return status(args, which)
        if args.submit:
            return submit(args, which)
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return work(args, which)


def check_options(args) -> tuple[int, int] | None:
    """The options that go together, and numbers in range; the shard asked for."""
    if args.json and not args.status:
        raise SweepError("--json goes with --status")
    given = [name for name in SUBMIT_OPTIONS if getattr(args, name) is not None]
    if given and not args.submit:
        raise SweepError(f"--{given[0].replace('_', '-')} goes with --submit")
    for name in ("array", "gpus_per_task", "cpus_per_task", "time", "max_parallel"):
        value = getattr(args, name)
        low = 0 if name == "gpus_per_task" else 1
        if value is not None and not low <= value <= 10**6:
            raise SweepError(f"--{name.replace('_', '-')} {value}: give a whole number from "
                             f"{low} to 1,000,000")
    return None if args.shard is None else parse_shard(args.shard)


def work(args, which) -> int:
    """Be one worker: claim and score checkpoints until none is left unclaimed."""
    try:
        try:
            layout, sweep, items, borrowed = start(args.sweep)
            if args.list:
                if layout.rank == 0:
                    print_plan(shard(items, which))
                return 0
            with layout.world_group.step(f"checking {sweep.spec.out}"):
                if layout.world_group.lead:
                    check_store(sweep, items)
        except EngineError as e:
            if distributed.reports(e):
                print(f"error: {e}", file=sys.stderr)
            return 2
        rows = run_group(sweep, shard(items, which), layout, borrowed)
        everyone = layout.summary_group.gather_objects(rows if layout.tp.lead else [],
                                                       "gathering the summary")
        if layout.rank == 0:
            rows = merge(items, [r for rows in everyone for r in rows])
            print_summary(rows, layout)
            for path in write_series(sweep, items, rows, borrowed):
                print(f"series: {path}")
        return 1 if any(r.status == "failed" for r in rows) else 0
    except EngineError as e:  # a rank was lost before the summary
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        distributed.shutdown()


def merge(items: list[Item], rows: list[Row]) -> list[Row]:
    """One row per label, in the sweep's order, from the group that did the most with it:
    scored, else failed, else skipped (finished before), else held by another worker."""
    order = {label: (item.index, i) for item in items
             for i, (_, label) in enumerate(item.labels)}
    rank = {"scored": 0, "failed": 1, "skipped": 2, "claimed": 3}
    best = {}
    for row in rows:
        if row.label not in best or rank[row.status] < rank[best[row.label].status]:
            best[row.label] = row
    return sorted(best.values(), key=lambda r: order[r.label])


def status(args, which) -> int:
    sweep = load_sweep(args.sweep)
    every = expand(sweep)
    states = label_states(sweep, shard(every, which), borrowed_labels(sweep, every))
    counts = {state: sum(s.state == state for s in states) for state in STATES}
    if args.json:
        print(json.dumps({"sweep": str(Path(args.sweep).resolve()), "out": str(sweep.spec.out),
                          "counts": counts, "labels": [vars(s) for s in states]}, indent=1))
    else:
        print_table(["label", "state", "checkpoint", "detail"],
                    [[s.label, s.state, s.checkpoint, s.detail] for s in states])
        print(f"{len(states)} labels: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
    return 0 if counts["done"] == len(states) else NOT_DONE


def submit(args, which) -> int:
    sweep = load_sweep(args.sweep)
    items = shard(expand(sweep), which)
    check_store(sweep, items)
    settings = ArraySettings(
        tasks=args.array or len(items), cluster=args.cluster or "slurm",
        folder=Path(args.jobs).resolve() if args.jobs else sweep.spec.out / ".sweep" / "jobs",
        partition=args.partition, gpus=1 if args.gpus_per_task is None else args.gpus_per_task,
        minutes=args.time, parallel=args.max_parallel, cpus=args.cpus_per_task)
    argv = [str(Path(args.sweep).resolve())] + ([] if which is None else ["--shard", args.shard])
    jobs = submit_array(array_task, argv, settings)
    print(f"submitted {len(jobs)} array task(s) to {settings.cluster}: "
          + " ".join(job.job_id for job in jobs))
    print(f"logs: {settings.folder}; progress: {PROG} {argv[0]} --status")
    if settings.cluster != "local":
        return 0
    codes = [job.result() for job in jobs]  # local tasks are processes of this one: wait
    print(f"exit statuses of the tasks: {' '.join(map(str, codes))}")
    return 0 if all(code == 0 for code in codes) else 1


def array_task(argv: list[str]) -> int:
    """What each array task runs: a worker, as `answerdist sweep` with these arguments."""
    keep_freed_memory()
    return main(argv)


def print_plan(items: list[Item]) -> None:
    print_table(["label", "bytes", "checkpoint"],
                [[label, item.size, item.checkpoint] for item in items for _, label in item.labels],
                right=("bytes",))


def print_summary(rows: list[Row], layout) -> None:
    print_table(["label", "group", "status", "scored", "skipped", "seconds", "checkpoint"],
                [[r.label, r.group, r.status, r.scored, r.skipped, f"{r.seconds:.1f}",
                  r.checkpoint] for r in rows], right=("group", "scored", "skipped", "seconds"))
    counts = {status: sum(r.status == status for r in rows)
              for status in ("scored", "skipped", "failed", "claimed")}
    print(f"{len(rows)} labels on {layout.world} rank(s) ({layout.dp_size} group(s) of tp "
          f"{layout.tp.size}): "
          f"{counts['scored']} scored, {counts['skipped']} skipped, {counts['failed']} failed, "
          f"{counts['claimed']} held by other workers")
    for r in rows:
        if r.status == "failed":
            print(f"failed: {r.label}: {r.error}")
        elif r.status == "claimed":
            print(f"claimed: {r.label}: by {r.error}")
