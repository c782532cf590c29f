"""The results store: results/<label>/<task>.parquet, variants/<task>.parquet, manifest.json.

The schema and the guarantees are documented in docs/results.md. In short:

* every file is read, written and deleted through one door (answerdist/engine/results/guard.py):
  walked from the root without following a link, written atomically; a task enters the manifest
  only after both of its parquet files are in place, with their row counts and xxh3 digests;
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

import fcntl
import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from answerdist.engine.results.guard import LinkRefused, StoreFiles, digest
from answerdist.engine.results.manifest import add_token_totals, file_fields, finished_at
from answerdist.engine.results.schema import (
    DISCOVERY_SCHEMA,
    LOCK,
    MAIN_SCHEMA,
    MANIFEST,
    VARIANT_SCHEMA,
    Col,
    schema_matches,
    task_hash,
)
from answerdist.errors import OutputError, notice


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


def check_finite(table: pa.Table, where: str) -> None:
    """Results with NaN or infinite numbers are never written."""
    for name in (Col.logprob, Col.prob, Col.coverage, Col.noncanonical_share):
        if name in table.column_names:
            values = table.column(name).drop_null().to_numpy()
            if not np.isfinite(values).all():
                raise OutputError(f"{where}: refusing to write non-finite {name} values")


# ---------------------------------------------------------------------------------------------
# One writer per label


class LabelLock:
    """An exclusive lock on a label directory, held while a run writes it.

    `.lock` is locked with flock(2), which the kernel releases when its holder exits, however it
    exits: a lock left by a killed run is free and is taken over. The file names the current
    holder (pid, host, start time) for the message a second writer gets."""

    def __init__(self, root: Path, label: str | None = None, name: str = LOCK):
        """The lock of root/label, or of the whole root when `label` is None; `name` is the lock
        file's (a sweep's claims on labels are such locks: answerdist/engine/run/claims.py)."""
        self.files = StoreFiles(root, label)
        self.directory = self.files.directory
        self.name = name
        self.path = self.directory / name
        self.holder = ""  # who holds it, after `take` found it busy
        self._fd = None

    def __enter__(self) -> LabelLock:
        if not self.take():
            raise OutputError(f"{self.directory}: being written by {self.holder}; wait for that "
                              "run to finish or use another --label")
        return self

    def take(self) -> bool:
        """Take the lock and write this process's record into it (True), or, when a live process
        holds it, leave it and say who in `holder` (False)."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.holder = self._record(fd) or "another process"
            os.close(fd)
            return False
        except OSError as e:  # ENOLCK, EOPNOTSUPP: a file system without advisory locks
            os.close(fd)
            raise OutputError(f"{self.path}: cannot take a lock ({e.strerror or e}); the results "
                              "must be on a file system with working advisory locks (a local "
                              "disk, NFSv4, Lustre mounted with -o flock)") from None
        try:
            left = self._record(fd)
            if left:
                notice(f"{self.path}: taking over the lock left by {left} (no longer running)")
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder_record().encode(), 0)
        except OSError as e:  # a full disk
            os.close(fd)
            raise OutputError(f"{self.path}: cannot write the lock file ({e.strerror or e}); "
                              "free some space or choose another --out") from None
        self._fd = fd
        return True

    @staticmethod
    def _record(fd: int) -> str:
        return os.pread(fd, 512, 0).decode(errors="replace").strip()[:200]

    def check_free(self) -> None:
        """Fail now, as `with` would, if a live run holds the lock; take nothing, write nothing,
        create nothing (the early check before sampling; `with` is the authoritative one)."""
        if not self.files.exists(self.name):
            return
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            holder = self._record(fd) or "another process"
            raise OutputError(f"{self.directory}: being written by {holder}; wait for that "
                              "run to finish or use another --label") from None
        finally:
            os.close(fd)

    def held_by(self) -> str | None:
        """Who holds the lock now (its record), None when nobody does; takes it for an instant
        when free and writes nothing (`answerdist sweep --status`)."""
        if not self.files.exists(self.name):
            return None
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self._record(fd) or "another process"
        except OSError:
            return None
        finally:
            os.close(fd)
        return None

    def _open(self) -> int:
        """The lock file, opened without following a link: a `.lock` that is a link or not a
        plain file is refused, so that nothing outside the directory is ever written."""
        try:
            return self.files.open_lock(self.name)
        except LinkRefused as e:
            raise OutputError(f"{e}; remove it or choose another --out") from None
        except OSError as e:
            raise OutputError(f"{self.path}: cannot be opened ({e.strerror or e}); remove it or "
                              "choose another --out") from None

    def __exit__(self, *exc) -> None:
        os.ftruncate(self._fd, 0)  # a clean exit leaves no holder to report
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def holder_record() -> str:
    """What a lock file says about its holder."""
    since = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return f"pid {os.getpid()} on {socket.gethostname()} since {since}"


# ---------------------------------------------------------------------------------------------
# The store


def read_manifest(root: Path, label: str) -> dict | None:
    """root/label/manifest.json, None when there is none."""
    files = StoreFiles(root, label)
    path = files.directory / MANIFEST
    try:
        manifest = json.loads(files.read(MANIFEST))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except LinkRefused as e:
        raise OutputError(f"{e}; remove the link or choose another --out") from None
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
        self.files = StoreFiles(out, label)
        self.directory = self.files.directory
        self.label = label
        self.run = run  # what identifies results: checkpoint fingerprint and settings
        manifest = read_manifest(out, label)
        self.manifest = manifest or {"label": label, "run": run, "tasks": {}}

    @classmethod
    def read(cls, directory: Path) -> ResultsStore:
        """An existing label directory, for reading only."""
        directory = Path(directory)
        store = cls(directory.parent, directory.name)
        if not store.files.exists(MANIFEST):
            raise OutputError(f"{directory}: no {MANIFEST}; it was not written by "
                              "answerdist score (or no task finished): score the checkpoint with "
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

    def plan(self, tasks: list, overwrite: bool = False,
             prompts: dict[str, str] | None = None) -> list:
        """The tasks this run must score; the others are finished and valid for this run.

        A task finished by another run, under another definition (prompts, answers, formats:
        its `task_hash`), or with other rendered prompts (`prompts`: {task: prompts_digest}) is
        an error unless `overwrite`; a task whose files are missing, damaged or changed since
        they were written is rescored, with a one-line notice."""
        self.check_run([t.name for t in tasks], overwrite)
        todo, redefined, reworded = [], [], []
        for task in tasks:
            if task.name not in self.manifest["tasks"] or overwrite:
                todo.append(task)
            elif self.entry(task.name).get("task_hash") != task_hash(task):
                redefined.append(task)
            elif not self.same_prompts(task.name, prompts):
                reworded.append(task)
            elif problem := self.problem(task.name):
                notice(f"{problem}; rescoring {task.name}")
                todo.append(task)
        if redefined:
            raise OutputError(
                f"{self.directory}: holds results of another definition of "
                f"{', '.join(t.name for t in redefined)} (from "
                f"{self.entry(redefined[0].name).get('source')}; its prompts, answers or formats "
                "differ from this one's); rescore with --overwrite or use another --label")
        if reworded:
            raise OutputError(
                f"{self.directory}: holds results of {', '.join(t.name for t in reworded)} "
                "scored on other prompt text than this run renders (the chat template or its "
                "special tokens changed); rescore with --overwrite or use another --label")
        return todo

    def check_run(self, names: list[str], overwrite: bool = False) -> None:
        """The label holds nothing of another run (checkpoint or settings), unless `overwrite`:
        what depends on the run alone, checked before any sampling or scoring (`plan` checks
        it again, with the tasks' definitions)."""
        if overwrite:
            return
        foreign = [n for n in names
                   if n in self.manifest["tasks"] and self.entry_run(n) != self.run]
        if foreign:
            keys = _differing(self.entry_run(foreign[0]) or {}, self.run)
            raise OutputError(
                f"{self.directory}: holds results of another checkpoint or other settings for "
                f"{', '.join(foreign)} ({', '.join(keys)} differ); rescore them with "
                "--overwrite or use another --label")
        others = [n for n in self.tasks if n not in names and self.entry_run(n) != self.run]
        if others:
            keys = _differing(self.entry_run(others[0]) or {}, self.run)
            raise OutputError(
                f"{self.directory}: holds {', '.join(others)} from another checkpoint or other "
                f"settings ({', '.join(keys)} differ), and a label holds one run; use another "
                "--label (or --overwrite to add to it all the same)")

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
            if file not in (f"{name}.parquet", f"variants/{name}.parquet",
                            f"discovery/{name}.parquet"):
                return f"{path}: not the task's own file in {self.directory}"
            try:
                data = self.files.read(file)
            except LinkRefused:
                return f"{path}: not the task's own file in {self.directory} (a link)"
            except (FileNotFoundError, NotADirectoryError):
                return f"{path}: missing"
            except OSError as e:
                return f"{path}: unreadable ({e.strerror or e})"
            if "digests" in entry and entry["digests"].get(file) != digest(data):
                return f"{path}: damaged or changed since it was written"
        return None

    # -- writing (hold the LabelLock) ---------------------------------------------------------

    def begin(self) -> None:
        """Start a run: the manifest names it, temporaries of killed writers go."""
        try:
            self.files.remove_stale_temporaries("variants", "discovery")
        except OSError as e:  # a link planted at variants/ or discovery/
            raise OutputError(f"{self.directory}: {e.strerror or e}") from None
        self.manifest["run"] = self.run

    def write_tables(self, name: str, main: pa.Table, variants: pa.Table,
                     found: pa.Table | None = None, **info) -> None:
        """A task's tables, then its manifest entry: the old files stay until each new one is
        complete, and a task counts as finished only once the manifest says so."""
        files = {f"{name}.parquet": main, f"variants/{name}.parquet": variants}
        if found is not None:  # an open task's discovery table
            files[f"discovery/{name}.parquet"] = found
        digests = {}
        try:
            for file, table in files.items():
                check_finite(table, f"{self.directory / file}")
                data = parquet_bytes(table)
                self.files.write(file, data)
                digests[file] = digest(data)
        except LinkRefused as e:
            raise OutputError(f"{e}; remove the link or choose another --out") from None
        except OSError as e:
            raise OutputError(f"{self.directory}: cannot write results ({e.strerror or e}); check "
                              "--out and its permissions") from None
        self.manifest["tasks"][name] = {**file_fields(name, main, variants, found, digests,
                                                      self.run),
                                         **info, "finished_at": finished_at()}
        self.save_manifest()

    def save_manifest(self, **extra) -> None:
        self.manifest.update(extra)
        add_token_totals(self.manifest)
        try:
            self.files.write(MANIFEST, (json.dumps(self.manifest, indent=2) + "\n").encode())
        except LinkRefused as e:
            raise OutputError(f"{e}; remove the link or choose another --out") from None
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
                              "score it with answerdist score")
        entry = self.entry(name)
        fix = (f"rerun answerdist score with --label {self.label} (it rescores damaged "
               "tasks)")
        problem = self.problem(name)
        if problem:
            raise OutputError(f"{problem}; {fix}")
        return entry

    def _read(self, name: str, file: str, schema: pa.Schema, rows: int | None) -> pa.Table:
        fix = (f"rerun answerdist score with --label {self.label} (it rescores damaged "
               "tasks)")
        try:
            # One file in memory, read on this thread: pq.read_table would start Arrow's thread
            # pools and its datasets layer (S3, GCS, Azure file systems), whose threads could
            # still be alive when the process exits, which then aborts (SIGABRT) instead of
            # exiting with its status.
            table = pq.ParquetFile(pa.BufferReader(self.files.read(file))).read(use_threads=False)
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


def labels_in(results_dir) -> list[str]:
    """The labels of a results root (directories with a manifest), sorted; an error when
    there are none."""
    root = Path(results_dir)
    if not root.is_dir():
        raise OutputError(f"results dir {root}: not a directory; "
                          "pass the folder that answerdist.cli.score wrote")
    present = StoreFiles(root).labels()
    if not present:
        raise OutputError(f"results dir {root}: no <label>/{MANIFEST} "
                          f"(expected {root}/<label>/<task>.parquet); "
                          "run answerdist score first or fix the path")
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


