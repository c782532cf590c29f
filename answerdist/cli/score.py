"""`answerdist score CHECKPOINT ...`: exact answer distributions of one checkpoint.

A thin shell over answerdist/engine/run/api.py: the flags, made from the settings' declarations
(answerdist/engine/settings.py), become a `RunSpec` (a bad value is one line naming its flag),
which `run_spec` scores into results/<label>/<task>.parquet, variants/<task>.parquet and
manifest.json (docs/results.md). Every input is validated before anything is written; a user
error prints one line and exits with status 2.

`torchrun --nproc-per-node N -m answerdist score CHECKPOINT --tp N ...` splits the checkpoint
across N ranks; rank 0 writes and prints, and an error on any rank stops all of them with one
line from rank 0 and status 2 (torchrun then reports the failed ranks itself).
"""

from __future__ import annotations

import argparse
import sys

from answerdist.cli.tables import print_table
from answerdist.cli.tasks import list_tasks
from answerdist.engine.model import distributed
from answerdist.engine.results.schema import ScoreResult
from answerdist.engine.run.api import DEFAULT_BATCH_TOKENS, run_spec
from answerdist.engine.scoring.discovery import fates
from answerdist.engine.settings import CLI, RunSpec, SettingError, declared
from answerdist.errors import ArgumentParser, EngineError, ParallelError

__all__ = ["DEFAULT_BATCH_TOKENS", "main", "parse_args", "spec_of"]

PROG = "answerdist score"
# argparse's type of a setting, from its annotation (RunSpec checks the value itself)
TYPES = {"int": int, "int | None": int, "float": float, "float | None": float}


def flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def parse_args(argv=None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if not args.list_tasks and not args.checkpoint:
        p.error("CHECKPOINT is required (or --list-tasks)")
    return args


def parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Score every answer of every task exactly (teacher forcing, no sampling) for "
                    "one checkpoint.",
    )
    p.add_argument("checkpoint", nargs="?", help="local Hugging Face checkpoint directory")
    for setting in declared(CLI):
        default, meta = setting.metadata["command_default"], setting.metadata
        if setting.type == "bool":
            p.add_argument(flag(setting.name), action="store_true", help=meta["help"])
            continue
        shown = "" if default is None else f" (default: {default:g})" if isinstance(
            default, float) else f" (default: {default})"
        p.add_argument(flag(setting.name), default=default, metavar=meta["metavar"],
                       type=TYPES.get(setting.type, str), help=meta["help"] + shown)
    p.add_argument("--list-tasks", action="store_true", help="list the tasks and exit")
    return p


def spec_of(args: argparse.Namespace) -> RunSpec:
    """The run the flags describe; a bad value raises an EngineError naming its flag."""
    try:
        return RunSpec(**{s.name: getattr(args, s.name) for s in declared(CLI)})
    except SettingError as e:
        raise EngineError(f"{e.worded(flag(e.key))} (see {PROG} --help)") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list_tasks:  # every group, unless --tasks names some
        return list_tasks(args.tasks if args.tasks != "all" else None)
    try:
        try:
            spec = spec_of(args)
        except EngineError as e:  # every rank of a launch reads the same flags and task files
            raise distributed.everywhere(e) from None
        layout = distributed.setup(spec.tp, spec.device, spec.dist_timeout)
        if layout.world != spec.tp:
            raise distributed.everywhere(ParallelError(
                f"torchrun started {layout.world} processes but --tp is {spec.tp}: answerdist "
                f"score splits one checkpoint across all of them; pass --tp {layout.world}, or "
                "score several checkpoints with answerdist sweep"))
        result = run_spec(args.checkpoint, spec)
    except EngineError as e:
        if distributed.reports(e):  # a setting refused only once the model is known: its flag
            print(f"error: {e.worded(flag(e.key)) if isinstance(e, SettingError) else e}",
                  file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()
    if layout.rank == 0:
        print_summary(result)
    return 0


def print_summary(result: ScoreResult) -> None:
    manifest = result.manifest
    print(f"{result.directory}  ({manifest['mode']} mode, "
          f"token efficiency {manifest['token_efficiency']:.3f})")
    print_table(["task", "prompts", "entropy", "p(top)", "coverage", "top answer"],
                [[name, s["prompts"], f"{s['entropy_bits']:.3f}", f"{s['top_prob']:.3f}",
                  f"{s['coverage']:.3f}", s["top_answer"]]
                 for name, s in result.summary().items()],
                right=("prompts", "entropy", "p(top)", "coverage"))
    for name, entry in manifest["tasks"].items():
        if entry.get("discovery") and name in result.tables:
            answers = len(result.tables[name]["answer"].unique())
            print(discovery_line(name, entry["discovery"], answers, entry.get("answers_from")))


def discovery_line(task: str, counts: dict, answers: int, borrowed: list[str] | None) -> str:
    """How an open task's samples ended (the unfinished ones are said, never dropped), and
    where its answers came from."""
    joined = f"the answers discovered under {', '.join(borrowed)}" if borrowed else ""
    if not counts["samples"]:
        return f"{task}: {answers} answers scored, {joined}"
    return (f"{task}: {counts['samples']} replies sampled: {fates(counts)}; "
            f"{answers} answers scored" + (f", joined with {joined}" if joined else ""))
