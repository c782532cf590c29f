"""The model runtime reproduces transformers' logits on tiny random checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import answerdist
from tests import tiny

# (name, make_checkpoint kwargs): every switch the issue names, each at least once.
CASES = {
    "olmo2": dict(arch="olmo2"),
    "olmo2_gqa2_tied": dict(arch="olmo2", kv_heads=2, tied=True),
    "llama_gqa1": dict(arch="llama"),
    "llama3rope_gqa2_untied": dict(arch="llama", kv_heads=2, rope_scaling=tiny.LLAMA3_ROPE),
    "llama3rope_gqa4_tied_headdim": dict(arch="llama", kv_heads=1, tied=True, head_dim=32,
                                         rope_scaling=tiny.LLAMA3_ROPE),
}
SEQ_LEN = 160  # > original_max_position_embeddings (64): the llama3 scaling band matters


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    """(name, transformers model, checkpoint dir) for each architecture case."""
    directory = tmp_path_factory.mktemp(request.param)
    reference = tiny.make_checkpoint(directory, **CASES[request.param])
    return request.param, reference, directory


def token_ids(seed: int = 0, batch: int = 2, length: int = SEQ_LEN) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 301, (batch, length), generator=g)


def test_vocab_is_not_a_multiple_of_64():
    assert 301 % 64 != 0


def test_float32_logits_match_transformers(pair):
    name, reference, directory = pair
    ids = token_ids()
    with torch.no_grad():
        expected = reference(ids).logits.float()
    got = answerdist.load(directory).logits(ids)
    assert got.shape == expected.shape == (2, SEQ_LEN, 301)
    scale = expected.abs().max().item()
    assert scale > 1.0, "random logits should have a real spread"
    assert (got - expected).abs().max().item() <= 1e-5 * scale, name
    lp_diff = (got.log_softmax(-1) - expected.log_softmax(-1)).abs().max().item()
    assert lp_diff <= 1e-5, name


def test_transformers_4x_config_keys_give_the_same_logits(pair, tmp_path):
    name, _, directory = pair
    ids = token_ids(seed=1, length=96)
    new_style = answerdist.load(directory).logits(ids)
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    for f in directory.iterdir():
        (old_dir / f.name).write_bytes(f.read_bytes())
    tiny.to_transformers_4x_config(old_dir)
    cfg = json.loads((old_dir / "config.json").read_text())
    assert "rope_theta" in cfg and "rope_parameters" not in cfg
    assert torch.equal(answerdist.load(old_dir).logits(ids), new_style), name


def test_llama3_scaling_changes_the_logits(tmp_path):
    """Guards the test above: the scaling is not silently ignored."""
    ids = token_ids(seed=2, length=SEQ_LEN)
    tiny.make_checkpoint(tmp_path / "plain", arch="llama", kv_heads=2)
    tiny.make_checkpoint(tmp_path / "scaled", arch="llama", kv_heads=2,
                         rope_scaling=tiny.LLAMA3_ROPE)
    cfg = json.loads((tmp_path / "scaled" / "config.json").read_text())
    # same theta as "plain": only the scaling differs
    cfg["rope_parameters"]["rope_theta"] = 10000.0
    (tmp_path / "scaled" / "config.json").write_text(json.dumps(cfg))
    a = answerdist.load(tmp_path / "plain").logits(ids)
    b = answerdist.load(tmp_path / "scaled").logits(ids)
    assert (a - b).abs().max().item() > 1e-3


@pytest.mark.parametrize("arch", ["olmo2", "llama"])
def test_bfloat16_stays_close_to_the_float32_reference(arch, tmp_path):
    """Measured on a model with transformers' default init scale (0.02): bf16 log-probs stay
    within 0.02 of float32 (observed 0.006-0.007), and no worse than transformers' own bf16."""
    directory = tmp_path / arch
    reference = tiny.make_checkpoint(directory, arch=arch, kv_heads=2)
    cfg = json.loads((directory / "config.json").read_text())
    torch.manual_seed(3)  # re-initialise at the default scale: the 0.3 test init is chaotic in bf16
    with torch.no_grad():
        for p_name, p in reference.named_parameters():
            if "norm" not in p_name:
                p.normal_(0, 0.02)
    reference.save_pretrained(directory)
    assert json.loads((directory / "config.json").read_text())["vocab_size"] == cfg["vocab_size"]
    ids = token_ids(seed=4, length=128)
    with torch.no_grad():
        exact = reference(ids).logits.float().log_softmax(-1)
        theirs = reference.to(torch.bfloat16)(ids).logits.float().log_softmax(-1)
    ours = answerdist.load(directory, dtype="bfloat16").logits(ids).log_softmax(-1)
    ours_err = (ours - exact).abs().max().item()
    theirs_err = (theirs - exact).abs().max().item()
    print(f"{arch} bf16 max |logprob - float32|: ours {ours_err:.4f}, "
          f"transformers {theirs_err:.4f}")
    assert ours_err <= 0.02
    assert ours_err <= 1.5 * theirs_err + 1e-3


def test_checkpoint_object_interface(pair):
    name, reference, directory = pair
    ck = answerdist.load(directory)
    assert ck.config["vocab_size"] == ck.config.vocab_size == 301
    assert ck.args.arch == reference.config.architectures[0]
    assert ck.tokenizer.get_vocab_size() <= 301
    assert ck.logits(torch.tensor([[1, 2, 3]])).dtype == torch.float32
    assert ck.render_chat([{"role": "user", "content": "hi"}]).endswith("<|assistant|>\n")


def test_sharded_checkpoint_loads_identically(tmp_path):
    reference = tiny.make_checkpoint(tmp_path / "one", arch="llama", kv_heads=2)
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "sharded" / f).write_bytes((tmp_path / "one" / f).read_bytes())
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    ids = token_ids(seed=5, length=32)
    assert torch.equal(answerdist.load(tmp_path / "sharded").logits(ids),
                       answerdist.load(tmp_path / "one").logits(ids))


MEMORY_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch, answerdist
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    answerdist.load(sys.argv[2])               # warm-up: imports and one-time allocations
    open("/proc/self/clear_refs", "w").write("5")   # reset the peak (VmHWM) to the current RSS
    base = status("VmRSS")
    ck = answerdist.load(sys.argv[1])
    ck.logits(torch.tensor([[1, 2, 3]]))    # touch every layer's weights
    print((status("VmHWM") - base) / os.path.getsize(os.path.join(sys.argv[1], "model.safetensors")))
    """  # noqa: E501 (script text, kept as is)
)


def test_float32_load_peak_memory_is_under_1_3x_the_checkpoint(tmp_path):
    """Weights are memory-mapped and assigned, never copied: peak RSS growth < 1.3 S."""
    tiny.make_checkpoint(tmp_path / "warm", arch="llama")
    tiny.make_checkpoint(tmp_path / "big", arch="llama", vocab_size=8000, hidden=256, layers=8,
                         heads=4)
    size = (tmp_path / "big" / "model.safetensors").stat().st_size
    assert size > 20e6
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "big"), str(tmp_path / "warm")],
        capture_output=True, text=True, env=env, check=True,
    )
    ratio = float(out.stdout.strip().splitlines()[-1])
    print(f"peak RSS growth / checkpoint size = {ratio:.3f}")
    assert ratio < 1.3
