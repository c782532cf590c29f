"""Exact answer distributions of language-model checkpoints by teacher-forced scoring.

    import answerdist
    ck = answerdist.load("/models/olmo2-1b")
    result = answerdist.score_checkpoint(ck, tasks="coin,rng_1_10", out="results")

    from answerdist import analysis
    phases = analysis.analyse(analysis.load("results"), {"olmo2": {"base": "b", "sft": "s"}})

The command line is `answerdist` (= `python -m answerdist`): score, sweep, analyse, trajectory,
tasks, demo. The layers, top to bottom: cli, lab, analysis, engine (run, scoring, model), kernels,
engine (results, settings, text, tasks), errors and files; each imports only those below it
(`make lint` checks it).
"""

import importlib

from answerdist.errors import EngineError
from answerdist.version import __version__

__all__ = ["Checkpoint", "EngineError", "ScoreResult", "load", "score_checkpoint", "__version__"]

# Imported on first use, so that `import answerdist` stays cheap and torch-free: the analysis
# layer and `answerdist tasks` never load torch.
_LAZY = {"load": "answerdist.engine.model.checkpoint",
         "Checkpoint": "answerdist.engine.model.checkpoint",
         "score_checkpoint": "answerdist.engine.run.api",
         "ScoreResult": "answerdist.engine.results.schema"}
_SUBPACKAGES = ("analysis", "cli", "engine", "kernels", "lab")


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"answerdist.{name}")
    raise AttributeError(f"module 'answerdist' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_SUBPACKAGES))
