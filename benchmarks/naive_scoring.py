"""The naive way to score answers, as lm-evaluation-harness scores multiple-choice options.

One transformers forward per (prompt, continuation) pair over the whole prompt + continuation,
a full log-softmax over the vocabulary at every position, the continuation's token log-probs
gathered and summed; plus the log of the boundary-token mass after the continuation (the
boundary factor of the answer probability, as docs/results.md defines it). Independent of the
engine (its own tokenization with the transformers tokenizer, its own boundary set), so it
serves as the exactness reference in the tests and as the peer in the scoring benchmark.
transformers is a test-only dependency: import this only from tests and benchmarks.
"""

from __future__ import annotations

import torch


def boundary_ids(hf_tokenizer, vocab_size: int) -> torch.Tensor:
    """Token ids that end an answer, computed from the transformers tokenizer: special tokens,
    and tokens whose text alone is empty or starts with a non-alphanumeric character other than
    U+FFFD (an incomplete UTF-8 sequence: a piece of a multi-byte character)."""
    special = set(hf_tokenizer.all_special_ids)
    special |= {i for i, t in hf_tokenizer.added_tokens_decoder.items() if t.special}
    ids = []
    for i in range(vocab_size):
        text = (hf_tokenizer.decode([i], clean_up_tokenization_spaces=False)
                if i < len(hf_tokenizer) else "")
        if i in special or not text or (text[0] != "\ufffd" and not text[0].isalnum()):
            ids.append(i)
    return torch.tensor(ids)


def continuation_ids(hf_tokenizer, prompt_text: str, continuation: str, add_special_tokens: bool):
    """(prompt ids, continuation ids): the joint tokenization split after the prompt's tokens."""
    prompt = hf_tokenizer(prompt_text, add_special_tokens=add_special_tokens).input_ids
    joint = hf_tokenizer(prompt_text + continuation,
                         add_special_tokens=add_special_tokens).input_ids
    assert joint[: len(prompt)] == prompt, (prompt_text, continuation)
    return prompt, joint[len(prompt):]


@torch.no_grad()
def naive_logprobs(model, hf_tokenizer, prompt_text: str, continuations: list[str],
                   add_special_tokens: bool, boundary: torch.Tensor,
                   batch_size: int = 32) -> list[float]:
    """log P(continuation tokens | prompt) + log P(boundary next), one row per continuation."""
    pairs = [continuation_ids(hf_tokenizer, prompt_text, c, add_special_tokens)
             for c in continuations]
    out = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        seqs = [p + c for p, c in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for r, s in enumerate(seqs):  # right padding: positions stay 0..len-1
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        logprobs = model(input_ids=ids, attention_mask=mask).logits.double().log_softmax(-1)
        for r, (p, c) in enumerate(chunk):
            positions = torch.arange(len(p) - 1, len(p) + len(c) - 1)
            total = logprobs[r, positions, torch.tensor(c)].sum()
            total += logprobs[r, len(p) + len(c) - 1, boundary].logsumexp(0)
            out.append(float(total))
    return out
