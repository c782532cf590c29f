"""One record per model family: everything the engine knows about an `architectures[0]`.

A `Family` holds the config keys the family reads and their defaults (those of its transformers
config class, so a config means here what it means there), its rope types, the names its
checkpoints give the weights, and which variant of each block it uses: norm, residual layout,
attention projections, q/k norm, MLP, where it rotates and which layers slide.
answerdist/engine/model/config.py reads a config.json through the record,
answerdist/engine/model/transformer.py builds the blocks it names, and the weight loaders rename
tensors with it. Adding a family is a record here plus whatever block it needs in
answerdist/engine/model/transformer.py; docs/families.md says how.

The record's hooks (`layers`, `extra`) read the config through a `read` object with the checks
of answerdist/engine/model/config.py: `read.int(key, default)`, `read.float(key, default)`,
`read.flag(key, default)`, `read.get(key, default)`, `read.path` (for messages).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

FULL, SLIDING = "full_attention", "sliding_attention"  # transformers' `layer_types` names

# The ModelArgs fields read from config.json and the keys that hold them; a family overrides a
# key (another name) or drops it (None: not read, the rule in ModelArgs' derivation applies).
COMMON_KEYS = MappingProxyType({
    "vocab_size": "vocab_size", "dim": "hidden_size", "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim", "intermediate_size": "intermediate_size",
    "norm_eps": "rms_norm_eps", "max_position_embeddings": "max_position_embeddings",
    "activation": "hidden_act", "rope_theta": "rope_theta",
    "partial_rotary_factor": "partial_rotary_factor",
})
# The engine's defaults where a key is absent; a family's `defaults` override them by key.
COMMON_DEFAULTS = MappingProxyType({
    "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 4096,
    "hidden_act": "silu",
})


def no_sliding_layers(read, n_layers: int):
    """(default layer types, window) of a family that never slides."""
    return [FULL] * n_layers, None


def olmo3_layers(read, n_layers: int):
    """Three of every four layers slide, window 4096 unless given."""
    return ([SLIDING if (i + 1) % 4 else FULL for i in range(n_layers)],
            read.get("sliding_window", 4096))


def qwen_layers(read, n_layers: int):
    """Only when `use_sliding_window` is true, then on layers >= `max_window_layers`."""
    window = read.get("sliding_window", 4096) if read.flag("use_sliding_window") else None
    first = read.int("max_window_layers", 28, minimum=0)
    return [SLIDING if window is not None and i >= first else FULL for i in range(n_layers)], window


def every_layer_slides(default_window: int | None):
    """Mistral, Phi-3: one `sliding_window` for every layer, none where it is null."""
    def layers(read, n_layers: int):
        window = read.get("sliding_window", default_window)
        return [FULL if window is None else SLIDING] * n_layers, window
    return layers


def gemma_layers(pattern: int, reads_pattern: bool):
    """Gemma: every `pattern`-th layer is global, the others slide (window 4096 unless given);
    Gemma 3's configs may say `sliding_window_pattern`."""
    def layers(read, n_layers: int):
        every = read.int("sliding_window_pattern", pattern) if reads_pattern else pattern
        return ([SLIDING if (i + 1) % every else FULL for i in range(n_layers)],
                read.get("sliding_window", 4096))
    return layers


def no_extra(read) -> dict:
    return {}


@dataclass(frozen=True)
class Family:
    architecture: str  # config.json's architectures[0]
    checkpoints: str  # the released checkpoints it covers (docs)
    rope_types: tuple[str, ...]  # each tested against transformers for this family
    defaults: Mapping[str, object] = field(default_factory=dict)  # by config key
    keys: Mapping[str, str | None] = field(default_factory=dict)  # overrides of COMMON_KEYS
    activations: tuple[str, ...] = ("silu",)  # hidden_act values implemented
    # blocks
    norm: str = "rms"  # "rms"; "offset_rms": scales by 1 + weight (Gemma); "layer": LayerNorm
    #                    with weight and bias; "plain_layer": LayerNorm without parameters
    norm_weight_in_float32: bool = False  # OLMo 2/3 scale by the weight before casting back
    residual: str = "pre"  # "pre"; "post": norms on the outputs (OLMo 2/3); "parallel" (NeoX);
    #                        "sandwich": norms before and after each block (Gemma)
    scales_embedding: bool = False  # Gemma: embeddings times sqrt(hidden_size)
    qkv: str = "separate"  # "separate" q/k/v_proj; "fused": qkv_proj rows [q; k; v] (Phi-3);
    #                        "per_head": query_key_value rows [head][q, k, v] (GPT-NeoX)
    qkv_bias: bool = False  # q, k, v always carry a bias, o none (Qwen 2)
    reads_attention_bias: bool = True  # honours `attention_bias` (on q, k, v and o)
    reads_mlp_bias: bool = False  # honours `mlp_bias`; others have none whatever the config says
    qk_norm: str | None = None  # "full": RMSNorm over the whole q / k projection, before RoPE
    #                             (OLMo 2/3); "head": over each head (Qwen 3)
    mlp: str = "gated"  # "gated": down(act(gate) * up); "fused_gated": gate_up_proj (Phi-3);
    #                     "plain": down(act(up)) with biases (GPT-NeoX); "moe": routed gated
    #                     experts (OLMoE)
    rope_in_float32: bool = False  # OLMo rotates in float32; the others in the activation dtype
    rope_per_layer_type: bool = False  # OLMo 3: sliding layers have their own rope
    partial_rotary: bool = False  # reads a rotary fraction of the head (rope's
    #                               partial_rotary_factor, NeoX's rotary_pct)
    clip_qkv: bool = False  # OLMo 1: reads `clip_qkv`
    layers: Callable = no_sliding_layers  # (read, n_layers) -> (default layer types, window)
    reads_layer_types: bool = True  # a config's `layer_types` overrides the default
    extra: Callable = no_extra  # (read) -> further ModelArgs fields
    # (checkpoint pattern, engine name) pairs, tried in order: how the family's checkpoints
    # name the tensors that answerdist/engine/model/transformer.py names as Llama's do
    weight_names: tuple[tuple[str, str], ...] = ()
    ignored_tensors: tuple[str, ...] = ()  # suffixes of stored buffers that are not weights
    tensor_parallel: str | None = None  # None: `--tp` works; else why it is refused

    def key(self, name: str) -> str | None:
        """The config key holding ModelArgs field `name` (None: not read)."""
        return self.keys.get(name, COMMON_KEYS.get(name))

    def default(self, key: str, fallback=None):
        return self.defaults.get(key, COMMON_DEFAULTS.get(key, fallback))

    def engine_name(self, stored: str) -> str:
        """The engine's name of a tensor the checkpoint calls `stored`."""
        for pattern, name in _compiled(self.weight_names):
            renamed, n = pattern.subn(name, stored, count=1)
            if n:
                return renamed
        return stored


@functools.cache
def _compiled(weight_names: tuple[tuple[str, str], ...]):
    return tuple((re.compile(pattern), name) for pattern, name in weight_names)


def _soft_cap(read, key: str) -> float | None:
    return None if read.get(key, read.family.default(key)) is None else read.float(key)


def gemma_extra(read) -> dict:
    """Gemma 2's attention scale (query_pre_attn_scalar ** -0.5) and soft-caps (null: none)."""
    return {"attention_scale": read.float("query_pre_attn_scalar") ** -0.5,
            "attn_softcap": _soft_cap(read, "attn_logit_softcapping"),
            "final_softcap": _soft_cap(read, "final_logit_softcapping")}


def gemma3_extra(read) -> dict:
    """Gemma 2's, but attention is never soft-capped: transformers' Gemma 3 keeps
    `attn_logit_softcapping` in its config and never applies it, so neither does the engine.
    `final_logit_softcapping` caps the logits when it is set, as there."""
    return {"attention_scale": read.float("query_pre_attn_scalar") ** -0.5,
            "attn_softcap": None, "final_softcap": _soft_cap(read, "final_logit_softcapping")}


def moe_extra(read) -> dict:
    """OLMoE's routing: top-k of `num_experts`, renormalised only with `norm_topk_prob`."""
    n_experts = read.int("num_experts", 64)
    top_k = read.int("num_experts_per_tok", 8)
    if top_k > n_experts:
        raise read.error(f"num_experts_per_tok={top_k} exceeds num_experts={n_experts}")
    return {"n_experts": n_experts, "experts_per_token": top_k,
            "normalize_top_k": read.flag("norm_topk_prob")}


def neox_extra(read) -> dict:
    """Parallel residual unless `use_parallel_residual` is false."""
    return {"residual": "parallel" if read.flag("use_parallel_residual", True) else "pre"}


LLAMA = Family("LlamaForCausalLM", "Llama 3 / 3.1, Tulu 3", ("default", "llama3"),
               reads_mlp_bias=True)
OLMO2 = Family("Olmo2ForCausalLM", "OLMo 2 (base, SFT, DPO, Instruct)", ("default", "llama3"),
               residual="post", qk_norm="full", norm_weight_in_float32=True,
               rope_in_float32=True, reads_mlp_bias=True)
OLMO3 = Family("Olmo3ForCausalLM", "OLMo 3 (base, SFT, DPO, RL-Zero, Think, Instruct)",
               ("default", "yarn"),
               defaults={"rope_theta": 500000.0, "rms_norm_eps": 1e-5,
                         "max_position_embeddings": 2048},
               residual="post", qk_norm="full", norm_weight_in_float32=True,
               rope_in_float32=True, rope_per_layer_type=True, layers=olmo3_layers)
QWEN2 = Family("Qwen2ForCausalLM", "Qwen 2.5 (base, Instruct)", ("default", "yarn"),
               defaults={"max_position_embeddings": 32768}, qkv_bias=True,
               reads_attention_bias=False, layers=qwen_layers)
QWEN3 = Family("Qwen3ForCausalLM", "Qwen 3 dense (base, hybrid-thinking)", ("default", "yarn"),
               defaults={"max_position_embeddings": 32768, "head_dim": 128}, qk_norm="head",
               layers=qwen_layers)

MISTRAL = Family("MistralForCausalLM", "Mistral 7B v0.1 to v0.3 (base, Instruct)", ("default",),
                 defaults={"max_position_embeddings": 131072, "num_key_value_heads": 8},
                 reads_attention_bias=False, layers=every_layer_slides(4096),
                 reads_layer_types=False)
OLMO1 = Family("OlmoForCausalLM", "OLMo 1 (1B, 7B, 7B-0424, 7B-0724, intermediate checkpoints)",
               ("default",), defaults={"max_position_embeddings": 2048, "norm_eps": 1e-5},
               keys={"norm_eps": None}, norm="plain_layer", rope_in_float32=True, clip_qkv=True)
NEOX = Family(
    "GPTNeoXForCausalLM", "Pythia (all sizes, 154 intermediate checkpoints each), GPT-NeoX",
    ("default",),
    defaults={"layer_norm_eps": 1e-5, "max_position_embeddings": 2048, "hidden_act": "gelu",
              "attention_bias": True, "partial_rotary_factor": 0.25},
    keys={"norm_eps": "layer_norm_eps", "n_kv_heads": None, "head_dim": None,
          "rope_theta": "rotary_emb_base", "partial_rotary_factor": "rotary_pct"},
    activations=("gelu",), norm="layer", residual="parallel", qkv="per_head", mlp="plain",
    partial_rotary=True, extra=neox_extra,
    weight_names=(
        (r"^gpt_neox\.embed_in\.", "model.embed_tokens."),
        (r"^gpt_neox\.final_layer_norm\.", "model.norm."),
        (r"^gpt_neox\.layers\.(\d+)\.attention\.query_key_value\.",
         r"model.layers.\1.self_attn.qkv_proj."),
        (r"^gpt_neox\.layers\.(\d+)\.attention\.dense\.", r"model.layers.\1.self_attn.o_proj."),
        (r"^gpt_neox\.layers\.(\d+)\.mlp\.dense_h_to_4h\.", r"model.layers.\1.mlp.up_proj."),
        (r"^gpt_neox\.layers\.(\d+)\.mlp\.dense_4h_to_h\.", r"model.layers.\1.mlp.down_proj."),
        (r"^gpt_neox\.layers\.", "model.layers."),
        (r"^embed_out\.", "lm_head."),
    ),
    ignored_tensors=("attention.bias", "attention.masked_bias"),  # old causal-mask buffers
)
PHI3 = Family("Phi3ForCausalLM", "Phi-3 / Phi-3.5 mini and medium, Phi-4-mini",
              ("default", "longrope"),
              defaults={"rms_norm_eps": 1e-5, "max_position_embeddings": 4096},
              reads_attention_bias=False, qkv="fused", mlp="fused_gated", partial_rotary=True,
              layers=every_layer_slides(None), reads_layer_types=False)

GEMMA = dict(  # what Gemma 2 and 3 share
    keys={"activation": "hidden_activation"}, activations=("gelu_pytorch_tanh",),
    norm="offset_rms", residual="sandwich", scales_embedding=True, extra=gemma_extra)
GEMMA_DEFAULTS = {"head_dim": 256, "num_key_value_heads": 4,
                  "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True,
                  "query_pre_attn_scalar": 256}
GEMMA2 = Family("Gemma2ForCausalLM", "Gemma 2 (2B, 9B, 27B; pt and it)", ("default",),
                defaults=GEMMA_DEFAULTS | {"max_position_embeddings": 8192,
                                           "final_logit_softcapping": 30.0,
                                           "attn_logit_softcapping": 50.0},
                layers=gemma_layers(2, reads_pattern=False), **GEMMA)
GEMMA3 = Family("Gemma3ForCausalLM", "Gemma 3 text-only (1B pt and it)", ("default", "linear"),
                defaults=GEMMA_DEFAULTS | {"max_position_embeddings": 131072,
                                           "rope_theta": 1000000.0, "sliding_rope_theta": 10000.0,
                                           "final_logit_softcapping": None},
                qk_norm="head", rope_per_layer_type=True,
                layers=gemma_layers(6, reads_pattern=True),
                **(GEMMA | {"keys": {**GEMMA["keys"],
                                     "sliding_rope_theta": "rope_local_base_freq"},
                            "extra": gemma3_extra}))

OLMOE = Family("OlmoeForCausalLM", "OLMoE-1B-7B (base, SFT, DPO, Instruct)", ("default",),
               defaults={"rms_norm_eps": 1e-5}, qk_norm="full", clip_qkv=True, mlp="moe",
               extra=moe_extra)

FAMILIES = {f.architecture: f for f in (LLAMA, OLMO2, OLMO3, QWEN2, QWEN3, MISTRAL, OLMO1, NEOX,
                                        PHI3, GEMMA2, GEMMA3, OLMOE)}
# Architectures close to a supported family that are refused with their own reason.
REFUSED = {
    "Gemma3ForConditionalGeneration": "a Gemma 3 multimodal checkpoint (4B, 12B, 27B): only the "
    "text-only Gemma3ForCausalLM is supported",
}
