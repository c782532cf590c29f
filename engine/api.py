"""The Python API: score a checkpoint's tasks, in memory or into the results store.

    import engine
    result = engine.score_checkpoint("/models/olmo2-1b", tasks="coin,rng_1_10", out="results")
    result.to_pandas()             # one row per (prompt, answer); variants=True: per variant

`python -m engine.score` and `python -m engine.sweep` are thin shells over `run_spec`, which takes
the settings as one `engine.spec.RunSpec`. Every input is validated (settings, checkpoint,
tasks, tokenization of every prompt and answer, context length, output location) before
anything is written; a user error raises an `EngineError` with one line.

A run, top to bottom (`Scoring.into`): resolve the settings against the checkpoint, tokenize
and check every prompt, ask the store which tasks it lacks, score them one by one, writing each
as it is done, then the manifest. The store is the results store (`LabelStore`, out=ROOT) or
memory (`MemoryStore`, out=None). engine/tp.py runs the same steps across the ranks of a
tensor-parallel group.
"""

from __future__ import annotations

import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

import engine
from engine.errors import DeviceError, EngineError, OutputError
from engine.results import (
    MAIN_SCHEMA,
    MANIFEST,
    VARIANT_SCHEMA,
    LabelLock,
    ResultsStore,
    add_token_totals,
    check_writable,
    discovery_table,
    main_table,
    notice,
    prompts_digest,
    summarize,
    task_info,
    variant_table,
)
from engine.spec import RunSpec, resolve
from kernels import KernelUnsupportedError

DEFAULT_BATCH_TOKENS = RunSpec.batch_tokens


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
    # open tasks: one row per (prompt, answer, sampled surface form) with its count
    discovery_tables: dict[str, pa.Table] = field(default_factory=dict)

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


def score_checkpoint(checkpoint, tasks="all", mode: str = RunSpec.mode, dtype: str | None = None,
                     device: str | None = None, out=None, label: str | None = None,
                     batch_tokens: int = RunSpec.batch_tokens, chat_template=None,
                     overwrite: bool = False, progress: bool | None = None,
                     tokenizations: str = RunSpec.tokenizations,
                     max_tokenizations: int = RunSpec.max_tokenizations, tp: int = RunSpec.tp,
                     batch_invariant: bool = False,
                     dist_timeout: float = RunSpec.dist_timeout,
                     template_date: str = RunSpec.template_date,
                     template_timeout: float = RunSpec.template_timeout,
                     template_max_chars: int = RunSpec.template_max_chars,
                     end: str | None = RunSpec.end, discover: int | None = RunSpec.discover,
                     temperature: float = RunSpec.temperature,
                     top_p: float | None = RunSpec.top_p,
                     max_new_tokens: int = RunSpec.max_new_tokens,
                     seed: int = RunSpec.seed,
                     answers_from: str | list[str] | None = RunSpec.answers_from) -> ScoreResult:
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
        engine/tp.py). Rank 0 of the group writes the results and returns them; the other ranks
        return the manifest with no tables when `out` is given.
    batch_invariant: on the GPU, give every prompt a forward pass of its own instead of packing
        prompts together, so that results are bitwise independent of `batch_tokens` and of the
        other prompts, as they always are on the CPU (fewer tokens per pass: slower).
    dist_timeout: with tp > 1, the seconds a rank waits for the others at a collective.
    template_date: the day (YYYY-MM-DD) a chat template's `strftime_now` renders.
    template_timeout, template_max_chars: bounds on rendering one prompt (seconds, characters).
    end: what follows every answer ("boundary", "turn", "line"), overriding each task's own
        end rule (None: each task's, docs/tasks.md).
    discover: for open tasks, the replies sampled per prompt to find the answers (then scored
        exactly); temperature, top_p, max_new_tokens and seed: how they are drawn.
        answers_from: labels under `out` whose discovered answers open tasks are also scored on
        (the union), so that every checkpoint of a ladder is scored on the same answer set.
    A setting with a value it cannot take raises `engine.spec.SettingError` naming it.
    """
    spec = RunSpec(tasks=tasks, mode=mode, dtype=dtype or RunSpec.dtype,
                   device=device or RunSpec.device, out=out, label=label,
                   batch_tokens=batch_tokens, batch_invariant=batch_invariant,
                   chat_template=chat_template, tokenizations=tokenizations,
                   max_tokenizations=max_tokenizations, tp=tp, dist_timeout=dist_timeout,
                   overwrite=overwrite, progress=progress, template_date=template_date,
                   template_timeout=template_timeout, template_max_chars=template_max_chars,
                   end=end, discover=discover, temperature=temperature, top_p=top_p,
                   max_new_tokens=max_new_tokens, seed=seed, answers_from=answers_from)
    return run_spec(checkpoint, spec)


def run_spec(checkpoint, spec: RunSpec) -> ScoreResult:
    """`score_checkpoint` with its settings as one RunSpec (what the CLI and the sweep call).
    A loaded `Checkpoint` brings its own dtype, device and tensor-parallel degree."""
    from engine.checkpoint import Checkpoint

    if isinstance(checkpoint, Checkpoint):
        spec = spec.replace(dtype=str(checkpoint.dtype).removeprefix("torch."),
                            device=str(checkpoint.device), tp=checkpoint.group.size)
    if spec.tp > 1:
        from engine.tp import score_split

        return score_split(checkpoint, spec)
    started = time.perf_counter()
    if spec.out is not None:
        check_writable(spec.out, spec.label)
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else engine.load(
        checkpoint, dtype=spec.dtype, device=spec.device)
    job = Scoring(ck, spec, started)
    return job.into(job.store())


class Scoring:
    """One checkpoint's run: its settings resolved against it, and every prompt of every task
    tokenized and validated, before anything is scored or written."""

    def __init__(self, ck, spec: RunSpec, started: float):
        from engine.scorer import PromptEncoder, task_sequences

        self.ck, self.spec, self.started = ck, spec, started
        self.resolved = resolve(spec, ck)
        self.key = self.resolved.key(ck.fingerprint)
        self.encoder = PromptEncoder(ck, self.resolved.mode, self.resolved.chat, spec.tokenizations,
                                     spec.max_tokenizations)
        self.discoveries = self.discover_answers()
        self.tasks = tuple(self.discoveries[t.name].task if t.name in self.discoveries else t
                           for t in spec.tasks)
        self.sequences = {task.name: task_sequences(self.encoder, task) for task in self.tasks}
        self.prompts = {name: prompts_digest(s.prompt_text for s in sequences)
                        for name, sequences in self.sequences.items()}
        self.load_seconds = time.perf_counter() - started

    def discover_answers(self) -> dict:
        """Every open task's answers, found by sampling before anything is scored."""
        from engine.discovery import collect, discover

        open_tasks = [t for t in self.spec.tasks if t.open_answers]
        if not open_tasks:
            return {}
        from tqdm import tqdm

        found = {}
        with tqdm(total=sum(len(t.prompts) for t in open_tasks), unit="prompt", file=sys.stderr,
                  desc="discovering", disable=_quiet(self.spec.progress)) as bar:
            for task in open_tasks:
                kept = self.kept_discovery(task)
                if kept is None:
                    found[task.name] = discover(self.ck, self.encoder, task, self.spec.discover,
                                                self.spec.sampling(), bar, self.borrowed(task))
                else:  # a rerun after a stop: the samples would be the same ones (seeded)
                    found[task.name] = collect(task, *kept, self.borrowed(task))
                    bar.update(len(task.prompts))
        return found

    def kept_discovery(self, task) -> tuple[list[dict], dict] | None:
        """(rows, counts) of the discovery of `task` that this run's label already holds, intact
        and written under this run's settings, or None where it must be sampled."""
        from engine.results import task_hash

        if self.spec.out is None or self.spec.overwrite:
            return None
        directory = self.spec.out / self.resolved.label
        if not (directory / MANIFEST).is_file():
            return None
        store = ResultsStore.read(directory)
        entry = store.manifest["tasks"].get(task.name)
        if (entry is None or "discovery_file" not in entry or store.entry_run(task.name) != self.key
                or entry.get("open_task_hash") != task_hash(task) or store.problem(task.name)):
            return None
        return store.read_discovery(task.name).to_pylist(), entry["discovery"]

    def borrowed(self, task) -> dict[str, list[dict]]:
        """{label: discovery rows} of `task` at the labels of answers_from, each checked to
        come from the same definition of the task."""
        from engine.results import task_hash

        rows = {}
        for label in self.spec.answers_from or ():
            where = f"--answers-from {label}: {self.spec.out / label}"
            if not (self.spec.out / label / MANIFEST).is_file():
                raise OutputError(f"{where} holds no results; score that checkpoint first")
            store = ResultsStore.read(self.spec.out / label)
            entry = store.manifest["tasks"].get(task.name)
            if entry is None or "discovery_file" not in entry:
                raise OutputError(f"{where} has no discovered answers of task {task.name!r}; "
                                  "score it there with --discover first")
            if entry.get("open_task_hash") != task_hash(task):
                raise OutputError(f"{where} discovered task {task.name!r} from another "
                                  "definition of it (prompts, end rule or normalize differ); "
                                  "use the same task file")
            rows[label] = store.read_discovery(task.name).to_pylist()
        return rows

    def store(self):
        """Where this run's results go: out/label, or memory when out is None."""
        if self.spec.out is None:
            return MemoryStore(self.resolved.label, self.key)
        return LabelStore(self.spec.out, self.resolved.label, self.key)

    def into(self, store) -> ScoreResult:
        """Score every task the store lacks, one after the other, writing each when it is done."""
        tasks = self.tasks
        with store.session():
            todo = store.plan(tasks, self.spec.overwrite, self.prompts)
            with self.progress_bar(todo) as bar:
                for task in todo:
                    bar.set_description(task.name)
                    store.write(self.score(task, bar))
            return store.finish(self.manifest_fields(skipped=len(tasks) - len(todo)), tasks)

    def score(self, task, bar):
        from engine.scorer import score_task

        try:
            scores = score_task(self.ck, self.encoder, task, self.sequences[task.name],
                                self.encoder.end_mask(task), self.spec.batch_tokens,
                                progress=bar, pack=self.resolved.packs)
            scores.discovery = self.discoveries.get(task.name)
            return scores
        except KernelUnsupportedError as e:  # e.g. head_dim > 256 on the GPU
            raise DeviceError(str(e)) from None

    def progress_bar(self, todo, shown: bool = True):
        from tqdm import tqdm

        return tqdm(total=sum(len(t.prompts) for t in todo), unit="prompt", file=sys.stderr,
                    disable=_quiet(self.spec.progress) if shown else True)

    def manifest_fields(self, skipped: int) -> dict:
        """What the manifest records about the run, besides its tasks."""
        import torch

        ck, spec, run, key = self.ck, self.spec, self.resolved, self.key
        return dict(
            checkpoint=str(ck.path.resolve()), fingerprint=ck.fingerprint,
            engine_version=engine.__version__, dtype=spec.dtype, device=str(ck.device),
            mode=run.mode, chat_template_source=run.chat.source if run.chat is not None else None,
            chat_template_special_tokens=run.chat.special_source if run.chat is not None else None,
            template_date=run.template_date,
            enable_thinking=key["enable_thinking"], torch_version=torch.__version__,
            threads=torch.get_num_threads(),  # CPU bits can depend on it (docs/results.md)
            tokenizations=spec.tokenizations,
            max_tokenizations=spec.max_tokenizations if spec.tokenizations == "all" else None,
            batch_tokens=spec.batch_tokens, batch_invariant=key["batch_invariant"], tp=spec.tp,
            weight_files=ck.weight_files,
            timings={"load_and_validate_s": round(self.load_seconds, 3),
                     "total_s": round(time.perf_counter() - self.started, 3),
                     "skipped_tasks": skipped})


class MemoryStore:
    """Results kept in memory (out=None): every task is scored, nothing is written."""

    def __init__(self, label: str, key: dict):
        self.result = ScoreResult(label, {"label": label, "run": key, "tasks": {}})

    @contextmanager
    def session(self):
        yield self

    def plan(self, tasks, overwrite: bool, prompts: dict) -> list:
        return list(tasks)

    def write(self, scores) -> None:
        name, result = scores.task.name, self.result
        result.tables[name] = main_table(scores, result.label)
        result.variant_tables[name] = variant_table(scores, result.label)
        if scores.discovery is not None:
            result.discovery_tables[name] = discovery_table(scores)
        result.manifest["tasks"][name] = task_info(scores)

    def finish(self, fields: dict, tasks) -> ScoreResult:
        self.result.manifest.update(fields)
        add_token_totals(self.result.manifest)
        return self.result


class LabelStore:
    """Results written to out/label (engine/results.py), which the run holds locked; a task of
    this run that is already there, intact, is not scored again."""

    def __init__(self, out: Path, label: str, key: dict):
        self.out, self.label, self.key = Path(out), label, key
        self.directory = self.out / label

    @contextmanager
    def session(self):
        created = not self.directory.exists()
        try:
            with LabelLock(self.directory):
                self.store = ResultsStore(self.out, self.label, self.key)
                yield self
        except BaseException:
            if created and self.directory.is_dir() and not (self.directory / MANIFEST).exists():
                shutil.rmtree(self.directory, ignore_errors=True)  # a failed first run: nothing
            raise

    def plan(self, tasks, overwrite: bool, prompts: dict) -> list:
        todo = self.store.plan(tasks, overwrite, prompts)
        self.store.begin()
        return todo

    def write(self, scores) -> None:
        self.store.write_task(scores)

    def finish(self, fields: dict, tasks) -> ScoreResult:
        store = self.store
        store.save_manifest(**fields)
        others = [n for n in store.tasks if store.entry_run(n) != self.key]
        if others:
            notice(f"{self.directory} also holds {', '.join(others)} from another checkpoint "
                   "or other settings (left as they are)")
        return ScoreResult(self.label, store.manifest,
                           {t.name: store.read_task(t.name) for t in tasks},
                           {t.name: store.read_task(t.name, variants=True) for t in tasks},
                           self.directory,
                           {t.name: store.read_discovery(t.name) for t in tasks
                            if t.open_answers})


def finished(checkpoint, spec: RunSpec) -> bool:
    """Whether `spec.out/label` already holds every task for this checkpoint and these settings,
    decided without reading the weights (engine.sweep skips such a checkpoint without loading it).

    The label's manifest must list weight files of the same names, sizes and modification times
    as the checkpoint's now (their recorded digests then stand for them, as make and rsync trust
    a file's size and time; the small files are hashed again), and every task must be finished,
    with intact files, for the very run `run_spec` would make. False whenever in doubt: `run_spec`
    then decides per task, after reading every byte."""
    from engine.checkpoint import fingerprint, read_metadata, weight_paths
    from engine.results import read_manifest, task_hash
    from engine.scorer import render_prompt

    try:
        meta = read_metadata(checkpoint)
        run = resolve(spec, meta)
        manifest = read_manifest(spec.out / run.label)
        recorded = (manifest or {}).get("weight_files") or {}
        paths = weight_paths(meta.path)
        if not recorded or sorted(p.name for p in paths) != sorted(recorded):
            return False
        for path in paths:
            stat, record = path.stat(), recorded[path.name]
            if (stat.st_size, stat.st_mtime_ns) != (record.get("bytes"), record.get("mtime_ns")):
                return False
        known = fingerprint(meta.path, {name: r["digest"] for name, r in recorded.items()})
        store = ResultsStore(spec.out, run.label, run.key(known))
        prompts = {task.name: prompts_digest(render_prompt(task, p, run.mode, run.chat)
                                             for p in task.prompts) for task in spec.tasks}
        return all(task.name in store.manifest["tasks"] and store.entry_run(task.name) == store.run
                   and store.entry(task.name).get("task_hash") == task_hash(task)
                   and store.same_prompts(task.name, prompts)
                   and store.problem(task.name) is None for task in spec.tasks)
    except (EngineError, OSError, KeyError, TypeError):
        return False


def _quiet(progress: bool | None):
    """tqdm's `disable`. None: a bar on a terminal, and in a Jupyter kernel too (its stderr is no
    terminal, but it shows the bar's text), none when output goes to a file or pipe."""
    if progress is None:
        return False if "ipykernel" in sys.modules else None
    return not progress
