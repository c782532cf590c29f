"""Fuzzing config.json, sweep files and the API's arguments: each either works or is refused
with one EngineError line; never a traceback, never a hang, never a file written."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import answerdist
from answerdist.engine.run import sweep
from answerdist.errors import EngineError
from tests.budget import budget

# JSON values of every type, small and hostile (huge, negative, nested, empty, non-finite).
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.sampled_from(
        [0, 1, 2, 16, -16, 10**9, 1e-6, 0.5, "", "sixteen", "tiny", "silu", "yarn", "llama3",
         "Olmo2ForCausalLM", "LlamaForCausalLM", "full_attention", "sliding_attention"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["rope_type", "factor", "rope_theta", "full_attention", "type"]), children,
        max_size=3),
    max_leaves=6)
CONFIG_KEYS = ["architectures", "hidden_size", "num_attention_heads", "num_key_value_heads",
               "head_dim", "num_hidden_layers", "intermediate_size", "vocab_size", "rms_norm_eps",
               "rope_theta", "rope_scaling", "rope_parameters", "tie_word_embeddings",
               "attention_bias", "mlp_bias", "max_position_embeddings", "hidden_act",
               "layer_types", "sliding_window", "use_sliding_window", "max_window_layers",
               "dtype", "torch_dtype"]
FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint(arch="olmo2", hidden=32, heads=2, kv_heads=2, init=0.1)


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(CONFIG_KEYS), VALUES, min_size=1, max_size=3))
def test_any_config_loads_or_is_one_line(ckpt, changes):
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(shutil.copytree(ckpt, Path(tmp) / "c"))
        config = json.loads((bad / "config.json").read_text())
        config.update(changes)
        (bad / "config.json").write_text(json.dumps(config))
        with budget(changes):
            try:
                answerdist.load(bad)
            except EngineError as e:
                assert "\n" not in str(e) and len(str(e)) < 1000, str(e)


SWEEP_KEYS = ["checkpoints", "tasks", "modes", "dtype", "device", "out", "label", "tp",
              "batch_tokens", "chat_template", "tokenizations", "max_tokenizations",
              "dist_timeout", "batch_invariant", "template_date", "template_timeout",
              "template_max_chars", "mode", "nonsense"]
TOML_VALUES = st.one_of(
    st.booleans(), st.integers(-5, 10**6), st.sampled_from(
        ['"all"', '"coin,die"', '"x.toml"', '"base"', '"chat"', '"auto"', '"CHAT"', '"{name}"',
         '"{name}-{mode}"', '"{name:a>100000}"', '"{step}"', '"float32"', '"float16"', '"cpu"',
         '"gpu"', '"2024-02-30"', '"2024-07-26"', '"../out"', '""', '"."', '".lock"']),
    st.lists(st.sampled_from(['"coin"', '"base"', '"chat"', '"x.toml"', '"ckpt"', "1"]),
             max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"))


@FUZZ
@given(entries=st.dictionaries(st.sampled_from(SWEEP_KEYS), TOML_VALUES, max_size=5))
def test_any_sweep_file_is_read_or_is_one_line(entries):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "ckpt").mkdir()
        lines = [f"{key} = {value}" if isinstance(value, str) else
                 f"{key} = {json.dumps(value)}" for key, value in entries.items()]
        path = root / "s.toml"
        path.write_text("\n".join(lines) + "\n")
        with budget(entries):
            try:
                loaded = sweep.load_sweep(path)
                sweep.expand(loaded)
            except EngineError as e:
                assert "\n" not in str(e) and len(str(e)) < 1000, str(e)
        assert sorted(p.name for p in root.iterdir()) == ["ckpt", "s.toml"]


API_ARGUMENTS = {
    "tasks": st.sampled_from([123, None, [], ["coin"], "dice", 1.5]),
    "mode": st.sampled_from(["CHAT", "", None, 1, "auto "]),
    "dtype": st.sampled_from(["float16", "float64", 32, "auto"]),
    "device": st.sampled_from(["gpu", 0, "cuda:x", "mps", None]),
    "label": st.sampled_from([123, "", "a/b", ".x", "x" * 300, "..", "ok"]),
    "batch_tokens": st.sampled_from(["8192", 0, -1, 1.5, True]),
    "tp": st.sampled_from(["2", 0, True, 2.0]),
    "tokenizations": st.sampled_from(["some", None, 1]),
    "max_tokenizations": st.sampled_from([0, "5", None]),
    "overwrite": st.sampled_from(["yes", 1, None]),
    "template_date": st.sampled_from(["today", "2024-13-01", 20240726]),
}


@FUZZ
@given(arguments=st.fixed_dictionaries({}, optional=API_ARGUMENTS))
def test_api_arguments_are_checked_before_anything_is_read(arguments, tmp_path):
    try:
        with budget(arguments):
            answerdist.score_checkpoint(tmp_path / "no-such-checkpoint", **arguments)
    except EngineError as e:
        assert "\n" not in str(e), str(e)
    else:
        pytest.fail("a missing checkpoint was scored")
    assert list(tmp_path.iterdir()) == []
