"""The settings spine (answerdist/engine/settings.py): one RunSpec built by the CLI, the sweep file
and the API, the same check behind each of them, and one resolution against a checkpoint."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import answerdist
import answerdist.kernels
from answerdist.cli import score
from answerdist.engine.model.checkpoint import read_metadata
from answerdist.engine.run import sweep
from answerdist.engine.run.plan import resolve
from answerdist.engine.settings import RunSpec, SettingError
from answerdist.errors import ChatTemplateError
from tests.cli import cli, one_line_error

# (setting, a value it cannot take as the CLI spells it, as TOML spells it, as Python passes it)
BAD = [
    ("batch_tokens", "0", "0", 0),
    ("max_tokenizations", "-3", "-3", -3),
    ("tp", "0", "0", 0),
    ("dtype", "float16", '"float16"', "float16"),
    ("mode", "CHAT", '"CHAT"', "CHAT"),
    ("tokenizations", "some", '"some"', "some"),
    ("label", "a/b", None, "a/b"),
    ("device", "gpu", '"gpu"', "gpu"),
    ("dist_timeout", "-1", "-1", -1),
]


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint(arch="llama", kv_heads=2, init=0.1)


def problem(setting: str, value) -> str:
    with pytest.raises(SettingError) as info:
        RunSpec(**{setting: value})
    assert info.value.key == setting
    return info.value.problem


@pytest.mark.parametrize("setting,flag_value,toml_value,value", BAD)
def test_a_bad_setting_is_refused_alike_by_the_cli_the_sweep_and_the_api(
        setting, flag_value, toml_value, value, tmp_path):
    why = problem(setting, value)
    flag = "--" + setting.replace("_", "-")
    line = one_line_error(cli(tmp_path / "nowhere", flag, flag_value, "--out", tmp_path / "o"),
                          flag, "--help")
    assert line.startswith(f"error: {flag} must be") and ("got" in line)
    if setting != "mode":  # the sweep's modes are a list (below)
        if toml_value is not None:
            path = tmp_path / "s.toml"
            path.write_text(f'checkpoints = ["x"]\n{setting} = {toml_value}\n')
            with pytest.raises(sweep.SweepError,
                               match=f"'{setting}' {why}".replace("(", r"\(").replace(")", r"\)")):
                sweep.load_sweep(path)
    # the API checks before it looks at the checkpoint (which does not exist)
    with pytest.raises(SettingError, match=f"^{setting} "):
        answerdist.score_checkpoint(tmp_path / "nowhere", **{setting: value})
    assert not (tmp_path / "o").exists()


def test_the_sweep_words_a_bad_mode_in_its_modes_key(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('checkpoints = ["x"]\nmodes = ["base", "CHAT"]\nlabel = "{name}-{mode}"\n')
    with pytest.raises(sweep.SweepError,
                       match=r"'modes' must be one of auto, chat, base, got 'CHAT'"):
        sweep.load_sweep(path)


@pytest.mark.parametrize("setting,value", [
    ("batch_tokens", "8192"), ("tp", "2"), ("tp", True), ("label", 123), ("tasks", 123),
    ("overwrite", "yes"), ("batch_invariant", 1), ("progress", "no"), ("out", 3),
    ("chat_template", 5), ("device", 0),
])
def test_api_arguments_of_the_wrong_type_are_one_line(setting, value):
    why = problem(setting, value)
    assert "\n" not in why and repr(value) in why


def test_the_cli_and_the_sweep_default_to_runspec_defaults(tmp_path):
    args = score.parse_args(["ckpt"])
    assert score.spec_of(args) == RunSpec(out="results")
    path = tmp_path / "s.toml"
    path.write_text('checkpoints = ["x"]\n')
    loaded = sweep.load_sweep(path)
    assert loaded.spec == RunSpec(out=tmp_path / "results") and loaded.modes == [RunSpec.mode]


def test_a_runspec_is_frozen_and_replace_validates():
    spec = RunSpec(tasks="coin")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.batch_tokens = 1
    assert (spec.replace(batch_tokens=64).batch_tokens == 64
            and spec.batch_tokens == RunSpec.batch_tokens)
    with pytest.raises(SettingError, match="batch_tokens"):
        spec.replace(batch_tokens=0)
    assert [t.name for t in spec.tasks] == ["coin"] and isinstance(spec.tasks, tuple)


def test_resolution_decides_mode_label_template_and_packing(ckpt, tiny_checkpoint, monkeypatch):
    meta = read_metadata(ckpt)
    run = resolve(RunSpec(tasks="coin"), meta)
    assert (run.mode, run.label, run.packs) == ("chat", ckpt.resolve().name, False)
    assert run.chat.text == meta.chat_template.text and str(run.chat.today) == RunSpec.template_date
    key = run.key("f")
    assert key["batch_invariant"] is True and key["batch_tokens"] is None and "tp" not in key
    base = resolve(RunSpec(tasks="coin", mode="base", label="L"), meta)
    assert (base.mode, base.label, base.chat) == ("base", "L", None)
    assert base.key("f")["chat_template"] is None
    # packing is the Triton path's, and only without batch_invariant
    if answerdist.kernels.triton_available():
        monkeypatch.setenv("ENGINE_FORCE_TRITON", "1")
        packed = resolve(RunSpec(tasks="coin", batch_tokens=512), meta)
        assert packed.packs and packed.key("f")["batch_tokens"] == 512
        assert not resolve(RunSpec(tasks="coin", batch_invariant=True), meta).packs
    untemplated = read_metadata(tiny_checkpoint(arch="llama", template=None))
    assert resolve(RunSpec(tasks="coin"), untemplated).mode == "base"
    with pytest.raises(ChatTemplateError, match="chat mode needs a chat template"):
        resolve(RunSpec(tasks="coin", mode="chat"), untemplated)
    borrowed = resolve(RunSpec(tasks="coin", chat_template=str(ckpt)), untemplated)
    assert borrowed.mode == "chat" and borrowed.chat.text == meta.chat_template.text


def test_a_loaded_checkpoint_brings_its_dtype_device_and_degree(ckpt):
    ck = answerdist.load(ckpt, dtype="bfloat16")
    result = answerdist.score_checkpoint(ck, tasks="coin", dtype="float32", tp=1)
    assert result.manifest["dtype"] == "bfloat16" and result.manifest["run"]["dtype"] == "bfloat16"
    assert ck.model.output_weight.dtype == torch.bfloat16


def test_one_dtype_list_for_runs_and_loading(ckpt, copy_checkpoint):
    import json

    from answerdist.engine.settings import DTYPES
    from answerdist.errors import DeviceError

    assert DTYPES == ("float32", "bfloat16")
    with pytest.raises(DeviceError, match="float16.*use one of float32, bfloat16"):
        answerdist.load(ckpt, dtype="float16")
    saved = copy_checkpoint(ckpt)
    config = json.loads((saved / "config.json").read_text())
    config["dtype"] = "float16"
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(DeviceError, match="config.json's dtype 'float16'"):
        answerdist.load(saved, dtype="auto")
    assert answerdist.load(saved, dtype="bfloat16").dtype == torch.bfloat16
