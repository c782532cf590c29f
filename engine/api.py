"""The Python API: score a checkpoint's tasks, in memory or into the results store.

    import engine
    result = engine.score_checkpoint("/models/olmo2-1b", tasks="coin,rng_1_10", out="results")
    result.to_pandas()             # one row per (prompt, answer); variants=True: per variant

`python -m engine.score` is a thin shell over `score_checkpoint`. Every input is validated
(checkpoint, tasks, tokenization of every prompt and answer, context length, output location)
before anything is written; a user error raises an `EngineError` with one line.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

import engine
from engine.errors import DeviceError, EngineError, OutputError
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
                     max_tokenizations: int = DEFAULT_MAX_TOKENIZATIONS, tp: int = 1,
                     batch_invariant: bool = False) -> ScoreResult:
    """Score every answer of every task exactly for one checkpoint.

    checkpoint: a local Hugging Face directory, or a `Checkpoint` from `engine.load` (then
        `dtype`, `device` and `tp` come from it). tasks: "all", "name,name", a .toml path, or a
        list of `Task`. mode: "auto" (chat when a template exists), "chat" or "base".
        chat_template: a checkpoint directory or template file to borrow a template from.
        tokenizations: "canonical" scores each variant's own tokenization; "all" every token
        sequence that spells it (at most `max_tokenizations` per variant, else an error), and
        reports the non-canonical share of each answer's probability.
    out: a results root to write `out/label/` into, resuming finished tasks (as the CLI does);
        None scores in memory and writes nothing. overwrite: rescore the given tasks even if
        finished or produced by another checkpoint or settings (other tasks are left alone).
    progress: a progress bar on stderr (None: on a terminal or in a Jupyter notebook).
    tp: split the model across this many ranks of a torchrun launch (every rank calls this;
        engine/distributed.py). Rank 0 of the group writes the results and returns them; the
        other ranks return the manifest with no tables when `out` is given.
    batch_invariant: on the GPU, give every prompt a forward pass of its own instead of packing
        prompts together, so that results are bitwise independent of `batch_tokens` and of the
        other prompts, as they always are on the CPU (fewer tokens per pass: slower).
    """
    from engine.checkpoint import Checkpoint, tensor_parallel_group

    group = (_group_of(checkpoint) if isinstance(checkpoint, Checkpoint)
             else tensor_parallel_group(tp, device or "auto"))
    lead = group.lead
    with group.step("checking the inputs"):
        if batch_tokens < 1:
            raise OutputError(f"batch_tokens must be a positive integer, got {batch_tokens}")
        if tokenizations not in TOKENIZATIONS:
            raise OutputError(f"tokenizations {tokenizations!r} must be one of {', '.join(TOKENIZATIONS)}")
        if max_tokenizations < 1:
            raise OutputError(f"max_tokenizations must be a positive integer, got {max_tokenizations}")
        if label is not None and not LABEL.fullmatch(label):
            raise OutputError(f"label {label!r} must be a plain name (letters, digits, '.', '_', '-'), not a path")
        tasks = list(tasks) if isinstance(tasks, (list, tuple)) and all(isinstance(t, Task) for t in tasks) \
            else load_tasks(tasks)
        if out is not None and lead:
            check_writable(Path(out), label)
    started = time.perf_counter()
    if isinstance(checkpoint, Checkpoint):
        ck = checkpoint
    else:
        ck = engine.load(checkpoint, dtype=dtype or "float32", device=device or "auto", tp=group)
    with group.step("preparing the prompts"):
        prepared = _prepare(ck, tasks, mode, chat_template, label, batch_tokens, group.size,
                            tokenizations, max_tokenizations, batch_invariant)
    encoder, sequences, label, run = prepared
    mode, dtype_name = run["mode"], run["dtype"]
    chat = encoder.template if mode == "chat" else None
    load_seconds = time.perf_counter() - started

    def score(task, bar):
        from engine.scorer import score_task

        with group.step(f"scoring {task.name}"):
            try:
                return score_task(ck, encoder, task, sequences[task.name], encoder.boundary, batch_tokens,
                                  pack=not run["batch_invariant"], progress=bar)
            except KernelUnsupportedError as e:  # e.g. float16 or head_dim > 256 on the GPU
                raise DeviceError(str(e)) from None

    def about(skipped: int) -> dict:
        import torch

        return dict(
            checkpoint=str(ck.path.resolve()), fingerprint=ck.fingerprint,
            engine_version=engine.__version__, dtype=dtype_name, device=str(ck.device), mode=mode,
            chat_template_source=chat.source if chat is not None else None,
            enable_thinking=run["enable_thinking"], torch_version=torch.__version__,
            threads=torch.get_num_threads(),  # CPU bits can depend on it (docs/results.md)
            tokenizations=tokenizations,
            max_tokenizations=max_tokenizations if tokenizations == "all" else None,
            batch_tokens=batch_tokens, batch_invariant=run["batch_invariant"], tp=group.size,
            weight_files=ck.weight_files,
            timings={"load_and_validate_s": round(load_seconds, 3),
                     "total_s": round(time.perf_counter() - started, 3), "skipped_tasks": skipped})

    from tqdm import tqdm

    def progress_bar(todo):
        return tqdm(total=sum(len(t.prompts) for t in todo), unit="prompt", file=sys.stderr,
                    disable=_quiet(progress) if lead else True)

    if out is None:
        result = ScoreResult(label, {"label": label, "run": run, "tasks": {}})
        with progress_bar(tasks) as bar:
            for task in tasks:
                bar.set_description(task.name)
                scores = score(task, bar)
                result.tables[task.name] = main_table(scores, label)
                result.variant_tables[task.name] = variant_table(scores, label)
                result.manifest["tasks"][task.name] = task_info(scores)
        result.manifest.update(about(0))
        add_token_totals(result.manifest)
        return result

    directory = Path(out) / label
    created = not directory.exists()
    try:
        with contextlib.ExitStack() as held:
            with group.step(f"locking {directory}"):
                if lead:
                    held.enter_context(LabelLock(directory))
                    store = ResultsStore(out, label, run)
                    todo = store.plan(tasks, overwrite)
                    store.begin()
            names = group.broadcast([t.name for t in todo] if lead else None, "sharing the plan")
            todo = [t for t in tasks if t.name in names]
            with progress_bar(todo) as bar:
                for task in todo:
                    bar.set_description(task.name)
                    scores = score(task, bar)
                    with group.step(f"writing {task.name}"):
                        if lead:
                            store.write_task(scores)
            with group.step("writing the manifest"):
                if lead:
                    store.save_manifest(**about(len(tasks) - len(todo)))
                    others = [n for n in store.tasks if store.entry_run(n) != run]
                    if others:
                        notice(f"{directory} also holds {', '.join(others)} from another checkpoint "
                               "or other settings (left as they are)")
                    result = ScoreResult(label, store.manifest, {t.name: store.read_task(t.name) for t in tasks},
                                         {t.name: store.read_task(t.name, variants=True) for t in tasks},
                                         directory)
            manifest = group.broadcast(store.manifest if lead else None, "sharing the manifest")
            return result if lead else ScoreResult(label, manifest)
    except BaseException:
        if lead and created and directory.is_dir() and not (directory / "manifest.json").exists():
            shutil.rmtree(directory, ignore_errors=True)  # a failed first run leaves nothing behind
        raise


def finished(checkpoint, tasks="all", mode: str = "auto", dtype: str = "float32", device: str = "auto",
             out="results", label: str | None = None, batch_tokens: int = DEFAULT_BATCH_TOKENS,
             chat_template=None, tp: int = 1, tokenizations: str = "canonical",
             max_tokenizations: int = DEFAULT_MAX_TOKENIZATIONS, batch_invariant: bool = False) -> bool:
    """Whether `out/label` already holds every task for this checkpoint and these settings,
    decided without reading the weights (engine.sweep skips such a checkpoint without loading it).

    The label's manifest must list weight files of the same names, sizes and modification times
    as the checkpoint's now (their recorded digests then stand for them, as make and rsync trust
    a file's size and time; the small files are hashed again), and every task must be finished,
    with intact files, for the very run `score_checkpoint` would make. False whenever in doubt:
    `score_checkpoint` then decides per task, after reading every byte."""
    import torch

    from engine.chat import load_chat_template
    from engine.checkpoint import (
        fingerprint,
        read_metadata,
        resolve_device,
        resolve_dtype,
        weight_paths,
    )
    from engine.results import read_manifest, task_hash
    from kernels import use_triton

    try:
        meta = read_metadata(checkpoint)
        label = label or meta.path.resolve().name
        manifest = read_manifest(Path(out) / label)
        recorded = (manifest or {}).get("weight_files") or {}
        paths = weight_paths(meta.path)
        if not recorded or sorted(p.name for p in paths) != sorted(recorded):
            return False
        for path in paths:
            stat, record = path.stat(), recorded[path.name]
            if (stat.st_size, stat.st_mtime_ns) != (record.get("bytes"), record.get("mtime_ns")):
                return False
        known = fingerprint(meta.path, {name: record["digest"] for name, record in recorded.items()})
        torch_device = resolve_device(device)
        dtype_name = str(resolve_dtype(dtype, torch_device, meta.config)).removeprefix("torch.")
        template = load_chat_template(chat_template, meta.special_tokens) if chat_template else None
        if mode == "auto":
            mode = "chat" if template is not None or meta.chat_template is not None else "base"
        chat = (template or meta.chat_template) if mode == "chat" else None
        if mode == "chat" and chat is None:
            return False
        # As packs_sequences decides: prompts share passes on the Triton path, unless batch_invariant.
        invariant = batch_invariant or not use_triton(torch.empty(0, device=torch_device))
        store = ResultsStore(out, label, run_key(known, dtype_name, mode, chat, invariant,
                                                 batch_tokens, tp, tokenizations, max_tokenizations))
        tasks = tasks if isinstance(tasks, list) else load_tasks(tasks)
        return all(task.name in store.manifest["tasks"] and store.entry_run(task.name) == store.run
                   and store.entry(task.name).get("task_hash") == task_hash(task)
                   and store.problem(task.name) is None for task in tasks)
    except (EngineError, OSError, KeyError, TypeError):
        return False


def _group_of(ck):
    from engine.distributed import SOLO

    return ck.model.tp or SOLO


def _prepare(ck, tasks, mode, chat_template, label, batch_tokens, tp, tokenizations, max_tokenizations,
             batch_invariant):
    """Encoder, tokenized and validated sequences per task, label and run key of a scoring run."""
    from engine.chat import load_chat_template
    from engine.scorer import PromptEncoder, packs_sequences, task_sequences

    template = load_chat_template(chat_template, ck.special_tokens) if chat_template else None
    if mode == "auto":
        mode = "chat" if template is not None or ck.has_chat_template else "base"
    encoder = PromptEncoder(ck, mode, template, tokenizations, max_tokenizations)
    sequences = {task.name: task_sequences(encoder, task) for task in tasks}  # validates everything
    label = label or ck.path.resolve().name
    if not LABEL.fullmatch(label):
        raise OutputError(f"{ck.path}: its directory name {label!r} cannot be a label; pass a label")
    chat = encoder.template if mode == "chat" else None
    run = run_key(ck.fingerprint, str(ck.dtype).removeprefix("torch."), mode, chat,
                  not packs_sequences(ck, batch_invariant), batch_tokens, tp, tokenizations, max_tokenizations)
    return encoder, sequences, label, run


def run_key(fingerprint: str, dtype: str, mode: str, chat, batch_invariant: bool, batch_tokens: int,
            tp: int = 1, tokenizations: str = "canonical",
            max_tokenizations: int = DEFAULT_MAX_TOKENIZATIONS) -> dict:
    """What identifies results (the `run` of the manifest and of each task): a rerun with an
    equal run skips finished tasks; a different one never mixes with them silently."""
    run = {
        "fingerprint": fingerprint,
        "dtype": dtype,
        "mode": mode,
        "chat_template": chat.text if chat is not None else None,
        # Qwen 3's hybrid-reasoning switch: scored with thinking off unless the template says otherwise.
        "enable_thinking": chat.enable_thinking if chat is not None and chat.uses_thinking_switch else None,
        "tokenizations": tokenizations if tokenizations == "canonical" else f"all<={max_tokenizations}",
        "engine_version": engine.__version__,
        "batch_invariant": batch_invariant,
        # Packed results depend on how prompts share rows; invariant ones do not.
        "batch_tokens": None if batch_invariant else batch_tokens,
    }
    if tp > 1:  # tensor parallelism sums in another order: within rounding, not bit for bit
        run["tp"] = tp
    return run


def _quiet(progress: bool | None):
    """tqdm's `disable`. None: a bar on a terminal, and in a Jupyter kernel too (its stderr is no
    terminal, but it shows the bar's text), none when output goes to a file or pipe."""
    if progress is None:
        return False if "ipykernel" in sys.modules else None
    return not progress
