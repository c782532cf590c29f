"""One decoder-only transformer for every supported family (answerdist/engine/model/families.py).

A family's record names the variant of each block this module builds: the norm (RMSNorm,
LayerNorm, LayerNorm without parameters), the residual layout (pre-norm, OLMo's post-norm,
GPT-NeoX's parallel), the q/k/v projections (separate, fused, fused per head), the q/k norm,
the MLP (gated, fused gated, plain) and where the rotation runs; grouped-query attention and
rotary embeddings (over the whole head or its leading part) are shared. Per layer, a model may
also use sliding-window attention (OLMo 3 on three of every four layers; Qwen when its config
turns the window on; Mistral on all) with its own rotary table (OLMo 3: YaRN scaling on the
full-attention layers only). Module and parameter names mirror Hugging Face's Llama, so a
checkpoint's tensors load by name, after the family's renames.

The forward pass takes, besides token ids, explicit position ids and a `span_end` tensor that
describes the attention pattern compactly: key position j is visible to query position i iff
`j <= i < span_end[b, j]`. A plain causal sequence of length T has span_end = T everywhere; a
prompt followed by its answer trie in DFS pre-order has span_end = T on the prompt and
`j + subtree size` on the trie nodes (see kernels/tree_attention.py). On a sliding-window layer
key j is visible to query i only if also `positions[b, i] - positions[b, j] < window`: trie
nodes count their depth in the sequence, as transformers counts a plain sequence's indices.

Numerics follow transformers exactly where it matters for bitwise-close float32 logits:
RMSNorm in float32, rotary tables computed in float32, softmax in float32.

The model owns its LM head: `answer_logprobs` gives the log-probabilities the scorer needs at
the rows that predict a trie node, through the fused kernel (kernels/lm_head.py), never the
[tokens x vocab] logits. answerdist/engine/model/parallel.py splits this model across the ranks of a
tensor-parallel group; nothing here knows about ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from answerdist.engine.model.families import FAMILIES, FULL, SLIDING, Family
from answerdist.kernels.lm_head import lm_head_logprobs, soft_cap
from answerdist.kernels.tree_attention import tree_attention


@dataclass(frozen=True)
class ModelArgs:
    arch: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float
    rope_theta: float
    # None, {"rope_type": "llama3", "factor": ...} or {"rope_type": "yarn", ...}
    rope_scaling: dict | None
    tie_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False
    max_position_embeddings: int = 4096
    layer_types: tuple[str, ...] = ()  # FULL or SLIDING per layer; () means all FULL
    sliding_window: int | None = None  # SLIDING layers: keys less than this many positions back
    # OLMo 3: the SLIDING layers' own RoPE (theta, scaling); None: the same RoPE as FULL layers.
    sliding_rope: tuple[float, dict | None] | None = None
    rotary_dim: int | None = None  # the leading dimensions of a head that rotate; None: all
    activation: str = "silu"  # the MLP's, by transformers' `hidden_act` name
    residual: str | None = None  # "pre", "post" or "parallel"; None: the family's
    clip_qkv: float | None = None  # OLMo 1: q, k, v clamped to [-clip_qkv, clip_qkv]
    attention_scale: float | None = None  # on q.k; None: head_dim ** -0.5 (Gemma: its own)
    attn_softcap: float | None = None  # Gemma 2: attention scores cap * tanh(score / cap)
    final_softcap: float | None = None  # Gemma 2: logits cap * tanh(logit / cap)
    n_experts: int = 0  # OLMoE: routed experts per layer, each a gated MLP of intermediate_size
    experts_per_token: int = 0
    normalize_top_k: bool = False  # the chosen experts' weights renormalised to sum to 1

    def __post_init__(self):
        if self.rotary_dim is None:
            object.__setattr__(self, "rotary_dim", self.head_dim)
        if self.residual is None:
            object.__setattr__(self, "residual", self.family.residual)
        if self.attention_scale is None:
            object.__setattr__(self, "attention_scale", self.head_dim**-0.5)

    @property
    def family(self) -> Family:
        return FAMILIES[self.arch]

    @property
    def context(self) -> int:
        """How many positions a scored sequence may use: max_position_embeddings, or with
        LongRoPE the original context, where its short factors hold (transformers switches a
        forward pass to the long factors once any position passes it)."""
        if self.rope_scaling and self.rope_scaling["rope_type"] == "longrope":
            return int(self.rope_scaling["original_max_position_embeddings"])
        return self.max_position_embeddings

    def layer_type(self, layer: int) -> str:
        return self.layer_types[layer] if self.layer_types else FULL

    def layer_window(self, layer: int) -> int | None:
        return self.sliding_window if self.layer_type(layer) == SLIDING else None

    def rope_kind(self, layer: int) -> str:
        """Which rotary table the layer reads: SLIDING only where the sliding layers have their
        own."""
        return (SLIDING if self.sliding_rope is not None and self.layer_type(layer) == SLIDING
                else FULL)

    def ropes(self) -> dict[str, tuple[float, dict | None]]:
        """{rope kind: (theta, scaling)} for every rotary table the model needs."""
        ropes = {FULL: (self.rope_theta, self.rope_scaling)}
        if self.sliding_rope is not None and SLIDING in self.layer_types:
            ropes[SLIDING] = self.sliding_rope
        return ropes


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, weight_in_float32: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.weight_in_float32 = weight_in_float32
        self.dim = dim

    def mean_square(self, x: torch.Tensor) -> torch.Tensor:
        return x.pow(2).mean(-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(self.mean_square(x) + self.eps)
        if self.weight_in_float32:
            return (self.weight * x).to(dtype)
        return self.weight * x.to(dtype)


def rope_frequencies(rotary_dim: int, theta: float, scaling: dict | None,
                     max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    """(inverse rotary frequencies in float32, factor on cos and sin), as transformers computes
    them for the default, llama3 and yarn rope types (same operations, same order)."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling is None:
        return inv_freq, 1.0
    if scaling.get("rope_type", "llama3") == "yarn":
        return _yarn(rotary_dim, theta, theta**exponents, scaling, max_position_embeddings)
    if scaling["rope_type"] == "longrope":
        return _longrope(theta**exponents, scaling, max_position_embeddings)
    if scaling["rope_type"] == "linear":  # Gemma 3's global layers: positions divided by factor
        return inv_freq / scaling["factor"], 1.0
    return _llama3(inv_freq, scaling), 1.0


def _longrope(pos_freqs: torch.Tensor, scaling: dict, max_position_embeddings: int
              ) -> tuple[torch.Tensor, float]:
    """LongRoPE with its short factors: those transformers uses while a forward pass stays
    within the original context, the only contexts the engine scores (`ModelArgs.context`)."""
    old_context = scaling["original_max_position_embeddings"]
    factor = scaling.get("factor") or max_position_embeddings / old_context
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        attention_factor = (1.0 if factor <= 1.0
                            else math.sqrt(1 + math.log(factor) / math.log(old_context)))
    short = torch.tensor(scaling["short_factor"], dtype=torch.float32)
    return 1.0 / (short * pos_freqs), attention_factor


def _llama3(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3's frequency-dependent scaling."""
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are divided by `factor`, short ones kept, the band between interpolated.
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < old_context / high) * ~(wavelen > old_context / low)
    return torch.where(is_medium, smoothed, scaled)


def _yarn(dim: int, theta: float, pos_freqs: torch.Tensor, scaling: dict,
          max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    """YaRN: dimensions that rotate many times within the original context keep their frequency
    (extrapolation), slow ones are divided by `factor` (interpolation), a linear ramp between;
    cos and sin are scaled by the attention factor (0.1 ln(factor) + 1 unless given)."""
    factor = scaling.get("factor")
    old_context = scaling["original_max_position_embeddings"]
    if factor is None:
        factor = max_position_embeddings / old_context

    def mscale(scale, m=1):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention_factor = (float(mscale(factor, m) / mscale(factor, m_all)) if m and m_all
                            else mscale(factor))
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1
    theta_log = math.log(theta)

    def correction_dim(rotations):  # the dimension that turns `rotations` times in old_context
        return (dim * math.log(old_context / (rotations * 2 * math.pi))) / (2 * theta_log)

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    inv_freq = ((1.0 / (factor * pos_freqs)) * (1 - extrapolation)
                + (1.0 / pos_freqs) * extrapolation)
    return inv_freq, attention_factor


def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    """Inverse rotary frequencies (float32) of the full-attention layers."""
    return rope_frequencies(args.rotary_dim, args.rope_theta, args.rope_scaling,
                            args.max_position_embeddings)[0]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def window_mask(positions: torch.Tensor, window: int) -> torch.Tensor:
    """[B, 1, T, T] bool for the plain causal path: causal by index, and within the window by
    position (`positions[i] - positions[j] < window`)."""
    t = positions.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=positions.device).tril()
    near = (positions[:, :, None] - positions[:, None, :]) < window
    return (causal & near)[:, None]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the leading cos.shape[-1] dimensions of each head; the rest pass unchanged
    (partial rotary: GPT-NeoX, Phi-3)."""
    rotary_dim = cos.shape[-1]
    if rotary_dim == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    turned, kept = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat((turned * cos + rotate_half(turned) * sin, kept), dim=-1)


class KVCache:
    """Keys, values and their positions of every layer, for decoding a batch of sequences one
    token at a time (answerdist/engine/scoring/sampler.py). A layer's buffers are allocated for
    `capacity` positions when it first stores, as many heads as it gives (a tensor-parallel rank
    holds its own key/value groups); `length` positions are filled, the same number in every row."""

    def __init__(self, args: ModelArgs, batch: int, capacity: int, dtype: torch.dtype,
                 device: torch.device):
        self.keys: list[torch.Tensor | None] = [None] * args.n_layers
        self.values: list[torch.Tensor | None] = [None] * args.n_layers
        self.positions = torch.empty(batch, capacity, dtype=torch.long, device=device)
        self.length = 0
        self.batch, self.capacity, self.dtype = batch, capacity, dtype

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        """Store the new tokens' k, v [B, Hkv, T, Dh] of `layer` after the cached ones (B = 1
        fills every row); return the first B rows of every cached k, v and position so far. The
        last layer advances `length`."""
        start, (b, heads, t, dh) = self.length, k.shape
        if start + t > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions, not {start + t}")
        if self.keys[layer] is None:
            shape = (self.batch, heads, self.capacity, dh)
            self.keys[layer] = torch.empty(shape, dtype=self.dtype, device=k.device)
            self.values[layer] = torch.empty(shape, dtype=self.dtype, device=k.device)
        # a one-row prefill fills every row: the rows decode the same prompt
        self.keys[layer][:, :, start:start + t] = k
        self.values[layer][:, :, start:start + t] = v
        self.positions[:, start:start + t] = positions
        stop = start + t
        if layer == len(self.keys) - 1:
            self.length = stop
        return (self.keys[layer][:b, :, :stop], self.values[layer][:b, :, :stop],
                self.positions[:b, :stop])


def cached_attention(q, k, v, q_positions, k_positions, scale: float, window: int | None,
                     softcap: float | None) -> torch.Tensor:
    """Attention of new queries q [B, Hq, T, Dh] over cached keys [B, Hkv, L, Dh] (grouped
    query heads by reshape), visible by position: key position <= query position, and within
    the window. Float32 softmax, scores capped as in kernels/tree_attention.py."""
    b, hq, t, dh = q.shape
    hkv = k.shape[1]
    qg = q.float().reshape(b, hkv, hq // hkv, t, dh)
    scores = (qg @ k.float()[:, :, None].transpose(-1, -2)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    diff = q_positions[:, :, None] - k_positions[:, None, :]  # [B, T, L]
    visible = diff >= 0
    if window is not None:
        visible &= diff < window
    scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v.float()[:, :, None]
    return out.reshape(b, hq, t, dh).to(q.dtype)


ACTIVATIONS = {  # transformers' hidden_act names, as its ACT2FN computes them
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer: int = 0):
        super().__init__()
        self.args = args
        self.layer = layer
        self.window = args.layer_window(layer)
        self.rope_kind = args.rope_kind(layer)
        family = args.family
        hd, bias = args.head_dim, args.attention_bias
        qkv_bias = bias or family.qkv_bias
        self.q_size, self.kv_size = args.n_heads * hd, args.n_kv_heads * hd
        if family.qkv == "separate":
            self.q_proj = nn.Linear(args.dim, self.q_size, bias=qkv_bias)
            self.k_proj = nn.Linear(args.dim, self.kv_size, bias=qkv_bias)
            self.v_proj = nn.Linear(args.dim, self.kv_size, bias=qkv_bias)
        else:
            self.qkv_proj = nn.Linear(args.dim, self.q_size + 2 * self.kv_size, bias=qkv_bias)
        self.o_proj = nn.Linear(self.q_size, args.dim, bias=bias)
        if family.qk_norm == "full":
            self.q_norm, self.k_norm = make_norm(args, self.q_size), make_norm(args, self.kv_size)
        elif family.qk_norm == "head":
            self.q_norm, self.k_norm = make_norm(args, hd), make_norm(args, hd)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v [B, T, heads * head_dim] from the family's projection layout."""
        layout = self.args.family.qkv
        if layout == "separate":
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        elif layout == "fused":  # rows [q; k; v]
            q, k, v = self.qkv_proj(x).split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        else:  # "per_head": rows [head][q, k, v]
            B, T, _ = x.shape
            per_head = self.qkv_proj(x).view(B, T, -1, 3 * self.args.head_dim)
            q, k, v = (t.reshape(B, T, -1) for t in per_head.chunk(3, dim=-1))
        return q, k, v

    def forward(self, x, ropes, positions, span_end, cache: KVCache | None = None):
        B, T, _ = x.shape
        qk_norm = self.args.family.qk_norm
        q, k, v = self.project(x)
        if qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.args.clip_qkv is not None:  # after the full q/k norm (OLMoE), as transformers
            c = self.args.clip_qkv
            q, k, v = q.clamp(-c, c), k.clamp(-c, c), v.clamp(-c, c)
        q = q.view(B, T, -1, self.args.head_dim)
        k = k.view(B, T, -1, self.args.head_dim)
        if qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(B, T, -1, self.args.head_dim).transpose(1, 2)
        cos, sin = ropes[self.rope_kind]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = rotate(q, cos, sin).to(x.dtype)
        k = rotate(k, cos, sin).to(x.dtype)
        scale, softcap = self.args.attention_scale, self.args.attn_softcap
        if cache is not None:
            keys, values, key_positions = cache.extend(self.layer, k, v, positions)
            out = cached_attention(q, keys, values, positions, key_positions, scale, self.window,
                                   softcap)
            return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))
        if span_end is None and softcap is not None:  # torch's fused attention has no cap
            span_end = torch.full((B, T), T, dtype=torch.int32, device=x.device)
        if span_end is None and self.window is None:
            # plain causal (training): torch's fused attention
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                 enable_gqa=True)
        elif span_end is None:
            mask = window_mask(positions, self.window)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                                 enable_gqa=True)
        else:
            out = tree_attention(q, k, v, span_end, scale, positions=positions, window=self.window,
                                 softcap=softcap)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    """"gated": down(act(gate(x)) * up(x)); "fused_gated": the same with gate and up as one
    matrix (gate's rows first); "plain": down(act(up(x))), biases always (GPT-NeoX)."""

    def __init__(self, args: ModelArgs, kind: str | None = None):
        super().__init__()
        self.kind = kind or args.family.mlp
        self.act = ACTIVATIONS[args.activation]
        bias = args.mlp_bias or self.kind == "plain"
        size = args.intermediate_size
        if self.kind == "gated":
            self.gate_proj = nn.Linear(args.dim, size, bias=bias)
        if self.kind == "fused_gated":
            self.gate_up_proj = nn.Linear(args.dim, 2 * size, bias=bias)
        else:
            self.up_proj = nn.Linear(args.dim, size, bias=bias)
        self.down_proj = nn.Linear(size, args.dim, bias=bias)

    def forward(self, x):
        if self.kind == "gated":
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        if self.kind == "fused_gated":
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(up * self.act(gate))
        return self.down_proj(self.act(self.up_proj(x)))


class MoE(nn.Module):
    """OLMoE's routed MLP: a softmax router picks each token's top-k experts (gated MLPs), whose
    outputs, weighted by their router probabilities, are summed in ascending expert order.

    Two paths with the same semantics: `loop` runs each expert on its tokens (transformers'
    arithmetic: the CPU reference), `grouped` sorts the token-expert pairs by expert once and
    runs every expert in one grouped matmul (bfloat16 on CUDA, where it is the default). The
    grouped path reads the experts' weights stacked [experts, out, in]: stacked once, on first
    use, with each expert's parameters then views into the stack (no second copy)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.top_k, self.normalize = args.experts_per_token, args.normalize_top_k
        self.gate = nn.Linear(args.dim, args.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(args, "gated") for _ in range(args.n_experts))
        self.act = ACTIVATIONS[args.activation]
        self.grouped: bool | None = None  # None: grouped for bfloat16 on CUDA, else the loop
        self._stacked: dict[str, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, x.shape[-1])
        probs = torch.softmax(self.gate(h), dim=-1, dtype=torch.float32)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        if self.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(h.dtype)
        grouped = self.grouped
        if grouped is None:
            grouped = h.is_cuda and h.dtype == torch.bfloat16
        out = self.grouped_experts(h, chosen, weights) if grouped else self.loop(h, chosen,
                                                                                  weights)
        return out.view(x.shape)

    def loop(self, h, chosen, weights) -> torch.Tensor:
        out = torch.zeros_like(h)
        for e in chosen.unique().tolist():  # ascending
            rows, slot = torch.where(chosen == e)
            out.index_add_(0, rows, self.experts[e](h[rows]) * weights[rows, slot, None])
        return out

    def grouped_experts(self, h, chosen, weights) -> torch.Tensor:
        n, k = chosen.shape
        w = self.stacked()
        flat = chosen.flatten()
        order = torch.argsort(flat, stable=True)  # pairs by expert, tokens ascending within
        offsets = torch.bincount(flat, minlength=len(self.experts)).cumsum(0).to(torch.int32)
        xs = h[order // k]  # the one gather a grouped matmul needs
        gate = F.grouped_mm(xs, w["gate_proj"].transpose(1, 2), offs=offsets)
        up = F.grouped_mm(xs, w["up_proj"].transpose(1, 2), offs=offsets)
        ys = F.grouped_mm(self.act(gate) * up, w["down_proj"].transpose(1, 2), offs=offsets)
        ys = ys * weights.flatten()[order, None]
        by_slot = torch.empty_like(ys)
        by_slot[order] = ys
        # each token's contributions in ascending expert order, summed one by one as the loop
        ranked = by_slot.view(n, k, -1).gather(
            1, chosen.argsort(dim=1)[..., None].expand(-1, -1, h.shape[1]))
        out = torch.zeros_like(h)
        for j in range(k):
            out = out + ranked[:, j]
        return out

    def stacked(self) -> dict[str, torch.Tensor]:
        if self._stacked is None:
            self._stacked = {}
            for name in ("gate_proj", "up_proj", "down_proj"):
                layers = [getattr(e, name) for e in self.experts]
                stack = torch.stack([layer.weight.detach() for layer in layers])
                for i, layer in enumerate(layers):
                    layer.weight = nn.Parameter(stack[i], requires_grad=False)
                self._stacked[name] = stack
        return self._stacked


class OffsetRMSNorm(RMSNorm):
    """Gemma's RMSNorm: the weight is stored as an offset from 1, and the scaling runs in
    float32 before the cast back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(self.mean_square(x) + self.eps)
        return (x * (1.0 + self.weight.float())).to(dtype)


class PlainLayerNorm(nn.Module):
    """LayerNorm without weight or bias, in float32 (OLMo 1; its eps is fixed at 1e-5)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.dim, self.eps = dim, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), (self.dim,), None, None, eps=self.eps).to(x.dtype)


def make_norm(args: ModelArgs, dim: int | None = None) -> nn.Module:
    """The family's norm over `dim` (the hidden size unless given)."""
    dim, kind = dim or args.dim, args.family.norm
    if kind == "layer":
        return nn.LayerNorm(dim, eps=args.norm_eps)
    if kind == "plain_layer":
        return PlainLayerNorm(dim, args.norm_eps)
    if kind == "offset_rms":
        return OffsetRMSNorm(dim, args.norm_eps, True)
    return RMSNorm(dim, args.norm_eps, args.family.norm_weight_in_float32)


class DecoderLayer(nn.Module):
    """"pre": x + attn(norm(x)), then x + mlp(norm(x)) (Llama, Qwen, Mistral, Phi-3, OLMo 1);
    "post": x + norm(attn(x)), then x + norm(mlp(x)) (OLMo 2/3); "parallel":
    x + attn(norm(x)) + mlp(norm'(x)) (GPT-NeoX), summed in transformers' order; "sandwich":
    x + norm(attn(norm(x))), then x + norm(mlp(norm(x))) (Gemma)."""

    def __init__(self, args: ModelArgs, layer: int = 0):
        super().__init__()
        self.residual = args.residual
        self.self_attn = Attention(args, layer)
        self.mlp = MoE(args) if args.family.mlp == "moe" else MLP(args)
        self.post_attention_layernorm = make_norm(args)
        if self.residual in ("post", "sandwich"):
            self.post_feedforward_layernorm = make_norm(args)
        if self.residual != "post":
            self.input_layernorm = make_norm(args)
        if self.residual == "sandwich":
            self.pre_feedforward_layernorm = make_norm(args)

    def forward(self, x, ropes, positions, span_end, cache: KVCache | None = None):
        if self.residual == "post":
            x = x + self.post_attention_layernorm(self.self_attn(x, ropes, positions, span_end,
                                                                 cache))
            return x + self.post_feedforward_layernorm(self.mlp(x))
        attended = self.self_attn(self.input_layernorm(x), ropes, positions, span_end, cache)
        if self.residual == "sandwich":
            x = x + self.post_attention_layernorm(attended)
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        if self.residual == "parallel":
            return self.mlp(self.post_attention_layernorm(x)) + attended + x
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Embedding, decoder layers and final norm: Hugging Face's `model.` prefix (a family with
    other names renames its tensors on load: `Family.weight_names`)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(DecoderLayer(args, i) for i in range(args.n_layers))
        self.norm = make_norm(args)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model = Backbone(args)
        if not args.tie_embeddings:
            self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.rope_attention_scaling: dict[str, float] = {}
        for kind in args.ropes():
            self.register_buffer(self._inv_freq_name(kind), torch.empty(0), persistent=False)
        self.reset_rope()

    @staticmethod
    def _inv_freq_name(kind: str) -> str:
        return "inv_freq" if kind == FULL else "sliding_inv_freq"

    def reset_rope(self, device=None) -> None:
        """(Re)compute the rotary buffers, on `device` (a model built on the meta device needs
        real ones: they are not stored in checkpoints)."""
        for kind, (theta, scaling) in self.args.ropes().items():
            inv_freq, attention_scaling = rope_frequencies(
                self.args.rotary_dim, theta, scaling, self.args.max_position_embeddings)
            setattr(self, self._inv_freq_name(kind), inv_freq.to(device))
            self.rope_attention_scaling[kind] = attention_scaling

    @property
    def output_weight(self) -> torch.Tensor:
        """The [vocab, dim] LM-head matrix (the embedding when tied)."""
        if self.args.tie_embeddings:
            return self.model.embed_tokens.weight
        return self.lm_head.weight

    def rope_tables(self, position_ids: torch.Tensor, dtype: torch.dtype, kind: str = FULL):
        inv_freq = getattr(self, self._inv_freq_name(kind))
        freqs = position_ids[..., None].float() * inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        scaling = self.rope_attention_scaling[kind]  # 1.0 except for YaRN: exact either way
        cos, sin = emb.cos() * scaling, emb.sin() * scaling
        if self.args.family.rope_in_float32:
            return cos, sin
        return cos.to(dtype), sin.to(dtype)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        span_end: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states [B, T, dim] for the attention pattern given by span_end.

        span_end None means plain causal attention (positions 0..T-1 unless given; used for
        training): it runs torch's fused attention instead of the tree kernel, with an explicit
        mask on sliding-window layers. With a `cache`, the tokens attend to the cached ones and
        to each other by position (decoding; span_end is ignored) and are added to it."""
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1],
                                        device=input_ids.device).expand_as(input_ids)
        x = self.model.embed_tokens(input_ids)
        if self.args.family.scales_embedding:  # sqrt(dim) rounded to the weights' dtype first
            x = x * torch.tensor(self.args.dim**0.5).to(x.dtype)
        ropes = {kind: self.rope_tables(position_ids, x.dtype, kind) for kind in self.args.ropes()}
        for layer in self.model.layers:
            x = layer(x, ropes, position_ids, span_end, cache)
        return self.model.norm(x)

    def next_token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits [N, vocab] of final-norm states [N, dim], soft-capped (sampling needs
        the whole distribution; scoring never builds it)."""
        return soft_cap((hidden @ self.output_weight.T).float(), self.args.final_softcap)

    def answer_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor, boundary: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the scorer reads off the LM head at rows `hidden` [N, dim] (final-norm states):
        float64 log P(token) of each of a row's `targets` [N, K] (-1 pads a row's list) and
        log P(the next token is one where `boundary` [vocab] is True) [N]. The [N, vocab] logits
        are never built (kernels/lm_head.py)."""
        lse, target_logits, boundary_lse = self.head_statistics(hidden, targets, boundary)
        lse = lse.double()
        return target_logits.double() - lse[:, None], boundary_lse.double() - lse

    def head_statistics(self, hidden: torch.Tensor, targets: torch.Tensor, boundary: torch.Tensor):
        """(log-sum-exp over the vocabulary [N], the targets' logits [N, K], log-sum-exp over the
        boundary tokens [N]) of the LM head at `hidden`, in float32."""
        return lm_head_logprobs(hidden, self.output_weight, targets, boundary,
                                softcap=self.args.final_softcap)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full causal logits [B, T, vocab] in float32: a testing and debugging aid. Runs the
        tree-attention path (the scorer's) with a causal span_end."""
        B, T = input_ids.shape
        positions = torch.arange(T, device=input_ids.device).expand(B, T)
        span_end = torch.full((B, T), T, dtype=torch.int32, device=input_ids.device)
        h = self.hidden_states(input_ids, positions, span_end)
        return soft_cap((h @ self.output_weight.T).float(), self.args.final_softcap)
