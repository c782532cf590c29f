"""Chat templates render as transformers renders them; token ids equal transformers' ids."""

from __future__ import annotations

import json

import pytest
import torch

import answerdist
from answerdist.errors import ChatTemplateError
from tests import tiny

CONVERSATIONS = [
    [{"role": "user", "content": "Pick a random number between 1 and 10."}],
    [{"role": "system", "content": "You are a pirate."},
     {"role": "user", "content": "Flip a coin!"}],
    [
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue"},
        {"role": "user", "content": "  Another one, please.  "},
    ],
]


def transformers_tokenizer(directory):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(directory))


@pytest.mark.parametrize("template",
                         [tiny.TULU_TEMPLATE, tiny.CHATML_TEMPLATE, tiny.LLAMA3_CHAT_TEMPLATE],
                         ids=["tulu", "chatml", "llama3"])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_render_chat_matches_apply_chat_template(tmp_path, template, generation_prompt):
    tiny.make_checkpoint(tmp_path, arch="olmo2", template=template, hidden=32, heads=2, kv_heads=2)
    ck = answerdist.load(tmp_path)
    hf = transformers_tokenizer(tmp_path)
    for messages in CONVERSATIONS[: 2 if template is tiny.LLAMA3_CHAT_TEMPLATE else 3]:
        theirs = hf.apply_chat_template(messages, tokenize=False,
                                        add_generation_prompt=generation_prompt)
        ours = ck.render_chat(messages, add_generation_prompt=generation_prompt)
        assert ours == theirs
        # Same ids too: transformers tokenizes a rendered chat without adding special tokens.
        assert (ck.encode(ours, add_special_tokens=False)
                == hf(theirs, add_special_tokens=False).input_ids)


def test_chat_template_jinja_file_takes_precedence(tmp_path):
    tiny.make_checkpoint(tmp_path, arch="olmo2", template=tiny.TULU_TEMPLATE, hidden=32, heads=2,
                         kv_heads=2)
    (tmp_path / "chat_template.jinja").write_text(tiny.CHATML_TEMPLATE)
    ck = answerdist.load(tmp_path)
    assert ck.render_chat(CONVERSATIONS[0]).endswith("<|im_start|>assistant\n")
    assert ck.render_chat(CONVERSATIONS[0]) == transformers_tokenizer(tmp_path).apply_chat_template(
        CONVERSATIONS[0], tokenize=False, add_generation_prompt=True)


def test_no_template_means_no_chat(tmp_path):
    tiny.make_checkpoint(tmp_path, arch="olmo2", template=None, hidden=32, heads=2, kv_heads=2)
    ck = answerdist.load(tmp_path)
    assert not ck.has_chat_template
    with pytest.raises(answerdist.EngineError, match="no chat template"):
        ck.render_chat(CONVERSATIONS[0])


HOSTILE_TEMPLATES = {
    "raises": "{{ raise_exception('roles must alternate') }}",
    "escapes": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "namespace_dunder": "{% set ns = namespace() %}{% set ns._secret = 1 %}{{ ns }}",
    "syntax": "{% for m in messages %}{{ m['content'] }",
    "mutates": "{% set _ = messages.append({'role': 'user', 'content': 'x'}) %}ok",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_TEMPLATES))
def test_bad_or_hostile_templates_are_chat_template_errors(tmp_path, name):
    tiny.make_checkpoint(tmp_path, arch="olmo2", template=HOSTILE_TEMPLATES[name], hidden=32,
                         heads=2, kv_heads=2)
    with pytest.raises(ChatTemplateError) as info:
        answerdist.load(tmp_path).render_chat(CONVERSATIONS[0])
    message = str(info.value)
    assert "\n" not in message and "tokenizer_config.json" in message


@pytest.fixture(scope="module")
def llama3_checkpoint(tmp_path_factory):
    """A tiny model over the real 128k Llama 3 vocabulary."""
    directory = tmp_path_factory.mktemp("llama3vocab")
    tiny.make_checkpoint(directory, arch="llama", vocab_size=128256, hidden=16, heads=2, kv_heads=1,
                         layers=1, template=tiny.LLAMA3_CHAT_TEMPLATE)
    tiny.llama3_tokenizer().save(str(directory / "tokenizer.json"))
    cfg = json.loads((directory / "tokenizer_config.json").read_text())
    cfg.update(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token=None,
               added_tokens_decoder={})
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg))
    return directory


PROMPTS = [
    "Pick a random number between 1 and 10.",
    "Flip a coin. Answer: Heads",
    "Think of a card... Ace of Spades? 10 of Hearts!",
    "  leading spaces, tabs\tand\nnewlines\n\n",
    "Unicode: café, naïve, 東京, emoji 🎲, math ∑",
    "<|eot_id|> special tokens in text <|begin_of_text|>",
    "numbers 1234567 and 3.14159, 100%",
    "",
]


def test_llama3_vocabulary_ids_equal_transformers(llama3_checkpoint):
    from llama_models.llama3.tokenizer import Tokenizer as TikTokenizer

    ck = answerdist.load(llama3_checkpoint)
    hf = transformers_tokenizer(llama3_checkpoint)
    tik = TikTokenizer.get_instance()
    assert ck.tokenizer.get_vocab_size() == 128256
    for text in PROMPTS:
        ours = ck.encode(text)
        assert ours == hf(text).input_ids, text
        assert ours[0] == 128000  # BOS from the tokenizer's own post-processor
        assert (ck.encode(text, add_special_tokens=False)
                == hf(text, add_special_tokens=False).input_ids)
        if "<|" not in text:  # tiktoken itself, a third independent implementation
            assert ours == tik.encode(text, bos=True, eos=False), text
    rendered = ck.render_chat([{"role": "user", "content": PROMPTS[0]}])
    assert rendered.startswith("<|begin_of_text|><|start_header_id|>system")
    ids = ck.encode(rendered, add_special_tokens=False)
    assert ids == hf.apply_chat_template([{"role": "user", "content": PROMPTS[0]}],
                                         add_generation_prompt=True, tokenize=True,
                                         return_dict=False)
    assert ck.logits(torch.tensor([ids])).shape == (1, len(ids), 128256)


@pytest.mark.parametrize("mode", ["base", "chat"])
def test_whole_suite_tokenizes_cleanly_with_the_llama3_vocabulary(llama3_checkpoint, mode):
    """Every prompt of every shipped task, through the real 128k tokenizer: the prompt's tokens
    are a prefix of prompt + answer, no two variants collide, and the answers score."""
    from answerdist.engine.scoring.scorer import (
        PromptEncoder,
        boundary_mask,
        score_task,
        task_sequences,
    )
    from answerdist.engine.tasks import load_tasks

    ck = answerdist.load(llama3_checkpoint)
    encoder = PromptEncoder(ck, mode)
    boundary = boundary_mask(ck)
    first_of_heads = ck.encode("Heads", add_special_tokens=False)[0]
    assert boundary[128009] and boundary[220] and not boundary[first_of_heads]
    for task in load_tasks("all"):
        sequences = task_sequences(encoder, task)
        assert all(len(s.trie) <= sum(map(len, s.continuation_ids)) for s in sequences)
    coin = load_tasks("coin")[0]
    result = score_task(ck, encoder, coin, task_sequences(encoder, coin), boundary)
    for prompt in result.prompts:
        assert prompt.distribution.sum() == pytest.approx(1.0) and 0 < prompt.coverage <= 1


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata", "Pacific/Kiritimati"])
def test_the_fixed_date_renders_the_same_in_every_time_zone(monkeypatch, zone):
    """strftime_now('%s') (seconds since the epoch) is the C library's, counted from local
    midnight: the fixed day renders as midnight UTC whatever TZ says; '%%s' stays literal."""
    import time as time_module

    from answerdist.engine.text.chat import ChatTemplate

    template = ChatTemplate("t", "{{ strftime_now('%s|%%s|%d %b %Y|%%%s') }}", {},
                            special_source="t").for_run("2024-07-26")
    monkeypatch.setenv("TZ", zone)
    time_module.tzset()
    try:
        rendered = template.render([{"role": "user", "content": "x"}])
    finally:
        monkeypatch.undo()
        time_module.tzset()
    assert rendered == "1721952000|%s|26 Jul 2024|%1721952000"


@pytest.mark.parametrize("extra", [1, 1000, 3_000_000])
def test_a_prompt_longer_than_the_render_bound_is_named_not_the_template(extra):
    """A 4 MB prompt is the prompt's fault: the line says so and names the bound."""
    from answerdist.engine.text.chat import ChatTemplate
    from answerdist.errors import ChatTemplateError

    template = ChatTemplate("t", "{% for m in messages %}{{ m.content }}{% endfor %}", {},
                            special_source="t").for_run("2024-07-26", max_chars=1_000_000)
    with pytest.raises(ChatTemplateError, match=r"the prompt itself holds [\d,]+ characters"):
        template.render([{"role": "user", "content": "x" * (1_000_000 + extra)}])
