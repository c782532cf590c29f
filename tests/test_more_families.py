"""Mistral, OLMo 1, GPT-NeoX (Pythia), Phi-3, Gemma 2, Gemma 3 (text) and OLMoE against
transformers: logits, both config spellings, the scorer's chat and base modes, the switches each
family adds, chat templates, and the refusals."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

import answerdist
from answerdist.cli import score
from answerdist.engine.model import parallel as tensor_parallel
from answerdist.errors import ArchitectureError, CheckpointError, ParallelError
from answerdist.kernels.lm_head import soft_cap
from tests import tiny
from tests.test_families import (
    CONVERSATIONS,
    DELETE,
    ENV,
    ROOT,
    WINDOW,
    check_against_naive,
    check_float32_logits,
    edited_copy,
    token_ids,
    transformers_logits,
)

CLIP = 0.6  # below the largest q/k/v entries of the tiny OLMo 1 (init 0.3): clipping binds
LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0,
            "short_factor": [1.0 + i / 8 for i in range(8)],
            "long_factor": [2.0 + i / 4 for i in range(8)],
            "original_max_position_embeddings": 256}  # > SEQ_LEN: the short factors apply
HALF_ROTARY = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
GEMMA3_ROPES = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
MOE = dict(num_experts=6, num_experts_per_tok=2)
SMALL_CAPS = dict(attn_logit_softcapping=5.0, final_logit_softcapping=8.0)  # caps that bind

CASES = {
    "mistral_gqa2_window": dict(arch="mistral", kv_heads=2, sliding_window=WINDOW),
    "mistral_mha_tied_no_window": dict(arch="mistral", tied=True, sliding_window=None),
    "olmo1_mha_clip": dict(arch="olmo1", clip_qkv=CLIP),
    "olmo1_gqa2_tied_bias": dict(arch="olmo1", kv_heads=2, tied=True, attention_bias=True),
    "neox_parallel_untied": dict(arch="neox"),  # Pythia's rotary_pct 0.25
    "neox_sequential_tied_half_rotary": dict(arch="neox", tied=True, use_parallel_residual=False,
                                             rope_scaling=HALF_ROTARY),
    "phi3_gqa2_window_partial": dict(arch="phi3", kv_heads=2, sliding_window=WINDOW,
                                     rope_scaling=dict(HALF_ROTARY, partial_rotary_factor=0.75)),
    "phi3_mha_tied_longrope": dict(arch="phi3", tied=True, rope_scaling=LONGROPE,
                                   original_max_position_embeddings=256),
    "gemma2_gqa2_tied_small_caps": dict(arch="gemma2", kv_heads=2, tied=True, layers=4,
                                        sliding_window=WINDOW, query_pre_attn_scalar=24,
                                        **SMALL_CAPS),
    "gemma2_mha_untied_default_caps": dict(arch="gemma2", layers=3, sliding_window=WINDOW),
    "gemma3_gqa2_tied_linear": dict(arch="gemma3", kv_heads=2, tied=True, layers=6,
                                    sliding_window=WINDOW, query_pre_attn_scalar=24,
                                    rope_scaling=GEMMA3_ROPES),
    # transformers' Gemma 3 never applies attn_logit_softcapping; its final cap binds
    "gemma3_mha_untied_pattern2_caps": dict(arch="gemma3", layers=4, sliding_window=WINDOW,
                                            sliding_window_pattern=2, **SMALL_CAPS),
    "olmoe_gqa2_untied_top2": dict(arch="olmoe", kv_heads=2, **MOE),
    "olmoe_mha_tied_top3_normalized_clip": dict(arch="olmoe", tied=True, num_experts=5,
                                                num_experts_per_tok=3, norm_topk_prob=True,
                                                clip_qkv=CLIP),
}
ARCH_NAMES = {"mistral": "MistralForCausalLM", "olmo1": "OlmoForCausalLM",
              "neox": "GPTNeoXForCausalLM", "phi3": "Phi3ForCausalLM",
              "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM",
              "olmoe": "OlmoeForCausalLM"}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    reference = tiny.make_checkpoint(directory, add_bos=False, **CASES[request.param])
    return request.param, reference, directory


def max_diff(got: torch.Tensor, expected: torch.Tensor) -> float:
    return (got - expected).abs().max().item()


def test_float32_logits_match_transformers(pair):
    check_float32_logits(pair, ARCH_NAMES)


def test_bfloat16_is_as_close_to_float32_as_transformers_bfloat16(pair):
    """bf16 has no exact reference: the engine's bf16 logits stay as close to the float32 ones
    as transformers' own bf16 forward (measured: within 1.1x on every case; MoE routing flips
    make OLMoE's both about 1)."""
    from transformers import AutoModelForCausalLM

    name, reference, directory = pair
    ids = token_ids(seed=8, length=96)
    with torch.no_grad():
        exact = reference(ids).logits.float()
        theirs = AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.bfloat16, attn_implementation="eager",
            experts_implementation="eager").eval()(ids).logits.float()
    ours = answerdist.load(directory, dtype="bfloat16").logits(ids)
    assert max_diff(ours, exact) <= 2 * max_diff(theirs, exact) + 0.05, name


def to_4x(directory) -> None:
    """config.json as transformers 4.x wrote it; GPT-NeoX kept `rotary_pct` and
    `rotary_emb_base` at the top level, Phi-3 `partial_rotary_factor`."""
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    if cfg["architectures"] == ["GPTNeoXForCausalLM"]:
        rope = cfg.pop("rope_parameters")
        cfg["rotary_pct"] = rope["partial_rotary_factor"]
        cfg["rotary_emb_base"] = rope["rope_theta"]
        cfg["torch_dtype"] = cfg.pop("dtype")
        path.write_text(json.dumps(cfg))
        return
    ropes = cfg["rope_parameters"]
    if "sliding_attention" in ropes:  # Gemma 3 4.x: the local layers' theta at the top level
        cfg["rope_local_base_freq"] = ropes.pop("sliding_attention")["rope_theta"]
    fraction = ropes.pop("partial_rotary_factor", None)
    if fraction is not None:  # Phi-3 4.x: a top-level key
        cfg["partial_rotary_factor"] = fraction
    path.write_text(json.dumps(cfg))
    tiny.to_transformers_4x_config(directory)


def test_transformers_4x_config_keys_give_the_same_logits(pair, tmp_path):
    name, _, directory = pair
    ids = token_ids(seed=1, length=96)
    old = edited_copy(directory, tmp_path / "old")
    to_4x(old)
    assert "rope_parameters" not in json.loads((old / "config.json").read_text())
    assert torch.equal(answerdist.load(old).logits(ids),
                       answerdist.load(directory).logits(ids)), name


def test_plain_causal_path_matches(pair):
    """span_end None (training): torch's fused attention, its own summation order."""
    name, reference, directory = pair
    ids = token_ids(seed=2)
    with torch.no_grad():
        expected = reference(ids).logits.float()
    model = answerdist.load(directory).model
    with torch.no_grad():
        got = soft_cap((model.hidden_states(ids) @ model.output_weight.T).float(),
                       model.args.final_softcap)
    assert max_diff(got, expected) <= 1e-5 * expected.abs().max().item(), name


SWITCHES = {  # (case, config change that turns the family's switch off, ModelArgs check)
    "olmo1_clip": ("olmo1_mha_clip", dict(clip_qkv=None), lambda a: a.clip_qkv is None),
    "neox_parallel": ("neox_parallel_untied", dict(use_parallel_residual=False),
                      lambda a: a.residual == "pre"),
    "neox_rotary": ("neox_parallel_untied",
                    dict(rope_parameters=dict(HALF_ROTARY, partial_rotary_factor=1.0)),
                    lambda a: a.rotary_dim == a.head_dim),
    "mistral_window": ("mistral_gqa2_window", dict(sliding_window=None),
                       lambda a: a.sliding_window is None),
    "phi3_longrope": ("phi3_mha_tied_longrope", dict(rope_parameters={"rope_type": "default",
                                                                      "rope_theta": 10000.0}),
                      lambda a: a.rope_scaling is None),
    "gemma2_attention_cap": ("gemma2_gqa2_tied_small_caps", dict(attn_logit_softcapping=None),
                             lambda a: a.attn_softcap is None and a.final_softcap == 8.0),
    "gemma2_final_cap": ("gemma2_gqa2_tied_small_caps", dict(final_logit_softcapping=None),
                         lambda a: a.final_softcap is None and a.attn_softcap == 5.0),
    "gemma2_window": ("gemma2_gqa2_tied_small_caps",
                      dict(layer_types=["full_attention"] * 4), lambda a: a.sliding_window is None),
    "gemma3_linear_rope": ("gemma3_gqa2_tied_linear",
                           dict(rope_parameters=dict(GEMMA3_ROPES, full_attention={
                               "rope_type": "default", "rope_theta": 1e6})),
                           lambda a: a.rope_scaling is None),
    "olmoe_normalized": ("olmoe_mha_tied_top3_normalized_clip", dict(norm_topk_prob=False),
                         lambda a: not a.normalize_top_k),
    "olmoe_top_k": ("olmoe_gqa2_untied_top2", dict(num_experts_per_tok=1),
                    lambda a: a.experts_per_token == 1),
    "gemma3_local_theta": ("gemma3_gqa2_tied_linear",
                           dict(rope_parameters=dict(GEMMA3_ROPES, sliding_attention={
                               "rope_type": "default", "rope_theta": 1e6})),
                           lambda a: a.sliding_rope == (1e6, None)),
}


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_each_switch_changes_the_logits(switch, tmp_path):
    """Guards the logits test: each family switch is applied, so turning it off changes the
    logits, and transformers agrees on the edited checkpoint."""
    case, change, check = SWITCHES[switch]
    tiny.make_checkpoint(tmp_path / "on", add_bos=False, **CASES[case])
    off = edited_copy(tmp_path / "on", tmp_path / "off", **change)
    assert check(answerdist.load(off).args)
    ids = token_ids(seed=3)
    on_logits = answerdist.load(tmp_path / "on").logits(ids)
    off_logits = answerdist.load(off).logits(ids)
    assert max_diff(on_logits, off_logits) > 1e-3
    assert max_diff(off_logits, transformers_logits(off, ids)) <= 1e-5 * off_logits.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moe_grouped_path_equals_the_expert_loop(dtype, tmp_path):
    """The grouped-matmul path (CUDA's) against the per-expert loop (transformers' arithmetic),
    both run here on the CPU: one sort of the token-expert pairs, the same sums in the same
    order."""
    tiny.make_checkpoint(tmp_path, add_bos=False, **CASES["olmoe_mha_tied_top3_normalized_clip"])
    ck = answerdist.load(tmp_path, dtype=str(dtype).removeprefix("torch."))
    ids = token_ids(seed=7)
    moes = [layer.mlp for layer in ck.model.model.layers]
    logits = {}
    for grouped in (False, True):
        for moe in moes:
            moe.grouped = grouped
        logits[grouped] = ck.logits(ids)
    scale = logits[False].abs().max().item()
    tolerance = 1e-6 if dtype == torch.float32 else 2e-2  # bf16: one rounding of the products
    assert max_diff(logits[True], logits[False]) <= tolerance * scale
    assert all(m._stacked is not None for m in moes)  # the grouped path did run


def test_pythia_buffers_are_ignored(tmp_path):
    """Older Pythia checkpoints store each layer's causal-mask buffers beside the weights."""
    directory = tmp_path / "pythia"
    tiny.make_checkpoint(directory, add_bos=False, **CASES["neox_parallel_untied"])
    ids = token_ids(seed=4, length=40)
    before = answerdist.load(directory).logits(ids)
    state = load_file(directory / "model.safetensors")
    for layer in range(2):
        state[f"gpt_neox.layers.{layer}.attention.bias"] = torch.ones(1, 1, 8, 8, dtype=torch.bool)
        state[f"gpt_neox.layers.{layer}.attention.masked_bias"] = torch.tensor(-1e9)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    assert torch.equal(answerdist.load(directory).logits(ids), before)


# ---------------------------------------------------------------------------------- scoring

SCORING = {
    "mistral": dict(arch="mistral", kv_heads=2, sliding_window=16),
    "olmo1": dict(arch="olmo1", clip_qkv=0.25),
    "neox": dict(arch="neox", tied=True),
    "gemma2": dict(arch="gemma2", kv_heads=2, sliding_window=16, **SMALL_CAPS,
                   template=tiny.GEMMA_CHAT_TEMPLATE, added_tokens=tiny.GEMMA_TURN_TOKENS,
                   vocab_size=320),  # room for the turn tokens
    "gemma3": dict(arch="gemma3", kv_heads=1, layers=3, sliding_window=16,
                   sliding_window_pattern=3, rope_scaling=GEMMA3_ROPES,
                   template=tiny.GEMMA3_CHAT_TEMPLATE, added_tokens=tiny.GEMMA_TURN_TOKENS,
                   vocab_size=320),
    "olmoe": dict(arch="olmoe", kv_heads=2, **MOE),
    "phi3": dict(arch="phi3", kv_heads=1,
                 rope_scaling=dict(LONGROPE, partial_rotary_factor=0.5,
                                   short_factor=LONGROPE["short_factor"][:4],
                                   long_factor=LONGROPE["long_factor"][:4])),
}


@pytest.mark.parametrize("mode", ["base", "chat"])
@pytest.mark.parametrize("family", sorted(SCORING))
def test_scores_equal_the_naive_transformers_computation(family, mode, tmp_path):
    directory = tmp_path / family
    model = tiny.make_checkpoint(directory, add_bos=False, init=0.1, **SCORING[family])
    check_against_naive(family, directory, model, mode, tmp_path / "out", tasks="coin,card")


# -------------------------------------------------------------------------------- bad input


def error_of(exc_type, directory) -> str:
    with pytest.raises(exc_type) as info:
        answerdist.load(directory)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("refusals")
    for name in ("neox_parallel_untied", "phi3_mha_tied_longrope", "mistral_gqa2_window"):
        tiny.make_checkpoint(root / name, add_bos=False, hidden=32,
                             **dict(CASES[name], heads=2, kv_heads=2))
    return root


REFUSALS = {  # (checkpoint, config changes, error type, fragments of the message)
    "neox_gelu_new": ("neox_parallel_untied", dict(hidden_act="gelu_new"), ArchitectureError,
                      ("gelu_new", "only gelu")),
    "neox_odd_rotary": ("neox_parallel_untied",
                        dict(rope_parameters=dict(HALF_ROTARY, partial_rotary_factor=0.2)),
                        CheckpointError, ("partial_rotary_factor", "even")),
    "phi3_short_factor_length": ("phi3_mha_tied_longrope",
                                 dict(rope_parameters=dict(LONGROPE, short_factor=[1.0] * 3)),
                                 CheckpointError, ("short_factor", "3 entries")),
    "phi3_long_factor_missing": ("phi3_mha_tied_longrope",
                                 dict(rope_parameters={k: v for k, v in LONGROPE.items()
                                                       if k != "long_factor"}),
                                 CheckpointError, ("long_factor",)),
    "phi3_yarn": ("phi3_mha_tied_longrope", dict(rope_parameters={"rope_type": "yarn",
                                                                  "factor": 2.0}),
                  ArchitectureError, ("yarn", "supported: default, longrope")),
    "mistral_partial_rotary": ("mistral_gqa2_window",
                               dict(rope_parameters=dict(HALF_ROTARY)), ArchitectureError,
                               ("partial_rotary_factor", "MistralForCausalLM")),
    "mistral_llama3_rope": ("mistral_gqa2_window", dict(rope_parameters=tiny.LLAMA3_ROPE),
                            ArchitectureError, ("llama3", "supported: default")),
    "olmoe_top_k_above_experts": ("mistral_gqa2_window",
                                  dict(architectures=["OlmoeForCausalLM"], num_experts=2,
                                       num_experts_per_tok=3),
                                  CheckpointError, ("num_experts_per_tok=3", "num_experts=2")),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_are_one_line(checkpoints, tmp_path, case):
    name, changes, error, fragments = REFUSALS[case]
    message = error_of(error, edited_copy(checkpoints / name, tmp_path / case, **changes))
    assert all(f in message for f in fragments), message


def test_unsupported_architecture_lists_the_new_families(checkpoints, tmp_path):
    bad = edited_copy(checkpoints / "mistral_gqa2_window", tmp_path / "x",
                      architectures=["MixtralForCausalLM"])
    message = error_of(ArchitectureError, bad)
    assert all(name in message for name in ARCH_NAMES.values()), message


def test_mistral_window_defaults_to_4096_when_absent(checkpoints, tmp_path):
    """MistralConfig's default: a config without the key slides at 4096 on every layer."""
    args = answerdist.load(edited_copy(checkpoints / "mistral_gqa2_window", tmp_path / "w",
                                   sliding_window=DELETE)).args
    assert args.sliding_window == 4096 and set(args.layer_types) == {"sliding_attention"}


def test_tp_accepts_every_new_family_and_a_record_can_refuse_it(checkpoints, tmp_path,
                                                               monkeypatch):
    from answerdist.engine.model.families import FAMILIES

    for name in ("phi3_mha_tied_longrope", "neox_parallel_untied"):
        tensor_parallel.check_divides(answerdist.load(checkpoints / name).args, 2,
                                      checkpoints / "config.json")
    tiny.make_checkpoint(tmp_path, arch="olmoe", hidden=32, heads=2, kv_heads=2, **MOE)
    args = answerdist.load(tmp_path).args
    tensor_parallel.check_divides(args, 2, tmp_path / "config.json")
    monkeypatch.setitem(FAMILIES, args.arch, dataclasses.replace(
        args.family, tensor_parallel="its experts are not split"))
    with pytest.raises(ParallelError, match="OlmoeForCausalLM: its experts are not split; run"):
        tensor_parallel.check_divides(args, 2, tmp_path / "config.json")


def test_longrope_scores_only_within_the_original_context(checkpoints, tmp_path):
    """Past original_max_position_embeddings transformers switches the whole forward pass to
    the long factors; the engine scores with the short ones, so it refuses longer prompts."""
    short = edited_copy(checkpoints / "phi3_mha_tied_longrope", tmp_path / "short",
                        original_max_position_embeddings=8,
                        rope_parameters=dict(LONGROPE, original_max_position_embeddings=8))
    assert answerdist.load(short).args.context == 8
    result = subprocess.run([sys.executable, "-m", "answerdist", "score", str(short), "--tasks",
                             "coin",
                             "--mode", "base", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "context is 8" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- chat templates

GEMMA_TEMPLATES = {"gemma2": tiny.GEMMA_CHAT_TEMPLATE, "gemma3": tiny.GEMMA3_CHAT_TEMPLATE}
OTHER_TEMPLATES = {  # (family, template, its turn tokens, how a rendered prompt starts)
    "mistral": (tiny.MISTRAL_CHAT_TEMPLATE, ("[INST]", "[/INST]"), "<|bos|> [INST] "),
    "phi3": (tiny.PHI3_CHAT_TEMPLATE, ("<|user|>", "<|end|>"), "<|user|>\n"),
}


@pytest.mark.parametrize("name", sorted(OTHER_TEMPLATES))
def test_mistral_and_phi3_templates_render_as_transformers(name, tmp_path):
    """Mistral's [INST] turns carry BOS as template text; Phi-3's template has none (its
    tokenizer adds none either)."""
    from transformers import PreTrainedTokenizerFast

    template, tokens, start = OTHER_TEMPLATES[name]
    tiny.make_checkpoint(tmp_path, arch=name, hidden=32, heads=2, kv_heads=2, vocab_size=320,
                         template=template, added_tokens=tokens, add_bos=name == "mistral")
    ck = answerdist.load(tmp_path)
    hf = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    for messages in CONVERSATIONS:
        for generation_prompt in (True, False):
            theirs = hf.apply_chat_template(messages, tokenize=False,
                                            add_generation_prompt=generation_prompt)
            ours = ck.render_chat(messages, add_generation_prompt=generation_prompt)
            assert ours == theirs
            assert ours.startswith(start) or messages[0]["role"] == "system"
            assert (ck.encode(ours, add_special_tokens=False)
                    == hf(theirs, add_special_tokens=False).input_ids)


@pytest.mark.parametrize("name", sorted(GEMMA_TEMPLATES))
def test_gemma_templates_render_as_transformers(name, tmp_path):
    """`<start_of_turn>` turns with the `model` role, BOS as template text (so chat prompts are
    tokenized without adding it again, as apply_chat_template does); Gemma 2 has no system role
    and refuses one, Gemma 3 folds it into the first user turn."""
    from transformers import PreTrainedTokenizerFast

    tiny.make_checkpoint(tmp_path, arch=name, hidden=32, heads=2, kv_heads=2, vocab_size=320,
                         template=GEMMA_TEMPLATES[name], added_tokens=tiny.GEMMA_TURN_TOKENS)
    ck = answerdist.load(tmp_path)
    hf = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    for messages in CONVERSATIONS:
        if name == "gemma2" and messages[0]["role"] == "system":
            with pytest.raises(Exception, match="System role not supported"):
                hf.apply_chat_template(messages, tokenize=False)
            with pytest.raises(Exception, match="System role not supported"):
                ck.render_chat(messages)
            continue
        for generation_prompt in (True, False):
            theirs = hf.apply_chat_template(messages, tokenize=False,
                                            add_generation_prompt=generation_prompt)
            ours = ck.render_chat(messages, add_generation_prompt=generation_prompt)
            assert ours == theirs and ours.startswith("<|bos|><start_of_turn>user\n")
            ids = ck.encode(ours, add_special_tokens=False)
            assert ids == hf(theirs, add_special_tokens=False).input_ids
            assert ids.count(ck.tokenizer.token_to_id("<|bos|>")) == 1
    assert ck.encode("Heads")[0] == ck.tokenizer.token_to_id("<|bos|>")  # base mode adds BOS


def test_gemma3_multimodal_checkpoint_is_refused_in_one_line(checkpoints, tmp_path):
    bad = edited_copy(checkpoints / "mistral_gqa2_window", tmp_path / "mm",
                      architectures=["Gemma3ForConditionalGeneration"])
    message = error_of(ArchitectureError, bad)
    assert "multimodal" in message and "Gemma3ForCausalLM" in message, message


# ------------------------------------------------------------------- through the Triton kernels

CAPPED_TRITON_SCRIPT = """
import sys
import answerdist.kernels.lm_head as lm
import answerdist.kernels.tree_attention as ta
caps = set()
def recording(original):
    def call(*args, **kwargs):
        caps.add((original.__name__, kwargs.get("softcap"), kwargs.get("window")))
        return original(*args, **kwargs)
    return call
ta.tree_attention_triton = recording(ta.tree_attention_triton)
lm.lm_head_logprobs_triton = recording(lm.lm_head_logprobs_triton)
from answerdist.cli import score
code = score.main(sys.argv[1:])
assert caps >= {("tree_attention_triton", 5.0, 16), ("tree_attention_triton", 5.0, None),
                ("lm_head_logprobs_triton", 8.0, None)}, caps
sys.exit(code)
"""


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="with CUDA the kernel path is the default one")
def test_gemma2_scores_through_the_soft_capping_triton_kernels_equal_the_reference(tmp_path):
    """Gemma 2 end to end through the interpreted Triton kernels, with attention and final
    caps that bind, on sliding and full layers: the torch reference path's log-probs."""
    ckpt = tmp_path / "ckpt"
    tiny.make_checkpoint(ckpt, add_bos=False, init=0.1, **SCORING["gemma2"])
    args = [str(ckpt), "--tasks", "coin", "--batch-tokens", "256", "--label", "l"]
    assert score.main(args + ["--out", str(tmp_path / "reference")]) == 0
    env = dict(ENV, TRITON_INTERPRET="1", ENGINE_FORCE_TRITON="1")
    env.pop("ENGINE_FORCE_REFERENCE", None)
    result = subprocess.run([sys.executable, "-c", CAPPED_TRITON_SCRIPT, *args, "--out",
                             str(tmp_path / "kernels")],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    ref = pq.read_table(tmp_path / "reference" / "l" / "coin.parquet").to_pylist()
    got = pq.read_table(tmp_path / "kernels" / "l" / "coin.parquet").to_pylist()
    assert [(r["prompt_id"], r["answer"]) for r in ref] == [(r["prompt_id"], r["answer"])
                                                            for r in got]
    for a, b in zip(ref, got, strict=True):
        assert abs(a["logprob"] - b["logprob"]) <= 1e-5 * max(1.0, abs(a["logprob"])), (
            a["prompt_id"], a["answer"])
