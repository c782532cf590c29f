"""LM head -> log-probabilities, without materialising the [N, V] logits.

For each hidden row h (a position of a prompt or of its answer trie) the engine needs three
numbers from the vocabulary distribution, never the distribution itself:

* ``lse``: log-sum-exp of h·w_v over the whole vocabulary (the normaliser);
* ``target_logits``: h·w_t for a short list of target ids (the trie children of that position;
  a trie root may have ~100 of them), so that log P(t) = target_logit - lse;
* ``boundary_lse``: log-sum-exp over the boundary tokens only, so that log P(boundary) =
  boundary_lse - lse (the boundary factor that ends an answer; docs/results.md defines the
  boundary tokens).

A full [N, V] float32 logits tensor at N=4096, V=128256 is 2 GiB; everything here streams the
vocabulary instead. The reference runs on CPU (it is the engine's exactness path); the Triton
kernel (``kernels/_lm_head_triton.py``) runs on CUDA with the same semantics.

Target logits are computed by gathering the target rows of the weight, never by scanning
vocabulary tiles for matches: K can be a few hundred, and a gather costs K·D per row.
"""

from __future__ import annotations

import torch

from answerdist.kernels import use_triton

__all__ = [
    "lm_head_logprobs",
    "lm_head_logprobs_reference",
    "lm_head_logprobs_triton",
]

# Rows per block of the reference's target gather are chosen so that the gathered [rows, K, D]
# float32 weight block stays near this many elements (64 MiB), whatever K and D are.
_GATHER_BUDGET = 1 << 24


def _check_inputs(hidden, weight, targets, boundary_mask) -> None:
    """Validate shapes and dtypes once, with messages naming the offending argument."""
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"hidden and weight must be 2-D, got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    n, d = hidden.shape
    v, dw = weight.shape
    if d != dw:
        raise ValueError(f"hidden has D={d} but weight has D={dw}")
    if hidden.dtype != weight.dtype or hidden.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"hidden and weight must share dtype float32 or bfloat16, got "
                         f"{hidden.dtype} and {weight.dtype}")
    if v < 1:
        raise ValueError("weight has an empty vocabulary (V=0)")
    if targets.dim() != 2 or targets.shape[0] != n or targets.shape[1] < 1:
        raise ValueError(f"targets must be [N={n}, K>=1], got {tuple(targets.shape)}")
    if targets.dtype != torch.int64:
        raise ValueError(f"targets must be int64, got {targets.dtype}")
    if boundary_mask.shape != (v,) or boundary_mask.dtype != torch.bool:
        raise ValueError(f"boundary_mask must be bool [V={v}], got {boundary_mask.dtype} "
                         f"{tuple(boundary_mask.shape)}")
    if targets.numel() and (int(targets.max()) >= v or int(targets.min()) < -1):
        raise ValueError(f"targets must lie in [-1, V={v}), -1 meaning padding")


def _lse_inplace(x: torch.Tensor) -> torch.Tensor:
    """Row log-sum-exp of a finite [rows, cols] block, overwriting x (no temporaries)."""
    row_max = x.amax(dim=1)
    x.sub_(row_max[:, None]).exp_()
    return row_max + x.sum(dim=1).log_()


def soft_cap(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Gemma 2's logit soft-capping, in place: cap * tanh(logits / cap), in transformers'
    order (divide, tanh, multiply); None leaves the logits as they are."""
    if softcap is None:
        return logits
    return logits.div_(softcap).tanh_().mul_(softcap)


def _chunked_lse(h32: torch.Tensor, weight: torch.Tensor, boundary_mask: torch.Tensor,
                 chunk_size: int, softcap: float | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Running log-sum-exp over vocabulary chunks: whole vocabulary and boundary subset.

    Each chunk's logits are float32 (bf16 weight rows are upcast before the matmul, so the
    products are exact and the accumulation is float32) and live only for that chunk. The
    logits, boundary and upcast buffers are allocated once and reused: on CPU, fresh
    multi-MiB temporaries per chunk cost more in page faults than the arithmetic.
    """
    n, v = h32.shape[0], weight.shape[0]
    width = min(chunk_size, v)
    lse = torch.full((n,), float("-inf"), dtype=torch.float32, device=h32.device)
    blse = lse.clone()
    logits_buf = torch.empty(n * width, dtype=torch.float32, device=h32.device)
    boundary_buf = torch.empty_like(logits_buf)
    upcast_buf = (torch.empty(width * weight.shape[1], dtype=torch.float32, device=h32.device)
                  if weight.dtype != torch.float32 else None)
    boundary_ids = boundary_mask.nonzero()[:, 0]
    bounds = torch.searchsorted(boundary_ids, torch.arange(0, v + width, width,
                                                           device=boundary_ids.device)).tolist()
    for i, start in enumerate(range(0, v, width)):
        stop = min(start + width, v)
        w = weight[start:stop]
        if upcast_buf is not None:
            w = upcast_buf[: w.numel()].view(w.shape).copy_(w)
        logits = torch.matmul(h32, w.T, out=logits_buf[: n * (stop - start)].view(n, stop - start))
        soft_cap(logits, softcap)
        ids = boundary_ids[bounds[i]:bounds[i + 1]] - start
        if ids.numel():
            chosen = boundary_buf[: n * ids.numel()].view(n, ids.numel())
            blse = torch.logaddexp(blse, _lse_inplace(torch.index_select(logits, 1, ids,
                                                                         out=chosen)))
        lse = torch.logaddexp(lse, _lse_inplace(logits))
    return lse, blse


def _gathered_target_logits(h32: torch.Tensor, weight: torch.Tensor,
                            targets: torch.Tensor, softcap: float | None = None) -> torch.Tensor:
    """h·w_t for each target by gathering W[t] (float32), soft-capped like the vocabulary's,
    -inf where the target is -1."""
    n, k = targets.shape
    d = h32.shape[1]
    out = torch.empty((n, k), dtype=torch.float32, device=h32.device)
    rows = max(1, _GATHER_BUDGET // max(1, k * d))
    for start in range(0, n, rows):
        t = targets[start:start + rows]
        w = weight[t.clamp(min=0)].to(torch.float32)                 # [r, K, D]
        dots = torch.bmm(w, h32[start:start + rows, :, None])[..., 0]  # [r, K]
        out[start:start + rows] = soft_cap(dots, softcap).masked_fill(t < 0, float("-inf"))
    return out


def lm_head_logprobs_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               boundary_mask: torch.Tensor, chunk_size: int = 4096, *,
                               softcap: float | None = None):
    """Plain-torch reference: ``(lse [N], target_logits [N, K], boundary_lse [N])``, float32.

    ``hidden`` [N, D] and ``weight`` [V, D] are float32 or bfloat16 (same dtype); ``targets``
    [N, K] int64 with -1 as padding; ``boundary_mask`` [V] bool. The vocabulary is processed in
    chunks of ``chunk_size`` rows with a running log-sum-exp, so peak memory is N x chunk_size
    floats rather than N x V; with float32 inputs the result agrees with a full float32
    ``log_softmax`` to ~1e-6. ``boundary_lse`` is -inf when the mask is empty. ``softcap``
    (Gemma 2's final_logit_softcapping): every logit is cap * tanh(logit / cap) before the
    log-sum-exps, the target logits included.
    """
    _check_inputs(hidden, weight, targets, boundary_mask)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    h32 = hidden.to(torch.float32)
    lse, blse = _chunked_lse(h32, weight, boundary_mask, chunk_size, softcap)
    return lse, _gathered_target_logits(h32, weight, targets, softcap), blse


def lm_head_logprobs_triton(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                            boundary_mask: torch.Tensor, *, softcap: float | None = None,
                            config=None, out=None):
    """Fused Triton kernel with the reference's semantics (see ``kernels/_lm_head_triton.py``).

    Its tiles come from ``default_config(D, V, dtype, arch)`` and never from N, which is what
    makes a row's bits independent of its batch (the reference's ``chunk_size`` has no meaning
    here). ``config`` (an ``LMHeadConfig``) overrides them for tests and tuning; ``out`` (three
    float32 buffers shaped like the results) receives the results. Runs natively on CUDA tensors
    of sm_80 or newer (else ``KernelUnsupportedError``), or on CPU tensors under
    ``TRITON_INTERPRET=1``.
    """
    _check_inputs(hidden, weight, targets, boundary_mask)
    from answerdist.kernels import _lm_head_triton  # imports triton: only on this path

    return _lm_head_triton.lm_head_logprobs(hidden, weight, targets, boundary_mask, config, out,
                                            softcap=softcap)


def lm_head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                     boundary_mask: torch.Tensor, chunk_size: int = 4096, *,
                     softcap: float | None = None):
    """Dispatcher: the Triton kernel for CUDA tensors (unless ``ENGINE_FORCE_REFERENCE=1``),
    the torch reference otherwise. ``chunk_size`` is the reference's vocabulary chunk; the
    kernel picks its own tiles and ignores it. ``softcap``: as in the reference."""
    if use_triton(hidden):
        return lm_head_logprobs_triton(hidden, weight, targets, boundary_mask, softcap=softcap)
    return lm_head_logprobs_reference(hidden, weight, targets, boundary_mask, chunk_size,
                                      softcap=softcap)
