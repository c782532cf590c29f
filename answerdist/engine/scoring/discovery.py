"""Discovering an open task's answers by sampling, before scoring them exactly.

`discover` samples N replies to every prompt (answerdist/engine/scoring/sampler.py), maps each
finished reply to its answer with the task's normaliser, and returns the task with those answers
filled in: one answer per normalised form found at any prompt, its variants every surface form
sampled for it (the reply's text without the whitespace around it), so that the scorer scores every
answer at every prompt exactly. 1 - coverage is then exactly the probability of the replies that no
sample found. The discovery rows say what was sampled where; `counts` how the samples ended.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

from answerdist.engine.results.schema import task_hash
from answerdist.engine.scoring.sampler import ReplySampler
from answerdist.engine.settings import SamplingSettings
from answerdist.engine.tasks import Answer, Task, normalize_reply
from answerdist.engine.tasks.task import lookalike
from answerdist.errors import TaskError


@dataclass
class Discovery:
    """What sampling found for one task."""

    task: Task  # with the discovered answers
    rows: list[dict]  # sampled here: prompt_id, answer, continuation (the surface form), count
    counts: dict[str, int]  # samples, finished, unfinished, other_end, no_answer
    definition: str  # task_hash of the open task, before discovery (what --answers-from checks)
    answers_from: tuple[str, ...] = ()  # labels whose discovered answers were joined


def discover(checkpoint, encoder, task: Task, n: int | None, settings: SamplingSettings,
             progress=None, borrowed: dict[str, list[dict]] | None = None) -> Discovery:
    """Sample `n` replies per prompt of the open `task` (None: none) and collect its answers,
    joined with the discovery rows `borrowed` from other labels ({label: rows})."""
    sampler = ReplySampler(checkpoint, encoder, settings)
    counts = Counter(samples=0, finished=0, unfinished=0, other_end=0, no_answer=0)
    found: dict[tuple[str, str, str], int] = Counter()  # (prompt, answer, surface form)
    for prompt in task.prompts if n else ():
        for reply in sampler.sample(task, prompt, n):
            counts["samples"] += 1
            counts[reply.status] += 1
            answer = normalize_reply(task, reply.text) if reply.status == "finished" else ""
            surface = reply.text.strip()
            if reply.status == "finished" and not (answer and surface):
                counts["no_answer"] += 1
            elif answer:
                found[(prompt.id, answer, surface)] += 1
        if progress is not None:
            progress.update(1)
    rows = [{"prompt_id": p, "answer": a, "continuation": s, "count": c}
            for (p, a, s), c in sorted(found.items())]
    return collect(task, rows, dict(counts), borrowed)


def collect(task: Task, rows: list[dict], counts: dict[str, int],
            borrowed: dict[str, list[dict]] | None = None) -> Discovery:
    """The open `task` with the answers of its discovery `rows` (sampled here, `counts` saying
    how the samples ended) and of the rows `borrowed` from other labels. A rerun that finds its
    own discovery already written collects it again instead of sampling."""
    union: dict[tuple[str, str, str], int] = Counter()
    for r in [*rows, *(r for label_rows in (borrowed or {}).values() for r in label_rows)]:
        union[(r["prompt_id"], r["answer"], r["continuation"])] += r["count"]
    if not union:
        raise TaskError(f"{task.source}: task {task.name!r}: none of its {counts['samples']} "
                        f"sampled replies gave an answer ({fates(counts)}); check its "
                        "normalize rule, or raise --max-new-tokens or --discover")
    return Discovery(dataclasses.replace(task, answers=_answers(union)), rows, counts,
                     task_hash(task), tuple(borrowed or ()))


def fates(counts: dict[str, int]) -> str:
    """How the samples ended, every fate counted (they add up to the samples)."""
    return (f"{counts['finished']} finished, {counts['unfinished']} unfinished (past "
            f"--max-new-tokens or inside a UTF-8 character), {counts['other_end']} ended at "
            f"another special token, {counts['no_answer']} of the finished normalised to "
            "nothing")


def _answers(found: dict[tuple[str, str, str], int]) -> tuple[Answer, ...]:
    """Answers by total count (most sampled first, then by name); each answer's surface forms
    by count. A surface form that looks like one already kept (Unicode normalisation,
    invisible characters) joins it, as the task checks require."""
    by_answer: dict[str, Counter] = {}
    for (_, answer, surface), count in found.items():
        by_answer.setdefault(answer, Counter())[surface] += count
    order = sorted(by_answer, key=lambda a: (-sum(by_answer[a].values()), a))
    answers, seen = [], set()
    for answer in order:
        forms = sorted(by_answer[answer], key=lambda s: (-by_answer[answer][s], s))
        kept = []
        for form in forms:
            if lookalike(form) not in seen:
                seen.add(lookalike(form))
                kept.append(form)
        if kept:
            answers.append(Answer(answer, tuple(kept)))
    return tuple(answers)
