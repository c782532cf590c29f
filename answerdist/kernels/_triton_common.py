"""What the Triton kernel modules share: interpreter mode, the float32 dot, device checks.

Imported only by the Triton paths (it imports triton); see ``kernels/interpreter.py`` for why
triton must not be imported earlier than needed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs

from answerdist.kernels import KernelUnsupportedError

# Decided when triton is first imported, exactly like every @triton.jit decoration.
INTERPRET = bool(knobs.runtime.interpret)


@triton.jit
def dot(a, b, acc, F32_DOT: tl.constexpr, IEEE: tl.constexpr):
    """``acc + a @ b`` (``acc`` may be None) with float32 accumulation.

    F32_DOT (interpreter only) upcasts bf16 operands, since the interpreter's bf16 dot returns
    garbage; IEEE asks for exact float32 products instead of TF32 when inputs are float32.
    """
    if F32_DOT:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        out = tl.dot(a, b, acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc)
    return out


def device_capability(tensor: torch.Tensor) -> tuple[int, int]:
    """(major, minor) compute capability of the tensor's GPU; (9, 0) when interpreted (the
    interpreter has no architecture; its tiles come from the INTERPRET branch anyway)."""
    if INTERPRET or not tensor.is_cuda:
        return (9, 0)
    return torch.cuda.get_device_capability(tensor.device)


def check_device(tensor: torch.Tensor, kernel: str, reference: str) -> None:
    """CPU tensors only work interpreted, and natively only Ampere (sm_80) or newer is tuned
    and tested: say so in one line, naming the torch reference, instead of failing in Triton."""
    if not tensor.is_cuda and not INTERPRET:
        raise RuntimeError(f"the Triton {kernel} kernel needs CUDA tensors, or "
                           "TRITON_INTERPRET=1 set before triton is first imported")
    if tensor.is_cuda and not INTERPRET and device_capability(tensor) < (8, 0):
        major, minor = device_capability(tensor)
        raise KernelUnsupportedError(
            f"the Triton {kernel} kernel supports sm_80 (Ampere) and newer, not sm_{major}{minor}"
            f" ({torch.cuda.get_device_name(tensor.device)}); use the torch reference "
            f"{reference} (the engine does with ENGINE_FORCE_REFERENCE=1)")


def arch_key(tensor: torch.Tensor) -> int:
    """Which tile table applies: 90 for Hopper and newer, 80 for Ampere / Ada (sm_80-89)."""
    return 90 if device_capability(tensor) >= (9, 0) else 80


@triton.jit
def tanh(x):
    """float32 tanh from ``tl.exp`` alone: the interpreter has no libdevice, and one formula
    keeps interpreted and native kernels on the same arithmetic.

    Away from 0, (1 - t) / (1 + t) with t = exp(-2|x|) in (0, 1]: no overflow, and 1 - t is
    exact for t >= 1/2 (Sterbenz). Below |x| = 0.3 that subtraction would cancel, so an odd
    Taylor polynomial (eight terms; the first omitted one is below float32's epsilon there).
    """
    a = tl.abs(x)
    t = tl.exp(-2.0 * a)
    far = (1.0 - t) / (1.0 + t)
    small = tl.minimum(a, 0.3)  # the polynomial's argument, bounded: no overflow where unused
    x2 = small * small
    p = -929569.0 / 638512875.0
    p = p * x2 + 21844.0 / 6081075.0
    p = p * x2 - 1382.0 / 155925.0
    p = p * x2 + 62.0 / 2835.0
    p = p * x2 - 17.0 / 315.0
    p = p * x2 + 2.0 / 15.0
    p = p * x2 - 1.0 / 3.0
    near = small + small * (p * x2)
    mag = tl.where(a < 0.3, near, far)
    return tl.where(x < 0, -mag, mag)


@triton.jit
def soft_cap(x, cap):
    """Gemma 2's logit soft-capping in the references' order: divide, tanh, multiply."""
    return tanh(x / cap) * cap
