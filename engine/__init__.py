"""Exact answer distributions of language-model checkpoints by teacher-forced scoring."""

from engine.errors import EngineError

__version__ = "0.1.0"
__all__ = ["Checkpoint", "EngineError", "load", "__version__"]


def __getattr__(name):
    # torch loads only when the runtime is used, so that `engine.errors` / `engine.tasks` stay
    # cheap to import for the analysis layer and for --list-tasks.
    if name in ("load", "Checkpoint"):
        from engine import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
