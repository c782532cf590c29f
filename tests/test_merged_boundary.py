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

INST_TEMPLATE = (  # Mistral-v0.1-style: the reply follows "[/INST]" with nothing between
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}"
    "{{ message['content'] + '<|endoftext|>' }}{% endif %}{% endfor %}"
)
MERGES = ["[/INST]{1}", "[/INST]{2}", "[/INST]{3}", "Heads", "Hearts", "Heat", "[/INST]{7}"]


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
        self.text = [None if i in special or i >= len(self.tok) else
                     self.tok.decode([i], skip_special_tokens=False) for i in range(vocab)]
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
        return self.tok.decode(list(ids), skip_special_tokens=False)

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

    def spelled_probability(self, head, text: str, ids_only=None) -> float:
        """N: every token sequence after `head` spelling `text` exactly (or only `ids_only`),
        then a boundary token."""
        total = 0.0

        def walk(ids, p):
            nonlocal total
            probs = self.probs(tuple(head) + tuple(ids))
            here = self.decode(ids)
            if here == text and ids:
                total += p * probs[self.boundary].sum()
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
        return p * self.probs(tuple(head) + tuple(ids_only))[self.boundary].sum()


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
