"""Ancestral sampling of whole replies, seeded per sample, with a KV cache.

Sampling only *discovers* answers (the scorer then scores each exactly); it is also the check
that sampled frequencies agree with exact probabilities (tests/test_sampler.py).

Streams. Sample i of prompt p of task t under seed s draws its uniforms from a Philox stream
keyed by (s, t, p, i) alone, one uniform per token, and turns each into a token by inverting
the next-token distribution's CDF (in vocabulary order, float64). Samples are decoded in fixed
chunks of `CHUNK` consecutive indices of one prompt: the prompt is prefilled in a one-row pass,
and every chunk decodes all of its rows (finished rows along, their tokens ignored) until each
has stopped or `max_new_tokens` is reached. So every tensor that touches sample i has the same
shapes and contents whatever the number of samples asked for or the other prompts sampled: its
reply never depends on them, bit for bit (the chunk past the last requested index is computed
whole and cut).

Stopping follows the task's end rule (docs/tasks.md): under "turn" a reply stops at the first
special token, and it is finished when that token is one of the task's stop tokens
(`PromptEncoder.stops`: where generation stops) and, for the template's own end of turn
(`answerdist.engine.scoring.scorer.ReplyEnd`), the text before it ends with the end's text; under
"line" it also stops, finished, at a token starting with a newline. A reply that reaches
`max_new_tokens` is unfinished, and one that stops at another special token (an EOS where the
template ends turns otherwise) ended elsewhere: both are reported, never dropped. A reply whose
tokens do not spell whole UTF-8 characters (it stopped inside one: its text decodes with
U+FFFD) is unfinished too: its text is not what was sampled, so it is never an answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from answerdist.engine.model.checkpoint import Checkpoint
from answerdist.engine.model.transformer import KVCache
from answerdist.engine.settings import SamplingSettings, SettingError
from answerdist.engine.tasks import Task
from answerdist.engine.text.tokenizations import decode_inside

REPLACEMENT = "\ufffd"  # what a tokenizer decodes an incomplete UTF-8 sequence to
CHUNK = 64  # samples decoded together: part of the stream's definition (see the docstring)


@dataclass(frozen=True)
class Reply:
    """One sampled reply. `text` is the reply's text before its end (the end of the turn's
    own text, or the newline, left out); `status`: "finished" (it ended by the task's end
    rule), "unfinished" (max_new_tokens reached, or its bytes stop inside a UTF-8 character)
    or "other_end" (another special token)."""

    index: int
    token_ids: tuple[int, ...]  # generated, the stopping token included
    text: str
    status: str


def stream_key(seed: int, task: str, prompt_id: str, index: int) -> int:
    """The 128-bit Philox key of one sample's uniforms."""
    digest = hashlib.sha256(f"{seed}\0{task}\0{prompt_id}\0{index}".encode()).digest()
    return int.from_bytes(digest[:16], "little")


def draw(logits: torch.Tensor, uniforms: np.ndarray, settings: SamplingSettings) -> torch.Tensor:
    """One token per row of `logits` [B, V] from uniforms [B] in [0, 1): the first token whose
    cumulative probability passes u (vocabulary order; with top_p, over the nucleus in order of
    decreasing probability, ties by id), in float64."""
    probs = torch.softmax(logits.double() / settings.temperature, dim=-1)
    order = None
    if settings.top_p is not None:
        probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each one
        probs = probs.masked_fill(before >= settings.top_p, 0.0)
    cdf = probs.cumsum(-1)
    u = torch.as_tensor(uniforms, dtype=torch.float64, device=cdf.device)[:, None]
    picked = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=cdf.shape[-1] - 1)
    return picked[:, 0] if order is None else order.gather(1, picked)[:, 0]


class ReplySampler:
    """Samples replies to a task's prompts as `answerdist.engine.scoring.scorer.PromptEncoder`
    renders them."""

    def __init__(self, checkpoint: Checkpoint, encoder, settings: SamplingSettings):
        self.ck, self.encoder, self.settings = checkpoint, encoder, settings
        self.specials = set(encoder.specials)
        context = checkpoint.args.context
        if settings.max_new_tokens >= context:  # before a cache sized by it is allocated
            raise SettingError("max_new_tokens", f"must be below the model's context of "
                               f"{context:,} positions, got {settings.max_new_tokens:,}")

    def sample(self, task: Task, prompt, n: int, start: int = 0) -> list[Reply]:
        """Replies start .. start + n - 1 to `prompt` of `task`."""
        replies = []
        first, last = start // CHUNK, (start + n - 1) // CHUNK
        for chunk in range(first, last + 1):
            replies += [r for r in self._chunk(task, prompt, chunk)
                        if start <= r.index < start + n]
        return replies

    @torch.inference_mode()
    def _chunk(self, task: Task, prompt, chunk: int) -> list[Reply]:
        ck, settings = self.ck, self.settings
        text = self.encoder.prompt_text(task, prompt)
        prompt_ids = self.encoder.encode(text)
        indices = range(chunk * CHUNK, (chunk + 1) * CHUNK)
        streams = [np.random.Generator(np.random.Philox(key=stream_key(
            settings.seed, task.name, prompt.id, i))) for i in indices]
        model, device = ck.model, ck.device
        p = len(prompt_ids)
        cache = KVCache(ck.args, CHUNK, p + settings.max_new_tokens, ck.dtype, device)
        ids = torch.tensor([prompt_ids], device=device)
        hidden = model.hidden_states(ids, torch.arange(p, device=device)[None], cache=cache)
        logits = model.next_token_logits(hidden[:, -1]).expand(CHUNK, -1)
        generated = [[] for _ in indices]
        done = [None] * CHUNK
        for step in range(settings.max_new_tokens):
            tokens = draw(logits, np.array([s.random() for s in streams]), settings).tolist()
            for row, token in enumerate(tokens):
                if done[row] is None:
                    generated[row].append(token)
                    done[row] = self._stop(task, token)
            if all(d is not None for d in done) or step + 1 == settings.max_new_tokens:
                break
            position = torch.full((CHUNK, 1), p + step, device=device)
            hidden = model.hidden_states(torch.tensor(tokens, device=device)[:, None], position,
                                         cache=cache)
            logits = model.next_token_logits(hidden[:, -1])
        return [self._reply(i, generated[row], done[row]) for row, i in enumerate(indices)]

    def _stop(self, task: Task, token: int) -> str | None:
        """How a reply ends at `token`, or None if it goes on."""
        if token in self.specials or token in self.encoder.stops(task):
            return "finished" if token in self.encoder.stops(task) else "other_end"
        if task.end == "line" and bool(self.encoder.end_mask(task)[token]):
            return "finished"
        return None

    def _reply(self, index: int, tokens: list[int], status: str | None) -> Reply:
        if status is None:
            return Reply(index, tuple(tokens), self._decode(tokens), "unfinished")
        text = self._decode(tokens[:-1])
        end_text = self.encoder.reply_end.text
        if status == "finished" and tokens[-1] == self.encoder.reply_end.token_id:
            if not text.endswith(end_text):
                status = "other_end"  # the special token came without the text before it
            else:
                text = text[:len(text) - len(end_text)]
        if status == "finished" and REPLACEMENT in text:
            status = "unfinished"  # bytes that are no whole character: not the sampled text
        return Reply(index, tuple(tokens), text, status)

    def _decode(self, tokens: list[int]) -> str:
        """The reply's text as it follows the prompt (a SentencePiece reply's first "▁" is
        the space it starts with, not stripped as at the start of a text)."""
        return decode_inside(self.ck.tokenizer, [tokens])[0]
