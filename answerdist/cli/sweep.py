"""`answerdist sweep SWEEP.toml`: score a ladder of checkpoints, resumably, on one process or
across GPUs and nodes under torchrun (the sweep file's keys: answerdist/engine/run/sweep.py and
README "Scaling out").

Exit status: 0 when every checkpoint was scored or skipped; 1 when the sweep ran to the end but
some checkpoints failed (each one named in the summary with its error); 2 for bad input before
any work, with one line and nothing written.
"""

from __future__ import annotations

import sys

from answerdist.engine.model import distributed
from answerdist.engine.run.sweep import Item, Row, lock_results, run_group, start, write_series
from answerdist.errors import ArgumentParser, EngineError

PROG = "answerdist sweep"


def main(argv=None) -> int:
    p = ArgumentParser(prog=PROG,
                       description="Score a ladder of checkpoints, resumably, alone or under "
                                   "torchrun.")
    p.add_argument("sweep", help="sweep file (TOML; see README 'Scaling out')")
    p.add_argument("--list", action="store_true",
                   help="print the labels, groups and checkpoints, and exit")
    args = p.parse_args(argv)
    lock = None
    try:
        try:
            layout, sweep, items, borrowed = start(args.sweep)
            if args.list:
                if layout.rank == 0:
                    print_plan(items, layout.dp_size)
                return 0
            lock = lock_results(sweep, layout)
        except EngineError as e:
            if distributed.reports(e):
                print(f"error: {e}", file=sys.stderr)
            return 2
        rows = run_group(sweep, items[layout.dp_rank::layout.dp_size], layout, borrowed)
        everyone = layout.summary_group.gather_objects(rows if layout.tp.lead else [],
                                                       "gathering the summary")
        order = {label: (item.index, i) for item in items
                 for i, (_, label) in enumerate(item.labels)}
        rows = sorted((r for rows in everyone for r in rows), key=lambda r: order[r.label])
        if layout.rank == 0:
            print_summary(rows, layout)
            for path in write_series(sweep, items, rows):
                print(f"series: {path}")
        return 1 if any(r.status == "failed" for r in rows) else 0
    except EngineError as e:  # a rank was lost before the summary
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
        distributed.shutdown()


def print_plan(items: list[Item], groups: int) -> None:
    print(f"{'label':<28} {'group':>5}  checkpoint")
    for item in items:
        for _, label in item.labels:
            print(f"{label:<28} {item.index % groups:>5}  {item.checkpoint}")


def print_summary(rows: list[Row], layout) -> None:
    print(f"{'label':<28} {'group':>5} {'status':<8} {'scored':>6} {'skipped':>7} "
          f"{'seconds':>8}  checkpoint")
    for r in rows:
        print(f"{r.label:<28} {r.group:>5} {r.status:<8} {r.scored:>6} {r.skipped:>7} "
              f"{r.seconds:>8.1f}  {r.checkpoint}")
    counts = {status: sum(r.status == status for r in rows)
              for status in ("scored", "skipped", "failed")}
    print(f"{len(rows)} labels on {layout.world} rank(s) ({layout.dp_size} group(s) of tp "
          f"{layout.tp.size}): "
          f"{counts['scored']} scored, {counts['skipped']} skipped, {counts['failed']} failed")
    for r in rows:
        if r.status == "failed":
            print(f"failed: {r.label}: {r.error}")
