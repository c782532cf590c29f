"""The results store: results/<label>/<task>.parquet + manifest.json (schema in DESIGN.md).

Every file is written atomically (a temporary file in the same directory, then os.replace), and
a task enters the manifest only after its parquet files are in place. A rerun with the same
checkpoint fingerprint and settings skips the tasks the manifest lists; a run killed at any
moment therefore resumes to results identical to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.errors import OutputError
from engine.scorer import TaskScores
from engine.tasks import Task

SAMPLE_BYTES = 1 << 16  # bytes hashed at each sampled offset of a weight file
SAMPLES_PER_FILE = 16

MAIN_SCHEMA = pa.schema([
    ("label", pa.string()),
    ("task", pa.string()),
    ("mode", pa.string()),
    ("prompt_id", pa.string()),
    ("prompt_text", pa.string()),  # exactly what the model reads (chat template applied)
    ("user_prompt", pa.string()),  # the task's prompt text
    ("continuation", pa.string()),  # first variant, as appended to prompt_text
    ("prompt_token_ids", pa.list_(pa.int64())),
    ("continuation_token_ids", pa.list_(pa.int64())),
    ("answer", pa.string()),
    ("answer_index", pa.int32()),
    ("logprob", pa.float64()),  # log P(answer | prompt), summed over variants
    ("prob", pa.float64()),  # P(answer | prompt) / coverage
    ("coverage", pa.float64()),  # sum over answers of P(answer | prompt)
])

VARIANT_SCHEMA = pa.schema([
    ("label", pa.string()),
    ("task", pa.string()),
    ("mode", pa.string()),
    ("prompt_id", pa.string()),
    ("answer", pa.string()),
    ("continuation", pa.string()),
    ("continuation_token_ids", pa.list_(pa.int64())),
    ("logprob", pa.float64()),  # log P(variant tokens | prompt) + log P(boundary | ...)
])


def fingerprint(directory: Path) -> str:
    """A content hash of a checkpoint that is cheap even at tens of GB.

    Small files (config, tokenizer, templates) are hashed whole; each weight file contributes
    its size, its safetensors header and 16 evenly spaced 64 KiB samples, enough to tell apart
    the stages of a ladder, which share names, shapes and sizes but no weights."""
    h = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        h.update(path.name.encode() + b"\0")
        if path.suffix == ".safetensors":
            _hash_weights(h, path)
        elif path.suffix in (".json", ".jinja", ".txt", ".model"):
            h.update(path.read_bytes())
    return h.hexdigest()[:32]


def _hash_weights(h, path: Path) -> None:
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        header = f.read(8)
        h.update(header)
        if len(header) == 8:
            h.update(f.read(int.from_bytes(header, "little")))
        for k in range(SAMPLES_PER_FILE):
            f.seek(size * k // SAMPLES_PER_FILE)
            h.update(f.read(SAMPLE_BYTES))


def task_hash(task: Task) -> str:
    """Changes whenever anything that could change the task's results changes."""
    fields = dataclasses.asdict(task)
    fields.pop("source", None)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_table(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def check_writable(out: Path) -> None:
    """Fail before any work if `out` cannot be created or written (creates nothing)."""
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"{probe}: is a file, not a directory; choose another --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{probe}: not writable; choose another --out or fix its permissions")


def main_table(scores: TaskScores, label: str) -> pa.Table:
    rows = {name: [] for name in MAIN_SCHEMA.names}
    for p in scores.prompts:
        s, dist, coverage = p.sequence, p.distribution, p.coverage
        first = {a: s.answer_of.index(a) for a in range(len(scores.task.answers))}
        for a, answer in enumerate(scores.task.answers):
            v = first[a]
            for key, value in (
                ("label", label), ("task", scores.task.name), ("mode", scores.mode),
                ("prompt_id", s.prompt_id), ("prompt_text", s.prompt_text), ("user_prompt", s.user_prompt),
                ("continuation", s.continuations[v]), ("prompt_token_ids", s.prompt_ids),
                ("continuation_token_ids", s.continuation_ids[v]), ("answer", answer.name),
                ("answer_index", a), ("logprob", float(p.answer_logprob[a])), ("prob", float(dist[a])),
                ("coverage", coverage),
            ):
                rows[key].append(value)
    return pa.table(rows, schema=MAIN_SCHEMA)


def variant_table(scores: TaskScores, label: str) -> pa.Table:
    rows = {name: [] for name in VARIANT_SCHEMA.names}
    for p in scores.prompts:
        s = p.sequence
        for v, cont in enumerate(s.continuations):
            for key, value in (
                ("label", label), ("task", scores.task.name), ("mode", scores.mode),
                ("prompt_id", s.prompt_id), ("answer", scores.task.answers[s.answer_of[v]].name),
                ("continuation", cont), ("continuation_token_ids", s.continuation_ids[v]),
                ("logprob", float(p.variant_logprob[v])),
            ):
                rows[key].append(value)
    return pa.table(rows, schema=VARIANT_SCHEMA)


class ResultsStore:
    """results/<label>/: per-task parquet files, per-variant tables and the manifest."""

    def __init__(self, out: Path, label: str, run: dict):
        self.directory = Path(out) / label
        self.label = label
        self.run = run  # what identifies the results: checkpoint fingerprint and settings
        self.manifest = self._existing_manifest()
        for stale in self.directory.rglob(".*.tmp*"):  # left by a run killed mid-write
            stale.unlink()

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    def _existing_manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {"label": self.label, "run": self.run, "tasks": {}}
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise OutputError(f"{self.manifest_path}: unreadable ({e}); delete it to start this label afresh") from None
        if manifest.get("run") != self.run:
            raise OutputError(
                f"{self.directory}: holds results of another checkpoint or other settings "
                "(fingerprint, dtype, mode or chat template differ); use another --label or --overwrite"
            )
        return manifest

    def is_done(self, task: Task) -> bool:
        entry = self.manifest["tasks"].get(task.name)
        return bool(entry) and entry.get("task_hash") == task_hash(task) and (self.directory / entry["file"]).exists()

    def write_task(self, scores: TaskScores) -> None:
        (self.directory / "variants").mkdir(parents=True, exist_ok=True)
        name = scores.task.name
        atomic_write_table(self.directory / "variants" / f"{name}.parquet", variant_table(scores, self.label))
        atomic_write_table(self.directory / f"{name}.parquet", main_table(scores, self.label))
        self.manifest["tasks"][name] = {
            "file": f"{name}.parquet",
            "variants_file": f"variants/{name}.parquet",
            "task_hash": task_hash(scores.task),
            "source": scores.task.source,
            "prompts": len(scores.prompts),
            "answers": len(scores.task.answers),
            "tokens_needed": scores.tokens_needed,
            "tokens_processed": scores.tokens_processed,
            "seconds": round(scores.seconds, 4),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.save_manifest()

    def save_manifest(self, **extra) -> None:
        self.manifest.update(extra)
        tasks = self.manifest["tasks"].values()
        needed = sum(t["tokens_needed"] for t in tasks)
        processed = sum(t["tokens_processed"] for t in tasks)
        self.manifest["tokens_needed"] = needed
        self.manifest["tokens_processed"] = processed
        # Unique tokens needed (prompt tokens + trie nodes) over tokens run through the model:
        # 1.0 means no padding and no repeated prefix.
        self.manifest["token_efficiency"] = round(needed / processed, 6) if processed else None
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.manifest_path, (json.dumps(self.manifest, indent=2) + "\n").encode())

    def read_task(self, name: str) -> pa.Table:
        return pq.read_table(self.directory / f"{name}.parquet")


def summarize(table: pa.Table) -> dict:
    """Per task: mean per-prompt entropy (bits), top answer of the mean distribution and its
    probability, mean coverage."""
    prompt_ids = table.column("prompt_id").to_pylist()
    answers = table.column("answer").to_pylist()
    prob = np.asarray(table.column("prob").to_pylist(), dtype=np.float64)
    coverage = np.asarray(table.column("coverage").to_pylist(), dtype=np.float64)
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
