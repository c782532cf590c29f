"""`answerdist tasks [SPEC]`: the task groups and their tasks (`answerdist score --list-tasks`)."""

from __future__ import annotations

import sys

from answerdist.engine.tasks import format_task_list, load_tasks, task_groups
from answerdist.errors import ArgumentParser, EngineError


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="answerdist tasks", description="List the tasks of every shipped "
                       "group, or of the tasks SPEC names.")
    p.add_argument("spec", nargs="?", default=None,
                   help="a group, task names ('coin,die'), a task file or a directory of prompt "
                        "files (default: every group)")
    args = p.parse_args(argv)
    return list_tasks(args.spec)


def list_tasks(spec: str | None) -> int:
    """Print the tasks of `spec`, or of every group; 2 with one line on bad input."""
    specs = [spec] if spec is not None else list(task_groups())
    try:
        print("\n\n".join(f"{s}:\n{format_task_list(load_tasks(s))}" for s in specs))
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
