"""Nothing lost, nothing silently wrong: the results store under overwrite, kills, concurrent
runs, damaged files, NaN weights and edited weights; fingerprints; special tokens and ties."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

import answerdist
from answerdist.cli import score
from answerdist.engine.results.store import ResultsStore
from answerdist.errors import OutputError
from tests import tiny
from tests.cli import ENV, ROOT, cli, one_line_error


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint(arch="olmo2", hidden=32, heads=2, kv_heads=2, init=0.1)


def manifest(out, label="K"):
    return json.loads((out / label / "manifest.json").read_text())


def task_bytes(out, task, label="K"):
    return (out / label / f"{task}.parquet").read_bytes()


# --- overwrite ---------------------------------------------------------------------------------


def test_overwrite_replaces_only_the_tasks_it_scores(ckpt, tmp_path):
    out = tmp_path / "r"
    assert score.main([str(ckpt), "--tasks", "coin,card,suit", "--out", str(out), "--label",
                       "K"]) == 0
    card, suit = task_bytes(out, "card"), task_bytes(out, "suit")
    first = manifest(out)["tasks"]["coin"]["finished_at"]
    time.sleep(1.1)
    assert score.main([str(ckpt), "--tasks", "coin", "--out", str(out), "--label", "K",
                       "--overwrite"]) == 0
    tasks = manifest(out)["tasks"]
    assert set(tasks) == {"coin", "card", "suit"}
    assert tasks["coin"]["finished_at"] != first  # rescored
    assert task_bytes(out, "card") == card and task_bytes(out, "suit") == suit
    for name in tasks:
        ResultsStore(out, "K").read_task(name)  # every file still valid


def test_killed_overwrite_leaves_the_previous_results_intact(ckpt, tmp_path):
    out = tmp_path / "r"
    assert score.main([str(ckpt), "--out", str(out), "--label", "K"]) == 0
    before = {n: task_bytes(out, n) for n in manifest(out)["tasks"]}
    finished = {n: t["finished_at"] for n, t in manifest(out)["tasks"].items()}
    time.sleep(1.1)  # finished_at has one-second resolution
    proc = subprocess.Popen([sys.executable, "-m", "answerdist", "score", str(ckpt), "--out",
                             str(out),
                             "--label", "K", "--overwrite"], env=ENV, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not any(
            t["finished_at"] != finished[n] for n, t in manifest(out)["tasks"].items()):
        time.sleep(0.02)
    time.sleep(0.3)  # into the middle of the next task
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = ResultsStore(out, "K")
    assert set(store.tasks) == set(before)
    for name in before:  # every task valid: the old file or a complete new one, never a part
        assert (store.read_task(name).num_rows > 0
                and store.read_task(name, variants=True).num_rows > 0)
    assert score.main([str(ckpt), "--out", str(out), "--label", "K"]) == 0
    for name, data in before.items():
        assert pq.read_table(out / "K" / f"{name}.parquet").equals(pq.read_table(io.BytesIO(data)))


# --- NaN, edited weights, fingerprint ------------------------------------------------------------


def test_nan_weights_are_an_error_never_a_finished_task(ckpt, tmp_path, copy_checkpoint):
    bad = copy_checkpoint(ckpt)
    state = load_file(bad / "model.safetensors")
    state["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "r"
    for _ in range(2):  # the rerun does not skip anything either
        line = one_line_error(cli(bad, "--tasks", "coin,card", "--out", out, "--label", "K"),
                              "coin", "NaN")
        assert "prompt" in line
    assert not (out / "K").exists()


def test_edited_weights_are_never_mistaken_for_the_old_ones(ckpt, tmp_path, copy_checkpoint):
    ck = copy_checkpoint(ckpt)
    out = tmp_path / "r"
    assert score.main([str(ck), "--tasks", "coin", "--out", str(out), "--label", "K"]) == 0
    old = pq.read_table(out / "K" / "coin.parquet").column("logprob").to_numpy()
    state = load_file(ck / "model.safetensors")
    head = state["model.embed_tokens.weight"]
    head[: int(0.8 * head.shape[0])] *= 3.0
    save_file(state, ck / "model.safetensors", metadata={"format": "pt"})
    one_line_error(cli(ck, "--tasks", "coin", "--out", out, "--label", "K"), "fingerprint",
                   "--overwrite")
    assert score.main([str(ck), "--tasks", "coin", "--out", str(out), "--label", "K",
                       "--overwrite"]) == 0
    new = pq.read_table(out / "K" / "coin.parquet").column("logprob").to_numpy()
    assert not np.array_equal(old, new)


def test_fingerprint_covers_every_byte_of_the_weights(ckpt, copy_checkpoint):
    ck = copy_checkpoint(ckpt)
    path = ck / "model.safetensors"
    original = path.read_bytes()
    base = answerdist.load(ck).fingerprint
    assert answerdist.load(ck).fingerprint == base  # deterministic
    header = 8 + int.from_bytes(original[:8], "little")
    rng = np.random.default_rng(0)
    for offset in [header, len(original) - 1, *rng.integers(header, len(original), 6)]:
        data = bytearray(original)
        data[offset] ^= 0x01  # one bit of one weight
        path.write_bytes(bytes(data))
        assert answerdist.load(ck).fingerprint != base, offset
    path.write_bytes(original)
    (ck / "tokenizer_config.json").write_text((ck / "tokenizer_config.json").read_text() + " ")
    assert answerdist.load(ck).fingerprint != base  # metadata counts too


# --- one writer per label ------------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from answerdist.engine.results.store import LabelLock
with LabelLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_writer_gets_one_clear_line_and_a_dead_ones_lock_is_taken_over(ckpt, tmp_path):
    out = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / "K")], env=ENV, cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        one_line_error(cli(ckpt, "--tasks", "coin", "--out", out, "--label", "K"),
                       "being written by pid", str(holder.pid), "--label")
        assert not (out / "K" / "coin.parquet").exists()
    finally:
        holder.kill()
        holder.wait()
    result = cli(ckpt, "--tasks", "coin", "--out", out, "--label", "K")
    assert result.returncode == 0, result.stderr
    assert f"taking over the lock left by pid {holder.pid}" in result.stderr


def test_concurrent_runs_on_one_label_lose_nothing(ckpt, tmp_path):
    out = tmp_path / "r"
    first = subprocess.Popen([sys.executable, "-m", "answerdist", "score", str(ckpt), "--tasks",
                              "card,rng_1_100,month", "--out", str(out), "--label", "K"],
                             env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    lock = out / "K" / ".lock"
    deadline = time.time() + 60
    while time.time() < deadline and not (lock.exists() and lock.read_text()):
        time.sleep(0.02)
    second = cli(ckpt, "--tasks", "coin", "--out", out, "--label", "K")
    assert first.wait(timeout=300) == 0, first.stderr.read()
    if second.returncode != 0:  # it ran while the first held the label: refused, nothing lost
        one_line_error(second, "being written by")
        assert cli(ckpt, "--tasks", "coin", "--out", out, "--label", "K").returncode == 0
    assert set(manifest(out)["tasks"]) == {"card", "rng_1_100", "month", "coin"}


# --- damaged and foreign files -------------------------------------------------------------------


def test_a_truncated_task_file_is_rescored_with_a_notice(ckpt, tmp_path):
    out = tmp_path / "r"
    assert score.main([str(ckpt), "--tasks", "coin,card", "--out", str(out), "--label", "K"]) == 0
    good = task_bytes(out, "card")
    path = out / "K" / "card.parquet"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(OutputError, match="damaged or changed"):
        ResultsStore(out, "K").read_task("card")
    analysis = subprocess.run([sys.executable, "-m", "answerdist", "analyse", str(out), "--ladder",
                               "base=K,sft=K2"], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert analysis.returncode == 2 and len(analysis.stderr.strip().splitlines()) == 1, (
        analysis.returncode, analysis.stderr)
    result = cli(ckpt, "--tasks", "coin,card", "--out", out, "--label", "K")
    assert result.returncode == 0, result.stderr
    assert "card.parquet: damaged or changed since it was written; rescoring card" in result.stderr
    assert pq.read_table(path).equals(pq.read_table(io.BytesIO(good)))


def test_a_missing_variants_file_is_rescored(ckpt, tmp_path):
    out = tmp_path / "r"
    assert score.main([str(ckpt), "--tasks", "coin", "--out", str(out), "--label", "K"]) == 0
    (out / "K" / "variants" / "coin.parquet").unlink()
    result = cli(ckpt, "--tasks", "coin", "--out", out, "--label", "K")
    assert result.returncode == 0 and "rescoring coin" in result.stderr
    ResultsStore(out, "K").read_task("coin", variants=True)


def test_label_that_is_a_file_fails_before_any_work(ckpt, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "X").write_text("not a directory")
    start = time.perf_counter()
    one_line_error(cli(ckpt, "--out", out, "--label", "X"), "is a file")
    assert time.perf_counter() - start < 30
    assert (out / "X").read_text() == "not a directory"


def test_garbage_manifest_is_one_line(ckpt, tmp_path):
    out = tmp_path / "r"
    (out / "K").mkdir(parents=True)
    (out / "K" / "manifest.json").write_text("[1, 2")
    one_line_error(cli(ckpt, "--tasks", "coin", "--out", out, "--label", "K"), "manifest.json")


# --- answers, prompts, tied heads ----------------------------------------------------------------


def task_file(path: Path, answers: list[str], prompt: str = "Pick one of {options}.") -> Path:
    q = json.dumps
    path.write_text(f"name = \"probe\"\nanswers = [{', '.join(map(q, answers))}]\n"
                    f"[[prompts]]\nid = \"p\"\ntext = {q(prompt)}\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("answers, prompt, fragment", [
    (["Heads", "<|endoftext|>"], "Pick one of {options}.", "special token '<|endoftext|>'"),
    (["Heads", "Tails"], "Flip a coin<|im_end|> then answer.", "special token '<|im_end|>'"),
])
def test_special_tokens_in_answers_or_prompts_are_refused(ckpt, tmp_path, answers, prompt,
                                                          fragment):
    file = task_file(tmp_path / "t.toml", answers, prompt)
    one_line_error(cli(ckpt, "--tasks", file, "--out", tmp_path / "r"), fragment)
    assert not (tmp_path / "r").exists()


def test_byte_split_answers_do_not_absorb_each_other(ckpt, tmp_path):
    """With a byte-level vocabulary that has no token for 咪, "猫" is followed in "猫咪" by the
    first byte of 咪, which decodes to U+FFFD alone: it must not count as a boundary token."""
    from answerdist.engine.scoring.scorer import PromptEncoder

    ck = answerdist.load(ckpt)
    encoder = PromptEncoder(ck, "base")
    cat, kitty = (ck.encode(" " + s, add_special_tokens=False) for s in ("猫", "猫咪"))
    assert kitty[: len(cat)] == cat
    nxt = kitty[len(cat)]
    assert ck.tokenizer.decode([nxt]).startswith("\ufffd")
    assert not bool(encoder.boundary[nxt])
    file = task_file(tmp_path / "t.toml", ["猫", "猫咪"])
    result = answerdist.score_checkpoint(ckpt, tasks=str(file), mode="base")
    variants = result.to_arrow(variants=True).to_pylist()
    assert [v["answer"] for v in variants] == ["猫", "猫咪"]
    # the boundary rule can separate them; a mask that cannot is refused by the validator
    encoder.boundary[nxt] = True
    from answerdist.engine.tasks import load_tasks
    from answerdist.errors import TaskError

    with pytest.raises(TaskError, match="would absorb"):
        encoder.sequence(load_tasks(str(file))[0], load_tasks(str(file))[0].prompts[0])


def test_tied_config_with_its_own_head_uses_the_head_like_transformers(tmp_path, capsys):
    model = tiny.make_checkpoint(tmp_path, arch="llama", tied=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ids = torch.tensor([[1, 5, 9, 20, 33]])
    with torch.no_grad():
        want = model(ids).logits  # the untied model transformers 5.x loads from these files
    assert torch.equal(answerdist.load(tmp_path).logits(ids), want)
    assert ("ties the embeddings, but the checkpoint has its own lm_head.weight"
            in capsys.readouterr().err)


def test_store_module_imports_no_torch():
    code = ("import sys, answerdist.engine.results.store, answerdist.analysis; "
            "print('torch' in sys.modules or 'triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                         cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr


def test_results_are_read_without_arrows_thread_pools(ckpt, tmp_path):
    """The store reads a parquet file on the calling thread, without pyarrow.dataset: Arrow's
    datasets layer leaves threads behind that made `answerdist analyse` abort (SIGABRT,
    "terminate called without an active exception") at exit about one time in twelve under
    load, instead of exiting with its status."""
    out = tmp_path / "r"
    assert score.main([str(ckpt), "--tasks", "coin", "--out", str(out), "--label", "K"]) == 0
    code = ("import sys, answerdist.analysis as a\n"
            f"a.load({str(out)!r})\n"
            "print(sorted(m for m in sys.modules if m.startswith('pyarrow._dataset')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=ENV, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
