"""Read a Hugging Face config.json into `ModelArgs`.

Both key spellings are accepted: transformers 4.x writes `rope_theta` and `rope_scaling`, 5.x
writes `rope_parameters` (with `rope_theta` inside; for OLMo 3 one dict per layer type). The
saved dtype (`torch_dtype` / `dtype`) matters only for `dtype="auto"`, read in
answerdist/engine/model/checkpoint.py. Where a key is absent, the default is that of the family's
transformers config class, so a config means here what it means there.
"""

from __future__ import annotations

import json
from pathlib import Path

from answerdist.engine.model.families import FAMILIES, FULL, REFUSED, SLIDING, Family
from answerdist.engine.model.transformer import ModelArgs
from answerdist.errors import ArchitectureError, CheckpointError
from answerdist.files import read_user_text

LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                    "original_max_position_embeddings")
YARN_OPTIONAL_KEYS = ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
                      "truncate")


# Far past any model's layers (the largest have some 130): a config saying more is corrupt,
# and its per-layer lists (8 bytes a layer) would be built before the weight files can say so
# (loading.py checks the exact count against them).
MOST_LAYERS = 10**6

def read_json(path: Path, what: str) -> dict:
    """Parse a JSON file of the checkpoint, turning every failure into one clear line."""
    if not path.exists():
        raise CheckpointError(f"{path}: {what} not found; "
                              "a Hugging Face checkpoint directory needs it")
    try:
        data = json.loads(read_user_text(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read {what} ({e}); "
                              "restore the file from the original checkpoint") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} must hold a JSON object; "
                              "restore the file from the original checkpoint")
    return data


def rope_settings(cfg: dict, path: Path, family: Family) -> tuple[float, dict | None]:
    """(rope_theta, scaling dict or None) from either the 4.x or the 5.x keys (one RoPE for
    every layer)."""
    params = _object(cfg, "rope_parameters", path)
    scaling = cfg.get("rope_scaling") or params
    theta = cfg.get(family.key("rope_theta"),
                    params.get("rope_theta", family.default("rope_theta")))
    return _number(theta, "rope_theta", path), rope_scaling(scaling, cfg, path, family)


def rotary_fraction(cfg: dict, path: Path, family: Family) -> float:
    """The fraction of each head that rotates: the rope's `partial_rotary_factor`, else the
    family's top-level key (GPT-NeoX's `rotary_pct`), else its default."""
    params = _object(cfg, "rope_parameters", path)
    rope = cfg.get("rope_scaling") or params
    rope = rope.get(FULL, rope) if family.rope_per_layer_type and isinstance(rope, dict) else rope
    value = rope.get("partial_rotary_factor") if isinstance(rope, dict) else None
    if value is None:
        value = cfg.get(family.key("partial_rotary_factor"))
    if value is None:
        value = family.default("partial_rotary_factor", 1.0)
    value = _number(value, "partial_rotary_factor", path)
    if value != 1.0 and not family.partial_rotary:
        raise ArchitectureError(f"{path}: partial_rotary_factor {value} is not supported for "
                                f"{family.architecture} (only rotary embeddings over the whole "
                                "head)")
    if value > 1.0:
        raise CheckpointError(f"{path}: partial_rotary_factor {value} is above 1; fix config.json")
    return value


def rope_scaling(rope: dict, cfg: dict, path: Path, family: Family) -> dict | None:
    """The checked scaling dict of one RoPE ({"rope_type": ..., parameters}), None for default."""
    if not isinstance(rope, dict):
        raise CheckpointError(f"{path}: rope parameters must be a JSON object, found {rope!r}; "
                              "fix config.json")
    rope_type = rope.get("rope_type", rope.get("type", "default")) if rope else "default"
    supported = family.rope_types
    if rope_type not in supported:
        raise ArchitectureError(
            f"{path}: rope type {rope_type!r} is not supported for {family.architecture} "
            f"(supported: {', '.join(supported)})"
        )
    if rope_type == "default":
        return None
    if rope_type == "llama3":
        missing = [k for k in LLAMA3_ROPE_KEYS if k not in rope]
        if missing:
            raise CheckpointError(f"{path}: llama3 rope scaling lacks {', '.join(missing)}; "
                                  "add them to config.json")
        return {"rope_type": "llama3", **{k: _number(rope[k], k, path) for k in LLAMA3_ROPE_KEYS}}
    if rope_type == "longrope":
        return longrope_scaling(rope, cfg, path, family)
    if rope_type == "linear":
        if "factor" not in rope:
            raise CheckpointError(f"{path}: linear rope scaling lacks 'factor'; "
                                  "add it to config.json")
        return {"rope_type": "linear", "factor": _number(rope["factor"], "factor", path)}
    if "factor" not in rope:
        raise CheckpointError(f"{path}: yarn rope scaling lacks 'factor'; add it to config.json")
    # transformers falls back to max_position_embeddings (a top-level key takes priority,
    # Phi 3 style)
    old_context = (cfg.get("original_max_position_embeddings")
                   or rope.get("original_max_position_embeddings"))
    old_context = (old_context or cfg.get("max_position_embeddings")
                   or family.default("max_position_embeddings"))
    scaling = {"rope_type": "yarn", "factor": rope["factor"],
               "original_max_position_embeddings": old_context,
               **{k: rope[k] for k in YARN_OPTIONAL_KEYS if k in rope}}
    for key, value in scaling.items():  # null means "derive it", as in transformers
        if key not in ("rope_type", "truncate") and value is not None:
            _number(value, key, path,
                    positive=key in ("factor", "original_max_position_embeddings"))
    return scaling


def longrope_scaling(rope: dict, cfg: dict, path: Path, family: Family) -> dict:
    """Phi-3's LongRoPE: per-frequency factors (short within the original context, long past
    it), the attention factor derived from `factor` (max / original context unless given)."""
    old_context = (cfg.get("original_max_position_embeddings")
                   or rope.get("original_max_position_embeddings")
                   or cfg.get("max_position_embeddings")
                   or family.default("max_position_embeddings"))
    scaling = {"rope_type": "longrope",
               "original_max_position_embeddings": _number(
                   old_context, "original_max_position_embeddings", path)}
    for key in ("short_factor", "long_factor"):
        factors = rope.get(key)
        if (not isinstance(factors, list) or not factors
                or any(not isinstance(f, (int, float)) or isinstance(f, bool) or not f > 0
                       for f in factors)):
            raise CheckpointError(f"{path}: longrope scaling needs {key!r}, a list of positive "
                                  f"numbers, found {_shown(factors)}; fix config.json")
        scaling[key] = tuple(float(f) for f in factors)
    for key in ("factor", "attention_factor"):
        if rope.get(key) is not None:
            scaling[key] = _number(rope[key], key, path)
    return scaling


def per_layer_type_ropes(cfg: dict, path: Path, family: Family
                         ) -> tuple[tuple[float, dict | None], tuple[float, dict | None]]:
    """((theta, scaling) of the full-attention layers, that of the sliding-window layers).

    transformers 5.x nests `rope_parameters` by layer type; 4.x wrote `rope_scaling` (YaRN) and
    one `rope_theta`, and (OLMo 3) applied the scaling to the full-attention layers only."""
    params = _object(cfg, "rope_parameters", path)
    top_theta = cfg.get("rope_theta", family.default("rope_theta"))
    sliding_key = family.key("sliding_rope_theta")  # Gemma 3's rope_local_base_freq
    sliding_theta = (cfg.get(sliding_key, family.default("sliding_rope_theta"))
                     if sliding_key else None)
    if isinstance(params, dict) and (FULL in params or SLIDING in params):
        ropes = []
        for kind in (FULL, SLIDING):
            rope = params.get(kind) or {}
            kind_theta = sliding_theta if kind == SLIDING and sliding_theta else top_theta
            theta = _number(rope.get("rope_theta", kind_theta),
                            f"rope_parameters.{kind}.rope_theta", path)
            ropes.append((theta, rope_scaling(rope, cfg, path, family)))
        return ropes[0], ropes[1]
    theta, scaling = rope_settings(cfg, path, family)
    if sliding_theta is not None:
        return (theta, scaling), (_number(sliding_theta, sliding_key, path), None)
    return (theta, scaling), (theta, None)


def attention_layout(read: Reader, family: Family,
                     n_layers: int) -> tuple[tuple[str, ...], int | None]:
    """(layer types, sliding window): the family's default layout (`Family.layers`), with the
    config's `layer_types` in its place where the family reads it."""
    default, window = family.layers(read, n_layers)
    cfg, path = read.cfg, read.path
    types = (family.reads_layer_types and cfg.get("layer_types")) or default
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


class Reader:
    """config.json's values for one family, each checked as it is read; an absent (or null) key
    takes the family's default (`Family.default`), as its transformers config class does."""

    def __init__(self, cfg: dict, path: Path, family: Family):
        self.cfg, self.path, self.family = cfg, path, family

    def get(self, key: str, default=None):
        """The raw value (absent: `default`; null stays None)."""
        return self.cfg.get(key, default)

    def int(self, key: str, default=None, minimum: int = 1) -> int:
        return _int(self.cfg, key, self.path, self._default(key, default), minimum)

    def float(self, key: str, default=None) -> float:
        return _float(self.cfg, key, self.path, self._default(key, default))

    def flag(self, key: str, default: bool = False) -> bool:
        return default if self.cfg.get(key) is None else _flag(self.cfg, key, self.path)

    def error(self, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {problem}; fix config.json")

    def _default(self, key: str, default):
        return self.family.default(key, default) if default is None else default


def family_of(cfg: dict, path: Path) -> Family:
    archs = cfg.get("architectures") or [None]
    if not isinstance(archs, list):  # transformers reads architectures[0]: a list of names
        raise ArchitectureError(f"{path}: architectures is {_shown(archs)}, not a list of "
                                f"names such as [\"LlamaForCausalLM\"]; fix config.json")
    arch = archs[0]
    if isinstance(arch, str) and arch in REFUSED:
        raise ArchitectureError(f"{path}: {arch} is not supported: {REFUSED[arch]}")
    if not isinstance(arch, str) or arch not in FAMILIES:
        raise ArchitectureError(
            f"{path}: architecture {_shown(arch)} is not supported; "
            f"supported: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[arch]


def parse_config(cfg: dict, path: Path) -> ModelArgs:
    """Validate a config dict and map it onto ModelArgs, through its family's record."""
    family = family_of(cfg, path)
    read = Reader(cfg, path, family)
    key = family.key
    act = cfg.get(key("activation")) or family.default(key("activation"))
    if act not in family.activations:
        raise ArchitectureError(f"{path}: hidden_act {act!r} is not supported for "
                                f"{family.architecture} (only {', '.join(family.activations)})")
    dim = read.int(key("dim"))
    n_heads = read.int(key("n_heads"))
    n_kv_heads = (read.int(key("n_kv_heads"), default=family.default(key("n_kv_heads"), n_heads))
                  if key("n_kv_heads") else n_heads)
    if n_heads % n_kv_heads:
        raise CheckpointError(
            f"{path}: num_attention_heads={n_heads} is not a multiple of "
            f"num_key_value_heads={n_kv_heads}"
        )
    head_dim = (read.int(key("head_dim"), default=family.default(key("head_dim"), dim // n_heads))
                if key("head_dim") else dim // n_heads)
    n_layers = read.int(key("n_layers"))
    if n_layers > MOST_LAYERS:  # before any list of one entry per layer is built
        raise read.error(f"{key('n_layers')}={n_layers:,} is past any model's ({MOST_LAYERS:,} "
                         "at most); the weight files hold the real count")
    sliding_rope = None
    if family.rope_per_layer_type:
        (theta, scaling), sliding_rope = per_layer_type_ropes(cfg, path, family)
    else:
        theta, scaling = rope_settings(cfg, path, family)
    rotary_dim = rotary_dimensions(head_dim, rotary_fraction(cfg, path, family), path)
    check_rope_factors(scaling, rotary_dim, path)
    layer_types, window = attention_layout(read, family, n_layers)
    fields = dict(
        arch=family.architecture,
        vocab_size=read.int(key("vocab_size")),
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        intermediate_size=read.int(key("intermediate_size")),
        norm_eps=read.float(key("norm_eps")) if key("norm_eps") else family.default("norm_eps"),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_embeddings=read.flag("tie_word_embeddings", family.default("tie_word_embeddings",
                                                                       False)),
        attention_bias=(read.flag("attention_bias", family.default("attention_bias", False))
                        and family.reads_attention_bias),
        mlp_bias=read.flag("mlp_bias") and family.reads_mlp_bias,
        max_position_embeddings=read.int(key("max_position_embeddings")),
        layer_types=layer_types,
        sliding_window=window,
        sliding_rope=sliding_rope,
        rotary_dim=rotary_dim,
        activation=act,
        residual=family.residual,
        clip_qkv=clip_value(read) if family.clip_qkv else None,
    )
    return ModelArgs(**(fields | family.extra(read)))


def check_rope_factors(scaling: dict | None, rotary_dim: int, path: Path) -> None:
    """LongRoPE has one factor per rotated frequency."""
    if not scaling or scaling["rope_type"] != "longrope":
        return
    for name in ("short_factor", "long_factor"):
        if len(scaling[name]) != rotary_dim // 2:
            raise CheckpointError(f"{path}: longrope {name} has {len(scaling[name])} entries, but "
                                  f"{rotary_dim} rotary dimensions need {rotary_dim // 2}; "
                                  "fix config.json")


def rotary_dimensions(head_dim: int, fraction: float, path: Path) -> int:
    """How many of a head's dimensions rotate, as transformers computes it (int(), not round)."""
    rotary_dim = int(head_dim * fraction)
    if rotary_dim < 2 or rotary_dim % 2:
        raise CheckpointError(f"{path}: partial_rotary_factor {fraction} of head_dim {head_dim} "
                              f"rotates {rotary_dim} dimensions; it must be a positive even "
                              "number (fix config.json)")
    return rotary_dim


def clip_value(read: Reader) -> float | None:
    """OLMo 1's `clip_qkv`: q, k and v clamped to [-c, c] (null: no clipping)."""
    if read.get("clip_qkv") is None:
        return None
    return read.float("clip_qkv")
