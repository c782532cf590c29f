"""Triton kernels, each beside a plain-torch reference with the same semantics.

The engine calls the public dispatchers (``answerdist.kernels.lm_head.lm_head_logprobs``,
``answerdist.kernels.tree_attention.tree_attention``): they run the Triton kernel when the tensors
are on CUDA and the torch reference otherwise. ``ENGINE_FORCE_REFERENCE=1`` forces the references
even on CUDA, for A/B checks of the kernels against the exactness reference.

Triton is imported lazily, only inside the Triton paths (the ``_*_triton`` modules), so that
CPU users never pay for it and never break when it is missing. A second reason: Triton decides
when it is first imported whether ``@triton.jit`` code runs natively or in the interpreter
(``TRITON_INTERPRET=1``, used by the CPU tests), so importing ``kernels`` must not import it
before a test has had the chance to set that variable (see ``kernels/interpreter.py``). What the
Triton modules share (interpreter mode, the float32 dot, the device and architecture checks)
lives in ``kernels/_triton_common.py``.
"""

from __future__ import annotations

import importlib.util
import os

__all__ = ["KernelUnsupportedError", "force_reference", "force_triton", "triton_available",
           "use_triton"]


class KernelUnsupportedError(ValueError):
    """A Triton kernel asked for a dtype, head_dim or GPU architecture it does not support.

    The message is one line naming the torch reference to use instead (the engine switches to
    the references with ``ENGINE_FORCE_REFERENCE=1``); raised before anything is compiled.
    """


def force_reference() -> bool:
    """True when ``ENGINE_FORCE_REFERENCE=1``: use the torch references even on CUDA."""
    return os.environ.get("ENGINE_FORCE_REFERENCE", "").strip() == "1"


def force_triton() -> bool:
    """True when ``ENGINE_FORCE_TRITON=1``: the Triton kernels even for CPU tensors, which only
    works under ``TRITON_INTERPRET=1``. It lets a machine without a GPU run the whole engine
    through the kernels (tests/test_engine_triton.py); never useful for speed."""
    return os.environ.get("ENGINE_FORCE_TRITON", "").strip() == "1"


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def use_triton(tensor) -> bool:
    """Whether a kernel dispatcher should run the Triton path for ``tensor``.

    CUDA tensors go to Triton, CPU tensors only under ``ENGINE_FORCE_TRITON=1`` (interpreted,
    for tests); ``ENGINE_FORCE_REFERENCE=1`` and a missing Triton both mean the reference.
    """
    if force_reference() or not triton_available():
        return False
    return bool(tensor.is_cuda) or force_triton()
