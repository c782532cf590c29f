"""One decoder-only transformer for the OLMo 2 and Llama 3 families.

The two families differ in a handful of switches, kept in `ARCHITECTURES`; everything else
(grouped-query attention, SwiGLU MLP, RMSNorm, rotary embeddings) is shared. Module and
parameter names mirror Hugging Face's, so a checkpoint's tensors load by name.

The forward pass takes, besides token ids, explicit position ids and a `span_end` tensor that
describes the attention pattern compactly: key position j is visible to query position i iff
`j <= i < span_end[b, j]`. A plain causal sequence of length T has span_end = T everywhere; a
prompt followed by its answer trie in DFS pre-order has span_end = T on the prompt and
`j + subtree size` on the trie nodes (see kernels/tree_attention.py).

Numerics follow transformers exactly where it matters for bitwise-close float32 logits:
RMSNorm in float32, rotary tables computed in float32, softmax in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels.tree_attention import tree_attention


@dataclass(frozen=True)
class ArchStyle:
    """What distinguishes one supported family from another."""

    post_norm: bool  # OLMo 2: RMSNorm after attention / MLP output, none on the input
    qk_norm: bool  # OLMo 2: RMSNorm over the full q / k projection width, before RoPE
    norm_weight_in_float32: bool  # OLMo 2 scales by the weight before casting back
    rope_in_float32: bool  # OLMo 2 rotates in float32; Llama in the activation dtype


ARCHITECTURES = {
    "LlamaForCausalLM": ArchStyle(
        post_norm=False, qk_norm=False, norm_weight_in_float32=False, rope_in_float32=False
    ),
    "Olmo2ForCausalLM": ArchStyle(
        post_norm=True, qk_norm=True, norm_weight_in_float32=True, rope_in_float32=True
    ),
}


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
    rope_scaling: dict | None  # None or {"rope_type": "llama3", "factor": ..., ...}
    tie_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False
    max_position_embeddings: int = 4096

    @property
    def style(self) -> ArchStyle:
        return ARCHITECTURES[self.arch]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, weight_in_float32: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.weight_in_float32 = weight_in_float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight_in_float32:
            return (self.weight * x).to(dtype)
        return self.weight * x.to(dtype)


def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    """Inverse rotary frequencies, float32, with Llama 3's frequency-dependent scaling if set."""
    dim = args.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv_freq = 1.0 / (args.rope_theta**exponents)
    scaling = args.rope_scaling
    if scaling is None:
        return inv_freq
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


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        hd, bias = args.head_dim, args.attention_bias
        self.q_proj = nn.Linear(args.dim, args.n_heads * hd, bias=bias)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(args.n_heads * hd, args.dim, bias=bias)
        if args.style.qk_norm:
            self.q_norm = RMSNorm(args.n_heads * hd, args.norm_eps, True)
            self.k_norm = RMSNorm(args.n_kv_heads * hd, args.norm_eps, True)

    def forward(self, x, cos, sin, span_end):
        B, T, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.args.style.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, -1, self.args.head_dim).transpose(1, 2)
        k = k.view(B, T, -1, self.args.head_dim).transpose(1, 2)
        v = v.view(B, T, -1, self.args.head_dim).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = (q * cos + rotate_half(q) * sin).to(x.dtype)
        k = (k * cos + rotate_half(k) * sin).to(x.dtype)
        scale = self.args.head_dim**-0.5
        if span_end is None:  # plain causal (training): torch's fused attention
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
        else:
            out = tree_attention(q, k, v, span_end, scale)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        bias = args.mlp_bias
        self.gate_proj = nn.Linear(args.dim, args.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(args.dim, args.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(args.intermediate_size, args.dim, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        style = args.style
        self.post_norm = style.post_norm
        norm = lambda: RMSNorm(args.dim, args.norm_eps, style.norm_weight_in_float32)
        self.self_attn = Attention(args)
        self.mlp = MLP(args)
        self.post_attention_layernorm = norm()
        if style.post_norm:
            self.post_feedforward_layernorm = norm()
        else:
            self.input_layernorm = norm()

    def forward(self, x, cos, sin, span_end):
        if self.post_norm:  # OLMo 2
            x = x + self.post_attention_layernorm(self.self_attn(x, cos, sin, span_end))
            return x + self.post_feedforward_layernorm(self.mlp(x))
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, span_end)  # Llama
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Embedding, decoder layers and final norm: Hugging Face's `model.` prefix."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(DecoderLayer(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps, args.style.norm_weight_in_float32)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model = Backbone(args)
        if not args.tie_embeddings:
            self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(args), persistent=False)

    @property
    def output_weight(self) -> torch.Tensor:
        """The [vocab, dim] LM-head matrix (the embedding when tied)."""
        if self.args.tie_embeddings:
            return self.model.embed_tokens.weight
        return self.lm_head.weight

    def rope_tables(self, position_ids: torch.Tensor, dtype: torch.dtype):
        freqs = position_ids[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if self.args.style.rope_in_float32:
            return cos, sin
        return cos.to(dtype), sin.to(dtype)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        span_end: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states [B, T, dim] for the attention pattern given by span_end.

        span_end None means plain causal attention with positions 0..T-1 (used for training;
        it runs torch's fused attention instead of the tree kernel)."""
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.rope_tables(position_ids, x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin, span_end)
        return self.model.norm(x)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full causal logits [B, T, vocab] in float32: a testing and debugging aid. Runs the
        tree-attention path (the scorer's) with a causal span_end."""
        B, T = input_ids.shape
        positions = torch.arange(T, device=input_ids.device).expand(B, T)
        span_end = torch.full((B, T), T, dtype=torch.int32, device=input_ids.device)
        h = self.hidden_states(input_ids, positions, span_end)
        return (h @ self.output_weight.T).float()
