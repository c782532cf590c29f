"""The results store: results/<label>/<task>.parquet, variants/<task>.parquet, manifest.json.

The schema and the guarantees are documented in docs/results.md. In short:

* every file is written atomically (engine/files.py), and a task enters the manifest only after
  both of its parquet files are in place, with their row counts and xxh3 digests;
* one writer per label at a time: `LabelLock` (an flock'ed `.lock` file holding the writer's
  pid and host; the kernel drops the lock when its holder dies, so a stale lock is taken over);
* every file is validated against the manifest when read (digest, schema, row count), and a
  rerun rescores a task whose files are missing, damaged or changed, saying so in one line;
* each task records the run that produced it (checkpoint fingerprint and settings): a rerun with
  the same run skips finished tasks; a different run refuses to touch them unless asked to
  overwrite, and then replaces only the tasks it scores, each one atomically.

This module imports neither torch nor triton: the analysis layer reads results through it.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import stat
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.errors import OutputError
from engine.files import atomic_write, file_digest, remove_stale_temporaries

if TYPE_CHECKING:
    from engine.scorer import TaskScores
    from engine.tasks import Task

MANIFEST = "manifest.json"
LOCK = ".lock"


class Col:
    """Results column names: their one definition (writer, reader, analysis and report)."""

    label = "label"
    task = "task"
    mode = "mode"
    prompt_id = "prompt_id"
    prompt_text = "prompt_text"  # exactly what the model reads (chat template applied)
    user_prompt = "user_prompt"  # the task's prompt text
    continuation = "continuation"  # as appended to prompt_text (the first variant's, per answer)
    prompt_token_ids = "prompt_token_ids"
    continuation_token_ids = "continuation_token_ids"
    answer = "answer"
    answer_index = "answer_index"
    logprob = "logprob"  # log P(answer | prompt), summed over variants (variant table: one variant)
    prob = "prob"  # P(answer | prompt) / coverage
    coverage = "coverage"  # sum over answers of P(answer | prompt)
    # With --tokenizations all: the share of the probability from non-canonical tokenizations
    # (null when only the canonical ones were scored); variants: how many were scored.
    noncanonical_share = "noncanonical_share"
    tokenizations = "tokenizations"


# Each column's type, once; the two tables are lists of these columns.
TYPES = {
    Col.label: pa.string(), Col.task: pa.string(), Col.mode: pa.string(),
    Col.prompt_id: pa.string(), Col.prompt_text: pa.string(), Col.user_prompt: pa.string(),
    Col.continuation: pa.string(),
    Col.prompt_token_ids: pa.list_(pa.int64()), Col.continuation_token_ids: pa.list_(pa.int64()),
    Col.answer: pa.string(), Col.answer_index: pa.int32(), Col.logprob: pa.float64(),
    Col.prob: pa.float64(), Col.coverage: pa.float64(), Col.noncanonical_share: pa.float64(),
    Col.tokenizations: pa.int32(),
}


def _schema(*names: str) -> pa.Schema:
    return pa.schema([(name, TYPES[name]) for name in names])


MAIN_SCHEMA = _schema(Col.label, Col.task, Col.mode, Col.prompt_id, Col.prompt_text,
                      Col.user_prompt, Col.continuation, Col.prompt_token_ids,
                      Col.continuation_token_ids, Col.answer, Col.answer_index, Col.logprob,
                      Col.prob, Col.coverage, Col.noncanonical_share)
# logprob here: log P(variant tokens | prompt) + log P(boundary | ...), over its tokenizations
VARIANT_SCHEMA = _schema(Col.label, Col.task, Col.mode, Col.prompt_id, Col.answer, Col.continuation,
                         Col.continuation_token_ids, Col.logprob, Col.noncanonical_share,
                         Col.tokenizations)
# Columns added in 0.2: results written by 0.1 lack them and are still read.
ADDED_COLUMNS = (Col.noncanonical_share, Col.tokenizations)


def schema_matches(found: pa.Schema, schema: pa.Schema) -> bool:
    """The results schema, or the 0.1 one (the same without ADDED_COLUMNS)."""
    legacy = pa.schema([f for f in schema if f.name not in ADDED_COLUMNS])
    return found.equals(schema, check_metadata=False) or found.equals(legacy, check_metadata=False)


def task_hash(task: Task) -> str:
    """Changes whenever anything that could change the task's results changes."""
    fields = dataclasses.asdict(task)
    fields.pop("source", None)
    fields.pop("target", None)  # read by the analysis only: the scores do not depend on it
    # Settings added later are left out at their defaults, so that results scored before they
    # existed keep their hash.
    for name, default in (("end", "boundary"), ("response_prefix", ""), ("open_answers", False),
                          ("normalize", ())):
        if fields.get(name) == default:
            fields.pop(name)
    for prompt in fields["prompts"]:
        if prompt.get("response_prefix") is None:
            prompt.pop("response_prefix", None)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def prompts_digest(texts) -> str:
    """Changes whenever what the model reads before a task's answers changes, though the task
    and the settings do not: a template's date, its special tokens."""
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def check_writable(out: Path, label: str | None = None) -> None:
    """Fail before any work if `out` (and `out/label`) cannot be created or written; creates
    nothing."""
    target = Path(out) / label if label else Path(out)
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target}: is a file, not a directory; choose another --out or --label")
    probe = target
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{probe}: is a file, not a directory; choose another --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{probe}: not writable; choose another --out or fix its permissions")


def notice(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Tables


def main_table(scores: TaskScores, label: str) -> pa.Table:
    """One row per (prompt, answer); continuation and its tokens are the first variant's."""
    task, rows = scores.task, []
    for p in scores.prompts:
        s, dist, share = p.sequence, p.distribution, p.answer_noncanonical_share
        coverage = p.coverage  # a sum over the answers: once per prompt, not once per row
        first = {}  # each answer's first variant (one pass: a thousand answers, or 100k)
        for v, a in enumerate(s.answer_of):
            first.setdefault(a, v)
        for a, answer in enumerate(task.answers):
            v = first[a]
            rows.append({
                Col.label: label, Col.task: task.name, Col.mode: scores.mode,
                Col.prompt_id: s.prompt_id, Col.prompt_text: s.prompt_text,
                Col.user_prompt: s.user_prompt,
                Col.continuation: s.continuations[v], Col.prompt_token_ids: s.prompt_ids,
                Col.continuation_token_ids: s.continuation_ids[v], Col.answer: answer.name,
                Col.answer_index: a, Col.logprob: float(p.answer_logprob[a]),
                Col.prob: float(dist[a]), Col.coverage: coverage,
                Col.noncanonical_share: None if share is None else float(share[a]),
            })
    return pa.Table.from_pylist(rows, schema=MAIN_SCHEMA)


def variant_table(scores: TaskScores, label: str) -> pa.Table:
    """One row per (prompt, surface variant)."""
    names, rows = [a.name for a in scores.task.answers], []
    for p in scores.prompts:
        s, share = p.sequence, p.variant_noncanonical_share
        rows += [{Col.label: label, Col.task: scores.task.name, Col.mode: scores.mode,
                  Col.prompt_id: s.prompt_id, Col.answer: names[s.answer_of[v]],
                  Col.continuation: cont, Col.continuation_token_ids: s.continuation_ids[v],
                  Col.logprob: float(p.variant_logprob[v]),
                  Col.noncanonical_share: None if share is None else float(share[v]),
                  Col.tokenizations: _tokenizations(s, v)}
                 for v, cont in enumerate(s.continuations)]
    return pa.Table.from_pylist(rows, schema=VARIANT_SCHEMA)


def _tokenizations(s, v: int) -> int:
    """How many token sequences spelling variant v were scored: its paths that stop at the
    text (end = "line" adds one closed by the end of the turn per tokenization), or, under
    end = "turn", all of its paths."""
    paths = [k for k, w in enumerate(s.path_variant) if w == v]
    return sum(s.path_open[k] for k in paths) or len(paths)


DISCOVERY_SCHEMA = pa.schema([(Col.prompt_id, pa.string()), (Col.answer, pa.string()),
                              (Col.continuation, pa.string()), ("count", pa.int64())])


def discovery_table(scores: TaskScores) -> pa.Table | None:
    """An open task's discovery: one row per (prompt, answer, sampled surface form) with how
    many of that prompt's samples gave it; None for a closed task."""
    if scores.discovery is None:
        return None
    return pa.Table.from_pylist(scores.discovery.rows, schema=DISCOVERY_SCHEMA)


def check_finite(table: pa.Table, where: str) -> None:
    """Results with NaN or infinite numbers are never written."""
    for name in (Col.logprob, Col.prob, Col.coverage, Col.noncanonical_share):
        if name in table.column_names:
            values = table.column(name).drop_null().to_numpy()
            if not np.isfinite(values).all():
                raise OutputError(f"{where}: refusing to write non-finite {name} values")


def task_info(scores: TaskScores) -> dict:
    """What the manifest records about a scored task besides its files."""
    return {"task_hash": task_hash(scores.task),
            "prompts_digest": prompts_digest(p.sequence.prompt_text for p in scores.prompts),
            "source": scores.task.source,
            "target": None if scores.task.target is None else list(scores.task.target),
            "prompts": len(scores.prompts), "answers": len(scores.task.answers),
            "tokens_needed": scores.tokens_needed, "tokens_processed": scores.tokens_processed,
            "seconds": round(scores.seconds, 4),
            **({} if scores.discovery is None else {
                "discovery": scores.discovery.counts, "open_task_hash": scores.discovery.definition,
                "answers_from": list(scores.discovery.answers_from)})}


def add_token_totals(manifest: dict) -> None:
    """tokens_needed, tokens_processed and token_efficiency over a manifest's tasks: unique
    tokens needed (prompt tokens + trie nodes) over tokens run through the model, 1.0 meaning
    no padding and no repeated prefix."""
    tasks = [t for t in manifest["tasks"].values() if "tokens_needed" in t]
    needed = sum(t["tokens_needed"] for t in tasks)
    processed = sum(t["tokens_processed"] for t in tasks)
    manifest["tokens_needed"] = needed
    manifest["tokens_processed"] = processed
    manifest["token_efficiency"] = round(needed / processed, 6) if processed else None


# ---------------------------------------------------------------------------------------------
# One writer per label


class LabelLock:
    """An exclusive lock on a label directory, held while a run writes it.

    `.lock` is locked with flock(2), which the kernel releases when its holder exits, however it
    exits: a lock left by a killed run is free and is taken over. The file names the current
    holder (pid, host, start time) for the message a second writer gets."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / LOCK
        self._fd = None

    def __enter__(self) -> LabelLock:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OutputError(f"{self.directory}: being written by {holder[:200]}; wait for that "
                              "run to finish or use another --label") from None
        try:
            left = os.pread(fd, 512, 0).decode(errors="replace").strip()
            if left:
                notice(f"{self.directory}: taking over the lock left by {left[:200]} (no longer "
                       "running)")
            me = (f"pid {os.getpid()} on {socket.gethostname()} since "
                  f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}")
            os.ftruncate(fd, 0)
            os.pwrite(fd, me.encode(), 0)
        except OSError as e:  # a full disk
            os.close(fd)
            raise OutputError(f"{self.path}: cannot write the lock file ({e.strerror or e}); "
                              "free some space or choose another --out") from None
        self._fd = fd
        return self

    def _open(self) -> int:
        """The lock file, opened without following a link: a `.lock` that is a link or not a
        plain file is refused, so that nothing outside the directory is ever written."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
        except OSError as e:
            why = ("is a symbolic link" if e.errno == errno.ELOOP
                   else f"cannot be opened ({e.strerror or e})")
            raise OutputError(f"{self.path}: {why}; remove it or choose another --out") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OutputError(f"{self.path}: is not a plain file; remove it or choose another "
                              "--out")
        return fd

    def __exit__(self, *exc) -> None:
        os.ftruncate(self._fd, 0)  # a clean exit leaves no holder to report
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


# ---------------------------------------------------------------------------------------------
# The store


def read_manifest(directory: Path) -> dict | None:
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OutputError(f"{path}: unreadable ({e}); "
                          f"delete {path.parent} to start this label afresh") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tasks"), dict):
        raise OutputError(f"{path}: not a results manifest; "
                          f"delete {path.parent} to start this label afresh")
    return manifest


def _differing(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


class ResultsStore:
    """results/<label>/ for reading (`ResultsStore.read`) or, holding its lock, for a run."""

    def __init__(self, out: Path, label: str, run: dict | None = None):
        self.directory = Path(out) / label
        self.label = label
        self.run = run  # what identifies results: checkpoint fingerprint and settings
        manifest = read_manifest(self.directory)
        self.manifest = manifest or {"label": label, "run": run, "tasks": {}}

    @classmethod
    def read(cls, directory: Path) -> ResultsStore:
        """An existing label directory, for reading only."""
        directory = Path(directory)
        store = cls(directory.parent, directory.name)
        if not (directory / MANIFEST).exists():
            raise OutputError(f"{directory}: no {MANIFEST}; it was not written by python -m "
                              "engine.score (or no task finished): score the checkpoint with "
                              f"--label {directory.name}")
        return store

    @property
    def tasks(self) -> list[str]:
        return list(self.manifest["tasks"])

    def entry(self, name: str) -> dict:
        return self.manifest["tasks"][name]

    def entry_run(self, name: str) -> dict:
        """The run that produced a task (manifests before 0.2 kept one run per label)."""
        return self.entry(name).get("run", self.manifest.get("run"))

    # -- deciding what to score ----------------------------------------------------------------

    def plan(self, tasks: list[Task], overwrite: bool = False,
             prompts: dict[str, str] | None = None) -> list[Task]:
        """The tasks this run must score; the others are finished and valid for this run.

        A task finished by another run, under another definition (prompts, answers, formats:
        its `task_hash`), or with other rendered prompts (`prompts`: {task: prompts_digest}) is
        an error unless `overwrite`; a task whose files are missing, damaged or changed since
        they were written is rescored, with a one-line notice."""
        todo, foreign, redefined, reworded = [], [], [], []
        for task in tasks:
            if task.name not in self.manifest["tasks"] or overwrite:
                todo.append(task)
            elif self.entry_run(task.name) != self.run:
                foreign.append(task)
            elif self.entry(task.name).get("task_hash") != task_hash(task):
                redefined.append(task)
            elif not self.same_prompts(task.name, prompts):
                reworded.append(task)
            elif problem := self.problem(task.name):
                notice(f"{problem}; rescoring {task.name}")
                todo.append(task)
        if foreign:
            keys = _differing(self.entry_run(foreign[0].name) or {}, self.run)
            raise OutputError(
                f"{self.directory}: holds results of another checkpoint or other settings for "
                f"{', '.join(t.name for t in foreign)} ({', '.join(keys)} differ); rescore them "
                "with --overwrite or use another --label")
        if redefined:
            raise OutputError(
                f"{self.directory}: holds results of another definition of "
                f"{', '.join(t.name for t in redefined)} (from "
                f"{self.entry(redefined[0].name).get('source')}; its prompts, answers or formats "
                "differ from this one's); rescore with --overwrite or use another --label")
        others = [n for n in self.tasks if n not in {t.name for t in tasks}
                  and self.entry_run(n) != self.run]
        if others and not overwrite:
            keys = _differing(self.entry_run(others[0]) or {}, self.run)
            raise OutputError(
                f"{self.directory}: holds {', '.join(others)} from another checkpoint or other "
                f"settings ({', '.join(keys)} differ), and a label holds one run; use another "
                "--label (or --overwrite to add to it all the same)")
        if reworded:
            raise OutputError(
                f"{self.directory}: holds results of {', '.join(t.name for t in reworded)} "
                "scored on other prompt text than this run renders (the chat template or its "
                "special tokens changed); rescore with --overwrite or use another --label")
        return todo

    def same_prompts(self, name: str, prompts: dict[str, str] | None) -> bool:
        """Whether a finished task was scored on the prompts `prompts` names (results written
        before prompts were recorded count as the same)."""
        recorded = self.entry(name).get("prompts_digest")
        return prompts is None or recorded is None or recorded == prompts.get(name)

    def problem(self, name: str) -> str | None:
        """Why a finished task's files cannot be trusted, or None. (Manifests before 0.2 kept
        no digests: their files are checked for presence, schema and rows only.)"""
        entry = self.entry(name)
        files = [entry.get("file"), entry.get("variants_file")]
        if "discovery_file" in entry:
            files.append(entry["discovery_file"])
        for file in files:
            if not file or not isinstance(file, str):
                return f"{self.directory}: task {name} has no file in the manifest"
            path = self.directory / file
            if (file not in (f"{name}.parquet", f"variants/{name}.parquet",
                             f"discovery/{name}.parquet") or path.is_symlink()):
                return f"{path}: not the task's own file in {self.directory}"
            if not path.is_file():
                return f"{path}: missing"
            if "digests" in entry and entry["digests"].get(file) != file_digest(path):
                return f"{path}: damaged or changed since it was written"
        return None

    # -- writing (hold the LabelLock) ---------------------------------------------------------

    def begin(self) -> None:
        """Start a run: the manifest names it, temporaries of killed writers go."""
        remove_stale_temporaries(self.directory, self.directory / "variants",
                                 self.directory / "discovery")
        self.manifest["run"] = self.run

    def write_task(self, scores: TaskScores) -> None:
        self.write_tables(scores.task.name, main_table(scores, self.label),
                          variant_table(scores, self.label), discovery_table(scores),
                          **task_info(scores))

    def write_tables(self, name: str, main: pa.Table, variants: pa.Table,
                     found: pa.Table | None = None, **info) -> None:
        """A task's tables, then its manifest entry: the old files stay until each new one is
        complete, and a task counts as finished only once the manifest says so."""
        files = {f"{name}.parquet": main, f"variants/{name}.parquet": variants}
        if found is not None:  # an open task's discovery table
            files[f"discovery/{name}.parquet"] = found
        digests = {}
        try:
            for file in files:
                (self.directory / file).parent.mkdir(parents=True, exist_ok=True)
            for file, table in files.items():
                check_finite(table, f"{self.directory / file}")
                data = parquet_bytes(table)
                atomic_write(self.directory / file, data)
                digests[file] = file_digest(self.directory / file)
        except OSError as e:
            raise OutputError(f"{self.directory}: cannot write results ({e.strerror or e}); check "
                              "--out and its permissions") from None
        self.manifest["tasks"][name] = {
            "file": f"{name}.parquet", "variants_file": f"variants/{name}.parquet",
            "rows": main.num_rows, "variant_rows": variants.num_rows, "digests": digests,
            **({} if found is None else {"discovery_file": f"discovery/{name}.parquet",
                                         "discovery_rows": found.num_rows}),
            "run": self.run, **info, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.save_manifest()

    def save_manifest(self, **extra) -> None:
        self.manifest.update(extra)
        add_token_totals(self.manifest)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write(self.directory / MANIFEST,
                         (json.dumps(self.manifest, indent=2) + "\n").encode())
        except OSError as e:
            raise OutputError(f"{self.directory}: cannot write {MANIFEST} "
                              f"({e.strerror or e})") from None

    # -- reading -----------------------------------------------------------------------------

    def read_discovery(self, name: str) -> pa.Table | None:
        """An open task's discovery table (None for a closed task), validated like the others."""
        entry = self._checked_entry(name)
        if "discovery_file" not in entry:
            return None
        return self._read(name, entry["discovery_file"], DISCOVERY_SCHEMA,
                          entry.get("discovery_rows"))

    def read_task(self, name: str, variants: bool = False) -> pa.Table:
        """A task's table, validated against the manifest (digest, schema, row count)."""
        entry = self._checked_entry(name)
        file, schema, rows = ((entry["variants_file"], VARIANT_SCHEMA, entry.get("variant_rows"))
                              if variants else (entry["file"], MAIN_SCHEMA, entry.get("rows")))
        return self._read(name, file, schema, rows)

    def _checked_entry(self, name: str) -> dict:
        """A finished task's manifest entry, once its files are known intact."""
        if name not in self.manifest["tasks"]:
            raise OutputError(f"{self.directory}: no finished task {name!r} (finished: "
                              f"{', '.join(self.tasks) or 'none'}); "
                              "score it with python -m engine.score")
        entry = self.entry(name)
        fix = f"rerun python -m engine.score with --label {self.label} (it rescores damaged tasks)"
        problem = self.problem(name)
        if problem:
            raise OutputError(f"{problem}; {fix}")
        return entry

    def _read(self, name: str, file: str, schema: pa.Schema, rows: int | None) -> pa.Table:
        fix = f"rerun python -m engine.score with --label {self.label} (it rescores damaged tasks)"
        try:
            table = pq.read_table(self.directory / file)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise OutputError(f"{self.directory / file}: unreadable parquet "
                              f"({str(e).splitlines()[0]}); {fix}") from None
        if not schema_matches(table.schema, schema):
            raise OutputError(f"{self.directory / file}: columns differ from the results schema; "
                              f"{fix}")
        if rows is not None and table.num_rows != rows:
            raise OutputError(f"{self.directory / file}: {table.num_rows} rows, "
                              f"the manifest says {rows}; {fix}")
        return table


STEP = re.compile(r"step(\d+)")


def step_in_name(name: str) -> int | None:
    """The training step a checkpoint or label name gives: `step1000`, or OLMo's
    `stepNNN-tokensNNNB` (the first `step` followed by digits); None without one."""
    match = STEP.search(name)
    return int(match.group(1)) if match else None


def labels_in(results_dir) -> list[str]:
    """The labels of a results root (directories with a manifest), sorted; an error when
    there are none."""
    root = Path(results_dir)
    if not root.is_dir():
        raise OutputError(f"results dir {root}: not a directory; "
                          "pass the folder that engine.score wrote")
    present = sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file())
    if not present:
        raise OutputError(f"results dir {root}: no <label>/{MANIFEST} "
                          f"(expected {root}/<label>/<task>.parquet); "
                          "run python -m engine.score first or fix the path")
    return present


def read_results(results_dir, labels=None) -> dict[str, dict[str, pa.Table]]:
    """{label: {task: main table}} of a results root, every file validated (`read_task`).

    labels None: every label directory with a manifest. Errors name the directory and the
    labels present."""
    root = Path(results_dir)
    present = labels_in(root)
    out = {}
    for label in (present if labels is None else labels):
        if label not in present:
            raise OutputError(f"label '{label}': no {root / label}/{MANIFEST}; labels present: "
                              f"{', '.join(present)}; fix the label or score that checkpoint")
        store = ResultsStore(root, label)
        if not store.tasks:
            raise OutputError(f"label '{label}': no finished task in {root / label}; "
                              "score that checkpoint")
        out[label] = {name: store.read_task(name) for name in store.tasks}
    return out


def summarize(table: pa.Table) -> dict:
    """Per task: mean per-prompt entropy (bits), top answer of the mean distribution and its
    probability, mean coverage."""
    prompt_ids = table.column(Col.prompt_id).to_pylist()
    answers = table.column(Col.answer).to_pylist()
    prob = np.asarray(table.column(Col.prob).to_pylist(), dtype=np.float64)
    coverage = np.asarray(table.column(Col.coverage).to_pylist(), dtype=np.float64)
    order = list(dict.fromkeys(prompt_ids))
    k = len(prob) // len(order)
    P = prob.reshape(len(order), k)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(P > 0, P * np.log2(P), 0.0).sum(axis=1)
    mean = P.mean(axis=0)
    top = int(mean.argmax())
    return {
        "prompts": len(order),
        "entropy_bits": float(entropy.mean()),
        "top_answer": answers[top],
        "top_prob": float(mean[top]),
        "coverage": float(coverage.reshape(len(order), k)[:, 0].mean()),
    }
