"""The large tasks (group "large": hundreds to a thousand answers) through real tokenizers and
the engine: every prompt and answer tokenizes prefix-consistently in base and chat mode with
the tiny byte-level tokenizer and with the real Llama 3 vocabulary, every prompt with its whole
answer trie fits one forward pass of the default --batch-tokens, and one prompt of each scores
end to end. Full-size scoring is benchmarks/bench_large.py's job, not a test's."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import answerdist
from answerdist.engine.run.api import DEFAULT_BATCH_TOKENS
from answerdist.engine.scoring.scorer import PromptEncoder, make_batches, task_sequences
from answerdist.engine.tasks import load_tasks
from tests import tiny

LARGE = ("country", "first_name", "rng_1_1000")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    tiny.make_checkpoint(directory, arch="llama", kv_heads=2, init=0.1)
    return directory


@pytest.fixture(scope="module")
def llama3_checkpoint(tmp_path_factory):
    """A tiny model over the real 128k Llama 3 vocabulary (as in test_chat_tokenizer)."""
    directory = tmp_path_factory.mktemp("llama3vocab")
    tiny.make_checkpoint(directory, arch="llama", vocab_size=128256, hidden=16, heads=2, kv_heads=1,
                         layers=1, template=tiny.LLAMA3_CHAT_TEMPLATE)
    tiny.llama3_tokenizer().save(str(directory / "tokenizer.json"))
    cfg = json.loads((directory / "tokenizer_config.json").read_text())
    cfg.update(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token=None,
               added_tokens_decoder={})
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg))
    return directory


@pytest.mark.parametrize("vocabulary", ["tiny", "llama3"])
@pytest.mark.parametrize("mode", ["base", "chat"])
def test_large_tasks_tokenize_cleanly_and_fit_one_pass(request, vocabulary, mode):
    """task_sequences refuses a prompt whose tokens are not a prefix of prompt + answer, two
    variants that tokenize alike, and one that would absorb another: all prompts pass. Each
    prompt with its whole trie is at most DEFAULT_BATCH_TOKENS tokens, so with default settings
    no trie is split and no prompt is run twice (token efficiency 1 on every path)."""
    ck = answerdist.load(request.getfixturevalue(f"{vocabulary}_checkpoint"))
    encoder = PromptEncoder(ck, mode)
    for task in load_tasks("large"):
        sequences = task_sequences(encoder, task)
        assert len(sequences) == len(task.prompts)
        n_variants = sum(len(a.variants) for a in task.answers)
        for s in sequences:
            assert len(s.continuations) == n_variants
            assert len(s.trie.ends) == n_variants
            assert len(s.trie) <= sum(map(len, s.continuation_ids))
            assert len(s) <= DEFAULT_BATCH_TOKENS, (task.name, s.prompt_id, len(s))
        # The packed (CUDA) path at the default budget: nothing split, nothing run twice.
        packed = make_batches(sequences, DEFAULT_BATCH_TOKENS, pack=True)
        processed = sum(b.processed_tokens for b in packed)
        assert sum(len(s) for s in sequences) / processed >= 0.95


def few_prompts(n):
    return [dataclasses.replace(t, prompts=t.prompts[:n]) for t in load_tasks("large")]


def test_large_tasks_score_end_to_end_with_token_efficiency(tiny_checkpoint, tmp_path):
    result = answerdist.score_checkpoint(tiny_checkpoint, tasks=few_prompts(1), mode="chat",
                                     out=tmp_path, label="tiny")
    manifest = json.loads((tmp_path / "tiny" / "manifest.json").read_text())
    assert manifest["token_efficiency"] >= 0.95
    for task in few_prompts(1):
        table = result.tables[task.name].to_pydict()
        assert len(table["prob"]) == len(task.answers)
        entry = manifest["tasks"][task.name]
        assert entry["answers"] == len(task.answers) and entry["prompts"] == 1
        assert entry["tokens_needed"] >= 0.95 * entry["tokens_processed"]
        probs = np.array(table["prob"]).reshape(1, -1)
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-9) and (probs > 0).all()
        assert table["answer"][: len(task.answers)] == list(task.answer_names)
        coverage = np.array(table["coverage"])
        assert ((coverage > 0) & (coverage <= 1)).all()
