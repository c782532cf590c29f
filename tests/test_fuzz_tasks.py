"""Fuzzing task files: every run either scores correctly or refuses with one line and exit 2.

Answer sets mix ASCII, CJK characters that the tiny byte-level vocabulary splits into bytes,
emoji, inner whitespace, punctuation, prefixes of each other and special-token text. A scored
run must give distributions that sum to 1 with coverage <= 1, and no answer may absorb another:
no variant's tokens may continue into another variant's with a token that ends answers (checked
with the boundary set computed independently from the transformers tokenizer).
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from answerdist.cli import score
from benchmarks.naive_scoring import boundary_ids
from tests import tiny

# Plain pieces weigh more than the ones that make a task invalid (edge spaces, special tokens).
PIECES = ["a", "b", "Heads", "1", "0", "猫", "咪", "狗", "🙂", "é"] * 3 + [
    " ", "-", "!", ".", "<|endoftext|>", "<|im_end|>", "\n"]
PROMPTS = ["Pick one: {options}.", "Choose among {n} options: {options}", "Say one word."] * 3 + [
    "Reply with one of {options} and nothing else<|im_end|>"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("ckpt")
    tiny.make_checkpoint(directory, arch="llama", hidden=32, heads=2, kv_heads=1, init=0.1,
                         layers=1)
    hf = PreTrainedTokenizerFast.from_pretrained(str(directory))
    return directory, set(boundary_ids(hf, 301).tolist())


answer_text = st.lists(st.sampled_from(PIECES), min_size=1, max_size=3).map("".join)
answer_sets = st.lists(answer_text, min_size=2, max_size=5, unique=True)


def write_task(path: Path, answers: list[str], prompt: str) -> None:
    def q(text):  # a TOML basic string (JSON's escapes, non-ASCII kept: TOML has no surrogates)
        return json.dumps(text, ensure_ascii=False)

    path.write_text(f"name = \"fuzz\"\nanswers = [{', '.join(map(q, answers))}]\n"
                    f"[[prompts]]\nid = \"p\"\ntext = {q(prompt)}\n", encoding="utf-8")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers=answer_sets, prompt=st.sampled_from(PROMPTS), mode=st.sampled_from(["chat", "base"]))
@example(answers=["猫", "猫咪"], prompt=PROMPTS[0], mode="base")
@example(answers=["猫", "猫咪"], prompt=PROMPTS[0], mode="chat")
@example(answers=["🙂", "🙂🙂", "a"], prompt=PROMPTS[1], mode="chat")
def test_task_files_score_correctly_or_are_refused_in_one_line(setup, answers, prompt, mode):
    directory, boundary = setup
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_task(tmp / "t.toml", answers, prompt)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = score.main([str(directory), "--tasks", str(tmp / "t.toml"), "--mode", mode,
                               "--out", str(tmp / "r"), "--label", "L"])
        err = stderr.getvalue()
        if code != 0:
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
            assert not (tmp / "r" / "L").exists()
            return
        table = pq.read_table(tmp / "r" / "L" / "fuzz.parquet")
        variants = pq.read_table(tmp / "r" / "L" / "variants" / "fuzz.parquet").to_pylist()
    prob = table.column("prob").to_numpy()
    assert np.isfinite(table.column("logprob").to_numpy()).all()
    assert abs(prob.sum() - 1.0) < 1e-9
    assert table.column("coverage").to_numpy()[0] <= 1.0 + 1e-9
    ids = [tuple(v["continuation_token_ids"]) for v in variants]
    for a in ids:
        for b in ids:
            if len(b) > len(a) and b[: len(a)] == a:
                assert b[len(a)] not in boundary, (answers, a, b)  # a would absorb b
