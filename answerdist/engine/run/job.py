"""One checkpoint's run, on one process or across the ranks of a tensor-parallel group.

A run, top to bottom (`Scoring.into`): resolve the settings against the checkpoint, tokenize
and check every prompt, ask the store which tasks it lacks, score them one by one, writing each
as it is done, then the manifest. The store is memory (`MemoryStore`, out=None) or the label's
directory (`LabelStore`, out=ROOT), which the group's first rank holds (`GroupStore`).

A single process is a group of one. Split across a group, every rank runs the same steps in
lockstep: the forward passes meet in the model's collectives, and every step a rank may fail
alone (reading results, scoring a task, writing it) ends in an agreement (`Group.step`,
answerdist/engine/model/distributed.py), so that a failure on one rank stops them all at the
same point. For a group of one those steps are local and free.
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from answerdist.engine.results.guard import StoreFiles
from answerdist.engine.results.manifest import add_token_totals, run_fields
from answerdist.engine.results.schema import (
    MANIFEST,
    ScoreResult,
    prompts_digest,
    task_hash,
)
from answerdist.engine.results.store import LabelLock, ResultsStore, notice
from answerdist.engine.run.plan import resolve
from answerdist.engine.scoring.discovery import collect, discover
from answerdist.engine.scoring.scorer import PromptEncoder, score_task, task_sequences
from answerdist.engine.scoring.tables import task_tables
from answerdist.engine.settings import RunSpec
from answerdist.errors import DeviceError, OutputError
from answerdist.kernels import KernelUnsupportedError


class Scoring:
    """One checkpoint's run: its settings resolved against it, and every prompt of every task
    tokenized and validated, before anything is scored or written."""

    def __init__(self, ck, spec: RunSpec, started: float):
        self.ck, self.spec, self.started = ck, spec, started
        self.group = ck.group  # the ranks the model is split across; SOLO: one process
        self.resolved = resolve(spec, ck)
        self.key = self.resolved.key(ck.fingerprint)
        self.encoder = PromptEncoder(ck, self.resolved.mode, self.resolved.chat, spec.tokenizations,
                                     spec.max_tokenizations)
        self.check_label()  # before sampling: a refusal must not wait for --discover's samples
        self.discoveries = self.discover_answers()
        self.tasks = tuple(self.discoveries[t.name].task if t.name in self.discoveries else t
                           for t in spec.tasks)
        self.sequences = {task.name: task_sequences(self.encoder, task) for task in self.tasks}
        self.prompts = {name: prompts_digest(s.prompt_text for s in sequences)
                        for name, sequences in self.sequences.items()}
        self.load_seconds = time.perf_counter() - started

    def check_label(self) -> None:
        """What refuses the label whatever is sampled, checked before anything is: another
        live writer, and results of another run (unless --overwrite). By the group's first
        rank, which alone holds the results; `into` checks both again, holding the lock."""
        with self.group.step("checking the label"):
            if self.group.lead and self.spec.out is not None:
                LabelLock(self.spec.out, self.resolved.label).check_free()
                ResultsStore(self.spec.out, self.resolved.label, self.key).check_run(
                    [t.name for t in self.spec.tasks], self.spec.overwrite)

    def discover_answers(self) -> dict:
        """Every open task's answers, found by sampling before anything is scored."""
        open_tasks = [t for t in self.spec.tasks if t.open_answers]
        if not open_tasks:
            return {}
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
        and written under this run's settings, or None where it must be sampled. Read by the
        group's first rank, which alone holds the results, and shared."""
        with self.group.step(f"reading the kept discovery of {task.name}"):
            kept = self._kept_discovery(task) if self.group.lead else None
        return self.group.broadcast(kept, "sharing the kept discovery")

    def _kept_discovery(self, task) -> tuple[list[dict], dict] | None:
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
        come from the same definition of the task. Read by the group's first rank (other nodes
        may not see the results) and shared."""
        with self.group.step(f"reading the answers of {task.name} to borrow"):
            rows = self._borrowed(task) if self.group.lead else None
        return self.group.broadcast(rows, "sharing the borrowed answers")

    def _borrowed(self, task) -> dict[str, list[dict]]:
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
        """Where this run's results go: memory when out is None (every rank keeps its own),
        else out/label, held by the group's first rank."""
        label = self.resolved.label
        if self.spec.out is None:
            return MemoryStore(label, self.key)
        held = LabelStore(self.spec.out, label, self.key) if self.group.lead else None
        return GroupStore(self.group, held, label)

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
        """A task scored by every rank of the group together."""
        with self.group.step(f"scoring {task.name}"):
            try:
                scores = score_task(self.ck, self.encoder, task, self.sequences[task.name],
                                    self.encoder.end_mask(task), self.spec.batch_tokens,
                                    progress=bar, pack=self.resolved.packs)
            except KernelUnsupportedError as e:  # e.g. head_dim > 256 on the GPU
                raise DeviceError(str(e)) from None
            scores.discovery = self.discoveries.get(task.name)
            return scores

    def progress_bar(self, todo):
        """Shown by the group's first rank only."""
        return tqdm(total=sum(len(t.prompts) for t in todo), unit="prompt", file=sys.stderr,
                    disable=_quiet(self.spec.progress) if self.group.lead else True)

    def manifest_fields(self, skipped: int) -> dict:
        """What the manifest records about the run, besides its tasks."""
        return run_fields(self.ck, self.spec, self.resolved, self.key, torch.__version__,
                          torch.get_num_threads(), self.load_seconds,
                          time.perf_counter() - self.started, skipped)


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
        main, variants, found, info = task_tables(scores, result.label)
        result.tables[name], result.variant_tables[name] = main, variants
        if found is not None:
            result.discovery_tables[name] = found
        result.manifest["tasks"][name] = info

    def finish(self, fields: dict, tasks) -> ScoreResult:
        self.result.manifest.update(fields)
        add_token_totals(self.result.manifest)
        return self.result


class LabelStore:
    """Results written to out/label (answerdist/engine/results/store.py), which the run holds
    locked; a task of this run that is already there, intact, is not scored again."""

    def __init__(self, out: Path, label: str, key: dict):
        self.out, self.label, self.key = Path(out), label, key
        self.directory = self.out / label

    @contextmanager
    def session(self):
        created = not self.directory.exists()
        try:
            with LabelLock(self.out, self.label):
                self.store = ResultsStore(self.out, self.label, self.key)
                yield self
        except BaseException:
            if created and not self.store_files.exists(MANIFEST):
                self.store_files.remove_directory()  # a failed first run leaves nothing
            raise

    @property
    def store_files(self) -> StoreFiles:
        return StoreFiles(self.out, self.label)

    def plan(self, tasks, overwrite: bool, prompts: dict) -> list:
        todo = self.store.plan(tasks, overwrite, prompts)
        self.store.begin()
        return todo

    def write(self, scores) -> None:
        main, variants, found, info = task_tables(scores, self.label)
        self.store.write_tables(scores.task.name, main, variants, found, **info)

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


class GroupStore:
    """A label's store held by the group's first rank alone and called by every rank in step:
    its decisions (the tasks to score, the manifest) are shared with the others. A single
    process is a group of one: every step is then local and free."""

    def __init__(self, group, store, label: str):
        self.group, self.store, self.label = group, store, label  # store: None off the lead

    @contextmanager
    def session(self):
        with ExitStack() as held:
            with self.group.step(f"locking the results of {self.label}"):
                if self.store is not None:
                    held.enter_context(self.store.session())
            yield self

    def plan(self, tasks, overwrite: bool, prompts: dict) -> list:
        with self.group.step("planning"):
            names = ([t.name for t in self.store.plan(tasks, overwrite, prompts)]
                     if self.store else None)
        names = self.group.broadcast(names, "sharing the plan")
        return [t for t in tasks if t.name in names]

    def write(self, scores) -> None:
        with self.group.step(f"writing {scores.task.name}"):
            if self.store is not None:
                self.store.write(scores)

    def finish(self, fields: dict, tasks) -> ScoreResult:
        with self.group.step("writing the manifest"):
            result = self.store.finish(fields, tasks) if self.store is not None else None
        manifest = self.group.broadcast(result.manifest if result else None, "sharing the manifest")
        return result if result is not None else ScoreResult(self.label, manifest)


def _quiet(progress: bool | None):
    """tqdm's `disable`. None: a bar on a terminal, and in a Jupyter kernel too (its stderr is no
    terminal, but it shows the bar's text), none when output goes to a file or pipe."""
    if progress is None:
        return False if "ipykernel" in sys.modules else None
    return not progress
