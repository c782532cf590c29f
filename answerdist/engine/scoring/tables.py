"""A scored task as the results' tables (answerdist/engine/results/schema.py): one row per
(prompt, answer), one per (prompt, surface variant), an open task's discovery, and what the
manifest records about the task."""

from __future__ import annotations

import pyarrow as pa

from answerdist.engine.results.manifest import task_fields
from answerdist.engine.results.schema import (
    DISCOVERY_SCHEMA,
    MAIN_SCHEMA,
    VARIANT_SCHEMA,
    Col,
)
from answerdist.engine.scoring.scorer import TaskScores


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
                Col.boundary_crossed: s.boundary is not None,
                Col.boundary_chars: 0 if s.boundary is None else s.boundary.chars,
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


def discovery_table(scores: TaskScores) -> pa.Table | None:
    """An open task's discovery: one row per (prompt, answer, sampled surface form) with how
    many of that prompt's samples gave it; None for a closed task."""
    if scores.discovery is None:
        return None
    return pa.Table.from_pylist(scores.discovery.rows, schema=DISCOVERY_SCHEMA)



def task_tables(scores: TaskScores, label: str) -> tuple:
    """(main, variants, discovery or None, manifest info) of a scored task, as the store's
    `write_tables` takes them."""
    return (main_table(scores, label), variant_table(scores, label), discovery_table(scores),
            task_fields(scores))
