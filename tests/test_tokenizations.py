"""`--tokenizations all`: P(answer text) summed over every token sequence that spells it.

Checked against brute force: every tokenization enumerated independently from the transformers
tokenizer's vocabulary, each scored with one transformers forward (plus the boundary mass), the
probabilities summed. The tokenizer here is trained so that "10" and "100" are single tokens as
well as "1" and "0", so numbers have several tokenizations.
"""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

import answerdist
from answerdist.engine.tasks import Answer, Prompt, Task
from answerdist.engine.text.tokenizations import TokenPieces
from answerdist.errors import TaskError, TokenizerError
from benchmarks.naive_scoring import boundary_ids
from tests import tiny

NUMBERS = Task("numbers", "", (Answer("1", ("1",)), Answer("10", ("10",)), Answer("100", ("100",)),
                               Answer("5", ("5",))),
               (Prompt("plain", "Pick 1, 5, 10 or 100."), Prompt("terse", "Number?")))


def number_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=tiny.SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(tiny.CORPUS * 20 + ["10 100 10 100 1 10 0 100 10"] * 60, trainer)
    bos = tok.token_to_id("<|bos|>")
    tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A",
                                                       special_tokens=[("<|bos|>", bos)])
    return tok


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("ckpt")
    model = tiny.make_checkpoint(directory, arch="llama", kv_heads=2, init=0.1)
    number_tokenizer().save(str(directory / "tokenizer.json"))
    hf = PreTrainedTokenizerFast.from_pretrained(str(directory))
    assert {"10", "Ġ10", "1", "0"} <= set(hf.get_vocab()), "the test needs several tokenizations"
    return directory, model, hf


def brute_force_tokenizations(hf, text: str) -> list[list[int]]:
    """Independently of the engine: token sequences whose decoded pieces concatenate to text."""
    pieces = {}
    for token, i in hf.get_vocab().items():
        if i not in hf.all_special_ids:
            piece = hf.convert_tokens_to_string([token])
            if piece and "\ufffd" not in piece:
                pieces.setdefault(piece, []).append(i)
    out = []

    def walk(rest, prefix):
        if not rest:
            out.append(prefix)
        for piece, ids in pieces.items():
            if rest.startswith(piece):
                for i in ids:
                    walk(rest[len(piece):], prefix + [i])

    walk(text, [])
    return out


@torch.no_grad()
def brute_force_logprob(model, hf, prompt_ids, continuation, boundary) -> tuple[float, int]:
    total, count = 0.0, 0
    for seq in brute_force_tokenizations(hf, continuation):
        ids = torch.tensor([prompt_ids + seq])
        logp = model(input_ids=ids).logits.double().log_softmax(-1)[0]
        lp = sum(float(logp[len(prompt_ids) - 1 + k, t]) for k, t in enumerate(seq))
        lp += float(logp[-1, boundary].logsumexp(0))
        total += math.exp(lp)
        count += 1
    return math.log(total), count


@pytest.mark.parametrize("mode", ["base", "chat"])
def test_all_tokenizations_sum_to_brute_force(setup, mode):
    directory, model, hf = setup
    boundary = boundary_ids(hf, model.config.vocab_size)
    result = answerdist.score_checkpoint(directory, tasks=[NUMBERS], mode=mode, tokenizations="all")
    canonical = answerdist.score_checkpoint(directory, tasks=[NUMBERS], mode=mode)
    rows = result.to_arrow().to_pylist()
    variants = result.to_arrow(variants=True).to_pylist()
    several = 0
    for row, v, c in zip(rows, variants, canonical.to_arrow().to_pylist(), strict=True):
        want, count = brute_force_logprob(model, hf, row["prompt_token_ids"], row["continuation"],
                                          boundary)
        assert v["tokenizations"] == count
        several += count > 1
        assert abs(row["logprob"] - want) <= 1e-6 * max(1.0, abs(want)), (
            row["prompt_id"], row["answer"])
        # the canonical path alone is what the default mode scores, and the share is the rest
        # (two runs with different tries agree to rounding only)
        share = -math.expm1(c["logprob"] - row["logprob"])
        assert row["noncanonical_share"] == pytest.approx(share, abs=1e-5)
        assert 0.0 <= row["noncanonical_share"] < 1.0
        if count == 1:
            assert (row["noncanonical_share"] == 0.0
                    and math.copysign(1, row["noncanonical_share"]) == 1)
        assert c["noncanonical_share"] is None
    assert several >= 4  # " 10", " 100" (and chat's "10", "100") have several each
    for prompt_id in {r["prompt_id"] for r in rows}:
        probs = [r["prob"] for r in rows if r["prompt_id"] == prompt_id]
        assert abs(sum(probs) - 1.0) < 1e-12


def test_too_many_tokenizations_is_one_clear_error(setup):
    directory, _, _ = setup
    with pytest.raises(TaskError, match="more than 2 tokenizations; raise --max-tokenizations"):
        answerdist.score_checkpoint(directory, tasks=[NUMBERS], mode="base", tokenizations="all",
                                max_tokenizations=2)


def test_enumeration_matches_an_independent_one_on_the_real_llama3_vocabulary():
    tok = tiny.llama3_tokenizer()
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok)
    pieces = TokenPieces(tok, "llama3")
    for text in (" 10", " Heads", "Tails", " Monday"):  # ASCII: every piece decodes alone
        ours = pieces.tokenizations(text, 10_000)
        assert sorted(map(tuple, ours)) == sorted(map(tuple, brute_force_tokenizations(hf, text)))
        assert tok.encode(text, add_special_tokens=False).ids in ours
    cat = pieces.tokenizations(" 猫", 10_000)  # byte pieces: checked by decoding instead
    assert len(cat) > 1 and all(tok.decode(p) == " 猫" for p in cat)


def test_a_tokenizer_that_is_not_byte_level_is_refused():
    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(TokenizerError, match="byte-level"):
        TokenPieces(tok, "wordlevel")
