"""The Python API: score a checkpoint's tasks, in memory or into the results store.

    import answerdist
    result = answerdist.score_checkpoint("/models/olmo2-1b", tasks="coin,rng_1_10", out="results")
    result.to_pandas()             # one row per (prompt, answer); variants=True: per variant

`answerdist score` and `answerdist sweep` are thin shells over `run_spec`, which takes the
settings as one `answerdist.engine.settings.RunSpec`. Every input is validated (settings,
checkpoint, tasks, tokenization of every prompt and answer, context length, output location)
before anything is written; a user error raises an `EngineError` with one line. The run itself
is answerdist/engine/run/job.py's.
"""

from __future__ import annotations

import inspect
import time

from answerdist.engine.model import distributed
from answerdist.engine.model.checkpoint import Checkpoint, fingerprint, load, read_metadata
from answerdist.engine.model.distributed import SOLO
from answerdist.engine.model.loading import weight_paths
from answerdist.engine.results.schema import ScoreResult, prompts_digest, task_hash
from answerdist.engine.results.store import ResultsStore, check_writable, read_manifest
from answerdist.engine.run.job import Scoring
from answerdist.engine.run.plan import resolve
from answerdist.engine.scoring.scorer import render_prompt
from answerdist.engine.settings import API, RunSpec, declared
from answerdist.errors import EngineError

DEFAULT_BATCH_TOKENS = RunSpec.batch_tokens


def score_checkpoint(checkpoint, *args, **settings) -> ScoreResult:
    """Score every answer of every task exactly for one checkpoint.

    checkpoint: a local Hugging Face directory, or a `Checkpoint` from `answerdist.load` (then
    `dtype`, `device` and `tp` come from it). Every other argument is a setting, with the
    default and meaning its declaration gives (answerdist/engine/settings.py, listed below).
    out=None scores in memory and writes nothing; out=ROOT writes ROOT/label/ and resumes
    finished tasks, as the CLI does. With tp > 1 every rank of the torchrun launch calls this;
    rank 0 writes the results and returns them, the other ranks return the manifest with no
    tables when `out` is given. A setting with a value it cannot take raises
    `answerdist.engine.settings.SettingError` naming it.
    """
    bound = SIGNATURE.bind(checkpoint, *args, **settings)  # a TypeError as any function's
    bound.apply_defaults()
    given = dict(bound.arguments)
    return run_spec(given.pop("checkpoint"), RunSpec(**given))


# score_checkpoint's keywords, names and defaults, are the declared settings'.
SIGNATURE = inspect.Signature(
    [inspect.Parameter("checkpoint", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(s.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=s.default)
       for s in declared(API)])
score_checkpoint.__signature__ = SIGNATURE
score_checkpoint.__doc__ += "\n" + "\n".join(
    f"    {s.name} (default {s.default!r}): {s.metadata['help']}" for s in declared(API)) + "\n"


def run_spec(checkpoint, spec: RunSpec) -> ScoreResult:
    """`score_checkpoint` with its settings as one RunSpec (what the CLI and the sweep call).
    A loaded `Checkpoint` brings its own dtype, device and tensor-parallel group; with tp > 1
    every rank of the group calls this with the same settings, rank 0 writes the results and
    returns them, the other ranks return the manifest with no tables when `out` is given."""
    if isinstance(checkpoint, Checkpoint):
        spec = spec.replace(dtype=str(checkpoint.dtype).removeprefix("torch."),
                            device=str(checkpoint.device), tp=checkpoint.group.size)
        group = checkpoint.group
    else:
        group = (distributed.setup(spec.tp, spec.device, spec.dist_timeout).tp if spec.tp > 1
                 else SOLO)
    started = time.perf_counter()
    with group.step("checking the output"):
        if spec.out is not None and group.lead:
            check_writable(spec.out, spec.label)
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load(
        checkpoint, dtype=spec.dtype, device=spec.device, tp=spec.tp)
    with group.step("preparing the prompts"):
        job = Scoring(ck, spec, started)
    return job.into(job.store())


def finished(checkpoint, spec: RunSpec) -> bool:
    """Whether `spec.out/label` already holds every task for this checkpoint and these settings,
    decided without reading the weights (answerdist.engine.run.sweep skips such a checkpoint without
    loading it).

    The label's manifest must list weight files of the same names, sizes and modification times
    as the checkpoint's now (their recorded digests then stand for them, as make and rsync trust
    a file's size and time; the small files are hashed again), and every task must be finished,
    with intact files, for the very run `run_spec` would make. False whenever in doubt: `run_spec`
    then decides per task, after reading every byte."""
    try:
        meta = read_metadata(checkpoint)
        run = resolve(spec, meta)
        manifest = read_manifest(spec.out, run.label)
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


