"""Run the Triton kernels under Triton's interpreter on machines without CUDA (tests, dry runs).

``TRITON_INTERPRET=1`` only works if it is set before ``triton`` is first imported: Triton
decorates parts of ``triton.language`` itself (``tl.zeros``...) with ``@triton.jit`` at import
time, natively or interpreted according to the variable, and our kernels at their own import.
Setting it later gives "Cannot call @triton.jit'd outside of the scope of a kernel".

The engine never needs this (on CPU it runs the torch references); tests and the benchmark's
dry run call ``interpret_without_cuda()`` before anything imports triton.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch

__all__ = ["fixed_order_dot", "interpret_without_cuda", "triton_imported_natively"]


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


@contextlib.contextmanager
def fixed_order_dot():
    """Interpreted, give ``tl.dot`` a per-element accumulation order fixed by the tile's shape.

    The interpreter runs ``tl.dot`` as ``numpy.matmul``, and the BLAS under numpy picks its
    micro-kernels by tile shape and CPU, so on some CPUs (AMD EPYC) a row's bits depend on the
    other rows of its tile. That is a property of the host BLAS, not of a kernel, and GPU tensor
    cores have no such dependence. Inside this context the dot is ``acc += a[:, k] * b[k, :]``
    for k in order, which takes the BLAS out, so a bitwise test checks what the kernel itself
    guarantees. Natively (CUDA) nothing is replaced.
    """
    if torch.cuda.is_available():
        yield
        return
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        acc = d.data.copy()
        for k in range(a.data.shape[-1]):
            acc += a.data[:, k:k + 1].astype(acc.dtype) * b.data[k:k + 1, :].astype(acc.dtype)
        return TensorHandle(acc, d.dtype.scalar)

    original = InterpreterBuilder.create_dot
    InterpreterBuilder.create_dot = create_dot
    try:
        yield
    finally:
        InterpreterBuilder.create_dot = original
