"""`python -m engine.score CHECKPOINT ...`: exact answer distributions of one checkpoint.

A thin shell over `engine.score_checkpoint` (engine/api.py): it writes
results/<label>/<task>.parquet, variants/<task>.parquet and manifest.json (docs/results.md).
Every input is validated before anything is written; a user error prints one line and exits
with status 2.

`torchrun --nproc-per-node N -m engine.score CHECKPOINT --tp N ...` splits the checkpoint across
N ranks (engine/distributed.py); rank 0 writes and prints, and an error on any rank stops all of
them with one line from rank 0 and status 2 (torchrun then reports the failed ranks itself).
"""

from __future__ import annotations

import argparse
import sys

from engine.api import DEFAULT_BATCH_TOKENS, LABEL, ScoreResult, score_checkpoint
from engine.errors import ArgumentParser, EngineError, ParallelError
from engine.tasks import format_task_list, load_tasks, task_groups
from engine.tokenizations import DEFAULT_MAX_TOKENIZATIONS, TOKENIZATIONS

__all__ = ["DEFAULT_BATCH_TOKENS", "main", "parse_args"]


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(
        prog="python -m engine.score",
        description="Score every answer of every task exactly (teacher forcing, no sampling) for one checkpoint.",
    )
    p.add_argument("checkpoint", nargs="?", help="local Hugging Face checkpoint directory")
    p.add_argument("--tasks", default="all",
                   help="all (the 15-task suite) | large (hundreds to 1000 answers each) | name,name | "
                        "path/to/tasks.toml, or a comma-separated mix (default: all)")
    p.add_argument("--mode", choices=["auto", "chat", "base"], default="auto",
                   help="chat: user message through the chat template; base: plain completion; "
                        "auto: chat when a template exists (default)")
    p.add_argument("--chat-template", metavar="PATH_OR_CHECKPOINT",
                   help="borrow a chat template from another checkpoint directory or a .jinja file")
    p.add_argument("--out", default="results", help="results root directory (default: results)")
    p.add_argument("--label", help="name of this checkpoint's results (default: the directory name)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="weights and activations; float32 is the exact reference (default: float32)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS,
                   help=f"tokens per forward pass on the packed (CUDA) path (default: {DEFAULT_BATCH_TOKENS})")
    p.add_argument("--batch-invariant", action="store_true",
                   help="on the GPU, a forward pass per prompt instead of packing prompts together: "
                        "results bitwise independent of --batch-tokens and of the other prompts, as "
                        "they always are on the CPU (slower)")
    p.add_argument("--overwrite", action="store_true",
                   help="rescore the given tasks even if finished or scored from another checkpoint or "
                        "settings; other tasks under the label are left as they are")
    p.add_argument("--tp", type=int, default=1, metavar="N",
                   help="split the model across N ranks launched by torchrun --nproc-per-node N "
                        "(tensor parallelism; default: 1)")
    p.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                   help="how long a rank waits for the others at a collective before giving up "
                        "(default: 1800)")
    p.add_argument("--tokenizations", choices=list(TOKENIZATIONS), default="canonical",
                   help="canonical: each answer's own tokens (default); all: every token sequence that "
                        "spells it (P of the answer's text), with the non-canonical share reported")
    p.add_argument("--max-tokenizations", type=int, default=DEFAULT_MAX_TOKENIZATIONS, metavar="N",
                   help=f"with --tokenizations all, refuse a variant with more than N (default "
                        f"{DEFAULT_MAX_TOKENIZATIONS})")
    p.add_argument("--list-tasks", action="store_true", help="list the tasks and exit")
    args = p.parse_args(argv)
    if not args.list_tasks and not args.checkpoint:
        p.error("CHECKPOINT is required (or --list-tasks)")
    if args.batch_tokens < 1:
        p.error("--batch-tokens must be a positive integer")
    if args.tp < 1:
        p.error("--tp must be a positive integer")
    if args.dist_timeout is not None and args.dist_timeout <= 0:
        p.error("--dist-timeout must be a positive number of seconds")
    if args.max_tokenizations < 1:
        p.error("--max-tokenizations must be a positive integer")
    if args.label is not None and not LABEL.fullmatch(args.label):
        p.error(f"--label {args.label!r} must be a plain name (letters, digits, '.', '_', '-'), not a path")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list_tasks:  # every group, unless --tasks names some
        specs = [args.tasks] if args.tasks != "all" else list(task_groups())
        try:
            print("\n\n".join(f"{spec}:\n{format_task_list(load_tasks(spec))}" for spec in specs))
        except EngineError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    from engine import distributed

    try:
        layout = distributed.setup(args.tp, args.device, args.dist_timeout)
        if layout.world != args.tp:
            raise distributed.everywhere(ParallelError(
                f"torchrun started {layout.world} processes but --tp is {args.tp}: engine.score splits "
                f"one checkpoint across all of them; pass --tp {layout.world}, or score several "
                "checkpoints with python -m engine.sweep"))
        result = score_checkpoint(
            args.checkpoint, tasks=args.tasks, mode=args.mode, dtype=args.dtype, device=args.device,
            out=args.out, label=args.label, batch_tokens=args.batch_tokens,
            chat_template=args.chat_template, overwrite=args.overwrite,
            tokenizations=args.tokenizations, max_tokenizations=args.max_tokenizations, tp=args.tp,
            batch_invariant=args.batch_invariant)
    except EngineError as e:
        if distributed.reports(e):
            print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()
    if layout.rank == 0:
        print_summary(result)
    return 0


def print_summary(result: ScoreResult) -> None:
    manifest = result.manifest
    print(f"{result.directory}  ({manifest['mode']} mode, token efficiency {manifest['token_efficiency']:.3f})")
    print(f"{'task':<12} {'prompts':>7} {'entropy':>8} {'top answer':<20} {'p(top)':>7} {'coverage':>8}")
    for name, s in result.summary().items():
        print(f"{name:<12} {s['prompts']:>7} {s['entropy_bits']:>8.3f} {s['top_answer'][:20]:<20} "
              f"{s['top_prob']:>7.3f} {s['coverage']:>8.3f}")


if __name__ == "__main__":
    sys.exit(main())
