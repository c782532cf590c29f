"""`python -m engine.score CHECKPOINT ...`: exact answer distributions of one checkpoint.

Writes results/<label>/<task>.parquet and results/<label>/manifest.json (DESIGN.md). Every
input is validated (checkpoint, tasks, tokenization of every prompt and answer, context length,
output location) before anything is written; a user error prints one line and exits with 2.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import engine
from engine.chat import load_chat_template
from engine.errors import EngineError, OutputError
from engine.results import ResultsStore, check_writable, fingerprint, summarize
from engine.scorer import PromptEncoder, boundary_mask, packs_sequences, score_task, task_sequences
from engine.tasks import format_task_list, load_tasks

DEFAULT_BATCH_TOKENS = 8192
LABEL = re.compile(r"(?!\.\.?$)[A-Za-z0-9._-]+")  # a directory name under --out, never a path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m engine.score",
        description="Score every answer of every task exactly (teacher forcing, no sampling) for one checkpoint.",
    )
    p.add_argument("checkpoint", nargs="?", help="local Hugging Face checkpoint directory")
    p.add_argument("--tasks", default="all", help="all | name,name | path/to/tasks.toml (default: all)")
    p.add_argument("--mode", choices=["auto", "chat", "base"], default="auto",
                   help="chat: user message through the chat template; base: plain completion; "
                        "auto: chat when a template exists (default)")
    p.add_argument("--chat-template", metavar="PATH_OR_CHECKPOINT",
                   help="borrow a chat template from another checkpoint directory or a .jinja file")
    p.add_argument("--out", default="results", help="results root directory (default: results)")
    p.add_argument("--label", help="name of this checkpoint's results (default: the directory name)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS,
                   help=f"tokens per forward pass (default: {DEFAULT_BATCH_TOKENS})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace results of a different checkpoint or settings under the same label")
    p.add_argument("--list-tasks", action="store_true", help="list the tasks and exit")
    args = p.parse_args(argv)
    if not args.list_tasks and not args.checkpoint:
        p.error("CHECKPOINT is required (or --list-tasks)")
    if args.batch_tokens < 1:
        p.error("--batch-tokens must be a positive integer")
    if args.label is not None and not LABEL.fullmatch(args.label):
        p.error(f"--label {args.label!r} must be a plain name (letters, digits, '.', '_', '-'), not a path")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    tasks = load_tasks(args.tasks)
    if args.list_tasks:
        print(format_task_list(tasks))
        return 0
    out = Path(args.out)
    check_writable(out)
    started = time.perf_counter()
    checkpoint = engine.load(args.checkpoint, dtype=args.dtype, device=args.device)
    template = load_chat_template(args.chat_template, checkpoint.special_tokens) if args.chat_template else None
    has_template = template is not None or checkpoint.has_chat_template
    mode = args.mode if args.mode != "auto" else ("chat" if has_template else "base")
    encoder = PromptEncoder(checkpoint, mode, template)
    sequences = {task.name: task_sequences(encoder, task) for task in tasks}  # validates everything
    load_seconds = time.perf_counter() - started

    label = args.label or checkpoint.path.resolve().name
    if not LABEL.fullmatch(label):
        raise OutputError(f"{checkpoint.path}: its directory name {label!r} cannot be a label; pass --label NAME")
    batch_invariant = not packs_sequences(checkpoint)
    run_key = {
        "fingerprint": fingerprint(checkpoint.path),
        "dtype": args.dtype,
        "mode": mode,
        "chat_template": encoder.template.text if mode == "chat" else None,
        "engine_version": engine.__version__,
        "batch_invariant": batch_invariant,
        # Packed results depend on how prompts share rows; invariant ones do not.
        "batch_tokens": None if batch_invariant else args.batch_tokens,
    }
    if args.overwrite and (out / label).exists():
        shutil.rmtree(out / label)
    store = ResultsStore(out, label, run_key)
    todo = [t for t in tasks if not store.is_done(t)]
    boundary = boundary_mask(checkpoint)
    with tqdm(total=sum(len(t.prompts) for t in todo), unit="prompt", disable=None, file=sys.stderr) as bar:
        for task in todo:
            bar.set_description(task.name)
            scores = score_task(checkpoint, encoder, task, sequences[task.name], boundary,
                                args.batch_tokens, progress=bar)
            store.write_task(scores)
    store.save_manifest(
        checkpoint=str(checkpoint.path.resolve()),
        fingerprint=run_key["fingerprint"],
        engine_version=engine.__version__,
        dtype=args.dtype,
        device=str(checkpoint.device),
        mode=mode,
        chat_template_source=encoder.template.source if mode == "chat" else None,
        torch_version=torch.__version__,
        batch_tokens=args.batch_tokens,
        batch_invariant=batch_invariant,
        timings={"load_and_validate_s": round(load_seconds, 3),
                 "total_s": round(time.perf_counter() - started, 3),
                 "skipped_tasks": len(tasks) - len(todo)},
    )
    print_summary(store, tasks, mode)
    return 0


def print_summary(store: ResultsStore, tasks, mode: str) -> None:
    print(f"{store.directory}  ({mode} mode, token efficiency {store.manifest['token_efficiency']:.3f})")
    print(f"{'task':<12} {'prompts':>7} {'entropy':>8} {'top answer':<20} {'p(top)':>7} {'coverage':>8}")
    for task in tasks:
        s = summarize(store.read_task(task.name))
        print(f"{task.name:<12} {s['prompts']:>7} {s['entropy_bits']:>8.3f} {s['top_answer'][:20]:<20} "
              f"{s['top_prob']:>7.3f} {s['coverage']:>8.3f}")


if __name__ == "__main__":
    sys.exit(main())
