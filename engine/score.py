"""`python -m engine.score CHECKPOINT ...`: exact answer distributions of one checkpoint.

A thin shell over engine/api.py: the flags become an `engine.spec.RunSpec` (defaults and
checks live there; a bad value is one line naming its flag), which `run_spec` scores into
results/<label>/<task>.parquet, variants/<task>.parquet and manifest.json (docs/results.md).
Every input is validated before anything is written; a user error prints one line and exits
with status 2.

`torchrun --nproc-per-node N -m engine.score CHECKPOINT --tp N ...` splits the checkpoint across
N ranks (engine/tp.py); rank 0 writes and prints, and an error on any rank stops all of
them with one line from rank 0 and status 2 (torchrun then reports the failed ranks itself).
"""

from __future__ import annotations

import argparse
import sys

from engine.api import DEFAULT_BATCH_TOKENS, ScoreResult, run_spec
from engine.errors import ArgumentParser, EngineError, ParallelError
from engine.spec import DEFAULT_OUT, DTYPES, MODES, TOKENIZATIONS, RunSpec, SettingError
from engine.tasks import END_RULES, format_task_list, load_tasks, task_groups

__all__ = ["DEFAULT_BATCH_TOKENS", "main", "parse_args", "spec_of"]

# The flags that are RunSpec settings, by setting name; their defaults are RunSpec's.
SETTINGS = ("tasks", "mode", "chat_template", "out", "label", "dtype", "device", "batch_tokens",
            "batch_invariant", "overwrite", "tp", "dist_timeout", "tokenizations",
            "max_tokenizations", "template_date", "template_timeout", "template_max_chars",
            "end", "discover", "temperature", "top_p", "max_new_tokens", "seed", "answers_from")


PROG = "python -m engine.score"


def flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def parse_args(argv=None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if not args.list_tasks and not args.checkpoint:
        p.error("CHECKPOINT is required (or --list-tasks)")
    return args


def parser() -> ArgumentParser:
    d = RunSpec
    p = ArgumentParser(
        prog=PROG,
        description="Score every answer of every task exactly (teacher forcing, no sampling) for "
                    "one checkpoint.",
    )
    p.add_argument("checkpoint", nargs="?", help="local Hugging Face checkpoint directory")
    p.add_argument("--tasks", default=d.tasks,
                   help="all (the 15-task suite) | large (hundreds to 1000 answers each) | "
                        "open (answers found by sampling: with --discover) | name,name | "
                        "path/to/tasks.toml | prompts.json or a directory of them (Zhang et "
                        "al.'s format), or a comma-separated mix "
                        f"(default: {d.tasks})")
    p.add_argument("--mode", default=d.mode, metavar="{" + ",".join(MODES) + "}",
                   help="chat: user message through the chat template; base: plain completion; "
                        f"auto: chat when a template exists (default: {d.mode})")
    p.add_argument("--chat-template", metavar="PATH_OR_CHECKPOINT",
                   help="borrow a chat template from another checkpoint directory or a .jinja file")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help=f"results root directory (default: {DEFAULT_OUT})")
    p.add_argument("--label",
                   help="name of this checkpoint's results (default: the directory name)")
    p.add_argument("--dtype", default=d.dtype, metavar="{" + ",".join(DTYPES) + "}",
                   help=f"weights and activations; float32 is the exact reference "
                        f"(default: {d.dtype})")
    p.add_argument("--device", default=d.device, help=f"auto | cpu | cuda (default: {d.device})")
    p.add_argument("--batch-tokens", type=int, default=d.batch_tokens,
                   help=f"tokens per forward pass on the packed (CUDA) path "
                        f"(default: {d.batch_tokens})")
    p.add_argument("--batch-invariant", action="store_true",
                   help="on the GPU, a forward pass per prompt instead of packing prompts "
                        "together: results bitwise independent of --batch-tokens and of the other "
                        "prompts, as they always are on the CPU (slower)")
    p.add_argument("--overwrite", action="store_true",
                   help="rescore the given tasks even if finished or scored from another "
                        "checkpoint or settings; other tasks under the label are left as they are")
    p.add_argument("--tp", type=int, default=d.tp, metavar="N",
                   help="split the model across N ranks launched by torchrun --nproc-per-node N "
                        f"(tensor parallelism; default: {d.tp})")
    p.add_argument("--dist-timeout", type=float, default=d.dist_timeout, metavar="SECONDS",
                   help="how long a rank waits for the others at a collective before giving up "
                        f"(default: {d.dist_timeout:g})")
    p.add_argument("--tokenizations", default=d.tokenizations,
                   metavar="{" + ",".join(TOKENIZATIONS) + "}",
                   help="canonical: each answer's own tokens (default); all: every token sequence "
                        "that spells it (P of the answer's text), with the non-canonical share "
                        "reported")
    p.add_argument("--max-tokenizations", type=int, default=d.max_tokenizations, metavar="N",
                   help=f"with --tokenizations all, refuse a variant with more than N (default "
                        f"{d.max_tokenizations})")
    p.add_argument("--end", default=None, metavar="{" + ",".join(END_RULES) + "}",
                   help="what follows every answer, overriding each task's end: boundary (a "
                        "token that ends a word), turn (the whole reply, then the end of the "
                        "turn), line (a newline or the end of the turn); default: each task's own")
    p.add_argument("--discover", type=int, default=None, metavar="N",
                   help="open tasks (answers = \"open\"): sample N replies per prompt to find "
                        "the answers, then score every answer found exactly")
    p.add_argument("--answers-from", default=None, metavar="LABEL[,LABEL]",
                   help="open tasks: also score the answers discovered under these labels of "
                        "--out (their union), so that a ladder's checkpoints share one answer set")
    p.add_argument("--temperature", type=float, default=d.temperature,
                   help=f"sampling temperature for --discover (default: {d.temperature:g})")
    p.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="nucleus sampling for --discover: draw from the smallest set of tokens "
                        "holding probability P (default: the whole vocabulary)")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, metavar="N",
                   help="a sampled reply longer than N tokens is counted as unfinished "
                        f"(default: {d.max_new_tokens})")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the sampled replies; reply i of a prompt depends only on the "
                        f"seed, the task, the prompt and i (default: {d.seed})")
    p.add_argument("--template-date", default=d.template_date, metavar="YYYY-MM-DD",
                   help="the date a chat template's strftime_now renders (Llama 3.x templates put "
                        f"it in the prompt), fixed so that a run is the same any day (default: "
                        f"{d.template_date})")
    p.add_argument("--template-timeout", type=float, default=d.template_timeout, metavar="SECONDS",
                   help="give up on a chat template that takes longer to render one prompt "
                        f"(default: {d.template_timeout:g})")
    p.add_argument("--template-max-chars", type=int, default=d.template_max_chars, metavar="N",
                   help="give up on a chat template that renders a prompt longer than N characters "
                        f"(default: {d.template_max_chars})")
    p.add_argument("--list-tasks", action="store_true", help="list the tasks and exit")
    return p


def spec_of(args: argparse.Namespace) -> RunSpec:
    """The run the flags describe; a bad value raises an EngineError naming its flag."""
    try:
        return RunSpec(**{name: getattr(args, name) for name in SETTINGS})
    except SettingError as e:
        raise EngineError(f"{e.worded(flag(e.key))} (see {PROG} --help)") from None


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
        try:
            spec = spec_of(args)
        except EngineError as e:  # every rank of a launch reads the same flags and task files
            raise distributed.everywhere(e) from None
        layout = distributed.setup(spec.tp, spec.device, spec.dist_timeout)
        if layout.world != spec.tp:
            raise distributed.everywhere(ParallelError(
                f"torchrun started {layout.world} processes but --tp is {spec.tp}: engine.score "
                f"splits one checkpoint across all of them; pass --tp {layout.world}, or score "
                "several checkpoints with python -m engine.sweep"))
        result = run_spec(args.checkpoint, spec)
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
    print(f"{result.directory}  ({manifest['mode']} mode, "
          f"token efficiency {manifest['token_efficiency']:.3f})")
    print(f"{'task':<12} {'prompts':>7} {'entropy':>8} {'top answer':<20} {'p(top)':>7} "
          f"{'coverage':>8}")
    for name, s in result.summary().items():
        print(f"{name:<12} {s['prompts']:>7} {s['entropy_bits']:>8.3f} {s['top_answer'][:20]:<20} "
              f"{s['top_prob']:>7.3f} {s['coverage']:>8.3f}")
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
    return (f"{task}: {counts['samples']} replies sampled, {counts['finished']} finished, "
            f"{counts['unfinished']} unfinished (past --max-new-tokens), {counts['other_end']} "
            f"ended at another special token, {counts['no_answer']} normalised to nothing; "
            f"{answers} answers scored" + (f", joined with {joined}" if joined else ""))


if __name__ == "__main__":
    sys.exit(main())
