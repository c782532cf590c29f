"""The manifest (a label's manifest.json, and `ScoreResult.manifest`), built here alone: what it
records about the run (`run_fields`), about each task (`task_fields`) and its files
(`file_fields`), and the token totals over its tasks. docs/results.md documents every field.
The values come from the layers above (the run, the scores); this module only names and
arranges them, and imports neither torch nor triton.
"""

from __future__ import annotations

import time

from answerdist.engine.results.schema import prompts_digest, task_hash
from answerdist.version import __version__


def run_fields(ck, spec, run, key: dict, torch_version: str, threads: int, load_seconds: float,
               total_seconds: float, skipped: int) -> dict:
    """What the manifest records about the run, besides its tasks: `ck` the loaded checkpoint,
    `spec` its RunSpec, `run` the spec resolved against it (answerdist/engine/run/plan.py) and
    `key` the run key."""
    return dict(
        checkpoint=str(ck.path.resolve()), fingerprint=ck.fingerprint,
        engine_version=__version__, dtype=spec.dtype, device=str(ck.device),
        mode=run.mode, chat_template_source=run.chat.source if run.chat is not None else None,
        chat_template_special_tokens=run.chat.special_source if run.chat is not None else None,
        template_date=run.template_date,
        # the tokens that end a reply (end turn and line without end_tokens), by their text
        stop_tokens=(None if run.stop_tokens is None
                     else [ck.tokenizer.id_to_token(i) for i in run.stop_tokens]),
        enable_thinking=key["enable_thinking"], torch_version=torch_version,
        threads=threads,  # CPU bits can depend on it (docs/results.md)
        tokenizations=spec.tokenizations,
        max_tokenizations=spec.max_tokenizations if spec.tokenizations == "all" else None,
        batch_tokens=spec.batch_tokens, batch_invariant=key["batch_invariant"], tp=spec.tp,
        weight_files=ck.weight_files,
        timings={"load_and_validate_s": round(load_seconds, 3),
                 "total_s": round(total_seconds, 3), "skipped_tasks": skipped})


def task_fields(scores) -> dict:
    """What the manifest records about a scored task (answerdist/engine/scoring/scorer.py's
    TaskScores) besides its files."""
    return {"task_hash": task_hash(scores.task),
            "prompts_digest": prompts_digest(p.sequence.prompt_text for p in scores.prompts),
            "source": scores.task.source,
            "target": None if scores.task.target is None else list(scores.task.target),
            **({"category": scores.task.category} if scores.task.category else {}),
            "prompts": len(scores.prompts), "answers": len(scores.task.answers),
            "tokens_needed": scores.tokens_needed, "tokens_processed": scores.tokens_processed,
            "seconds": round(scores.seconds, 4),
            **({} if scores.discovery is None else {
                "discovery": scores.discovery.counts, "open_task_hash": scores.discovery.definition,
                "answers_from": list(scores.discovery.answers_from)})}


def file_fields(name: str, main, variants, found, digests: dict[str, str], run: dict) -> dict:
    """A task's files (main, variants and, for an open task, discovery tables), their row counts
    and digests, the run that wrote them, and when."""
    return {
        "file": f"{name}.parquet", "variants_file": f"variants/{name}.parquet",
        "rows": main.num_rows, "variant_rows": variants.num_rows, "digests": digests,
        **({} if found is None else {"discovery_file": f"discovery/{name}.parquet",
                                     "discovery_rows": found.num_rows}),
        "run": run,
    }


def finished_at() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


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
