"""A prompt whose last characters merge with an answer's first ones: the exact N / D.

Against brute force on tiny vocabularies, where every token sequence after the head H can be
enumerated: transformers' float32 forward passes, token texts read through the tokenizer's own
decode (not the engine's byte pieces), and every sequence whose text begins with T (for D) or
spells T + the answer (for N under --tokenizations all) found by a search over the whole
vocabulary. Templates that merge ("[/INST]" then "{", a reply prefix ending in a letter) and
ones that do not, in chat and in base mode, under both --tokenizations settings.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from answerdist.cli import score
from answerdist.lab.corpus import train_bpe
from tests import tiny

INST_TEMPLATE = tiny.INST_TEMPLATE.replace("eos_token", "'<|endoftext|>'")
MERGES = ["[/INST]{1}", "[/INST]{2}", "[/INST]{3}", "Heads", "Hearts", "Heat", "[/INST]{7}"]
# SentencePiece-style (no pre-tokenizer): "]{" after varied text, never a whole prompt
SP_MERGES = [f"{w}]{{{d}}}" for w in ("x", "ab", "Q", "z9", "end", "T") for d in range(1, 8)]


def _tokenizer(directory):
    """The tiny vocabulary, trained with strings that teach it "]{" and "Hea..." merges."""
    tok = train_bpe(tiny.CORPUS * 20 + MERGES * 60, 300, tiny.SPECIALS, bos="<|bos|>")
    assert tok.get_vocab_size() <= 301
    tok.save(str(directory / "tokenizer.json"))
    assert tok.encode("[/INST]{1}").tokens[-3:] != ["]", "{", "1"]  # it merges
    return tok


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("merging")
    model = tiny.make_checkpoint(directory, arch="llama", template=INST_TEMPLATE, init=0.1)
    _tokenizer(directory)
    return directory, model


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory):
    """Mistral v0.1's shape: a SentencePiece-style vocabulary and the [INST] template, where
    "[/INST]" then "{1}" tokenizes as "]{" "1}"."""
    directory = tmp_path_factory.mktemp("sentencepiece")
    model = tiny.make_checkpoint(directory, arch="mistral", vocab_size=460, init=0.1)
    tok = tiny.write_sentencepiece_tokenizer(directory, tiny.CORPUS * 20 + SP_MERGES * 20)
    assert tok.get_vocab_size() <= 460
    assert "]{" in tok.encode("[INST] Pick one. [/INST]{1}").tokens
    return directory, model


def _task(path, answers, assistant_prefix="", response_prefix="", end="boundary"):
    lines = [f'name = "{path.stem}"', f"answers = {json.dumps(answers)}", f'end = "{end}"']
    if assistant_prefix:
        lines.append(f"assistant_prefix = {json.dumps(assistant_prefix)}")
    if response_prefix:
        lines.append(f"response_prefix = {json.dumps(response_prefix)}")
    lines += ['[[prompts]]', 'id = "a"', 'text = "Pick one."',
              '[[prompts]]', 'id = "b"', 'text = "Flip a coin."']
    path.write_text("\n".join(lines) + "\n")
    return path


class Oracle:
    """Brute force through transformers: every probability a full float32 forward pass."""

    def __init__(self, model, directory):
        from transformers import PreTrainedTokenizerFast

        self.model = model
        self.tok = PreTrainedTokenizerFast.from_pretrained(str(directory))
        vocab = model.config.vocab_size
        special = set(self.tok.all_special_ids)
        # A token's text inside a text: after a letter (a SentencePiece decoder strips the
        # leading space of a whole text), with the letter taken off.
        self.anchor = next(self.tok.convert_tokens_to_ids(t) for t in ("a", "<0x61>")
                           if self.tok.convert_tokens_to_ids(t) not in (None,
                                                                         self.tok.unk_token_id))
        self.text = [None if i in special or i >= len(self.tok) else self.decode([i])
                     for i in range(vocab)]
        self.boundary = np.array([i in special or i >= len(self.tok) or not self.text[i]
                                  or (self.text[i][0] != "\ufffd"
                                      and not self.text[i][0].isalnum())
                                  for i in range(vocab)])

    @lru_cache(maxsize=None)  # noqa: B019 - one oracle per module
    def probs(self, ids: tuple[int, ...]) -> np.ndarray:
        with torch.no_grad():
            logits = self.model(torch.tensor([ids])).logits[0, -1].double()
        return torch.softmax(logits, -1).numpy()

    def decode(self, ids) -> str:
        return self.tok.decode([self.anchor, *ids], skip_special_tokens=False)[1:]

    def prefix_probability(self, head, tail: str) -> float:
        """D: every token sequence after `head` whose text begins with `tail`."""
        total = 0.0

        def walk(ids, p):
            nonlocal total
            probs = self.probs(tuple(head) + tuple(ids))
            here = self.decode(ids)
            for v, piece in enumerate(self.text):
                if not piece:
                    continue
                text = here + piece
                if text.startswith(tail):
                    total += p * probs[v]
                elif tail.startswith(text):
                    walk(ids + [v], p * probs[v])

        walk([], 1.0)
        return total

    def spelled_probability(self, head, text: str, ids_only=None, stop=None) -> float:
        """N: every token sequence after `head` spelling `text` exactly (or only `ids_only`),
        then a boundary token (or the token `stop`)."""
        total = 0.0
        end = (lambda probs: probs[self.boundary].sum()) if stop is None else (
            lambda probs: probs[stop])

        def walk(ids, p):
            nonlocal total
            probs = self.probs(tuple(head) + tuple(ids))
            here = self.decode(ids)
            if here == text and ids:
                total += p * end(probs)
                return
            for v, piece in enumerate(self.text):
                if piece and text.startswith(here + piece):
                    walk(ids + [v], p * probs[v])

        if ids_only is None:
            walk([], 1.0)
            return total
        p = 1.0
        for k, v in enumerate(ids_only):
            p *= self.probs(tuple(head) + tuple(ids_only[:k]))[v]
        return p * end(self.probs(tuple(head) + tuple(ids_only)))


def _head(tok_ids, joints):
    h = len(tok_ids)
    for joint in joints:
        h = min(h, next((i for i, (x, y) in enumerate(zip(tok_ids, joint, strict=False))
                         if x != y), min(len(tok_ids), len(joint))))
    return h


CASES = [  # (mode, answers, assistant_prefix, response_prefix, merges)
    ("chat", ["{1}", "{2}", "{3}"], "", "", True),  # "[/INST]" + "{" -> "]{"
    ("chat", ["ds", "rts", "t"], "Hea", "", True),  # a reply prefix ending in a letter
    ("base", ["ds", "rts"], "", "Hea", True),  # the same in base mode
    ("chat", ["Heads", "Tails"], "", "", False),  # no merge: "[/INST]" then "H"
]


@pytest.mark.parametrize("tokenizations", ["canonical", "all"])
@pytest.mark.parametrize(("mode", "answers", "assistant_prefix", "response_prefix", "merges"),
                         CASES)
def test_merged_boundary_equals_brute_force(checkpoint, tmp_path, tokenizations, mode, answers,
                                            assistant_prefix, response_prefix, merges):
    directory, model = checkpoint
    task = _task(tmp_path / "m.toml", answers, assistant_prefix, response_prefix)
    assert score.main([str(directory), "--tasks", str(task), "--mode", mode, "--out",
                       str(tmp_path / "out"), "--label", "x", "--tokenizations",
                       tokenizations]) == 0
    rows = pq.read_table(tmp_path / "out" / "x" / "m.parquet").to_pylist()
    oracle = Oracle(model, directory)
    worst = 0.0
    for prompt_id in ("a", "b"):
        mine = [r for r in rows if r["prompt_id"] == prompt_id]
        text = mine[0]["prompt_text"]
        add = mode == "base"
        prompt_ids = oracle.tok(text, add_special_tokens=add)["input_ids"]
        joints = {r["continuation"]: oracle.tok(text + r["continuation"],
                                                add_special_tokens=add)["input_ids"]
                  for r in mine}
        h = _head(prompt_ids, joints.values())
        assert all(r["boundary_crossed"] is merges for r in mine)
        assert (h < len(prompt_ids)) is merges
        head = prompt_ids[:h]
        tail = text[len(oracle.decode(head[1:] if add else head)):] if merges else ""
        assert all(r["boundary_chars"] == len(tail) for r in mine)
        assert mine[0]["prompt_token_ids"] == head
        d = oracle.prefix_probability(head, tail) if merges else 1.0
        for r in mine:
            cont = r["continuation"]
            assert r["prompt_token_ids"] + r["continuation_token_ids"] == joints[cont]
            n = oracle.spelled_probability(
                head, tail + cont,
                None if tokenizations == "all" else joints[cont][h:])
            want = math.log(n / d)
            worst = max(worst, abs(r["logprob"] - want) / max(1.0, abs(want)))
            assert abs(r["logprob"] - want) <= 2e-6 * max(1.0, abs(want)), (prompt_id, cont)
    print(f"{mode} {answers} {tokenizations}: worst relative error {worst:.1e}")


@pytest.mark.parametrize("tokenizations", ["canonical", "all"])
@pytest.mark.parametrize(("answers", "merges"), [(["{1}", "{2}", "{3}"], True),
                                                 (["Heads", "Tails"], False)])
def test_a_mistral_style_vocabulary_and_template_score_exactly(sentencepiece, tmp_path,
                                                               tokenizations, answers, merges):
    """Mistral v0.1's case: every Zhang et al. file was refused there ("[/INST]" then "{"
    merges into "]{"). The numbers equal brute force, and so does the unmerged case."""
    directory, model = sentencepiece
    task = _task(tmp_path / "m.toml", answers)
    assert score.main([str(directory), "--tasks", str(task), "--mode", "chat", "--out",
                       str(tmp_path / "out"), "--label", "x", "--tokenizations",
                       tokenizations]) == 0
    rows = pq.read_table(tmp_path / "out" / "x" / "m.parquet").to_pylist()
    oracle = Oracle(model, directory)
    for prompt_id in ("a", "b"):
        mine = [r for r in rows if r["prompt_id"] == prompt_id]
        text = mine[0]["prompt_text"]
        joints = {r["continuation"]: oracle.tok(text + r["continuation"],
                                                add_special_tokens=False)["input_ids"]
                  for r in mine}
        head = mine[0]["prompt_token_ids"]
        assert all(r["boundary_crossed"] is merges for r in mine)
        assert all(joints[r["continuation"]][:len(head)] == head for r in mine)
        tail = oracle.decode(oracle.tok(text, add_special_tokens=False)["input_ids"][len(head):])
        assert text.endswith(tail) and (tail != "") is merges
        assert all(r["boundary_chars"] == len(tail) for r in mine)
        d = oracle.prefix_probability(head, tail) if merges else 1.0
        for r in mine:
            cont = r["continuation"]
            n = oracle.spelled_probability(
                head, tail + cont,
                None if tokenizations == "all" else joints[cont][len(head):])
            want = math.log(n / d)
            assert abs(r["logprob"] - want) <= 2e-6 * max(1.0, abs(want)), (prompt_id, cont)


def test_end_of_turn_after_a_merged_boundary(checkpoint, tmp_path):
    """end = "turn" (Zhang et al.'s eos: true): N closes T + answer with the end of the turn."""
    directory, model = checkpoint
    task = _task(tmp_path / "m.toml", ["{1}", "{2}"], end="turn")
    assert score.main([str(directory), "--tasks", str(task), "--mode", "chat", "--out",
                       str(tmp_path / "out"), "--label", "x", "--tokenizations", "all"]) == 0
    oracle = Oracle(model, directory)
    stop = oracle.tok.convert_tokens_to_ids("<|endoftext|>")
    rows = pq.read_table(tmp_path / "out" / "x" / "m.parquet").to_pylist()
    for r in rows:
        head = r["prompt_token_ids"]
        tail = r["prompt_text"][len(r["prompt_text"]) - r["boundary_chars"]:]
        assert r["boundary_crossed"] and tail == "]"
        want = math.log(oracle.spelled_probability(head, tail + r["continuation"], stop=stop)
                        / oracle.prefix_probability(head, tail))
        assert abs(r["logprob"] - want) <= 2e-6 * max(1.0, abs(want)), r["prompt_id"]


def test_too_many_prefix_sequences_is_one_line(checkpoint, tmp_path, capsys):
    """D's prefix sequences are bounded by --max-tokenizations: past it, one line, exit 2."""
    directory, _ = checkpoint
    task = _task(tmp_path / "m.toml", ["ds", "rts"], assistant_prefix="Hea")
    out = tmp_path / "out"
    assert score.main([str(directory), "--tasks", str(task), "--mode", "chat", "--out",
                       str(out), "--label", "x", "--max-tokenizations", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "--max-tokenizations" in err
    assert not (out / "x").exists()


# Prompt ends and answers from the tiny vocabulary's pieces (it learned "]{", "Heads", ...)
ENDS = ["", "Hea", "He", "H", "Ta", "Tai", "Re", "Answer:", "x", "]", " "]
STARTS = ["ds", "rts", "t", "{1}", "{2}", "{3}", "Heads", "Tails", "7", "ils", "d", "{7}"]


def test_fresh_prompt_ends_and_answers_score_within_one_or_are_one_line(checkpoint):
    """Random reply prefixes and answers from the tiny vocabulary's pieces (hypothesis): each
    task scores with finite log-probabilities, coverage at most 1 (N <= D), and rows marked
    crossed exactly where the prompt's tokens are not a prefix of prompt + answer; or it is
    refused in one line."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from transformers import PreTrainedTokenizerFast

    from answerdist import score_checkpoint
    from answerdist.engine.tasks import parse_tasks
    from answerdist.errors import EngineError

    directory, _ = checkpoint
    tok = PreTrainedTokenizerFast.from_pretrained(str(directory))

    seen = set()
    words = st.lists(st.sampled_from(STARTS), min_size=1, max_size=2).map("".join)

    @settings(max_examples=25, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(prefix=st.sampled_from(ENDS),
           answers=st.lists(words, min_size=2, max_size=4, unique=True))
    def scores(prefix, answers):
        text = (f'name = "m"\nanswers = {json.dumps(answers)}\n'
                + (f"assistant_prefix = {json.dumps(prefix)}\n" if prefix else "")
                + '[[prompts]]\nid = "a"\ntext = "Pick one."\n')
        try:
            (task,) = parse_tasks(text, "m.toml")
            result = score_checkpoint(directory, tasks=[task], mode="chat", progress=False)
        except EngineError as e:
            assert "\n" not in str(e)
            return
        rows = result.tables["m"].to_pylist()
        assert all(math.isfinite(r["logprob"]) for r in rows)
        assert sum(math.exp(r["logprob"]) for r in rows) <= 1 + 1e-6
        prompt = tok(rows[0]["prompt_text"], add_special_tokens=False)["input_ids"]
        crossed = any(tok(rows[0]["prompt_text"] + r["continuation"],
                          add_special_tokens=False)["input_ids"][:len(prompt)] != prompt
                      for r in rows)
        assert all(r["boundary_crossed"] is crossed for r in rows), (prefix, answers)
        seen.add(crossed)

    scores()
    assert seen == {True, False}  # the draws reached merged and unmerged prompts alike
