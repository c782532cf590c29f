"""Exact answer distributions of language-model checkpoints by teacher-forced scoring."""

from engine.errors import EngineError

__version__ = "0.2.0"
__all__ = ["Checkpoint", "EngineError", "ScoreResult", "load", "score_checkpoint", "__version__"]


def __getattr__(name):
    # torch loads only when the runtime is used, so that `engine.errors` / `engine.tasks` stay
    # cheap to import for the analysis layer and for --list-tasks.
    if name in ("load", "Checkpoint"):
        from engine import checkpoint

        return getattr(checkpoint, name)
    if name in ("score_checkpoint", "ScoreResult"):
        from engine import api

        return getattr(api, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
