"""What the results are: their columns and types, the hashes that identify a task and its
prompts, the manifest's token totals, and `ScoreResult`, what a run returns. The one definition
that the writer (answerdist/engine/results/store.py), the tables (answerdist/engine/scoring/
tables.py), the analysis and the report share; docs/results.md documents it.

This module imports neither torch nor triton: the analysis layer reads results through it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

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
    # Whether the prompt's last characters merge with the answers' first ones (then the
    # probability is the exact conditional N / D, docs/results.md), and how many characters
    # of the prompt its merged tail T holds (0 where it does not merge).
    boundary_crossed = "boundary_crossed"
    boundary_chars = "boundary_chars"


# Each column's type, once; the two tables are lists of these columns.
TYPES = {
    Col.label: pa.string(), Col.task: pa.string(), Col.mode: pa.string(),
    Col.prompt_id: pa.string(), Col.prompt_text: pa.string(), Col.user_prompt: pa.string(),
    Col.continuation: pa.string(),
    Col.prompt_token_ids: pa.list_(pa.int64()), Col.continuation_token_ids: pa.list_(pa.int64()),
    Col.answer: pa.string(), Col.answer_index: pa.int32(), Col.logprob: pa.float64(),
    Col.prob: pa.float64(), Col.coverage: pa.float64(), Col.noncanonical_share: pa.float64(),
    Col.tokenizations: pa.int32(), Col.boundary_crossed: pa.bool_(),
    Col.boundary_chars: pa.int32(),
}


def _schema(*names: str) -> pa.Schema:
    return pa.schema([(name, TYPES[name]) for name in names])


MAIN_SCHEMA = _schema(Col.label, Col.task, Col.mode, Col.prompt_id, Col.prompt_text,
                      Col.user_prompt, Col.continuation, Col.prompt_token_ids,
                      Col.continuation_token_ids, Col.answer, Col.answer_index, Col.logprob,
                      Col.prob, Col.coverage, Col.noncanonical_share, Col.boundary_crossed,
                      Col.boundary_chars)
# logprob here: log P(variant tokens | prompt) + log P(boundary | ...), over its tokenizations
VARIANT_SCHEMA = _schema(Col.label, Col.task, Col.mode, Col.prompt_id, Col.answer, Col.continuation,
                         Col.continuation_token_ids, Col.logprob, Col.noncanonical_share,
                         Col.tokenizations)
# Columns each later version added, oldest first: results written before them lack them and
# are still read (0.1 lacks all of them, 0.2 the merged-boundary ones).
ADDED_COLUMNS = ((Col.noncanonical_share, Col.tokenizations),
                 (Col.boundary_crossed, Col.boundary_chars))


def schema_matches(found: pa.Schema, schema: pa.Schema) -> bool:
    """The results schema, or that of an earlier version (the same without the columns that
    later versions added)."""
    for version in range(len(ADDED_COLUMNS) + 1):
        later = {name for added in ADDED_COLUMNS[version:] for name in added}
        legacy = pa.schema([f for f in schema if f.name not in later])
        if found.equals(legacy, check_metadata=False):
            return True
    return False


def task_hash(task) -> str:
    """Changes whenever anything that could change the task's results changes."""
    fields = dataclasses.asdict(task)
    fields.pop("source", None)
    fields.pop("target", None)  # read by the analysis only: the scores do not depend on it
    fields.pop("category", None)  # a label, recorded only
    # Settings added later are left out at their defaults, so that results scored before they
    # existed keep their hash.
    for name, default in (("end", "boundary"), ("response_prefix", ""), ("open_answers", False),
                          ("normalize", ()), ("end_tokens", ())):
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


DISCOVERY_SCHEMA = pa.schema([(Col.prompt_id, pa.string()), (Col.answer, pa.string()),
                              (Col.continuation, pa.string()), ("count", pa.int64())])



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


STEP = re.compile(r"step(\d+)")


def step_in_name(name: str) -> int | None:
    """The training step a checkpoint or label name gives: `step1000`, or OLMo's
    `stepNNN-tokensNNNB` (the first `step` followed by digits); None without one."""
    match = STEP.search(name)
    return int(match.group(1)) if match else None


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
