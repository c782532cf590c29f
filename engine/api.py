"""The Python API: score a checkpoint's tasks, in memory or into the results store.

    import engine
    result = engine.score_checkpoint("/models/olmo2-1b", tasks="coin,rng_1_10", out="results")
    result.to_pandas()             # one row per (prompt, answer); variants=True: per variant

`python -m engine.score` is a thin shell over `score_checkpoint`. Every input is validated
(checkpoint, tasks, tokenization of every prompt and answer, context length, output location)
before anything is written; a user error raises an `EngineError` with one line.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

import engine
from engine.errors import DeviceError, OutputError
from engine.results import (
    MAIN_SCHEMA,
    VARIANT_SCHEMA,
    LabelLock,
    ResultsStore,
    add_token_totals,
    check_writable,
    main_table,
    notice,
    summarize,
    task_info,
    variant_table,
)
from engine.tasks import Task, load_tasks
from engine.tokenizations import DEFAULT_MAX_TOKENIZATIONS, TOKENIZATIONS
from kernels import KernelUnsupportedError

DEFAULT_BATCH_TOKENS = 8192
LABEL = re.compile(r"(?!\.\.?$)[A-Za-z0-9._-]+")  # a directory name under --out, never a path


@dataclass
class ScoreResult:
    """What one scoring run produced: per-task Arrow tables and the manifest.

    `tables[task]` has one row per (prompt, answer), `variant_tables[task]` one row per
    (prompt, surface variant); columns as in docs/results.md. `directory` is the label's
    directory in the results store, or None when nothing was written (`out=None`)."""

    label: str
    manifest: dict
    tables: dict[str, pa.Table] = field(default_factory=dict)
    variant_tables: dict[str, pa.Table] = field(default_factory=dict)
    directory: Path | None = None

    def to_arrow(self, variants: bool = False) -> pa.Table:
        """All tasks in one table (task order as scored)."""
        tables = list((self.variant_tables if variants else self.tables).values())
        schema = VARIANT_SCHEMA if variants else MAIN_SCHEMA
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def to_pandas(self, variants: bool = False):
        """`to_arrow` as a pandas DataFrame (needs the optional pandas extra)."""
        try:
            import pandas  # noqa: F401
        except ModuleNotFoundError:
            raise ModuleNotFoundError(
                "ScoreResult.to_pandas needs pandas: pip install 'answerdist[pandas]' "
                "(or use to_arrow())") from None
        return self.to_arrow(variants).to_pandas()

    def summary(self) -> dict[str, dict]:
        """Per task: prompts, mean entropy (bits), top answer and its mean probability, coverage."""
        return {name: summarize(table) for name, table in self.tables.items()}


def score_checkpoint(checkpoint, tasks="all", mode: str = "auto", dtype: str | None = None,
                     device: str | None = None, out=None, label: str | None = None,
                     batch_tokens: int = DEFAULT_BATCH_TOKENS, chat_template=None,
                     overwrite: bool = False, progress: bool | None = None,
                     tokenizations: str = "canonical",
                     max_tokenizations: int = DEFAULT_MAX_TOKENIZATIONS) -> ScoreResult:
    """Score every answer of every task exactly for one checkpoint.

    checkpoint: a local Hugging Face directory, or a `Checkpoint` from `engine.load` (then
        `dtype` and `device` come from it). tasks: "all", "name,name", a .toml path, or a list
        of `Task`. mode: "auto" (chat when a template exists), "chat" or "base".
        chat_template: a checkpoint directory or template file to borrow a template from.
        tokenizations: "canonical" scores each variant's own tokenization; "all" every token
        sequence that spells it (at most `max_tokenizations` per variant, else an error), and
        reports the non-canonical share of each answer's probability.
    out: a results root to write `out/label/` into, resuming finished tasks (as the CLI does);
        None scores in memory and writes nothing. overwrite: rescore the given tasks even if
        finished or produced by another checkpoint or settings (other tasks are left alone).
    progress: a progress bar on stderr (None: only on a terminal).
    """
    from engine.chat import load_chat_template
    from engine.checkpoint import Checkpoint
    from engine.scorer import (
        PromptEncoder,
        packs_sequences,
        score_task,
        task_sequences,
    )

    if batch_tokens < 1:
        raise OutputError(f"batch_tokens must be a positive integer, got {batch_tokens}")
    if label is not None and not LABEL.fullmatch(label):
        raise OutputError(f"label {label!r} must be a plain name (letters, digits, '.', '_', '-'), not a path")
    tasks = list(tasks) if isinstance(tasks, (list, tuple)) and all(isinstance(t, Task) for t in tasks) \
        else load_tasks(tasks)
    if out is not None:
        check_writable(Path(out), label)
    started = time.perf_counter()
    if isinstance(checkpoint, Checkpoint):
        ck = checkpoint
    else:
        ck = engine.load(checkpoint, dtype=dtype or "float32", device=device or "auto")
    template = load_chat_template(chat_template, ck.special_tokens) if chat_template else None
    if mode == "auto":
        mode = "chat" if template is not None or ck.has_chat_template else "base"
    if tokenizations not in TOKENIZATIONS:
        raise OutputError(f"tokenizations {tokenizations!r} must be one of {', '.join(TOKENIZATIONS)}")
    if max_tokenizations < 1:
        raise OutputError(f"max_tokenizations must be a positive integer, got {max_tokenizations}")
    encoder = PromptEncoder(ck, mode, template, tokenizations, max_tokenizations)
    sequences = {task.name: task_sequences(encoder, task) for task in tasks}  # validates everything
    load_seconds = time.perf_counter() - started

    label = label or ck.path.resolve().name
    if not LABEL.fullmatch(label):
        raise OutputError(f"{ck.path}: its directory name {label!r} cannot be a label; pass a label")
    dtype_name = str(ck.dtype).removeprefix("torch.")
    batch_invariant = not packs_sequences(ck)
    chat = encoder.template if mode == "chat" else None
    # Qwen 3's hybrid-reasoning switch: scored with thinking off unless the template says otherwise.
    thinking = chat.enable_thinking if chat is not None and chat.uses_thinking_switch else None
    run = {
        "fingerprint": ck.fingerprint,
        "dtype": dtype_name,
        "mode": mode,
        "chat_template": chat.text if chat is not None else None,
        "enable_thinking": thinking,
        "tokenizations": tokenizations if tokenizations == "canonical" else f"all<={max_tokenizations}",
        "engine_version": engine.__version__,
        "batch_invariant": batch_invariant,
        # Packed results depend on how prompts share rows; invariant ones do not.
        "batch_tokens": None if batch_invariant else batch_tokens,
    }
    boundary = encoder.boundary

    def score(task):
        try:
            return score_task(ck, encoder, task, sequences[task.name], boundary, batch_tokens, progress=bar)
        except KernelUnsupportedError as e:  # e.g. float16 or head_dim > 256 on the GPU
            raise DeviceError(str(e)) from None

    def about(skipped: int) -> dict:
        import torch

        return dict(
            checkpoint=str(ck.path.resolve()), fingerprint=ck.fingerprint,
            engine_version=engine.__version__, dtype=dtype_name, device=str(ck.device), mode=mode,
            chat_template_source=chat.source if chat is not None else None, enable_thinking=thinking,
            tokenizations=tokenizations, max_tokenizations=max_tokenizations if tokenizations == "all" else None,
            torch_version=torch.__version__, batch_tokens=batch_tokens, batch_invariant=batch_invariant,
            timings={"load_and_validate_s": round(load_seconds, 3),
                     "total_s": round(time.perf_counter() - started, 3), "skipped_tasks": skipped})

    from tqdm import tqdm

    if out is None:
        result = ScoreResult(label, {"label": label, "run": run, "tasks": {}})
        with tqdm(total=sum(len(t.prompts) for t in tasks), unit="prompt", disable=_quiet(progress),
                  file=sys.stderr) as bar:
            for task in tasks:
                bar.set_description(task.name)
                scores = score(task)
                result.tables[task.name] = main_table(scores, label)
                result.variant_tables[task.name] = variant_table(scores, label)
                result.manifest["tasks"][task.name] = task_info(scores)
        result.manifest.update(about(0))
        add_token_totals(result.manifest)
        return result

    directory = Path(out) / label
    created = not directory.exists()
    try:
        with LabelLock(directory):
            store = ResultsStore(out, label, run)
            todo = store.plan(tasks, overwrite)
            store.begin()
            with tqdm(total=sum(len(t.prompts) for t in todo), unit="prompt", disable=_quiet(progress),
                      file=sys.stderr) as bar:
                for task in todo:
                    bar.set_description(task.name)
                    store.write_task(score(task))
            store.save_manifest(**about(len(tasks) - len(todo)))
            others = [n for n in store.tasks if store.entry_run(n) != run]
            if others:
                notice(f"{directory} also holds {', '.join(others)} from another checkpoint or other "
                       "settings (left as they are)")
            return ScoreResult(label, store.manifest, {t.name: store.read_task(t.name) for t in tasks},
                               {t.name: store.read_task(t.name, variants=True) for t in tasks}, directory)
    except BaseException:
        if created and directory.is_dir() and not (directory / "manifest.json").exists():
            shutil.rmtree(directory, ignore_errors=True)  # a failed first run leaves nothing behind
        raise


def _quiet(progress: bool | None):
    return None if progress is None else not progress
