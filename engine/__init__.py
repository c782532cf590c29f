"""Exact answer distributions of language-model checkpoints by teacher-forced scoring."""

from engine.checkpoint import Checkpoint, load
from engine.errors import EngineError

__version__ = "0.1.0"
__all__ = ["Checkpoint", "EngineError", "load", "__version__"]
