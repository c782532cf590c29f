"""Run the Triton kernels under Triton's interpreter on machines without CUDA (tests, dry runs).

``TRITON_INTERPRET=1`` only works if it is set before ``triton`` is first imported: Triton
decorates parts of ``triton.language`` itself (``tl.zeros``...) with ``@triton.jit`` at import
time, natively or interpreted according to the variable, and our kernels at their own import.
Setting it later gives "Cannot call @triton.jit'd outside of the scope of a kernel".

The engine never needs this (on CPU it runs the torch references); tests and the benchmark's
dry run call ``interpret_without_cuda()`` before anything imports triton.
"""

from __future__ import annotations

import os
import sys

import torch

__all__ = ["interpret_without_cuda", "triton_imported_natively"]


def triton_imported_natively() -> bool:
    """True when ``triton`` is already imported with its ``@jit`` helpers compiled natively
    (i.e. before TRITON_INTERPRET=1 was set), so the interpreter can no longer be used."""
    if "triton" not in sys.modules:
        return False
    from triton.runtime.jit import JITFunction

    standard = sys.modules.get("triton.language.standard")
    return standard is not None and isinstance(getattr(standard, "zeros", None), JITFunction)


def interpret_without_cuda() -> bool:
    """Without CUDA, set TRITON_INTERPRET=1 (if still possible). Returns whether the Triton
    kernels can run in this process: natively with CUDA, or interpreted without."""
    if torch.cuda.is_available():
        return True
    if triton_imported_natively():
        return False
    os.environ["TRITON_INTERPRET"] = "1"
    return True
