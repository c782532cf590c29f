"""Read a Hugging Face config.json into `ModelArgs`.

Both key spellings are accepted: transformers 4.x writes `rope_theta` and `rope_scaling`, 5.x
writes `rope_parameters` (with `rope_theta` inside). The saved dtype (`torch_dtype` / `dtype`)
matters only for `dtype="auto"`, read in engine/checkpoint.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.errors import ArchitectureError, CheckpointError
from engine.model import ARCHITECTURES, ModelArgs

SUPPORTED_ROPE_TYPES = ("default", "llama3")
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def read_json(path: Path, what: str) -> dict:
    """Parse a JSON file of the checkpoint, turning every failure into one clear line."""
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found; a Hugging Face checkpoint directory needs it")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read {what} ({e}); restore the file from the original checkpoint") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} must hold a JSON object; restore the file from the original checkpoint")
    return data


def rope_settings(cfg: dict, path: Path) -> tuple[float, dict | None]:
    """(rope_theta, llama3 scaling dict or None) from either the 4.x or the 5.x keys."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or params
    theta = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ArchitectureError(
            f"{path}: rope type {rope_type!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if rope_type == "default":
        return float(theta), None
    missing = [k for k in LLAMA3_ROPE_KEYS if k not in scaling]
    if missing:
        raise CheckpointError(f"{path}: llama3 rope scaling lacks {', '.join(missing)}; add them to config.json")
    return float(theta), {k: scaling[k] for k in LLAMA3_ROPE_KEYS}


def _int(cfg: dict, key: str, path: Path, default=None) -> int:
    value = cfg.get(key)
    if value is None:  # absent or null: transformers falls back to the default too
        value = default
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise CheckpointError(f"{path}: {key!r} must be a positive integer, found {value!r}; fix config.json")
    return value


def parse_config(cfg: dict, path: Path) -> ModelArgs:
    """Validate a config dict and map it onto ModelArgs."""
    archs = cfg.get("architectures") or [None]
    arch = archs[0]
    if arch not in ARCHITECTURES:
        raise ArchitectureError(
            f"{path}: architecture {arch!r} is not supported; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ArchitectureError(f"{path}: hidden_act {act!r} is not supported (only 'silu')")
    dim = _int(cfg, "hidden_size", path)
    n_heads = _int(cfg, "num_attention_heads", path)
    n_kv_heads = _int(cfg, "num_key_value_heads", path, default=n_heads)
    if n_heads % n_kv_heads:
        raise CheckpointError(
            f"{path}: num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv_heads}"
        )
    head_dim = cfg.get("head_dim") or dim // n_heads
    theta, scaling = rope_settings(cfg, path)
    return ModelArgs(
        arch=arch,
        vocab_size=_int(cfg, "vocab_size", path),
        dim=dim,
        n_layers=_int(cfg, "num_hidden_layers", path),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=int(head_dim),
        intermediate_size=_int(cfg, "intermediate_size", path),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=bool(cfg.get("attention_bias", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        max_position_embeddings=_int(cfg, "max_position_embeddings", path, default=4096),
    )

