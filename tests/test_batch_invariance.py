"""Results do not depend on batch composition: bitwise, on the CPU (torch reference) path.

The same checkpoint, tasks and settings give bitwise identical `logprob` columns whatever
`--batch-tokens` is, and a prompt scored alone gives the same bits as scored beside the rest of
its task. The manifest says so (`batch_invariant`).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine import score
from engine.tasks import load_tasks

TASKS = ("card", "rng_1_100", "coin")


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint(arch="llama", hidden=32, heads=4, kv_heads=2, init=0.1)


def run(ckpt, out, label, *extra) -> None:
    assert score.main([str(ckpt), "--out", str(out), "--label", label, "--dtype", "float32",
                       "--device", "cpu", *extra]) == 0


def logprobs(out, label, task) -> np.ndarray:
    return pq.read_table(out / label / f"{task}.parquet").column("logprob").to_numpy()


@pytest.mark.parametrize("mode", ["chat", "base"])
def test_batch_tokens_never_change_a_bit(ckpt, tmp_path, mode):
    for batch_tokens in (256, 1024, 8192):
        run(ckpt, tmp_path, f"b{batch_tokens}", "--tasks", ",".join(TASKS), "--mode", mode,
            "--batch-tokens", str(batch_tokens))
        manifest = json.loads((tmp_path / f"b{batch_tokens}" / "manifest.json").read_text())
        assert manifest["batch_invariant"] is True
    for task in TASKS:
        want = logprobs(tmp_path, "b8192", task)
        for batch_tokens in (256, 1024):
            got = logprobs(tmp_path, f"b{batch_tokens}", task)
            assert got.tobytes() == want.tobytes(), (task, batch_tokens)


def one_prompt_task_file(path, task, prompt) -> None:
    """A task file holding `task` with only `prompt` (same answers, formats, prompt id)."""
    q = json.dumps  # JSON string literals are valid TOML basic strings
    lines = [f"name = {q(task.name)}", f"base_format = {q(task.base_format)}",
             f"assistant_prefix = {q(task.assistant_prefix)}", "answers = ["]
    lines += [f"  {{ answer = {q(a.name)}, variants = [{', '.join(map(q, a.variants))}] }},"
              for a in task.answers]
    lines += ["]", "[[prompts]]", f"id = {q(prompt.id)}", f"text = {q(prompt.text)}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("mode", ["chat", "base"])
def test_a_prompt_alone_equals_the_prompt_among_others(ckpt, tmp_path, mode):
    task = load_tasks("card")[0]
    run(ckpt, tmp_path, "all", "--tasks", "card", "--mode", mode)
    table = pq.read_table(tmp_path / "all" / "card.parquet")
    for prompt in (task.prompts[0], task.prompts[-1]):
        file = tmp_path / f"{prompt.id}.toml"
        one_prompt_task_file(file, task, prompt)
        run(ckpt, tmp_path, prompt.id, "--tasks", str(file), "--mode", mode)
        alone = logprobs(tmp_path, prompt.id, "card")
        among = table.filter(table.column("prompt_id").to_numpy(zero_copy_only=False) == prompt.id)
        assert len(alone) == len(task.answers)
        assert alone.tobytes() == among.column("logprob").to_numpy().tobytes(), prompt.id
