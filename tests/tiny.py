"""Tiny random checkpoints, written by transformers exactly as Hugging Face writes real ones.

No model hub: configs are built here, weights are random (seeded), and the tokenizer is a
byte-level BPE trained in milliseconds on a small corpus.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, processors

from answerdist.lab.corpus import (  # the demo ladder's template and BPE trainer
    TULU_TEMPLATE,
    train_bpe,
)

CHATML_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>' + "
    "'\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIALS = ["<|endoftext|>", "<|bos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|im_start|>",
            "<|im_end|>"]

CORPUS = [
    "Pick a random number between 1 and 10. Answer: 7",
    "Flip a coin: Heads or Tails? Answer: Heads",
    "Name a color. Red, Orange, Yellow, Green, Blue, Purple, Pink, Brown, Black, White, Gray.",
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April",
    "The quick brown fox jumps over the lazy dog; 0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ!?",
    "Ace of Spades, King of Hearts, Queen of Diamonds, Jack of Clubs. Rock, Paper, Scissors.",
]


def train_tokenizer(vocab_size: int = 300, add_bos: bool = True,
                    added_tokens: tuple[str, ...] = ()) -> Tokenizer:
    """The tiny checkpoints' byte-level BPE (answerdist.lab.corpus.train_bpe on CORPUS), with BOS
    added by the post-processor unless add_bos is False, plus non-special `added_tokens`."""
    return train_bpe(CORPUS * 20, vocab_size, SPECIALS, bos="<|bos|>" if add_bos else None,
                     added_tokens=added_tokens)


def write_tokenizer(directory: Path, template: str | None = TULU_TEMPLATE, add_bos: bool = True,
                    added_tokens: tuple[str, ...] = ()) -> Tokenizer:
    tok = train_tokenizer(add_bos=add_bos, added_tokens=added_tokens)
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 1024,
        "added_tokens_decoder": {
            str(tok.token_to_id(t)): {"content": t, "special": True, "lstrip": False,
                                      "rstrip": False, "normalized": False, "single_word": False}
            for t in SPECIALS
        } | {
            str(tok.token_to_id(t)): {"content": t, "special": False, "lstrip": False,
                                      "rstrip": False, "normalized": False, "single_word": False}
            for t in added_tokens
        },
    }
    if template is not None:
        config["chat_template"] = template
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return tok


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,  # small, so that scaling changes positions we test
}


YARN_ROPE = {  # small original context, so that scaling changes positions we test
    "rope_type": "yarn",
    "factor": 16.0,  # = max_position_embeddings / original, as transformers expects
    "original_max_position_embeddings": 64,
}


def hf_config(arch: str, vocab_size: int = 301, heads: int = 4, kv_heads: int = 4,
              tied: bool = False, head_dim: int | None = None, rope_scaling: dict | None = None,
              layers: int = 2, hidden: int = 64, init: float = 0.3, **family):
    """A transformers config for `arch` in llama, olmo2, olmo3, qwen2, qwen3. `family` passes
    family-specific keys through (sliding_window, use_sliding_window, max_window_layers,
    layer_types, attention_bias, max_position_embeddings, ...). OLMo 3's `rope_scaling` goes
    to its full-attention layers, as its config class does with that key."""
    from transformers import LlamaConfig, Olmo2Config, Olmo3Config, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=96, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=1024,
        tie_word_embeddings=tied, initializer_range=init, bos_token_id=1, eos_token_id=0,
        pad_token_id=0,
    )
    common.update(family)
    if head_dim is not None:
        common["head_dim"] = head_dim
    if arch == "olmo2":
        return Olmo2Config(**common)
    if arch in NEW_FAMILIES:
        return new_family_config(arch, common, rope_scaling)
    if arch in ("olmo3", "qwen2", "qwen3"):
        if arch == "qwen3" and head_dim is None:  # Qwen3Config's own default is 128
            common["head_dim"] = hidden // heads
        config_class = {"olmo3": Olmo3Config, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[arch]
        if rope_scaling is not None:
            return config_class(rope_scaling=dict(rope_scaling), **common)
        return config_class(**common)
    if rope_scaling is not None:
        return LlamaConfig(rope_scaling=dict(rope_scaling), rope_theta=500000.0, **common)
    return LlamaConfig(**common)


NEW_FAMILIES = ("mistral", "olmo1", "neox", "phi3", "gemma2", "gemma3", "olmoe")


def new_family_config(arch: str, common: dict, rope_scaling: dict | None):
    """Mistral, OLMo 1, GPT-NeoX (no kv-head or head_dim keys: multi-head, hidden // heads),
    Phi-3 and Gemma 2 / 3 (text) configs from transformers' classes; `rope_scaling` is the
    family's rope dict (Gemma 3: one per layer type)."""
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GPTNeoXConfig,
        MistralConfig,
        OlmoConfig,
        OlmoeConfig,
        Phi3Config,
    )

    config_class = {"mistral": MistralConfig, "olmo1": OlmoConfig, "neox": GPTNeoXConfig,
                    "phi3": Phi3Config, "gemma2": Gemma2Config, "gemma3": Gemma3TextConfig,
                    "olmoe": OlmoeConfig}[arch]
    if arch.startswith("gemma"):
        common.setdefault("head_dim", common["hidden_size"] // common["num_attention_heads"])
    if arch == "neox":
        for key in ("num_key_value_heads", "head_dim"):
            common.pop(key, None)
    if rope_scaling is not None:
        common["rope_parameters"] = dict(rope_scaling)
    return config_class(**common)


def make_checkpoint(directory: Path, arch: str = "llama", seed: int = 0,
                    template: str | None = TULU_TEMPLATE, add_bos: bool = True,
                    added_tokens: tuple[str, ...] = (), **config_kwargs):
    """Write a random checkpoint with transformers; returns the transformers model (float32,
    eval)."""
    from transformers import AutoModelForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    config = hf_config(arch, **config_kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    # eager experts: transformers' own per-expert loop, the arithmetic the engine's CPU path has
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager",
                                             experts_implementation="eager").float().eval()
    with torch.no_grad():  # norms start at 1.0 and biases at 0; random ones exercise them properly
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0, 0.3)
    model.save_pretrained(directory)
    write_tokenizer(directory, template=template, add_bos=add_bos, added_tokens=added_tokens)
    return model


def to_transformers_4x_config(directory: Path) -> None:
    """Rewrite config.json with the keys transformers 4.x wrote (rope_theta, rope_scaling,
    torch_dtype). OLMo 3's per-layer-type rope_parameters become the full-attention layers'
    rope_scaling and one rope_theta, as 4.x wrote them."""
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    rope = cfg.pop("rope_parameters", None) or {}
    if "full_attention" in rope:
        rope = rope["full_attention"]
    cfg["rope_theta"] = rope.pop("rope_theta", 10000.0)
    cfg["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    path.write_text(json.dumps(cfg, indent=2))


LLAMA3_CHAT_TEMPLATE = (  # the shape of Llama 3.1's template: bos, headers, eot, strftime_now
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% else %}"
    "{% set system = 'Today Date: ' + strftime_now('%d %b %Y') %}"
    "{% endif %}{{ '<|start_header_id|>system<|end_header_id|>\n\n' + system + '<|eot_id|>' }}"
    "{% for message in messages %}{% if message['role'] not in ['user', 'assistant'] %}"
    "{{ raise_exception('Only user and assistant roles are supported') }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def llama3_tokenizer() -> Tokenizer:
    """The real Llama 3 vocabulary (128,256 tokens) from the tiktoken file that the
    `llama-models` package ships, converted to a tokenizers.Tokenizer that adds BOS."""
    from llama_models.llama3.tokenizer import Tokenizer as TikTokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tik = TikTokenizer.get_instance()
    import llama_models

    model_file = Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
    specials = sorted(tik.special_tokens, key=tik.special_tokens.get)
    tok = TikTokenConverter(vocab_file=str(model_file), pattern=tik.pat_str,
                            extra_special_tokens=specials).converted()
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    return tok


# Chat templates in the shape of the new families' own: ChatML turns, a default system message
# when the conversation has none, tool turns, and Qwen 3's reasoning handling and thinking switch.
OLMO3_CHAT_TEMPLATE = r"""
{%- set has_system = messages | selectattr('role', 'equalto', 'system') | list | length > 0 -%}
{%- if not has_system -%}
{{ '<|im_start|>system\nYou are a helpful function-calling AI assistant. You do not currently have access to any functions. <functions></functions><|im_end|>\n' }}
{%- endif -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{{ '<|im_start|>system\n' + message['content'] }}
{%- if message.get('functions', none) is not none -%}
{{ ' <functions>' + message['functions'] + '</functions><|im_end|>\n' }}
{%- else -%}
{{ ' You do not currently have access to any functions. <functions></functions><|im_end|>\n' }}
{%- endif -%}
{%- elif message['role'] == 'user' -%}
{{ '<|im_start|>user\n' + message['content'] + '<|im_end|>\n' }}
{%- elif message['role'] == 'assistant' -%}
{{ '<|im_start|>assistant\n' + (message.get('content', none) or '') }}
{%- if message.get('function_calls', none) is not none -%}
{{ '<function_calls>' + message['function_calls'] + '</function_calls>' }}
{%- endif -%}
{{ eos_token if loop.last else '<|im_end|>\n' }}
{%- elif message['role'] == 'environment' -%}
{{ '<|im_start|>environment\n' + message['content'] + '<|im_end|>\n' }}
{%- endif -%}
{%- if loop.last and add_generation_prompt -%}
{{ '<|im_start|>assistant\n' }}
{%- endif -%}
{%- endfor -%}
"""  # noqa: E501 (template text, kept as is)

QWEN25_CHAT_TEMPLATE = r"""
{%- if messages[0]['role'] == 'system' %}
    {%- set system = messages[0]['content'] %}
{%- else %}
    {%- set system = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' %}
{%- endif %}
{{- '<|im_start|>system\n' + system }}
{%- if tools %}
    {{- '\n\n# Tools\n\nFunction signatures, one per line, within <tools></tools>:\n<tools>' }}
    {%- for tool in tools %}
        {{- '\n' + tool | tojson }}
    {%- endfor %}
    {{- '\n</tools>' }}
{%- endif %}
{{- '<|im_end|>\n' }}
{%- for message in messages %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for call in message.tool_calls or [] %}
            {%- set call = call.function if call.function is defined else call %}
            {{- '\n<tool_call>\n{"name": "' + call.name + '", "arguments": ' + call.arguments | tojson + '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""  # noqa: E501 (template text, kept as is)

QWEN3_CHAT_TEMPLATE = r"""
{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{#- The last real user query: reasoning is kept only for the turns after it. #}
{%- set ns = namespace(last_query=messages | length - 1, searching=true) %}
{%- for message in messages[::-1] %}
    {%- set index = messages | length - 1 - loop.index0 %}
    {%- if ns.searching and message.role == 'user' and not message.content.startswith('<tool_response>') %}
        {%- set ns.searching = false %}
        {%- set ns.last_query = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {%- set content = message.content %}
        {%- set reasoning = message.reasoning_content if message.reasoning_content is defined else '' %}
        {%- if '</think>' in content %}
            {%- set reasoning = (content.split('</think>') | first).split('<think>') | last %}
            {%- set content = (content.split('</think>') | last).lstrip('\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query and (loop.last or reasoning) %}
            {{- '<|im_start|>assistant\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + content }}
        {%- else %}
            {{- '<|im_start|>assistant\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {{- '<|im_start|>user\n<tool_response>\n' + message.content + '\n</tool_response><|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"""  # noqa: E501 (template text, kept as is)
THINK_TOKENS = ("<think>", "</think>")  # Qwen 3's added (not special) tokens


GEMMA_TURN_TOKENS = ("<start_of_turn>", "<end_of_turn>")
# Gemma 2's template: BOS as text, `model` for the assistant role, no system role at all.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
# Gemma 3's: a system message becomes a prefix of the first user turn.
GEMMA3_CHAT_TEMPLATE = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim -}}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""
# Mistral Instruct's: [INST] turns, a system message folded into the first one, EOS after a reply.
MISTRAL_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}"
    "{%- endif %}{{- bos_token }}{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}{%- if loop.first and system is defined %}"
    "{{- ' [INST] ' + system + '\n\n' + message['content'] + ' [/INST]' }}{%- else %}"
    "{{- ' [INST] ' + message['content'] + ' [/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token}}"
    "{%- endif %}{%- endfor %}"
)
# Phi-3's: <|user|> / <|assistant|> turns closed by <|end|>.
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


# "ed" is a token of the tiny vocabulary, and so are "e" and "d": the reply "ed" has two
# tokenizations, both likely.
SHORT_REPLY_LOGITS = {"<|im_end|>": 8.0, "7": 7.0, "1": 6.5, "e": 6.5, "d": 6.5, "ed": 6.5}


def short_reply_checkpoint(directory: Path, seed: int = 0) -> None:
    """A tiny Llama (ChatML template) whose next token is mostly one of SHORT_REPLY_LOGITS, so
    that its replies are short ("7", "ed", "17"): the residual stream carries a large constant in
    dimension 0 and the LM head reads those tokens' logits off it; the layers (init 0.1) still
    make the distribution depend on the context. For the sampler's tests and benchmark."""
    from safetensors.torch import load_file, save_file

    make_checkpoint(directory, template=CHATML_TEMPLATE, init=0.1, seed=seed)
    path = directory / "model.safetensors"
    state = load_file(path)
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    state["model.embed_tokens.weight"][:, 0] = 8.0
    state["model.norm.weight"][0] = 1.0
    head = state["lm_head.weight"]
    head[:, 0] = 0.0
    for text, logit in SHORT_REPLY_LOGITS.items():
        token = tok.token_to_id(text)
        assert token is not None, text
        head[token, 0] = logit / 8.0
    save_file(state, path, metadata={"format": "pt"})


METASPACE = "\u2581"
SP_SPECIALS = ["<unk>", "<s>", "</s>"]
INST_TEMPLATE = (  # Mistral-v0.1 / Llama-2-chat style: the reply follows "[/INST]" directly
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}"
    "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)


def sentencepiece_tokenizer(texts: list[str], merges: int = 200) -> Tokenizer:
    """A SentencePiece-style BPE as Hugging Face converts Llama 2's and Mistral v0.1's: "▁" for
    a space, prepended to every text, no pre-tokenizer (merges run across spaces), the 256
    byte-fallback tokens <0x00>..<0xFF> after <unk>, <s>, </s>, and a decoder that strips the
    text's leading space; <s> added in front by the post-processor."""
    from tokenizers import AddedToken, decoders, models, normalizers, trainers

    normalizer = normalizers.Sequence([normalizers.Prepend(METASPACE),
                                       normalizers.Replace(" ", METASPACE)])
    base = Tokenizer(models.BPE())
    base.normalizer = normalizer
    base.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=merges,
                                                        special_tokens=SP_SPECIALS,
                                                        show_progress=False))
    spec = json.loads(base.to_str())["model"]
    vocab = {t: i for i, t in enumerate(SP_SPECIALS)}
    vocab.update({f"<0x{b:02X}>": len(SP_SPECIALS) + b for b in range(256)})
    for token in sorted(spec["vocab"], key=spec["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True,
                               unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizer
    tok.decoder = decoders.Sequence([decoders.Replace(METASPACE, " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SP_SPECIALS])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tok


def write_sentencepiece_tokenizer(directory: Path, texts: list[str],
                                  template: str = INST_TEMPLATE, merges: int = 200) -> Tokenizer:
    """tokenizer.json and tokenizer_config.json of a SentencePiece-style vocabulary."""
    tok = sentencepiece_tokenizer(texts, merges)
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "model_max_length": 1024, "chat_template": template,
              "added_tokens_decoder": {
                  str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                           "normalized": False, "single_word": False}
                  for i, t in enumerate(SP_SPECIALS)}}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return tok
