"""`answerdist sweep SWEEP.toml --submit`: a job array whose every task is a sweep worker, through
submitit (`pip install 'answerdist[slurm]'`). The tasks share the sweep's store by claims
(answerdist/engine/run/ledger.py), so the array's size only sets how many workers there are;
its tasks need no index. `cluster="local"` runs the same path as Slurm on this machine
(submitit's local executor: one process per task, here and now), for trying a sweep before a
cluster sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from answerdist.errors import EngineError

CLUSTERS = ("slurm", "local")


class SubmitError(EngineError):
    """The job array cannot be submitted (submitit missing, the scheduler refused it)."""


@dataclass(frozen=True)
class ArraySettings:
    tasks: int  # the array's size: how many workers
    folder: Path  # submitit's job files and the tasks' logs
    cluster: str = "slurm"
    partition: str | None = None
    gpus: int = 1  # per task
    minutes: int | None = None  # the time limit of a task (None: the partition's default)
    parallel: int | None = None  # at most this many tasks at once (Slurm's %N)
    cpus: int | None = None  # per task


def executor(settings: ArraySettings):
    try:
        import submitit
    except ImportError:
        raise SubmitError("--submit needs submitit, which is not installed; install the extra: "
                          "pip install 'answerdist[slurm]'") from None
    ex = submitit.AutoExecutor(folder=str(settings.folder), cluster=settings.cluster)
    parameters = {"name": "answerdist-sweep", "nodes": 1, "tasks_per_node": 1,
                  "gpus_per_node": settings.gpus}
    if settings.minutes is not None:
        parameters["timeout_min"] = settings.minutes
    elif settings.cluster == "local":
        parameters["timeout_min"] = 7 * 24 * 60  # submitit's local default is 2 minutes
    if settings.cpus is not None:
        parameters["cpus_per_task"] = settings.cpus
    if settings.partition is not None:
        parameters["slurm_partition"] = settings.partition
    if settings.parallel is not None:
        parameters["slurm_array_parallelism"] = settings.parallel
    ex.update_parameters(**parameters)
    return ex


def submit_array(task, arguments: list, settings: ArraySettings) -> list:
    """`task(arguments)` in each of `settings.tasks` array tasks; the submitted jobs."""
    ex = executor(settings)
    try:
        return ex.map_array(task, [arguments] * settings.tasks)
    except Exception as e:  # sbatch's refusal, a folder that cannot be written
        raise SubmitError(f"the job array could not be submitted: {type(e).__name__}: "
                          f"{str(e).strip().splitlines()[-1] if str(e).strip() else e}") from None
