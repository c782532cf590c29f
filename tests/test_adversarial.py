"""Hostile and careless input: each case is one `error:` line, exit status 2, nothing written, and
no file outside --out touched. Labels, locks and temporaries, sweep files, task identity, task
text, weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file, save_file

import engine
from engine import score, sweep
from engine.errors import TaskError, WeightsError
from engine.files import TEMPORARY
from engine.tasks import load_task_file


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint(arch="olmo2", hidden=32, heads=2, kv_heads=2, init=0.1)


def error_line(capsys, argv) -> str:
    """engine.score in this process: exit 2 and one `error:` line (notes aside)."""
    assert score.main([str(a) for a in argv]) == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines()
             if not line.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def task_file(path: Path, name: str = "probe", answers=("Heads", "Tails"), prompt="Pick one.",
              extra: str = "") -> Path:
    q = json.dumps
    path.write_text(f"name = {q(name)}\n{extra}answers = [{', '.join(map(q, answers))}]\n"
                    f"[[prompts]]\nid = \"p\"\ntext = {q(prompt)}\n", encoding="utf-8")
    return path


# --- labels and the output root -------------------------------------------------------------


@pytest.mark.parametrize("label,fragment", [("x" * 300, "at most 128"), (".lock", "'.'"),
                                             ("a/b", "not a path")])
def test_labels_that_cannot_be_a_directory_are_one_line(ckpt, tmp_path, capsys, label, fragment):
    line = error_line(capsys, [ckpt, "--tasks", "coin", "--out", tmp_path / "o", "--label", label])
    assert "--label" in line and fragment in line and len(line) < 400
    assert not (tmp_path / "o").exists()


def test_an_empty_out_is_refused(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--out" in error_line(capsys, [ckpt, "--tasks", "coin", "--out", ""])
    assert list(tmp_path.iterdir()) == []


def test_a_label_template_cannot_grow_labels(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('checkpoints = ["x"]\nlabel = "{name:a>100000}"\n')
    with pytest.raises(sweep.SweepError) as info:
        sweep.load_sweep(path)
    assert "plain {name}" in str(info.value) and len(str(info.value)) < 400


# --- locks and temporaries --------------------------------------------------------------------


def test_a_lock_that_is_a_link_is_never_followed(ckpt, tmp_path, capsys):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me\n" * 100)
    (tmp_path / "o" / "L").mkdir(parents=True)
    (tmp_path / "o" / "L" / ".lock").symlink_to(outside)
    line = error_line(capsys, [ckpt, "--tasks", "coin", "--out", tmp_path / "o", "--label", "L"])
    assert "symbolic link" in line and "keep me" not in line
    assert outside.read_text() == "keep me\n" * 100
    assert sorted(p.name for p in (tmp_path / "o" / "L").iterdir()) == [".lock"]


def test_a_lock_that_is_a_directory_is_one_line(ckpt, tmp_path, capsys):
    (tmp_path / "o" / "L" / ".lock").mkdir(parents=True)
    line = error_line(capsys, [ckpt, "--tasks", "coin", "--out", tmp_path / "o", "--label", "L"])
    assert ".lock" in line


def test_only_the_engines_own_temporaries_are_cleaned_up(ckpt, tmp_path, capsys):
    out = tmp_path / "o"
    assert score.main([str(ckpt), "--tasks", "coin", "--out", str(out), "--label", "L"]) == 0
    mine = out / "L" / ".notes.tmpfile"
    mine.write_text("mine")
    stale = out / "L" / f".die.parquet{TEMPORARY}12345"
    stale.write_bytes(b"half a file")
    assert score.main([str(ckpt), "--tasks", "die", "--out", str(out), "--label", "L"]) == 0
    assert mine.read_text() == "mine" and not stale.exists()
    capsys.readouterr()


# --- sweep files ------------------------------------------------------------------------------


@pytest.mark.parametrize("tasks", ['"extra.toml,coin"', '["coin", "extra.toml"]'])
def test_sweep_task_files_are_found_beside_the_sweep_file(tmp_path, monkeypatch, tasks):
    (tmp_path / "here").mkdir()
    task_file(tmp_path / "here" / "extra.toml", name="extra")
    task_file(tmp_path / "extra.toml", name="decoy")  # in the working directory
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "here" / "s.toml"
    path.write_text(f'checkpoints = ["x"]\ntasks = {tasks}\n')
    assert sorted(t.name for t in sweep.load_sweep(path).spec.tasks) == ["coin", "extra"]


@pytest.mark.parametrize("line,fragment", [('chat_template = "nowhere"', "'chat_template'"),
                                           ('device = "gpu"', "'device'")])
def test_sweep_settings_are_checked_before_any_checkpoint(tmp_path, capsys, line, fragment):
    (tmp_path / "ckpt").mkdir()
    path = tmp_path / "s.toml"
    path.write_text(f'checkpoints = ["ckpt"]\n{line}\n')
    assert sweep.main([str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / "results").exists()


# --- task identity and task text ----------------------------------------------------------------


def test_a_task_file_with_a_builtin_name_never_replaces_finished_results(ckpt, tmp_path, capsys):
    out = tmp_path / "o"
    assert score.main([str(ckpt), "--tasks", "coin", "--out", str(out), "--label", "L"]) == 0
    before = (out / "L" / "coin.parquet").read_bytes()
    mine = task_file(tmp_path / "coin.toml", name="coin")
    line = error_line(capsys, [ckpt, "--tasks", mine, "--out", out, "--label", "L"])
    assert "another definition of coin" in line and "--overwrite" in line
    assert (out / "L" / "coin.parquet").read_bytes() == before
    assert score.main([str(ckpt), "--tasks", str(mine), "--out", str(out), "--label", "L",
                       "--overwrite"]) == 0
    assert pq.read_table(out / "L" / "coin.parquet").num_rows == 2


@pytest.mark.parametrize("extra,mode,fragment", [
    ('base_format = "<|endoftext|>{prompt}\\nAnswer:"\n', "base", "base_format"),
    ('assistant_prefix = "Sure<|im_end|>"\n', "chat", "assistant_prefix"),
])
def test_special_tokens_in_a_tasks_formats_are_refused(ckpt, tmp_path, capsys, extra, mode,
                                                       fragment):
    file = task_file(tmp_path / "t.toml", extra=extra)
    line = error_line(capsys, [ckpt, "--tasks", file, "--mode", mode, "--out", tmp_path / "o"])
    assert fragment in line and "special token" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("answers", [("caf\u00e9", "cafe\u0301"), ("Heads", "Hea\u200bds"),
                                     ("Heads", "\u202eHeads")])
def test_answers_that_look_the_same_are_refused_with_the_pair_named(tmp_path, answers):
    with pytest.raises(TaskError) as info:
        load_task_file(task_file(tmp_path / "t.toml", answers=answers))
    message = str(info.value)
    assert "looks the same" in message
    assert repr(answers[0]) in message and repr(answers[1]) in message


def test_an_invisible_variant_is_refused(tmp_path):
    with pytest.raises(TaskError, match="invisible"):
        load_task_file(task_file(tmp_path / "t.toml", answers=("Heads", "\u200b")))


# --- weights ------------------------------------------------------------------------------------


def test_float_weights_labelled_as_integers_are_refused(ckpt, copy_checkpoint):
    bad = copy_checkpoint(ckpt)
    tensors = load_file(bad / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    tensors[name] = tensors[name].view(dtype=__import__("torch").int32)  # the same bytes, as I32
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=f"{name}.*int32, not floating point"):
        engine.load(bad)
    assert os.path.exists(bad / "model.safetensors")
