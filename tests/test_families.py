"""OLMo 3, Qwen 2.5 and Qwen 3: logits, scoring and chat templates against transformers; the
refusals and the edge cases of their configs."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import answerdist
from answerdist.cli import score
from answerdist.engine.scoring.scorer import (
    PromptEncoder,
    boundary_mask,
    make_batches,
    score_task,
    task_sequences,
)
from answerdist.engine.tasks import load_tasks
from answerdist.engine.text.chat import ChatTemplate
from answerdist.errors import ArchitectureError, CheckpointError
from benchmarks.naive_scoring import boundary_ids, naive_logprobs
from tests import tiny

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
DELETE = object()  # edited_copy: remove the key

WINDOW = 24  # sliding window of the tiny windowed models: SEQ_LEN spans it several times
SEQ_LEN = 160  # > WINDOW and > YaRN's original context (64): both matter at these lengths
OLMO3 = dict(arch="olmo3", layers=4, sliding_window=WINDOW, rope_scaling=tiny.YARN_ROPE)
QWEN_WINDOW = dict(layers=3, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)

# (name, make_checkpoint kwargs): both kv-head layouts, tied and untied, each family's switches.
CASES = {
    "olmo3_mha_untied": dict(OLMO3),
    "olmo3_gqa2_tied_headdim32": dict(OLMO3, kv_heads=2, tied=True, head_dim=32),
    "qwen2_mha_untied": dict(arch="qwen2"),
    "qwen2_gqa2_tied_yarn": dict(arch="qwen2", kv_heads=2, tied=True, rope_scaling=tiny.YARN_ROPE),
    "qwen2_gqa4_window": dict(arch="qwen2", kv_heads=1, **QWEN_WINDOW),
    "qwen3_gqa2_untied": dict(arch="qwen3", kv_heads=2),
    "qwen3_mha_tied_bias_yarn_headdim32": dict(arch="qwen3", tied=True, attention_bias=True,
                                               head_dim=32, rope_scaling=tiny.YARN_ROPE),
    "qwen3_gqa2_window": dict(arch="qwen3", kv_heads=2, **QWEN_WINDOW),
}
ARCH_NAMES = {"olmo3": "Olmo3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    """(name, transformers model, checkpoint dir) for each case."""
    directory = tmp_path_factory.mktemp(request.param)
    reference = tiny.make_checkpoint(directory, add_bos=False, **CASES[request.param])
    return request.param, reference, directory


def token_ids(seed: int = 0, batch: int = 2, length: int = SEQ_LEN) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 301, (batch, length), generator=g)


def edited_copy(directory, destination, **changes):
    """A copy of a checkpoint with config.json keys changed (DELETE removes a key)."""
    shutil.copytree(directory, destination)
    path = destination / "config.json"
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        if value is DELETE:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))
    return destination


def transformers_logits(directory, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory,
                                                 attn_implementation="eager").float().eval()
    with torch.no_grad():
        return model(ids).logits.float()


# ----------------------------------------------------------------------------------- logits


def test_float32_logits_match_transformers(pair):
    check_float32_logits(pair, ARCH_NAMES)


def check_float32_logits(pair, arch_names: dict[str, str]) -> None:
    """The engine's float32 logits at SEQ_LEN tokens against transformers' (printed, for the
    record); `arch_names` maps a case's first word to its architecture."""
    name, reference, directory = pair
    ids = token_ids()
    with torch.no_grad():
        expected = reference(ids).logits.float()
    ck = answerdist.load(directory)
    assert ck.args.arch == arch_names[name.split("_")[0]]
    got = ck.logits(ids)
    assert got.shape == expected.shape == (2, SEQ_LEN, 301)
    scale = expected.abs().max().item()
    assert scale > 1.0, "random logits should have a real spread"
    diff = (got - expected).abs().max().item()
    print(f"{name}: max |dlogit| = {diff:.3e} (max |logit| {scale:.2f}, "
          f"bitwise {torch.equal(got, expected)})")
    assert diff <= 1e-6 * scale, name  # float32 rounding (measured: bitwise equal on this CPU)
    assert (got.log_softmax(-1) - expected.log_softmax(-1)).abs().max().item() <= 1e-5, name


def test_transformers_4x_config_keys_give_the_same_logits(pair, tmp_path):
    name, _, directory = pair
    ids = token_ids(seed=1, length=96)
    old_dir = edited_copy(directory, tmp_path / "old")
    tiny.to_transformers_4x_config(old_dir)
    cfg = json.loads((old_dir / "config.json").read_text())
    assert "rope_theta" in cfg and "rope_parameters" not in cfg
    assert torch.equal(answerdist.load(old_dir).logits(ids),
                       answerdist.load(directory).logits(ids)), name


def test_plain_causal_path_applies_the_window(pair):
    """span_end None (training) runs torch's fused attention with an explicit window mask: its
    own summation order, so agreement is to ~1e-6 of the logits' scale (measured up to 2.4e-6),
    not bitwise."""
    name, reference, directory = pair
    ids = token_ids(seed=2)
    with torch.no_grad():
        expected = reference(ids).logits.float()
    model = answerdist.load(directory).model
    with torch.no_grad():
        got = (model.hidden_states(ids) @ model.output_weight.T).float()
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item(), name


@pytest.mark.parametrize("case", ["olmo3_mha_untied", "qwen3_gqa2_window"])
def test_the_window_changes_the_logits(case, tmp_path):
    """Guards the tests above: the window is applied, so removing it changes the logits; and
    OLMo 3's sliding layers use the unscaled RoPE (transformers agrees on the edited model)."""
    directory = tmp_path / case
    tiny.make_checkpoint(directory, add_bos=False, **CASES[case])
    ids = token_ids(seed=3)
    windowed = answerdist.load(directory).logits(ids)
    full = edited_copy(directory, tmp_path / "full",
                       layer_types=["full_attention"] * CASES[case]["layers"])
    no_window = answerdist.load(full).logits(ids)
    assert (windowed - no_window).abs().max().item() > 1e-3
    assert ((no_window - transformers_logits(full, ids)).abs().max().item()
            <= 1e-5 * no_window.abs().max().item())


def test_yarn_changes_the_logits_of_full_attention_layers_only(tmp_path):
    tiny.make_checkpoint(tmp_path / "yarn", add_bos=False, **CASES["olmo3_mha_untied"])
    cfg = json.loads((tmp_path / "yarn" / "config.json").read_text())
    ropes = cfg["rope_parameters"]
    assert (ropes["full_attention"]["rope_type"] == "yarn"
            and ropes["sliding_attention"]["rope_type"] == "default")
    args = answerdist.load(tmp_path / "yarn").args
    assert args.rope_scaling["rope_type"] == "yarn" and args.sliding_rope[1] is None
    plain = dict(ropes, full_attention={"rope_type": "default",
                                        "rope_theta": ropes["full_attention"]["rope_theta"]})
    edited_copy(tmp_path / "yarn", tmp_path / "plain", rope_parameters=plain)
    ids = token_ids(seed=4)
    a = answerdist.load(tmp_path / "yarn").logits(ids)
    b = answerdist.load(tmp_path / "plain").logits(ids)
    assert (a - b).abs().max().item() > 1e-3
    assert ((b - transformers_logits(tmp_path / "plain", ids)).abs().max().item()
            <= 1e-5 * b.abs().max().item())


# ---------------------------------------------------------------------------------- scoring

SCORING_TASKS = "coin,card"  # one-token and multi-token answers (a trie with shared prefixes)
SCORING_WINDOW = 16
SCORING = {  # init 0.1: logits of a realistic size, as in tests/test_scorer.py
    "olmo3": dict(arch="olmo3", layers=4, kv_heads=2, sliding_window=SCORING_WINDOW,
                  rope_scaling=tiny.YARN_ROPE, template=tiny.OLMO3_CHAT_TEMPLATE),
    "qwen2": dict(arch="qwen2", kv_heads=2, tied=True, use_sliding_window=True,
                  sliding_window=SCORING_WINDOW, max_window_layers=1,
                  template=tiny.QWEN25_CHAT_TEMPLATE),
    "qwen3": dict(arch="qwen3", kv_heads=1, template=tiny.QWEN3_CHAT_TEMPLATE,
                  added_tokens=tiny.THINK_TOKENS,
                  vocab_size=320),  # room for the think tokens: Qwen pads its vocabulary too
}


@pytest.fixture(scope="module", params=sorted(SCORING))
def scoring_dir(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"score_{request.param}")
    model = tiny.make_checkpoint(directory, add_bos=False, init=0.1, **SCORING[request.param])
    return request.param, directory, model


@pytest.mark.parametrize("mode", ["base", "chat"])
def test_scores_equal_the_naive_transformers_computation(scoring_dir, mode, tmp_path):
    family, directory, hf_model = scoring_dir
    shortest = check_against_naive(family, directory, hf_model, mode, tmp_path)
    if family != "qwen3":
        assert shortest > SCORING_WINDOW  # every prompt is longer than the window: it matters


def check_against_naive(family, directory, hf_model, mode, out, tasks=SCORING_TASKS) -> int:
    """Score `tasks` with answerdist.cli.score and compare every fourth prompt's log-probs with a
    full transformers forward per answer; returns the shortest prompt's length in tokens."""
    from transformers import PreTrainedTokenizerFast

    assert score.main([str(directory), "--tasks", tasks, "--mode", mode, "--out",
                       str(out), "--label", "x"]) == 0
    hf_tok = PreTrainedTokenizerFast.from_pretrained(str(directory))
    boundary = boundary_ids(hf_tok, hf_model.config.vocab_size)
    worst, shortest = 0.0, math.inf
    for task in load_tasks(tasks):
        rows = pq.read_table(out / "x" / f"{task.name}.parquet").to_pylist()
        variants = pq.read_table(out / "x" / "variants" / f"{task.name}.parquet").to_pylist()
        for prompt in task.prompts[::4]:  # every fourth prompt: the naive side is slow
            mine = [r for r in rows if r["prompt_id"] == prompt.id]
            text = mine[0]["prompt_text"]
            shortest = min(shortest, len(hf_tok(text, add_special_tokens=mode == "base").input_ids))
            if mode == "chat" and family == "qwen3":  # thinking disabled: an empty think block
                assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
            vrows = [v for v in variants if v["prompt_id"] == prompt.id]
            naive = naive_logprobs(hf_model, hf_tok, text, [v["continuation"] for v in vrows],
                                   mode == "base", boundary)
            worst = max(worst, max(abs(n - v["logprob"]) / max(1.0, abs(n))
                                   for n, v in zip(naive, vrows, strict=True)))
            for r in mine:
                expected = np.logaddexp.reduce([n for n, v in zip(naive, vrows, strict=True)
                                                if v["answer"] == r["answer"]])
                # float32 rounding: relative 1e-6 of |logprob| (absolute near 0), as
                # tests/test_scorer.py
                assert abs(r["logprob"] - expected) <= 1e-6 * max(1.0, abs(expected)), (
                    task.name, prompt.id, r["answer"])
    print(f"{family} {mode}: max |logprob - naive| / max(1, |logprob|) = {worst:.2e}, "
          f"shortest prompt {shortest} tokens")
    return shortest


def test_packed_rows_keep_windows_per_sequence(scoring_dir):
    """Packed rows (the CUDA path) hold several prompts end to end: each keeps its own positions,
    so the window counts within its sequence and results equal one sequence per pass."""
    family, directory, _ = scoring_dir
    ck = answerdist.load(directory)
    encoder = PromptEncoder(ck, "chat")
    task = load_tasks("card")[0]
    sequences = task_sequences(encoder, task)
    boundary = boundary_mask(ck)
    alone = score_task(ck, encoder, task, sequences, boundary, pack=False)
    packed = score_task(ck, encoder, task, sequences, boundary, batch_tokens=2048, pack=True)
    assert len(make_batches(sequences, 2048)) < len(sequences)  # several prompts per row
    for a, b in zip(alone.prompts, packed.prompts, strict=True):
        assert (np.abs(a.variant_logprob - b.variant_logprob).max()
                <= 1e-6 * np.abs(a.variant_logprob).max())


TRITON_SCRIPT = """
import sys
import answerdist.kernels.tree_attention as ta
windows = []
original = ta.tree_attention_triton
def counted(*args, **kwargs):
    windows.append(kwargs.get("window"))
    return original(*args, **kwargs)
ta.tree_attention_triton = counted
from answerdist.cli import score
code = score.main(sys.argv[1:])
assert SCORING_WINDOW in windows and None in windows, windows
sys.exit(code)
""".replace("SCORING_WINDOW", str(SCORING_WINDOW))


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="with CUDA the kernel path is the default one")
def test_olmo3_scores_through_the_triton_kernels_equal_the_reference(tmp_path):
    """OLMo 3 end to end through the interpreted Triton kernels (packed rows, sliding and full
    layers): the same log-probs as the torch reference path."""
    ckpt = tmp_path / "ckpt"
    tiny.make_checkpoint(ckpt, add_bos=False, init=0.1, hidden=32, heads=2,
                         **dict(SCORING["olmo3"]))
    args = [str(ckpt), "--tasks", "coin", "--mode", "base", "--batch-tokens", "256", "--label", "l"]
    assert score.main(args + ["--out", str(tmp_path / "reference")]) == 0
    env = dict(ENV, TRITON_INTERPRET="1", ENGINE_FORCE_TRITON="1")
    env.pop("ENGINE_FORCE_REFERENCE", None)
    result = subprocess.run([sys.executable, "-c", TRITON_SCRIPT, *args, "--out",
                             str(tmp_path / "kernels")],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    ref = pq.read_table(tmp_path / "reference" / "l" / "coin.parquet").to_pylist()
    got = pq.read_table(tmp_path / "kernels" / "l" / "coin.parquet").to_pylist()
    assert ([(r["prompt_id"], r["answer"]) for r in ref]
            == [(r["prompt_id"], r["answer"]) for r in got])
    for a, b in zip(ref, got, strict=True):
        assert abs(a["logprob"] - b["logprob"]) <= 1e-5 * max(1.0, abs(a["logprob"])), (
            a["prompt_id"], a["answer"])


# ---------------------------------------------------------------------------- chat templates

CONVERSATIONS = [
    [{"role": "user", "content": "Pick a random number between 1 and 10."}],
    [{"role": "system", "content": "You are a pirate."},
     {"role": "user", "content": "Flip a coin!"}],
    [
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "<think>\nThe user wants a color.\n</think>\n\nBlue"},
        {"role": "user", "content": "Another one, please."},
        {"role": "assistant", "content": "<think>\nNot blue again.\n</think>\n\nRed"},
    ],
]
TEMPLATES = {"olmo3": tiny.OLMO3_CHAT_TEMPLATE, "qwen25": tiny.QWEN25_CHAT_TEMPLATE,
             "qwen3": tiny.QWEN3_CHAT_TEMPLATE}


@pytest.fixture(scope="module")
def template_dirs(tmp_path_factory):
    dirs = {}
    for name, template in TEMPLATES.items():
        dirs[name] = tmp_path_factory.mktemp(name)
        tiny.make_checkpoint(dirs[name], arch="qwen3", template=template, add_bos=False, hidden=32,
                             heads=2, kv_heads=2, added_tokens=tiny.THINK_TOKENS, vocab_size=320)
    return dirs


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_family_templates_render_as_transformers(template_dirs, name, generation_prompt):
    from transformers import PreTrainedTokenizerFast

    ck = answerdist.load(template_dirs[name])
    hf = PreTrainedTokenizerFast.from_pretrained(str(template_dirs[name]))
    for messages in CONVERSATIONS:
        theirs = hf.apply_chat_template(messages, tokenize=False,
                                        add_generation_prompt=generation_prompt,
                                        enable_thinking=False)
        ours = ck.render_chat(messages, add_generation_prompt=generation_prompt)
        assert ours == theirs
        assert (ck.encode(ours, add_special_tokens=False)
                == hf(theirs, add_special_tokens=False).input_ids)
        thinking = hf.apply_chat_template(messages, tokenize=False,
                                          add_generation_prompt=generation_prompt,
                                          enable_thinking=True)
        assert ck.render_chat(messages, add_generation_prompt=generation_prompt,
                              enable_thinking=True) == thinking


def test_thinking_is_disabled_by_default_and_switchable(template_dirs):
    question = CONVERSATIONS[0]
    qwen3 = answerdist.load(template_dirs["qwen3"])
    assert qwen3.chat_template.uses_thinking_switch and not qwen3.chat_template.enable_thinking
    assert qwen3.render_chat(question).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert qwen3.render_chat(question, enable_thinking=True).endswith("<|im_start|>assistant\n")
    on = ChatTemplate("qwen3", tiny.QWEN3_CHAT_TEMPLATE, qwen3.special_tokens, enable_thinking=True)
    assert on.render(question) == qwen3.render_chat(question, enable_thinking=True)
    assert PromptEncoder(qwen3, "chat", on).prompt_text(*_first_prompt()).endswith(
        "<|im_start|>assistant\n")
    assert PromptEncoder(qwen3, "chat").prompt_text(*_first_prompt()).endswith("</think>\n\n")
    for name in ("olmo3", "qwen25"):
        template = answerdist.load(template_dirs[name]).chat_template
        assert not template.uses_thinking_switch
        assert template.render(question) == template.render(question, enable_thinking=True)
    assert "<think>" in qwen3.tokenizer.get_vocab()  # one token, as in Qwen 3's vocabulary


def _first_prompt():
    task = load_tasks("coin")[0]
    return task, task.prompts[0]


# -------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    directory = tmp_path_factory.mktemp("good_olmo3")
    tiny.make_checkpoint(directory, add_bos=False, hidden=32, heads=2, kv_heads=2, **OLMO3)
    return directory


def error_of(exc_type, directory) -> str:
    with pytest.raises(exc_type) as info:
        answerdist.load(directory)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


def test_unsupported_architecture_names_the_supported_ones(good, tmp_path):
    bad = edited_copy(good, tmp_path / "moe", architectures=["Qwen3MoeForCausalLM"])
    message = error_of(ArchitectureError, bad)
    assert "Qwen3MoeForCausalLM" in message
    for name in ("LlamaForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM", "Qwen2ForCausalLM",
                 "Qwen3ForCausalLM"):
        assert name in message


ROPE_EDITS = {  # (config changes, rope type named in the error)
    "olmo3_nested_dynamic": (dict(rope_parameters={"full_attention": {"rope_type": "dynamic",
                                                                      "factor": 2.0},
                                                   "sliding_attention": {"rope_type": "default"}}),
                             "dynamic"),
    "olmo3_4x_linear": (dict(rope_parameters=DELETE, rope_theta=500000.0,
                             rope_scaling={"type": "linear", "factor": 2.0}), "linear"),
    "qwen_longrope": (dict(architectures=["Qwen2ForCausalLM"], layer_types=DELETE,
                           sliding_window=DELETE,
                           rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0}),
                      "longrope"),
}


@pytest.mark.parametrize("edit", sorted(ROPE_EDITS))
def test_unsupported_rope_type(good, tmp_path, edit):
    changes, rope_type = ROPE_EDITS[edit]
    message = error_of(ArchitectureError, edited_copy(good, tmp_path / edit, **changes))
    assert rope_type in message and "supported: default, yarn" in message


ROPE_VALUE_EDITS = {  # (config changes, setting named in the error)
    "yarn_factor_string": (dict(rope_parameters={"full_attention": dict(tiny.YARN_ROPE,
                                                                        factor="16"),
                                                 "sliding_attention": {"rope_type": "default"}}),
                           "factor"),
    "theta_negative": (dict(rope_parameters={"full_attention": {"rope_type": "default",
                                                                "rope_theta": -1.0},
                                             "sliding_attention": {"rope_type": "default"}}),
                       "rope_theta"),
    "yarn_without_factor": (dict(rope_parameters={"full_attention": {"rope_type": "yarn"}}),
                            "factor"),
}


@pytest.mark.parametrize("edit", sorted(ROPE_VALUE_EDITS))
def test_bad_rope_values(good, tmp_path, edit):
    changes, key = ROPE_VALUE_EDITS[edit]
    message = error_of(CheckpointError, edited_copy(good, tmp_path / edit, **changes))
    assert "config.json" in message and key in message


WINDOW_EDITS = {
    "null_window": dict(sliding_window=None),
    "zero_window": dict(sliding_window=0),
    "layer_types_too_short": dict(layer_types=["full_attention"]),
    "unknown_layer_type": dict(layer_types=["chunked_attention"] * 4),
    "layer_types_not_names": dict(layer_types=[{"type": "full_attention"}] * 4),
    "qwen_sliding_layers_but_window_off": dict(architectures=["Qwen3ForCausalLM"],
                                               use_sliding_window=False,
                                               rope_parameters={"rope_type": "default",
                                                                "rope_theta": 1e4}),
}


@pytest.mark.parametrize("edit", sorted(WINDOW_EDITS))
def test_bad_window_settings(good, tmp_path, edit):
    message = error_of(CheckpointError, edited_copy(good, tmp_path / edit, **WINDOW_EDITS[edit]))
    assert "config.json" in message and ("sliding_window" in message or "layer_types" in message)


@pytest.mark.parametrize("family", ["olmo3", "qwen2"])
def test_window_larger_than_max_positions_is_legal(family, tmp_path):
    """transformers accepts a window wider than the context (real Qwen 2.5 configs carry
    sliding_window 131072 with max_position_embeddings 32768): the window never binds inside
    the context, here as there."""
    kwargs = dict(CASES["olmo3_mha_untied"] if family == "olmo3" else CASES["qwen2_gqa4_window"])
    kwargs["sliding_window"] = 4096  # > max_position_embeddings = 1024
    directory = tmp_path / family
    reference = tiny.make_checkpoint(directory, add_bos=False, **kwargs)
    ck = answerdist.load(directory)
    assert ck.args.sliding_window == 4096 > ck.args.max_position_embeddings
    ids = token_ids(seed=5)
    with torch.no_grad():
        expected = reference(ids).logits.float()
    got = ck.logits(ids)
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    just_wide_enough = edited_copy(directory, tmp_path / "wide", sliding_window=SEQ_LEN)
    assert torch.equal(answerdist.load(just_wide_enough).logits(ids), got)


def test_qwen25_style_window_off_with_a_wide_window_loads(tmp_path):
    """use_sliding_window false: no window at all, whatever sliding_window says."""
    reference = tiny.make_checkpoint(tmp_path / "q", arch="qwen2", add_bos=False,
                                     use_sliding_window=False, sliding_window=131072,
                                     max_window_layers=1)
    args = answerdist.load(tmp_path / "q").args
    assert args.sliding_window is None and set(args.layer_types) == {"full_attention"}
    ids = token_ids(seed=6, length=48)
    with torch.no_grad():
        expected = reference(ids).logits.float()
    assert ((answerdist.load(tmp_path / "q").logits(ids) - expected).abs().max().item()
            <= 1e-5 * expected.abs().max().item())


CLI_CASES = {
    "architecture": (dict(architectures=["Qwen3MoeForCausalLM"]),
                     ("Qwen3MoeForCausalLM", "Olmo3ForCausalLM")),
    "rope": (dict(rope_parameters={"full_attention": {"rope_type": "dynamic", "factor": 2.0}}),
             ("dynamic",)),
    "window": (dict(sliding_window=-8), ("sliding_window", "-8")),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_exits_2_with_one_line_and_writes_nothing(good, tmp_path, case):
    changes, fragments = CLI_CASES[case]
    bad = edited_copy(good, tmp_path / "bad", **changes)
    result = subprocess.run([sys.executable, "-m", "answerdist", "score", str(bad), "--tasks",
                             "coin",
                             "--out", str(tmp_path / "out")], capture_output=True, text=True,
                            env=ENV, timeout=300, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(f in lines[0] for f in fragments), lines[0]
    assert not (tmp_path / "out").exists()
