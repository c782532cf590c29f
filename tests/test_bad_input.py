"""Every user-caused failure of loading is a dedicated error with one line naming file and fix."""

from __future__ import annotations

import json
import shutil

import pytest

import answerdist
from answerdist.errors import (
    ArchitectureError,
    ChatTemplateError,
    CheckpointError,
    DeviceError,
    TokenizerError,
    WeightsError,
)
from tests import tiny


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    directory = tmp_path_factory.mktemp("good")
    tiny.make_checkpoint(directory, arch="llama", kv_heads=2, hidden=32, heads=2, vocab_size=301)
    return directory


@pytest.fixture
def ckpt(good, tmp_path):
    """A fresh copy of a good checkpoint, for each test to break."""
    directory = tmp_path / "ckpt"
    shutil.copytree(good, directory)
    return directory


def error_of(exc_type, directory, **kwargs) -> str:
    with pytest.raises(exc_type) as info:
        answerdist.load(directory, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


def edit_config(directory, **changes):
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_missing_directory(tmp_path):
    assert "not found" in error_of(CheckpointError, tmp_path / "nope")


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    assert "config.json" in error_of(CheckpointError, ckpt)


def test_unreadable_config(ckpt):
    (ckpt / "config.json").write_text("{ not json")
    assert "config.json" in error_of(CheckpointError, ckpt)


def test_missing_tokenizer(ckpt):
    (ckpt / "tokenizer.json").unlink()
    assert "tokenizer.json" in error_of(TokenizerError, ckpt)


def test_corrupt_tokenizer(ckpt):
    (ckpt / "tokenizer.json").write_text('{"model": 42}')
    assert "tokenizer.json" in error_of(TokenizerError, ckpt)


def test_truncated_safetensors(ckpt):
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = error_of(WeightsError, ckpt)
    assert "model.safetensors" in message and "truncated" in message


def test_corrupt_safetensors_header(ckpt):
    path = ckpt / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:16] = b"garbage!"
    path.write_bytes(bytes(data))
    assert "model.safetensors" in error_of(WeightsError, ckpt)


def test_missing_tensor_is_named(ckpt):
    from safetensors.torch import load_file, save_file

    path = ckpt / "model.safetensors"
    tensors = load_file(path)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, path, metadata={"format": "pt"})
    assert "model.layers.1.mlp.up_proj.weight" in error_of(WeightsError, ckpt)


def test_wrong_shape_is_named(ckpt):
    edit_config(ckpt, intermediate_size=100)
    message = error_of(WeightsError, ckpt)
    assert "mlp" in message and "96" in message and "100" in message


def test_unexpected_tensor_is_named(ckpt):
    from safetensors.torch import load_file, save_file

    path = ckpt / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.0.self_attn.q_proj.bias"] = tensors["model.norm.weight"].clone()
    save_file(tensors, path, metadata={"format": "pt"})
    assert "q_proj.bias" in error_of(WeightsError, ckpt)


def test_null_keys_take_transformers_defaults(ckpt):
    """num_key_value_heads / head_dim null mean "as many kv heads as heads" and
    hidden_size // heads, as in transformers (this checkpoint has 2 of 2, head_dim 16)."""
    import torch

    ids = torch.tensor([[1, 2, 3, 4]])
    before = answerdist.load(ckpt).logits(ids)
    edit_config(ckpt, num_key_value_heads=None, head_dim=None)
    assert torch.equal(answerdist.load(ckpt).logits(ids), before)


def test_non_integer_size_is_named(ckpt):
    edit_config(ckpt, hidden_size="32")
    assert "hidden_size" in error_of(CheckpointError, ckpt)


def test_tokenizer_larger_than_the_vocabulary(ckpt):
    from tests.tiny import train_tokenizer

    train_tokenizer(vocab_size=400).save(str(ckpt / "tokenizer.json"))
    assert "vocab_size=301" in error_of(TokenizerError, ckpt)


def test_unsupported_architecture_lists_supported(ckpt):
    edit_config(ckpt, architectures=["FalconForCausalLM"])
    message = error_of(ArchitectureError, ckpt)
    assert ("FalconForCausalLM" in message and "LlamaForCausalLM" in message
            and "Olmo2ForCausalLM" in message and "MistralForCausalLM" in message)


def test_unsupported_rope_type(ckpt):
    edit_config(ckpt, rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0})
    assert "yarn" in error_of(ArchitectureError, ckpt)


def test_pickle_checkpoints_are_refused(ckpt):
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    message = error_of(CheckpointError, ckpt)
    assert ("pytorch_model.bin" in message and "arbitrary code" in message
            and "safetensors" in message)


def test_cuda_requested_without_cuda(ckpt):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the error case cannot happen")
    assert "CUDA" in error_of(DeviceError, ckpt, device="cuda")


@pytest.mark.parametrize("key", ["dtype", "torch_dtype"])
def test_auto_dtype_follows_the_saved_dtype(ckpt, key):
    import torch

    assert answerdist.load(ckpt, dtype="auto").dtype == torch.float32
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.pop("dtype", None)
    cfg[key] = "bfloat16"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    assert answerdist.load(ckpt, dtype="auto").dtype == torch.bfloat16


def test_unknown_dtype(ckpt):
    assert "float64" in error_of(DeviceError, ckpt, dtype="float64")


def test_bad_template_syntax_fails_at_load(ckpt):
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{% if %}"
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert "tokenizer_config.json" in error_of(ChatTemplateError, ckpt)


def test_all_errors_are_engine_errors():
    for exc in (CheckpointError, WeightsError, ArchitectureError, TokenizerError, DeviceError,
                ChatTemplateError):
        assert issubclass(exc, answerdist.EngineError)
