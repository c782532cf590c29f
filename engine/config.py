"""Read a Hugging Face config.json into `ModelArgs`.

Both key spellings are accepted: transformers 4.x writes `rope_theta` and `rope_scaling`, 5.x
writes `rope_parameters` (with `rope_theta` inside; for OLMo 3 one dict per layer type). The
saved dtype (`torch_dtype` / `dtype`) matters only for `dtype="auto"`, read in
engine/checkpoint.py. Where a key is absent, the default is that of the family's transformers
config class, so a config means here what it means there.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.errors import ArchitectureError, CheckpointError
from engine.model import ARCHITECTURES, FULL, SLIDING, ModelArgs

SUPPORTED_ROPE_TYPES = ("default", "llama3", "yarn")  # all the engine implements
ROPE_TYPES = {  # per family: the rope types its checkpoints use, each tested against transformers
    "LlamaForCausalLM": ("default", "llama3"),
    "Olmo2ForCausalLM": ("default", "llama3"),
    "Olmo3ForCausalLM": ("default", "yarn"),
    "Qwen2ForCausalLM": ("default", "yarn"),
    "Qwen3ForCausalLM": ("default", "yarn"),
}
# Defaults of the families' transformers config classes where they differ from the engine's
# (rope_theta 10000, rms_norm_eps 1e-6, 4096 positions, head_dim = hidden_size // heads).
FAMILY_DEFAULTS = {
    "Olmo3ForCausalLM": {"rope_theta": 500000.0, "rms_norm_eps": 1e-5,
                         "max_position_embeddings": 2048},
    "Qwen2ForCausalLM": {"max_position_embeddings": 32768},
    "Qwen3ForCausalLM": {"max_position_embeddings": 32768, "head_dim": 128},
}
# Families whose MLP honours `mlp_bias`; the others have none whatever the config says.
MLP_BIAS_KEY = ("LlamaForCausalLM", "Olmo2ForCausalLM")
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                    "original_max_position_embeddings")
YARN_OPTIONAL_KEYS = ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
                      "truncate")


def default(arch: str, key: str, fallback):
    return FAMILY_DEFAULTS.get(arch, {}).get(key, fallback)


def read_json(path: Path, what: str) -> dict:
    """Parse a JSON file of the checkpoint, turning every failure into one clear line."""
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found; "
                              "a Hugging Face checkpoint directory needs it")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read {what} ({e}); "
                              "restore the file from the original checkpoint") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} must hold a JSON object; "
                              "restore the file from the original checkpoint")
    return data


def rope_settings(cfg: dict, path: Path,
                  arch: str = "LlamaForCausalLM") -> tuple[float, dict | None]:
    """(rope_theta, scaling dict or None) from either the 4.x or the 5.x keys (one RoPE for
    every layer)."""
    params = _object(cfg, "rope_parameters", path)
    scaling = cfg.get("rope_scaling") or params
    theta = cfg.get("rope_theta", params.get("rope_theta", default(arch, "rope_theta", 10000.0)))
    return _number(theta, "rope_theta", path), rope_scaling(scaling, cfg, path, arch)


def rope_scaling(rope: dict, cfg: dict, path: Path, arch: str) -> dict | None:
    """The checked scaling dict of one RoPE ({"rope_type": ..., parameters}), None for default."""
    if not isinstance(rope, dict):
        raise CheckpointError(f"{path}: rope parameters must be a JSON object, found {rope!r}; "
                              "fix config.json")
    rope_type = rope.get("rope_type", rope.get("type", "default")) if rope else "default"
    supported = ROPE_TYPES[arch]
    if rope_type not in supported:
        raise ArchitectureError(
            f"{path}: rope type {rope_type!r} is not supported for {arch} "
            f"(supported: {', '.join(supported)})"
        )
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ArchitectureError(f"{path}: partial_rotary_factor {rope['partial_rotary_factor']} "
                                "is not supported (only rotary embeddings over the whole head)")
    if rope_type == "default":
        return None
    if rope_type == "llama3":
        missing = [k for k in LLAMA3_ROPE_KEYS if k not in rope]
        if missing:
            raise CheckpointError(f"{path}: llama3 rope scaling lacks {', '.join(missing)}; "
                                  "add them to config.json")
        return {"rope_type": "llama3", **{k: _number(rope[k], k, path) for k in LLAMA3_ROPE_KEYS}}
    if "factor" not in rope:
        raise CheckpointError(f"{path}: yarn rope scaling lacks 'factor'; add it to config.json")
    # transformers falls back to max_position_embeddings (a top-level key takes priority,
    # Phi 3 style)
    old_context = (cfg.get("original_max_position_embeddings")
                   or rope.get("original_max_position_embeddings"))
    old_context = (old_context or cfg.get("max_position_embeddings")
                   or default(arch, "max_position_embeddings", 4096))
    scaling = {"rope_type": "yarn", "factor": rope["factor"],
               "original_max_position_embeddings": old_context,
               **{k: rope[k] for k in YARN_OPTIONAL_KEYS if k in rope}}
    for key, value in scaling.items():  # null means "derive it", as in transformers
        if key not in ("rope_type", "truncate") and value is not None:
            _number(value, key, path,
                    positive=key in ("factor", "original_max_position_embeddings"))
    return scaling


def olmo3_ropes(cfg: dict, path: Path
                ) -> tuple[tuple[float, dict | None], tuple[float, dict | None]]:
    """((theta, scaling) of the full-attention layers, that of the sliding-window layers).

    transformers 5.x nests `rope_parameters` by layer type; 4.x wrote `rope_scaling` (YaRN) and
    one `rope_theta`, and applied the scaling to the full-attention layers only."""
    arch = "Olmo3ForCausalLM"
    params = _object(cfg, "rope_parameters", path)
    top_theta = cfg.get("rope_theta", default(arch, "rope_theta", 10000.0))
    if isinstance(params, dict) and (FULL in params or SLIDING in params):
        ropes = []
        for kind in (FULL, SLIDING):
            rope = params.get(kind) or {}
            theta = _number(rope.get("rope_theta", top_theta), f"rope_parameters.{kind}.rope_theta",
                            path)
            ropes.append((theta, rope_scaling(rope, cfg, path, arch)))
        return ropes[0], ropes[1]
    theta, scaling = rope_settings(cfg, path, arch)
    return (theta, scaling), (theta, None)


def attention_layout(cfg: dict, arch: str, n_layers: int,
                     path: Path) -> tuple[tuple[str, ...], int | None]:
    """(layer types, sliding window), with transformers' defaults for each family:
    OLMo 3 slides on three of every four layers (window 4096 unless given); Qwen only when
    `use_sliding_window` is true, then on layers >= `max_window_layers` unless `layer_types`
    says otherwise; Llama and OLMo 2 never."""
    if arch == "Olmo3ForCausalLM":
        window = cfg.get("sliding_window", 4096)
        default = [SLIDING if (i + 1) % 4 else FULL for i in range(n_layers)]
    elif arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        window = cfg.get("sliding_window", 4096) if _flag(cfg, "use_sliding_window", path) else None
        first = _int(cfg, "max_window_layers", path, default=28, minimum=0)
        default = [SLIDING if window is not None and i >= first else FULL for i in range(n_layers)]
    else:
        return (), None
    types = cfg.get("layer_types") or default
    if (not isinstance(types, list) or len(types) != n_layers
            or any(t not in (FULL, SLIDING) for t in types)):
        raise CheckpointError(
            f"{path}: 'layer_types' must list {n_layers} entries, each {FULL!r} or {SLIDING!r}; "
            "fix config.json"
        )
    if SLIDING not in types:
        return tuple(types), None
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        raise CheckpointError(
            f"{path}: layers are {SLIDING!r} but 'sliding_window' is {window!r} "
            f"(use_sliding_window={cfg.get('use_sliding_window')}); set a positive window or make "
            f"every layer {FULL!r}"
        )
    # A window wider than the context is legal (Qwen 2.5 ships sliding_window 131072 with 32768
    # positions, as transformers accepts): it never binds inside the context, so it is kept as is.
    return tuple(types), window


def _number(value, key: str, path: Path, positive: bool = True) -> float:
    """A (positive) number from a rope setting, or one clear line."""
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not (value > 0 or not positive)):
        what = "a positive number" if positive else "a number"
        raise CheckpointError(f"{path}: rope setting {key!r} must be {what}, found {value!r}; "
                              "fix config.json")
    return float(value)


def _int(cfg: dict, key: str, path: Path, default=None, minimum: int = 1) -> int:
    value = cfg.get(key)
    if value is None:  # absent or null: transformers falls back to the default too
        value = default
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise CheckpointError(f"{path}: {key!r} must be {what}, found {_shown(value)}; "
                              "fix config.json")
    return value


def _float(cfg: dict, key: str, path: Path, default: float) -> float:
    value = cfg.get(key)
    if value is None:
        value = default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise CheckpointError(f"{path}: {key!r} must be a positive number, found {_shown(value)}; "
                              "fix config.json")
    return float(value)


def _flag(cfg: dict, key: str, path: Path) -> bool:
    value = cfg.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise CheckpointError(f"{path}: {key!r} must be true or false, found {_shown(value)}; "
                              "fix config.json")
    return value


def _object(cfg: dict, key: str, path: Path) -> dict:
    value = cfg.get(key) or {}
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: {key!r} must be a JSON object, found {_shown(value)}; "
                              "fix config.json")
    return value


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_config(cfg: dict, path: Path) -> ModelArgs:
    """Validate a config dict and map it onto ModelArgs."""
    archs = cfg.get("architectures") or [None]
    arch = archs[0] if isinstance(archs, list) else archs
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise ArchitectureError(
            f"{path}: architecture {_shown(arch)} is not supported; "
            f"supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ArchitectureError(f"{path}: hidden_act {act!r} is not supported (only 'silu')")
    dim = _int(cfg, "hidden_size", path)
    n_heads = _int(cfg, "num_attention_heads", path)
    n_kv_heads = _int(cfg, "num_key_value_heads", path, default=n_heads)
    if n_heads % n_kv_heads:
        raise CheckpointError(
            f"{path}: num_attention_heads={n_heads} is not a multiple of "
            f"num_key_value_heads={n_kv_heads}"
        )
    head_dim = _int(cfg, "head_dim", path, default=default(arch, "head_dim", dim // n_heads))
    n_layers = _int(cfg, "num_hidden_layers", path)
    max_positions = _int(cfg, "max_position_embeddings", path,
                         default=default(arch, "max_position_embeddings", 4096))
    sliding_rope = None
    if arch == "Olmo3ForCausalLM":
        (theta, scaling), sliding_rope = olmo3_ropes(cfg, path)
    else:
        theta, scaling = rope_settings(cfg, path, arch)
    layer_types, window = attention_layout(cfg, arch, n_layers, path)
    return ModelArgs(
        arch=arch,
        vocab_size=_int(cfg, "vocab_size", path),
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        intermediate_size=_int(cfg, "intermediate_size", path),
        norm_eps=_float(cfg, "rms_norm_eps", path, default(arch, "rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_embeddings=_flag(cfg, "tie_word_embeddings", path),
        # Qwen 2 has a bias on q, k, v (ArchStyle.qkv_bias) and never reads attention_bias
        attention_bias=_flag(cfg, "attention_bias", path) and not ARCHITECTURES[arch].qkv_bias,
        mlp_bias=_flag(cfg, "mlp_bias", path) and arch in MLP_BIAS_KEY,
        max_position_embeddings=max_positions,
        layer_types=layer_types,
        sliding_window=window,
        sliding_rope=sliding_rope,
    )
