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

from answerdist.cli import score
from answerdist.engine.tasks import load_tasks

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


def one_prompt_task_file(path, task, *prompts) -> None:
    """A task file holding `task` with only `prompts` (same answers, formats, prompt ids)."""
    q = json.dumps  # JSON string literals are valid TOML basic strings
    lines = [f"name = {q(task.name)}", f"base_format = {q(task.base_format)}",
             f"assistant_prefix = {q(task.assistant_prefix)}", "answers = ["]
    lines += [f"  {{ answer = {q(a.name)}, variants = [{', '.join(map(q, a.variants))}] }},"
              for a in task.answers]
    lines += ["]"]
    for prompt in prompts:
        lines += ["[[prompts]]", f"id = {q(prompt.id)}", f"text = {q(prompt.text)}"]
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


# --- the Triton (GPU) path: packed by default, a pass per prompt with --batch-invariant -----------


@pytest.fixture
def triton_path(monkeypatch):
    """The engine's Triton path on CPU tensors (interpreted), counting forward passes."""
    import torch

    import answerdist.kernels.tree_attention as ta

    if torch.cuda.is_available():
        pytest.skip("with CUDA the Triton path is the default one; "
                    "the CPU check is for machines without")
    monkeypatch.setenv("ENGINE_FORCE_TRITON", "1")
    calls = []
    original = ta.tree_attention_triton

    def counted(q, *args, **kwargs):
        calls.append(q.shape)
        return original(q, *args, **kwargs)

    monkeypatch.setattr(ta, "tree_attention_triton", counted)
    return calls


def test_batch_invariant_flag_runs_a_pass_per_prompt_on_the_triton_path(ckpt, tmp_path,
                                                                        triton_path):
    coin = load_tasks("coin")[0]
    prompts = coin.prompts[:4]  # the interpreter is slow: four prompts make the point
    one_prompt_task_file(tmp_path / "four.toml", coin, *prompts)
    four = ["--tasks", str(tmp_path / "four.toml")]
    layers = json.loads((ckpt / "config.json").read_text())["num_hidden_layers"]
    run(ckpt, tmp_path, "packed", *four, "--batch-tokens", "512")
    assert len(triton_path) // layers < len(prompts)  # prompts share rows by default
    manifest = json.loads((tmp_path / "packed" / "manifest.json").read_text())
    assert manifest["batch_invariant"] is False and manifest["run"]["batch_tokens"] == 512
    runs = {}
    for batch_tokens in (64, 8192):
        triton_path.clear()
        label = f"inv{batch_tokens}"
        run(ckpt, tmp_path, label, *four, "--batch-tokens", str(batch_tokens), "--batch-invariant")
        assert len(triton_path) // layers == len(prompts)  # one pass per prompt, whole
        manifest = json.loads((tmp_path / label / "manifest.json").read_text())
        assert manifest["batch_invariant"] is True and manifest["run"]["batch_tokens"] is None
        runs[batch_tokens] = logprobs(tmp_path, label, "coin")
    assert runs[64].tobytes() == runs[8192].tobytes()
    one_prompt_task_file(tmp_path / "one.toml", coin, prompts[2])
    run(ckpt, tmp_path, "alone", "--tasks", str(tmp_path / "one.toml"), "--batch-invariant")
    table = pq.read_table(tmp_path / "inv8192" / "coin.parquet")
    among = table.filter(table.column("prompt_id").to_numpy(zero_copy_only=False) == prompts[2].id)
    assert (logprobs(tmp_path, "alone", "coin").tobytes()
            == among.column("logprob").to_numpy().tobytes())
