"""`python -m answerdist score`: bad input exits 2 with nothing written; reruns resume exactly."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from answerdist.cli import score
from tests import tiny
from tests.cli import ENV, ROOT, cli, one_line_error


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint(arch="olmo2", hidden=32, heads=2, kv_heads=2, init=0.1)


def test_list_tasks():
    result = cli("--list-tasks")
    assert result.returncode == 0
    for name in ("rng_1_10", "coin", "card", "continent", "rng_1_100", "large:", "rng_1_1000",
                 "country"):
        assert name in result.stdout
    only = cli("--list-tasks", "--tasks", "coin")
    assert "coin" in only.stdout and "card" not in only.stdout


def test_unknown_task_lists_the_known_ones(ckpt, tmp_path):
    result = cli(ckpt, "--tasks", "coin,dice", "--out", tmp_path / "out")
    one_line_error(result, "dice", "coin", "rng_1_10")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("label", ["../escape", "a/b", "..", ""])
def test_label_must_be_a_plain_name(ckpt, tmp_path, label):
    result = cli(ckpt, "--tasks", "coin", "--out", tmp_path / "out", "--label", label)
    assert result.returncode == 2 and "--label" in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape").exists()


def test_missing_checkpoint(tmp_path):
    one_line_error(cli(tmp_path / "nope", "--out", tmp_path / "out"), "nope")
    assert not (tmp_path / "out").exists()


def test_output_not_writable(ckpt, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(cli(ckpt, "--tasks", "coin", "--out", blocker / "results"), "file")


def test_prompt_longer_than_context(ckpt, tmp_path):
    short = tmp_path / "short"
    shutil.copytree(ckpt, short)
    cfg = json.loads((short / "config.json").read_text())
    cfg["max_position_embeddings"] = 24
    (short / "config.json").write_text(json.dumps(cfg))
    one_line_error(cli(short, "--tasks", "coin", "--mode", "base", "--out", tmp_path / "out"),
                   "coin", "context", "24")
    assert not (tmp_path / "out").exists()


def test_chat_mode_without_template(tmp_path):
    tiny.make_checkpoint(tmp_path / "base", arch="olmo2", hidden=32, heads=2, kv_heads=2,
                         template=None)
    one_line_error(cli(tmp_path / "base", "--tasks", "coin", "--mode", "chat", "--out",
                       tmp_path / "out"),
                   "chat template")
    assert not (tmp_path / "out").exists()


def test_borrowed_template_scores_a_base_model_in_chat_format(ckpt, tmp_path):
    tiny.make_checkpoint(tmp_path / "base", arch="olmo2", hidden=32, heads=2, kv_heads=2,
                         template=None)
    assert score.main([str(tmp_path / "base"), "--tasks", "coin", "--chat-template", str(ckpt),
                       "--out", str(tmp_path / "out"), "--label", "b"]) == 0
    row = pq.read_table(tmp_path / "out" / "b" / "coin.parquet").to_pylist()[0]
    assert row["mode"] == "chat" and row["prompt_text"].endswith("<|assistant|>\n")


def test_bad_task_file(ckpt, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "mine"\nanswers = []\n[[prompts]]\nid = "p"\ntext = "Pick."\n')
    one_line_error(cli(ckpt, "--tasks", bad, "--out", tmp_path / "out"), "bad.toml", "mine")
    assert not (tmp_path / "out").exists()


def test_a_prompt_that_merges_is_scored_unless_its_tokens_spell_no_fixed_bytes(ckpt, tmp_path):
    """An assistant prefix that merges with the answer's first characters into one token is
    scored exactly (tests/test_merged_boundary.py checks the numbers); with a vocabulary whose
    tokens spell no fixed bytes it cannot be, and is refused in one line."""
    task = tmp_path / "merge.toml"
    task.write_text('name = "merge"\nassistant_prefix = "Hea"\nanswers = ["ds", "rt"]\n'
                    '[[prompts]]\nid = "p"\ntext = "Say a word."\n')
    assert cli(ckpt, "--tasks", task, "--mode", "chat", "--out", tmp_path / "out").returncode == 0
    rows = pq.read_table(tmp_path / "out" / ckpt.name / "merge.parquet").to_pylist()
    assert all(r["boundary_crossed"] and 1 <= r["boundary_chars"] <= 3 for r in rows)
    other = tmp_path / "other"
    shutil.copytree(ckpt, other)
    spec = json.loads((other / "tokenizer.json").read_text())
    spec["decoder"] = None  # no byte-level or metaspace decoder: the tokens' bytes are unknown
    (other / "tokenizer.json").write_text(json.dumps(spec))
    result = cli(other, "--tasks", task, "--mode", "chat", "--out", tmp_path / "out2")
    one_line_error(result, "merge", "'p'", "do not spell fixed bytes")
    assert not (tmp_path / "out2").exists()


def test_rerun_skips_done_tasks_and_refuses_other_settings(ckpt, tmp_path):
    out = tmp_path / "out"
    args = [str(ckpt), "--tasks", "coin,die", "--out", str(out), "--label", "l"]
    assert score.main(args) == 0
    manifest = json.loads((out / "l" / "manifest.json").read_text())
    assert set(manifest["tasks"]) == {"coin", "die"}
    assert manifest["fingerprint"] and manifest["token_efficiency"] >= 0.95
    stamp = (out / "l" / "coin.parquet").stat().st_mtime_ns
    assert score.main(args) == 0
    assert (out / "l" / "coin.parquet").stat().st_mtime_ns == stamp
    assert json.loads((out / "l" / "manifest.json").read_text())["timings"]["skipped_tasks"] == 2
    assert score.main(args + ["--mode", "base"]) == 2
    assert score.main(args + ["--mode", "base", "--overwrite"]) == 0
    assert pq.read_table(out / "l" / "coin.parquet").column("mode")[0].as_py() == "base"


KILL_TASKS = "coin,die,rps,suit,weekday,month,color,digit,rng_1_10,letter"


def test_killed_run_resumes_to_identical_results(ckpt, tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert cli(ckpt, "--tasks", KILL_TASKS, "--out", reference, "--label", "l").returncode == 0
    cmd = [sys.executable, "-m", "answerdist", "score", str(ckpt), "--tasks", KILL_TASKS, "--out",
           str(resumed), "--label", "l"]
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    manifest = resumed / "l" / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and 1 <= len(json.loads(manifest.read_text())["tasks"]) < 5:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done_before = set(json.loads(manifest.read_text())["tasks"])
    assert 1 <= len(done_before) < len(KILL_TASKS.split(","))
    assert cli(ckpt, "--tasks", KILL_TASKS, "--out", resumed, "--label", "l").returncode == 0
    for name in KILL_TASKS.split(","):
        assert pq.read_table(resumed / "l" / f"{name}.parquet").equals(
            pq.read_table(reference / "l" / f"{name}.parquet")), name
    leftovers = [p.name for p in (resumed / "l").rglob(".*tmp*")]
    assert not leftovers


def test_bfloat16_scores_stay_close_to_float32(ckpt, tmp_path):
    runs = {}
    for dtype in ("float32", "bfloat16"):
        assert score.main([str(ckpt), "--tasks", "rng_1_10", "--dtype", dtype, "--out",
                           str(tmp_path), "--label", dtype]) == 0
        runs[dtype] = pq.read_table(tmp_path / dtype / "rng_1_10.parquet").to_pylist()
        assert json.loads((tmp_path / dtype / "manifest.json").read_text())["dtype"] == dtype
    worst = max(abs(a["prob"] - b["prob"])
                for a, b in zip(runs["float32"], runs["bfloat16"], strict=True))
    assert 0 < worst < 0.05


@pytest.mark.parametrize("command, args, fragment", [
    ("score", ["ckpt", "--batch-tokens", "0"], "--batch-tokens"),
    ("score", ["ckpt", "--dtype", "float16"], "float16"),
    ("score", [], "CHECKPOINT"),
    ("sweep", [], "sweep"),
    ("analyse", ["results"], "--ladder"),
    ("trajectory", ["results"], "--series"),
    ("tasks", ["--bogus"], "--bogus"),
    ("demo", ["--bogus"], "--bogus"),
    ("bogus", [], "bogus"),
])
def test_a_bad_flag_is_one_error_line_and_exit_2(command, args, fragment, tmp_path):
    result = subprocess.run([sys.executable, "-m", "answerdist", command, *args],
                            capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120)
    one_line_error(result, fragment, "--help")
    assert list(tmp_path.iterdir()) == []
