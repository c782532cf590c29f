"""Hostile and careless input: each case is one `error:` line, exit status 2, nothing written, and
no file outside --out touched. Labels, locks and temporaries, sweep files, task identity, task
text, weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file, save_file

import answerdist
from answerdist.cli import score
from answerdist.cli import sweep as sweep_cli
from answerdist.engine.run import sweep
from answerdist.engine.tasks import load_task_file
from answerdist.errors import TaskError, WeightsError
from answerdist.files import TEMPORARY
from tests import tiny


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint(arch="olmo2", hidden=32, heads=2, kv_heads=2, init=0.1)


def error_line(capsys, argv) -> str:
    """answerdist.cli.score in this process: exit 2 and one `error:` line (notes aside)."""
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
    assert sweep_cli.main([str(path)]) == 2
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


IGNORABLE = ["\u00ad", "\u034f", "\u061c", "\u115f", "\u17b4", "\u180b", "\u200b", "\u2060",
             "\u3164", "\ufe0f", "\ufeff", "\uffa0", "\U000e0001", "\U000e0100"]


@pytest.mark.parametrize("seed", range(4))
def test_every_default_ignorable_character_is_invisible_to_the_look_alike_check(tmp_path, seed):
    """Unicode's default-ignorable code points (not only category Cf: U+034F is Mn, the Hangul
    fillers Lo), inserted anywhere in an answer: refused as looking like the other."""
    import random

    from answerdist.engine.tasks.task import lookalike

    rng = random.Random(seed)
    for char in IGNORABLE:
        at = rng.randrange(6)
        twin = "Heads"[:at] + char + "Heads"[at:]
        assert lookalike(twin) == "Heads", repr(char)
        if char > "\uffff":
            continue  # task_file writes JSON escapes, which TOML takes within the BMP only
        with pytest.raises(TaskError, match="looks the same|invisible"):
            load_task_file(task_file(tmp_path / "t.toml", answers=("Heads", twin)))


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
        answerdist.load(bad)
    assert os.path.exists(bad / "model.safetensors")


# --- reproducible prompts ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def dated(tiny_checkpoint):
    """A checkpoint whose template puts the date in the prompt, as Llama 3.1 to 3.3 do."""
    from tests import tiny

    return tiny_checkpoint(arch="llama", hidden=32, heads=2, kv_heads=2, init=0.1,
                           template=tiny.LLAMA3_CHAT_TEMPLATE)


def test_a_template_date_is_fixed_recorded_and_part_of_the_run(dated, tmp_path, capsys,
                                                                monkeypatch):
    import datetime as real

    import answerdist.engine.text.chat

    class Tomorrow(real.datetime):  # any other day: the prompts must not move
        @classmethod
        def now(cls, tz=None):
            return real.datetime(2031, 5, 17, 9, 30)

    out = tmp_path / "o"
    assert score.main([str(dated), "--tasks", "coin", "--out", str(out), "--label", "L"]) == 0
    first = pq.read_table(out / "L" / "coin.parquet")
    assert "Today Date: 26 Jul 2024" in first.column("prompt_text")[0].as_py()
    manifest = json.loads((out / "L" / "manifest.json").read_text())
    assert manifest["template_date"] == "2024-07-26" == manifest["run"]["template_date"]
    monkeypatch.setattr(answerdist.engine.text.chat, "datetime", Tomorrow)
    assert score.main([str(dated), "--tasks", "coin", "--out", str(out), "--label", "M"]) == 0
    assert pq.read_table(out / "M" / "coin.parquet").equals(first.set_column(
        0, "label", pq.read_table(out / "M" / "coin.parquet").column("label")))
    line = error_line(capsys, [dated, "--tasks", "die", "--out", out, "--label", "L",
                               "--template-date", "2026-12-01"])
    assert "template_date" in line and "another --label" in line
    assert score.main([str(dated), "--tasks", "coin", "--out", str(out), "--label", "N",
                       "--template-date", "2026-12-01"]) == 0
    assert "Today Date: 01 Dec 2026" in pq.read_table(out / "N" / "coin.parquet").column(
        "prompt_text")[0].as_py()
    capsys.readouterr()


def test_a_borrowed_templates_special_tokens_are_part_of_the_run(ckpt, tiny_checkpoint, tmp_path,
                                                                 capsys, copy_checkpoint):
    from tests import tiny

    donor = copy_checkpoint(tiny_checkpoint(arch="llama", hidden=32, heads=2, kv_heads=2,
                                            template=tiny.CHATML_TEMPLATE), "donor")
    out, argv = tmp_path / "o", [ckpt, "--chat-template", donor, "--out", tmp_path / "o",
                                 "--label", "L", "--mode", "chat"]
    assert score.main([str(a) for a in argv] + ["--tasks", "coin"]) == 0
    manifest = json.loads((out / "L" / "manifest.json").read_text())
    assert manifest["chat_template_special_tokens"] == str(donor / "tokenizer_config.json")
    capsys.readouterr()
    config = json.loads((donor / "tokenizer_config.json").read_text())
    config["bos_token"] = "<|im_start|>"  # the donor changes: its prompts render otherwise
    (donor / "tokenizer_config.json").write_text(json.dumps(config))
    line = error_line(capsys, [*argv, "--tasks", "die"])
    assert "template_special_tokens" in line


def test_finished_results_of_other_prompt_text_are_refused(ckpt, tmp_path, capsys):
    out = tmp_path / "o"
    assert score.main([str(ckpt), "--tasks", "coin", "--out", str(out), "--label", "L"]) == 0
    path = out / "L" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["tasks"]["coin"]["prompts_digest"] = "0" * 16  # as if rendered from other text
    path.write_text(json.dumps(manifest))
    line = error_line(capsys, [ckpt, "--tasks", "coin", "--out", out, "--label", "L"])
    assert "other prompt text" in line


# --- hostile templates --------------------------------------------------------------------------

HOSTILE = {
    "loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "silent loops": "{% set x = range(100000) | list %}{% for a in x %}{% for b in x %}"
                    "{% endfor %}{% endfor %}",
    "huge output": "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    "huge string": "{{ 'a' * 10000000000 }}",
    "huge power": "{{ 7 ** 100000000 }}",
    "lipsum": "{{ lipsum(100000000) }}",
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_templates_end_within_their_bounds(ckpt, copy_checkpoint, tmp_path, capsys, kind):
    import time

    bad = copy_checkpoint(ckpt)
    (bad / "chat_template.jinja").write_text(HOSTILE[kind])
    started = time.monotonic()
    line = error_line(capsys, [bad, "--tasks", "coin", "--mode", "chat", "--out", tmp_path / "o",
                               "--template-timeout", "2"])
    assert time.monotonic() - started < 30, line
    assert "chat_template.jinja" in line and len(line) < 400
    assert not (tmp_path / "o").exists()


def test_a_template_of_megabytes_is_refused(ckpt, copy_checkpoint):
    bad = copy_checkpoint(ckpt)
    (bad / "chat_template.jinja").write_text("{{ bos_token }}" + "x" * 20_000_000)
    with pytest.raises(answerdist.EngineError, match="characters; more than"):
        answerdist.load(bad)


def test_templates_render_as_before_within_their_bounds(ckpt):
    ck = answerdist.load(ckpt)
    messages = [{"role": "user", "content": "Flip a coin."}]
    fixed = ck.chat_template.for_run("2024-07-26", seconds=5, max_chars=10_000)
    assert fixed.render(messages) == ck.render_chat(messages)


# --- metadata files and results files -------------------------------------------------------------


def test_metadata_linked_outside_the_checkpoint_is_refused(ckpt, copy_checkpoint, tmp_path):
    bad = copy_checkpoint(ckpt)
    secret = tmp_path / "secret.txt"
    secret.write_text("{{ 'my private notes' }}")
    (bad / "chat_template.jinja").symlink_to(secret)
    with pytest.raises(answerdist.EngineError, match="outside the checkpoint"):
        answerdist.load(bad)


@pytest.mark.parametrize("name", ["chat_template.jinja", "tokenizer_config.json",
                                  "chat_template.json"])
def test_a_borrowed_templates_link_outside_its_donor_is_refused(ckpt, copy_checkpoint, tmp_path,
                                                                 capsys, name):
    """--chat-template DONOR obeys the scored checkpoint's own rule: a donor file that links out
    of the donor directory is refused, never read into the prompts or the manifest."""
    donor = copy_checkpoint(ckpt, "donor")
    secret = tmp_path / "secret.txt"
    secret.write_text('{"chat_template": "{{ \'my private notes\' }}"}')
    (donor / name).unlink(missing_ok=True)
    (donor / name).symlink_to(secret)
    line = error_line(capsys, [ckpt, "--tasks", "coin", "--mode", "chat", "--chat-template",
                               donor, "--out", tmp_path / "out"])
    assert "outside the checkpoint" in line and "private" not in line
    assert not (tmp_path / "out").exists()


def test_the_hugging_face_cache_layout_is_the_checkpoints_own(ckpt, tmp_path):
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, path in enumerate(sorted(ckpt.iterdir())):
        blob = blobs / f"blob{i}"
        blob.write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(Path("../../blobs") / blob.name)
    assert answerdist.load(snapshot).fingerprint == answerdist.load(ckpt).fingerprint


def test_a_huge_sparse_metadata_file_is_refused_at_once(ckpt, copy_checkpoint):
    import time

    bad = copy_checkpoint(ckpt)
    with open(bad / "notes.txt", "wb") as f:
        f.truncate(1 << 40)  # 1 TB, sparse
    started = time.monotonic()
    with pytest.raises(answerdist.EngineError, match="notes.txt.*bytes"):
        answerdist.load(bad)
    assert time.monotonic() - started < 10


def test_a_manifest_naming_another_stores_file_is_not_trusted(ckpt, tmp_path, capsys):
    out = tmp_path / "o"
    for label in ("A", "B"):
        assert score.main([str(ckpt), "--tasks", "coin", "--out", str(out), "--label", label]) == 0
    path = out / "B" / "manifest.json"
    manifest = json.loads(path.read_text())
    entry = manifest["tasks"]["coin"]
    entry["file"] = "../A/coin.parquet"
    entry["digests"]["../A/coin.parquet"] = entry["digests"].pop("coin.parquet")
    path.write_text(json.dumps(manifest))
    from answerdist.engine.results.store import ResultsStore

    assert "not the task's own file" in ResultsStore(out, "B").problem("coin")
    capsys.readouterr()


# --- config.json --------------------------------------------------------------------------------


@pytest.mark.parametrize("changes,fragment", [
    ({"head_dim": "sixteen"}, "'head_dim' must be a positive integer"),
    ({"head_dim": -16}, "'head_dim' must be a positive integer"),
    ({"rms_norm_eps": "tiny"}, "'rms_norm_eps' must be a positive number"),
    ({"architectures": [["Olmo2ForCausalLM"]]}, "is not supported"),
    ({"architectures": "Olmo2ForCausalLM"}, "not a list of names"),  # config.json's is a list
    ({"rope_parameters": "yarn"}, "'rope_parameters' must be a JSON object"),
    ({"tie_word_embeddings": "false"}, "'tie_word_embeddings' must be true or false"),
    ({"num_hidden_layers": 100000}, "num_hidden_layers=100000, but the weight files hold"),
    ({"vocab_size": 10**9}, "vocab_size=1000000000"),
])
def test_config_fields_of_the_wrong_type_sign_or_size_are_one_line(ckpt, copy_checkpoint, changes,
                                                                   fragment):
    import time

    bad = copy_checkpoint(ckpt)
    config = json.loads((bad / "config.json").read_text())
    config.update(changes)
    (bad / "config.json").write_text(json.dumps(config))
    started = time.monotonic()
    if fragment is None:
        answerdist.load(bad)
        return
    with pytest.raises(answerdist.EngineError) as info:
        answerdist.load(bad)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert time.monotonic() - started < 10


def test_a_null_norm_epsilon_takes_the_default(ckpt, copy_checkpoint):
    bad = copy_checkpoint(ckpt)
    config = json.loads((bad / "config.json").read_text())
    config["rms_norm_eps"] = None
    (bad / "config.json").write_text(json.dumps(config))
    assert answerdist.load(bad).args.norm_eps == 1e-6


def test_a_render_leaves_anothers_alarm_running(ckpt):
    import signal

    ck = answerdist.load(ckpt)
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(True))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30)
        ck.chat_template.for_run("2024-07-26").render([{"role": "user", "content": "Hi."}])
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25 < left <= 30 and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- the analysis -----------------------------------------------------------------------------


def analysis_error(capsys, argv) -> str:
    import answerdist.cli.analyse

    assert answerdist.cli.analyse.main([str(a) for a in argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture
def planted(tmp_path):
    from answerdist.analysis.synthetic import write_planted_store

    ladders, _ = write_planted_store(tmp_path / "r", n_prompts=6, tasks=["random_number"])
    name, stages = ladders[0]
    return tmp_path / "r", ",".join(f"{stage}={label}" for stage, label in stages)


def edit_manifest(root: Path, label: str, task: str, **changes):
    path = root / label / "manifest.json"
    manifest = json.loads(path.read_text())
    entry = manifest["tasks"][task]
    for key, value in changes.items():
        if key == "fingerprint":
            entry["run"] = {**entry["run"], "fingerprint": value}
        else:
            entry[key] = value
    path.write_text(json.dumps(manifest))


def test_no_report_is_written_when_phases_json_cannot_be(planted, tmp_path, capsys):
    root, ladder = planted
    (tmp_path / "a-file").write_text("")
    line = analysis_error(capsys, [root, "--ladder", ladder, "--out",
                                   tmp_path / "a-file" / "phases.json",
                                   "--report", tmp_path / "report"])
    assert "a-file" in line
    assert not (tmp_path / "report").exists() and not (root / "phases.json").exists()


def test_a_label_mixing_checkpoints_is_refused(planted, capsys):
    root, ladder = planted
    from answerdist.analysis.synthetic import write_task

    write_task(root, "olmo-sft", "random_color", ["red", "blue"], [[0.5, 0.5], [0.4, 0.6]],
               [0.9, 0.9])
    edit_manifest(root, "olmo-sft", "random_color", fingerprint="another checkpoint")
    line = analysis_error(capsys, [root, "--ladder", ladder])
    assert "'olmo-sft' holds tasks of different checkpoints" in line


def test_stages_of_different_task_definitions_are_refused(planted, capsys):
    root, ladder = planted
    edit_manifest(root, "olmo-base", "random_number", task_hash="aaaa")
    edit_manifest(root, "olmo-sft", "random_number", task_hash="bbbb")
    assert "different definitions of the task" in analysis_error(capsys, [root, "--ladder", ladder])


def test_stages_of_different_prompts_are_refused(planted, capsys):
    root, ladder = planted
    from answerdist.analysis.synthetic import ANSWERS, write_task

    k = len(ANSWERS["random_number"])
    write_task(root, "olmo-dpo", "random_number", ANSWERS["random_number"],
               [[1 / k] * k] * 3, [0.9] * 3)  # 3 prompts where the base has 6
    assert "other prompts" in analysis_error(capsys, [root, "--ladder", ladder])


def test_a_stage_of_one_prompt_is_said_to_mean_nothing(tmp_path, capsys):
    import answerdist.cli.analyse
    from answerdist.analysis.synthetic import write_manifest, write_task

    for stage in ("base", "sft"):
        write_task(tmp_path, stage, "coin", ["Heads", "Tails"], [[0.7, 0.3]], [0.9])
        write_manifest(tmp_path, stage)
    assert answerdist.cli.analyse.main([str(tmp_path), "--ladder", "base=base,sft=sft"]) == 0
    assert "has 1 prompt" in capsys.readouterr().err


def test_a_full_disk_while_taking_the_lock_is_one_line(ckpt, tmp_path, capsys, monkeypatch):
    import errno

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    line = error_line(capsys, [ckpt, "--tasks", "coin", "--out", tmp_path / "o", "--label", "L"])
    assert "No space left" in line and ".lock" in line


def test_a_report_of_fifty_stages_stays_readable(tmp_path, capsys):
    """A ladder of 50 checkpoints along a run: evenly spaced heatmaps (8 of them), a trajectory
    whose ticks and phase tints fit, images of a size a screen can show."""
    import numpy as np
    from matplotlib import image

    import answerdist.cli.analyse
    from answerdist.analysis.synthetic import write_manifest, write_task

    rng = np.random.default_rng(0)
    stages = ["base"] + [f"step{i:02d}" for i in range(1, 50)]
    for i, stage in enumerate(stages):
        sharp = 1 + i / 10
        P = rng.dirichlet(np.full(6, 0.5), size=8) ** sharp
        write_task(tmp_path / "r", stage, "die", list("123456"), P / P.sum(1, keepdims=True),
                   np.full(8, 0.9))
        write_manifest(tmp_path / "r", stage)
    ladder = ",".join(f"{s}={s}" for s in stages)
    assert answerdist.cli.analyse.main([str(tmp_path / "r"), "--ladder", ladder,
                                 "--report", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "8 of 50 stages drawn" in page
    for png in (tmp_path / "report").glob("*.png"):
        height, width = image.imread(png).shape[:2]
        assert width <= 4000 and height <= 3000, (png.name, width, height)
    capsys.readouterr()


INFLATABLE = ("num_hidden_layers", "num_experts", "vocab_size", "hidden_size",
              "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim")


@pytest.fixture(scope="module")
def moe_ckpt(tmp_path_factory):
    directory = tmp_path_factory.mktemp("olmoe")
    tiny.make_checkpoint(directory, arch="olmoe", num_experts=4, num_experts_per_tok=2)
    return directory


@pytest.mark.parametrize("seed", range(10))
def test_an_inflated_config_is_refused_before_anything_is_built(moe_ckpt, copy_checkpoint,
                                                                seed):
    """A count or size in config.json inflated far past the weights (an OLMoE with 100,000
    experts where the files hold 4): one line within seconds, nothing allocated in proportion."""
    import resource
    import time

    rng = np.random.default_rng(seed)
    key = INFLATABLE[seed % len(INFLATABLE)]
    value = int(rng.integers(10**5, 10**8))
    bad = copy_checkpoint(moe_ckpt)
    config = json.loads((bad / "config.json").read_text())
    config[key] = value
    (bad / "config.json").write_text(json.dumps(config))
    started, peak = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(answerdist.EngineError) as info:
        answerdist.load(bad)
    assert "\n" not in str(info.value), str(info.value)
    assert time.monotonic() - started < 10, key
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown_mib < 500, (key, value, grown_mib)


_GROW = ["ns.s ~ ns.s", "ns.s + ns.s", "ns.s|center((ns.s|length) * 2 + 1)",
         "'{}{}'.format(ns.s, ns.s)", "ns.s * 2", "[ns.s, ns.s]|join"]


@pytest.mark.parametrize("seed", range(8))
def test_a_template_that_allocates_without_bound_is_one_line(seed):
    """Hostile templates from a small grammar (a string grown by ~, +, center, format, *, join,
    in nested loops): each is stopped by the render box's memory bound (or the time and output
    bounds) with one ChatTemplateError line, and this process's memory does not grow with it."""
    import random
    import resource
    import time

    from answerdist.engine.text.chat import ChatTemplate
    from answerdist.errors import ChatTemplateError

    rng = random.Random(seed)
    grow = rng.choice(_GROW)
    loops = "".join(f"{{% for i{d} in range({rng.randint(8, 40)}) %}}" for d in range(2))
    text = ("{% set ns = namespace(s='ab') %}" + loops + f"{{% set ns.s = {grow} %}}"
            + "{% endfor %}" * 2 + "{{ ns.s|length }}")
    template = ChatTemplate("hostile", text, {}, special_source="t").for_run(
        "2024-07-26", seconds=10, max_bytes=2**28)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(ChatTemplateError) as info:
        template.render([{"role": "user", "content": "x"}])
    assert "\n" not in str(info.value) and "hostile" in str(info.value), grow
    assert time.monotonic() - started < 15
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 100, grow
