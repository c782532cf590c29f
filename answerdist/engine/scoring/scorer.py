"""Exact answer probabilities: one forward pass per prompt and its whole answer trie.

Definitions (docs/results.md):
  P(answer | prompt) = sum over variants v of P(tokens of v | prompt) * P(boundary | prompt, v)
where the tokens of v are those of tokenize(prompt_text + continuation) past the prompt's own
tokens, and a boundary token is a special token or one whose text on its own is empty or starts
with a non-alphanumeric character.

How it runs:
  1. every prompt of a task becomes a `Sequence`: prompt tokens + the trie of all continuations;
  2. on the Triton (CUDA) path, sequences are packed end to end into rows of at most
     `batch_tokens` tokens (the compact `span_end` attention encoding keeps packed sequences
     from seeing each other), and each row is one forward pass: nothing is padded and no prefix
     is repeated. On the torch reference (CPU) path every sequence is a forward pass of its
     own, which makes results batch-invariant (see `packs_sequences`);
  3. the LM head is evaluated only at the rows that predict a trie node (the prompt's last
     token and every trie node), through the fused log-prob kernel: log-sum-exp over the
     vocabulary, the logits of each row's children, and log-sum-exp over boundary tokens;
  4. log-probabilities are summed along trie paths in float64.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from answerdist.engine.model.checkpoint import Checkpoint, generation_eos_ids
from answerdist.engine.settings import RunSpec
from answerdist.engine.tasks import Task, check_variants_tokenize
from answerdist.engine.text.chat import ChatTemplate, chat_template_for
from answerdist.engine.text.tokenizations import TokenPieces, decode_inside
from answerdist.engine.text.trie import DuplicateContinuation, Trie, build_trie
from answerdist.errors import (
    NonFiniteError,
    PromptTooLongError,
    TaskError,
    TokenizerError,
)
from answerdist.kernels import use_triton
from answerdist.kernels.tree_attention import trie_span_end


def token_texts(checkpoint: Checkpoint) -> list[str]:
    """The text of every token id of the model's vocabulary as it reads inside a text
    (`decode_inside`; ids past the tokenizer's give "")."""
    return decode_inside(checkpoint.tokenizer, [[i] for i in range(checkpoint.args.vocab_size)])


def boundary_mask(checkpoint: Checkpoint) -> torch.Tensor:
    """[vocab_size] bool: which token ids end an answer (docs/results.md, "boundary token").

    A special token, or a token whose text on its own is empty or starts with a character that
    is not alphanumeric; except a token whose text starts with U+FFFD, i.e. whose bytes start
    with an incomplete UTF-8 sequence (a byte-level piece of a multi-byte character such as the
    first byte of "咪"): it continues the text with a character it does not determine, so it never
    ends an answer (otherwise "猫" would absorb "猫咪"). Ids past the tokenizer's vocabulary
    (padding rows of the embedding) decode to "" and so count as boundary tokens."""
    vocab = checkpoint.args.vocab_size
    texts = token_texts(checkpoint)
    mask = [not t or (t[0] != "\ufffd" and not t[0].isalnum()) for t in texts]
    for token_id in special_token_ids(checkpoint):
        if token_id < vocab:
            mask[token_id] = True
    return torch.tensor(mask, dtype=torch.bool)


def newline_mask(checkpoint: Checkpoint) -> torch.Tensor:
    """[vocab_size] bool: the tokens that end an answer under end = "line": those whose text on
    its own starts with a newline ("\n" or "\r"), special tokens excepted (the end of the turn
    is scored as a token path of its own)."""
    vocab = checkpoint.args.vocab_size
    texts = token_texts(checkpoint)
    mask = [t[:1] in ("\n", "\r") for t in texts]
    for token_id in special_token_ids(checkpoint):
        if token_id < vocab:
            mask[token_id] = False
    return torch.tensor(mask, dtype=torch.bool)


@dataclass(frozen=True)
class ReplyEnd:
    """How a reply ends where generation stops: the text a chat template puts after the reply
    (usually none), then the special token where generation stops."""

    text: str
    token_id: int
    token: str


# Stands in for a reply when finding what a chat template renders after one.
REPLY_SENTINEL = "Reply\u2063sentinel\u2063"
PREFIX = -1  # `endings`: a path closed by nothing, taking no end factor (end = "prefix")


def reply_end(checkpoint: Checkpoint, mode: str, template: ChatTemplate | None) -> ReplyEnd:
    """What follows a whole reply. Chat mode: a conversation holding an assistant message is
    rendered, as transformers' apply_chat_template renders one, and what follows the message is
    read up to and including its first special token; what the template puts after that token
    (a newline between turns) is never generated. Base mode: the EOS token."""
    specials = special_token_ids(checkpoint)
    if mode == "base":
        eos = checkpoint.special_tokens.get("eos_token")
        token_id = checkpoint.tokenizer.token_to_id(eos) if isinstance(eos, str) else None
        if token_id is None:
            configured = checkpoint.config.get("eos_token_id")
            token_id = configured[0] if isinstance(configured, list) and configured else configured
        if not isinstance(token_id, int) or token_id >= checkpoint.args.vocab_size:
            raise TaskError(f"{checkpoint.path}: end = 'turn' or 'line' in base mode needs an EOS "
                            "token, and neither tokenizer_config.json's eos_token nor "
                            "config.json's eos_token_id names one; score in chat mode")
        return ReplyEnd("", token_id, checkpoint.tokenizer.id_to_token(token_id) or str(token_id))
    messages = [{"role": "user", "content": "Hello."},
                {"role": "assistant", "content": REPLY_SENTINEL}]
    rendered = template.render(messages, add_generation_prompt=False)
    at = rendered.find(REPLY_SENTINEL)
    where = f"{template.source}: the chat template"
    if at < 0:
        raise TaskError(f"{where} does not render an assistant message's text as given, so the end "
                        "of a reply cannot be found; use end = 'boundary'")
    after = rendered[at + len(REPLY_SENTINEL):]
    found = [(after.find(text), -len(text), token_id, text) for token_id, text in specials.items()
             if text and text in after]
    if not found:
        raise TaskError(f"{where} puts no special token after an assistant message ({after!r}), "
                        "so a reply never ends; use end = 'boundary'")
    start, _, token_id, text = min(found)
    return ReplyEnd(after[:start], token_id, text)


def stop_tokens(checkpoint: Checkpoint, end: ReplyEnd) -> tuple[int, ...]:
    """Every token at which generation stops after a reply, the reply's own end first: the end
    of turn the template renders (the EOS in base mode), then generation_config.json's
    `eos_token_id` (an int or a list, as transformers' generate reads it), then the tokenizer's
    EOS; each once, special tokens only (a plain token is text an answer may hold)."""
    specials = special_token_ids(checkpoint)
    eos = checkpoint.special_tokens.get("eos_token")
    found = [end.token_id, *generation_eos_ids(checkpoint.path),
             *([checkpoint.tokenizer.token_to_id(eos)] if isinstance(eos, str) else [])]
    return tuple(dict.fromkeys(i for i in found if i in specials or i == end.token_id))


def named_stop_tokens(checkpoint: Checkpoint, names: tuple[str, ...], where: str
                      ) -> tuple[int, ...]:
    """The ids of the tokens a task's `end_tokens` (or --end-tokens) names, each a token's
    text ("<eos>", "<end_of_turn>")."""
    ids = []
    for name in names:
        token_id = checkpoint.tokenizer.token_to_id(name)
        if token_id is None or token_id >= checkpoint.args.vocab_size:
            raise TaskError(f"{where}: end_tokens names {name!r}, which is no token of "
                            f"{checkpoint.path / 'tokenizer.json'}; name its end-of-turn or EOS "
                            "tokens as the tokenizer writes them")
        ids.append(token_id)
    return tuple(dict.fromkeys(ids))


def special_token_ids(checkpoint: Checkpoint) -> dict[int, str]:
    """{id: text} of the tokenizer's special tokens (EOS, end of turn, chat markers, ...)."""
    return {i: t.content for i, t in checkpoint.tokenizer.get_added_tokens_decoder().items()
            if t.special}


@dataclass(frozen=True)
class Boundary:
    """A prompt whose last characters merge with an answer's first ones (`[/INST]` then `{`
    tokenized as `]{`): its canonical tokens split into the head H, the longest run that is
    also a prefix of the canonical tokens of prompt + answer for every answer, and the text
    tail T after it. An answer's probability is then N / D (docs/results.md, "A prompt that
    merges with its answers"): N the probability of T + answer after H, D = P(T | H), the
    probability that the text after H begins with T, summed over every token sequence that
    spells a proper prefix of T followed by one token that runs past its end."""

    head: list[int]
    tail: bytes
    # Every token sequence spelling a proper prefix of T from which some token finishes T,
    # the empty one first; and for each, the tokens whose bytes finish T (or run past its end).
    prefixes: list[list[int]]
    covers: list[tuple[int, ...]]

    @property
    def chars(self) -> int:
        """Length of T in characters (a character cut by H counts as one)."""
        return len(self.tail.decode("utf-8", errors="replace"))


@dataclass
class Sequence:
    """One prompt with every continuation of every answer, ready to score.

    The trie holds one path per tokenization that is scored: the canonical tokenization of each
    variant, and with `--tokenizations all` every other token sequence spelling it too
    (`path_variant[k]` is the variant of the trie's continuation k; `path_canonical[k]` says
    whether it is that variant's canonical tokenization)."""

    task: str
    prompt_id: str
    user_prompt: str  # the task's prompt text (the user message in chat mode)
    prompt_text: str  # exactly what the model reads before the answer
    prompt_ids: list[int]
    continuations: list[str]  # one per variant, in answer order
    continuation_ids: list[list[int]]  # canonical tokens of each variant
    answer_of: list[int]  # answer index of each continuation
    trie: Trie
    path_variant: list[int] = field(default_factory=list)
    path_canonical: list[bool] = field(default_factory=list)
    # Whether path k's probability takes the end factor, P(next token ends the answer): true
    # for paths that stop at the answer's text, false for those that end with the reply's
    # closing special token (end = "turn", and the end-of-turn paths of end = "line").
    path_open: list[bool] = field(default_factory=list)
    # Where the prompt's end merges with the answers' starts (None where it does not): then
    # prompt_ids is its head H, every path spells the tail T before the answer, and `covers`
    # lists, for the root (-1) and the trie paths after the answers' that spell proper prefixes
    # of T, the tokens that run past T's end (their probability is the denominator D).
    boundary: Boundary | None = None
    covers: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)

    def __post_init__(self):
        if not self.path_variant:  # canonical only: path k is variant k
            self.path_variant = list(range(len(self.continuations)))
            self.path_canonical = [True] * len(self.continuations)
        if not self.path_open:
            self.path_open = [True] * len(self.path_variant)

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.trie)

    @cached_property
    def cover_nodes(self) -> dict[int, tuple[int, ...]]:
        """{trie node (-1: the root): tokens that finish T from there} (empty when unmerged)."""
        return {(-1 if k < 0 else self.trie.ends[k]): ids for k, ids in self.covers}

    @property
    def max_position(self) -> int:
        return len(self.prompt_ids) - 1 + max(self.trie.depth)


def reply_start(task: Task, prompt, mode: str) -> tuple[str, str]:
    """(what the prompt ends with, what the answer starts with) of the reply's start: the reply
    prefix (`Task.reply_prefix`), after the one space base mode puts after base_format. Its trailing
    whitespace goes with the answer, as tokenizers read " 7" as one token, not " " then "7"."""
    reply = (" " if mode == "base" else "") + task.reply_prefix(prompt)
    stem = reply.rstrip()
    return stem, reply[len(stem):]


def render_prompt(task: Task, prompt, mode: str, template: ChatTemplate | None) -> str:
    """Exactly what the model reads before an answer: in base mode the task's base_format around
    the prompt, in chat mode the user message through the template, then assistant_prefix; then
    the reply prefix (`reply_start`)."""
    stem = reply_start(task, prompt, mode)[0]
    if mode == "base":
        return task.render_base(prompt) + stem
    messages = [{"role": "user", "content": task.prompt_text(prompt)}]
    return template.render(messages, add_generation_prompt=True) + task.assistant_prefix + stem


class PromptEncoder:
    """Renders a task's prompts for one mode and tokenizes prompt and continuations.

    BOS/EOS come from the tokenizer's own post-processor in base mode; a rendered chat already
    holds its special tokens as text, so it is tokenized without adding any (as transformers'
    apply_chat_template does)."""

    def __init__(self, checkpoint: Checkpoint, mode: str, chat_template: ChatTemplate | None = None,
                 tokenizations: str = RunSpec.tokenizations,
                 max_tokenizations: int = RunSpec.max_tokenizations):
        """mode: "chat" or "base" (as `answerdist.engine.run.plan.resolve` decides it);
        chat_template: one to render with instead of the checkpoint's own."""
        self.tokenizations = tokenizations
        self.max_tokenizations = max_tokenizations
        self.pieces = (TokenPieces(checkpoint.tokenizer, str(checkpoint.path / "tokenizer.json"))
                       if tokenizations == "all" else None)
        self._bytes = self.pieces  # the tokens' bytes, read when a prompt merges (any setting)
        self.checkpoint = checkpoint
        self.mode = mode
        self.template = (chat_template_for(chat_template, checkpoint.chat_template, checkpoint.path)
                         if mode == "chat" else None)
        self.add_special = mode == "base"
        self.suffix = self._post_processor_suffix()
        self.boundary = boundary_mask(checkpoint)
        self.specials = special_token_ids(checkpoint)
        self._newlines: torch.Tensor | None = None
        self._reply_end: ReplyEnd | None = None
        self._stops: dict[tuple[str, ...], tuple[int, ...]] = {}

    def end_mask(self, task: Task) -> torch.Tensor:
        """The tokens whose coming next ends an answer of `task` (its end factor); under
        end = "turn" no path takes the factor, and the boundary mask stands in; under
        end = "prefix" no path takes it either, and every token ends an answer (so that a
        variant whose tokens go on into another's is refused)."""
        if task.end == "prefix":
            return torch.ones_like(self.boundary)
        if task.end != "line":
            return self.boundary
        if self._newlines is None:
            self._newlines = newline_mask(self.checkpoint)
        return self._newlines

    @property
    def reply_end(self) -> ReplyEnd:
        """What follows a whole reply in this mode (found once, when a task needs it)."""
        if self._reply_end is None:
            self._reply_end = reply_end(self.checkpoint, self.mode, self.template)
        return self._reply_end

    def stops(self, task: Task) -> tuple[int, ...]:
        """The tokens that end a reply of `task`: those its `end_tokens` names, else every
        token at which generation stops (`stop_tokens`)."""
        if task.end_tokens not in self._stops:
            self._stops[task.end_tokens] = (
                named_stop_tokens(self.checkpoint, task.end_tokens, f"task {task.name!r}")
                if task.end_tokens else stop_tokens(self.checkpoint, self.reply_end))
        return self._stops[task.end_tokens]

    def endings(self, task: Task, cont: str) -> list[tuple[str, int | None]]:
        """The texts that are scored for a continuation, each with the special token that
        closes it (None: the path takes the end factor instead; PREFIX: neither). boundary:
        the continuation; prefix: the continuation alone; turn: the continuation closed by each
        stop token (`stops`: the template's end of turn after the text the template puts
        before it, any other stop token right after the continuation), their probabilities
        summed; line: the continuation with the newline factor, and the closed ones whose text
        does not start with a newline (those the newline factor already counts)."""
        if task.end == "boundary":
            return [(cont, None)]
        if task.end == "prefix":
            return [(cont, PREFIX)]
        end = self.reply_end
        closed = [(cont + end.text if token == end.token_id else cont, token)
                  for token in self.stops(task)]
        if task.end == "turn":
            return closed
        return [(cont, None)] + [(text, token) for text, token in closed
                                 if text[len(cont):][:1] not in ("\n", "\r")]

    def _post_processor_suffix(self) -> int:
        """How many tokens the post-processor appends after the text (an EOS, for some)."""
        if not self.add_special:
            return 0
        with_special = self.checkpoint.encode("a", add_special_tokens=True)
        plain = self.checkpoint.encode("a", add_special_tokens=False)
        start = next(i for i in range(len(with_special))
                     if with_special[i : i + len(plain)] == plain)
        return len(with_special) - start - len(plain)

    def encode(self, text: str) -> list[int]:
        ids = self.checkpoint.encode(text, add_special_tokens=self.add_special)
        return ids[: len(ids) - self.suffix]

    def prompt_text(self, task: Task, prompt) -> str:
        return render_prompt(task, prompt, self.mode, self.template)

    def continuation(self, task: Task, prompt, variant: str) -> str:
        return reply_start(task, prompt, self.mode)[1] + variant

    def sequence(self, task: Task, prompt) -> Sequence:
        where = f"task {task.name!r}, prompt {prompt.id!r}"
        wrapper = "base_format" if self.mode == "base" else "assistant_prefix"
        for what, text in (("the prompt", task.prompt_text(prompt)),
                           (f"the task's {wrapper}", getattr(task, wrapper)),
                           ("the reply prefix", task.reply_prefix(prompt))):
            special = next((t for t in self.specials.values() if t in text), None)
            if special is not None:
                raise TaskError(f"{where}: {what} contains the special token {special!r}; "
                                "task text is plain text (the chat template or the tokenizer "
                                "adds the special tokens)")
        text = self.prompt_text(task, prompt)
        prompt_ids = self.encode(text)
        scored_texts = [(a, answer, variant, self.continuation(task, prompt, variant))
                        for a, answer in enumerate(task.answers) for variant in answer.variants]
        endings = {cont: self.endings(task, cont) for *_, cont in scored_texts}
        joints = {scored: self.encode(text + scored)
                  for ends in endings.values() for scored, _ in ends}
        boundary = self._boundary(where, text, prompt_ids, joints)
        head, tail = (prompt_ids, b"") if boundary is None else (boundary.head, boundary.tail)
        continuations, ids, answer_of = [], [], []
        paths, path_variant, canonical, path_open = [], [], [], []
        for a, answer, variant, cont in scored_texts:
            v = len(continuations)
            for k, (scored, closing) in enumerate(endings[cont]):
                canon = self._canonical(where, answer, variant, head, joints[scored], scored)
                found = self._tokenizations(where, answer, scored, canon, tail)
                if closing is not None and closing != PREFIX:
                    canon, found = canon + [closing], [f + [closing] for f in found]
                if k == 0:
                    continuations.append(cont)
                    ids.append(canon)
                    answer_of.append(a)
                for path in [canon] + [f for f in found if f != canon]:
                    paths.append(path)
                    path_variant.append(v)
                    canonical.append(path is canon)
                    path_open.append(closing is None)
        prefixes = [] if boundary is None else boundary.prefixes[1:]
        try:
            trie = build_trie(paths + prefixes)  # T's proper prefixes after the answers' paths
        except DuplicateContinuation as e:
            raise TaskError(
                f"{where}: variants {continuations[path_variant[e.first]]!r} and "
                f"{continuations[path_variant[e.second]]!r} tokenize identically; "
                "drop one of them from the task file"
            ) from None
        self._check_separable(where, task, trie, [continuations[v] for v in path_variant],
                              path_open)
        covers = [] if boundary is None else list(zip(
            [-1, *range(len(paths), len(paths) + len(prefixes))], boundary.covers, strict=True))
        return Sequence(task.name, prompt.id, task.prompt_text(prompt), text, head,
                        continuations, ids, answer_of, trie, path_variant, canonical, path_open,
                        boundary, covers)

    def _boundary(self, where, text, prompt_ids, joints) -> Boundary | None:
        """None where the prompt's tokens are a prefix of the tokens of prompt + every scored
        text (each longer); otherwise where they merge (`Boundary`), from the tokens' bytes."""
        n = len(prompt_ids)
        if all(joint[:n] == prompt_ids and len(joint) > n for joint in joints.values()):
            return None
        h = min(next((i for i, (x, y) in enumerate(zip(prompt_ids, joint, strict=False))
                      if x != y), min(n, len(joint))) for joint in joints.values())
        merged = next(s for s, joint in joints.items() if joint[:n] != prompt_ids)
        what = (f"{where}: the prompt's last characters merge with those of {merged!r} into "
                f"one token in {self.mode} mode")
        if h == 0:
            raise TaskError(f"{what}, from its very first token; give the prompt an ending "
                            "that the answers cannot merge with")
        pieces = self._merge_pieces(what)
        tail = pieces.spell(prompt_ids[h:])
        if tail is None or not text.encode("utf-8").endswith(tail):
            raise TaskError(f"{what}, and its last tokens do not spell its last characters; "
                            "give the prompt an ending that the answers cannot merge with")
        for scored, joint in joints.items():
            if pieces.spell(joint[h:]) != tail + scored.encode("utf-8"):
                raise TaskError(f"{what}, and the tokens of prompt + {scored!r} after the "
                                "shared ones do not spell its last characters and the answer; "
                                "give the prompt an ending that the answers cannot merge with")
        prefixes = pieces.prefix_cuts(tail, self.max_tokenizations)
        if prefixes is None:
            raise TaskError(f"{what}; its merged tail {tail.decode('utf-8', 'replace')!r} has "
                            f"more than {self.max_tokenizations} tokenizations of its prefixes; "
                            "raise --max-tokenizations")
        covers = [pieces.starting_with(tail[len(pieces.spell(p)):]) for p in prefixes]
        # A prefix that no token finishes adds nothing to D (nor, unless a longer prefix goes
        # through it and brings it into the trie anyway, a node to the forward pass).
        kept = [k for k, cover in enumerate(covers) if cover or k == 0]
        return Boundary(prompt_ids[:h], tail, [prefixes[k] for k in kept],
                        [covers[k] for k in kept])

    def _merge_pieces(self, what: str) -> TokenPieces:
        """The tokens' bytes, whatever the --tokenizations setting (a merged boundary needs
        them); a vocabulary without fixed bytes is refused in one line."""
        if self._bytes is None:
            try:
                self._bytes = TokenPieces(self.checkpoint.tokenizer,
                                          str(self.checkpoint.path / "tokenizer.json"))
            except TokenizerError as e:
                raise TaskError(f"{what}, and {e}") from None
        return self._bytes

    def _canonical(self, where, answer, variant, head, joint, scored) -> list[int]:
        """The tokens of `scored` past the prompt's (its head, where they merge) in the joint
        tokenization of both."""
        cont_ids = joint[len(head):]
        special = next((self.specials[i] for i in cont_ids if i in self.specials), None)
        if special is not None:
            raise TaskError(f"{where}, answer {answer.name!r}: variant {variant!r} "
                            f"contains the special token {special!r}; answers are plain text")
        return cont_ids

    def _tokenizations(self, where, answer, scored: str, canon: list[int],
                       tail: bytes = b"") -> list[list[int]]:
        """With tokenizations "all", every token sequence that spells `tail` + `scored` (the
        canonical one among them); otherwise none beyond the canonical."""
        if self.pieces is None:
            return []
        found = self.pieces.tokenizations(tail + scored.encode("utf-8"), self.max_tokenizations)
        if found is None:
            raise TaskError(
                f"{where}, answer {answer.name!r}: {scored!r} has more than "
                f"{self.max_tokenizations} tokenizations; raise --max-tokenizations or score "
                "with --tokenizations canonical")
        if canon not in found:
            raise TokenizerError(f"{self.checkpoint.path}: the canonical tokens of {scored!r} "
                                 "do not spell it byte for byte; score with "
                                 "--tokenizations canonical")
        return found

    def _check_separable(self, where: str, task: Task, trie: Trie, continuations: list[str],
                         path_open: list[bool]) -> None:
        """Refuse a variant whose tokens continue into another's with a token that ends answers
        (under the task's end rule): the end factor of the shorter would then include the
        longer one's mass. Paths closed by the reply's special token take no end factor."""
        mask = self.end_mask(task)
        answers = trie.ends[:len(path_open)]  # T's prefixes, where merged, come after them
        end_of = {node: v for v, node in enumerate(answers)
                  if path_open[v] or task.end == "prefix"}
        for node, v in end_of.items():
            for child in trie.children(node):
                if mask[trie.tokens[child]]:
                    w = next(w for w, n in enumerate(answers)
                             if child <= n < child + trie.span[child])
                    raise TaskError(
                        f"{where}: after the tokens of {continuations[v]!r}, variant "
                        f"{continuations[w]!r} goes on with a token that ends answers, so the "
                        "first would absorb the second's probability; remove or rename one of "
                        "them")


def task_sequences(encoder: PromptEncoder, task: Task) -> list[Sequence]:
    """All prompts of a task, tokenized and checked against the model's context length."""
    check_variants_tokenize(task, lambda s: encoder.checkpoint.encode(s, add_special_tokens=False))
    sequences = [encoder.sequence(task, p) for p in task.prompts]
    limit = encoder.checkpoint.args.context
    for s in sequences:
        if s.max_position >= limit:
            raise PromptTooLongError(
                f"task {task.name!r}, prompt {s.prompt_id!r}: prompt plus longest answer needs "
                f"{s.max_position + 1} positions but the model's context is {limit}; "
                "shorten the prompt"
            )
    return sequences


# ---------------------------------------------------------------------------------------------
# Packing: sequences -> rows, one row per forward pass


@dataclass(frozen=True)
class Part:
    """What one sequence puts into a row: its prompt and a subset of its trie nodes, closed
    under ancestors (pre-order). Its LM-head rows are those of `owned` (-1: the prompt's last
    token): every node is owned by exactly one part of its sequence."""

    seq: int
    nodes: tuple[int, ...]
    owned: tuple[int, ...]


def whole(seq: int, s: Sequence) -> Part:
    return Part(seq, tuple(range(len(s.trie))), (-1, *range(len(s.trie))))


def split(seq: int, s: Sequence, budget: int) -> list[Part]:
    """A sequence cut into parts of at most `budget` tokens (prompt + trie nodes), when its
    prompt and the ancestors of one node leave room: each part repeats the prompt and the
    ancestors of the nodes it owns, so no node's tokens are cut from what it attends to. A
    sequence that does not fit anyway stays whole (a row of its own)."""
    trie, room = s.trie, budget - len(s.prompt_ids)
    if len(s) <= budget or room < max(trie.depth) + 1:
        return [whole(seq, s)]
    def chain(n, nodes):  # n and its ancestors not yet in the part, nearest first
        out = []
        while n >= 0 and n not in nodes:
            out.append(n)
            n = trie.parent[n]
        return out

    parts, nodes, owned = [], {}, [-1]
    for n in range(len(trie)):
        new = chain(n, nodes)
        if len(nodes) + len(new) > room:
            parts.append(Part(seq, tuple(sorted(nodes)), tuple(owned)))
            nodes, owned = {}, []
            new = chain(n, nodes)
        nodes.update(dict.fromkeys(new))
        owned.append(n)
    parts.append(Part(seq, tuple(sorted(nodes)), tuple(owned)))
    return parts


@dataclass
class Batch:
    """[1, T] inputs for one forward pass: parts of sequences packed end to end, and where."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    span_end: torch.Tensor
    placements: list[tuple[Part, int]]  # (part, offset in the row)

    @property
    def processed_tokens(self) -> int:
        return self.input_ids.numel()


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: item indices per row, no row over `capacity` (a longer item gets a
    row of its own)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def packs_sequences(device: torch.device, batch_invariant: bool = False) -> bool:
    """Whether several sequences share a forward pass on `device` (decided once per run, by
    `answerdist.engine.run.plan.resolve`).

    Only on the Triton path (CUDA), and there not with `batch_invariant`. Otherwise every
    sequence runs whole in a forward pass of its own: then every matmul, norm and softmax that
    touches a sequence sees tensors holding that sequence alone, in the same shapes every time,
    so its bits cannot depend on `batch_tokens` or on which other prompts are scored (BLAS
    libraries and cuBLAS pick kernels, blockings and thread splits by shape, and a packed row
    changes the shapes; the Triton kernels' per-row arithmetic is fixed by their tiles). On the
    CPU that is no slower: the bench_scoring suite runs faster one sequence per pass than packed
    on 2 cores. On a GPU packing fills the device better.
    """
    return use_triton(torch.empty(0, device=device)) and not batch_invariant


def make_batches(sequences: list[Sequence], batch_tokens: int, pack: bool = True) -> list[Batch]:
    """Rows of at most `batch_tokens` tokens, one per forward pass, with no padding at all.

    Packed (`pack=True`): sequences longer than `batch_tokens` are split into parts (`split`),
    and parts are packed end to end; packed neighbours cannot see each other (span_end ends at
    each part's end), and attention skips what they cannot see. Unpacked: every sequence whole
    in a row of its own."""
    if not pack:
        return [_layout(sequences, [whole(i, s)]) for i, s in enumerate(sequences)]
    parts = [part for i, s in enumerate(sequences) for part in split(i, s, batch_tokens)]
    lengths = [len(sequences[p.seq].prompt_ids) + len(p.nodes) for p in parts]
    return [_layout(sequences, [parts[i] for i in row]) for row in pack_rows(lengths, batch_tokens)]


def _layout(sequences: list[Sequence], parts: list[Part]) -> Batch:
    ids, positions, span_end, placements = [], [], [], []
    for part in parts:
        s, offset = sequences[part.seq], len(ids)
        p, trie = len(s.prompt_ids), s.trie
        local = {n: k for k, n in enumerate(part.nodes)}
        parents = [local.get(trie.parent[n], -1) for n in part.nodes]  # the part is ancestor-closed
        ids += s.prompt_ids + [trie.tokens[n] for n in part.nodes]
        # a node sits at its depth
        positions += list(range(p)) + [p - 1 + trie.depth[n] for n in part.nodes]
        # prompt causal, trie: ancestors only
        span_end += (trie_span_end(p, parents) + offset).tolist()
        placements.append((part, offset))
    as_row = lambda values, dtype: torch.tensor([values], dtype=dtype)
    return Batch(as_row(ids, torch.long), as_row(positions, torch.long),
                 as_row(span_end, torch.int32), placements)


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass
class PromptScores:
    """Exact log-probabilities for one prompt."""

    sequence: Sequence
    variant_logprob: np.ndarray  # float64 [n_continuations]: over every scored tokenization
    answer_logprob: np.ndarray  # float64 [n_answers]: log-sum-exp over each answer's variants
    # With --tokenizations all: the same from the canonical tokenizations alone (else None).
    variant_canonical_logprob: np.ndarray | None = None
    answer_canonical_logprob: np.ndarray | None = None

    @property
    def coverage(self) -> float:
        return float(np.exp(self.answer_logprob).sum())

    @property
    def distribution(self) -> np.ndarray:
        """P(answer) / coverage, computed stably in log space."""
        lp = self.answer_logprob
        top = lp.max()
        weights = np.exp(lp - top)
        return weights / weights.sum()

    @staticmethod
    def _share(canonical, total):
        # 1 - P(canonical) / P(all) in log space; clipped: both are rounded, and
        # "+0.0 -" keeps -0.0 out
        return None if canonical is None else np.clip(0.0 - np.expm1(canonical - total), 0.0, 1.0)

    @property
    def answer_noncanonical_share(self) -> np.ndarray | None:
        """Fraction of each answer's probability from non-canonical tokenizations (None when
        only canonical ones were scored)."""
        return self._share(self.answer_canonical_logprob, self.answer_logprob)

    @property
    def variant_noncanonical_share(self) -> np.ndarray | None:
        return self._share(self.variant_canonical_logprob, self.variant_logprob)


@dataclass
class TaskScores:
    task: Task
    mode: str
    prompts: list[PromptScores]
    tokens_needed: int = 0
    tokens_processed: int = 0
    seconds: float = 0.0
    discovery: object | None = None  # an open task's answerdist.engine.scoring.discovery.Discovery


class TrieScores:
    """A sequence's log-probabilities as parts fill them in: for each trie node, log P(node's
    token | its parent), and at every node, log P(boundary token next)."""

    def __init__(self, s: Sequence):
        self.node = np.full(len(s.trie), np.nan)
        self.boundary = np.full(len(s.trie), np.nan)
        self.cover: dict[int, float] = {}  # node (-1: the root) -> log P(a covering token next)

    def path_logprobs(self, s: Sequence) -> np.ndarray:
        """Each scored path's log-probability (the answers' paths, not T's prefixes), less
        log D where the prompt merges with its answers."""
        trie = s.trie
        out = np.array([self.node[trie.path(k)].sum()
                        + (self.boundary[trie.ends[k]] if s.path_open[k] else 0.0)
                        for k in range(len(s.path_variant))])
        return out if s.boundary is None else out - self.log_prefix(s)

    def log_prefix(self, s: Sequence) -> float:
        """log D = log P(the text after the head begins with T): over the root and every path
        spelling a proper prefix of T, its log-probability plus that of a token next that
        finishes T."""
        terms = [(0.0 if k < 0 else self.node[s.trie.path(k)].sum())
                 + self.cover.get(-1 if k < 0 else s.trie.ends[k], -np.inf)
                 for k, _ in s.covers]
        return float(np.logaddexp.reduce(terms))


def lm_head_rows(s: Sequence, part: Part, offset: int) -> tuple[list[int], list[list[int]]]:
    """Row positions of a part's owned nodes (the prompt's last token for -1) and the child
    tokens each of them predicts."""
    p, trie = len(s.prompt_ids), s.trie
    local = {n: k for k, n in enumerate(part.nodes)}
    positions = [offset + (p - 1 if n < 0 else p + local[n]) for n in part.owned]
    covers = s.cover_nodes
    targets = [[trie.tokens[k] for k in trie.children(n)] + list(covers.get(n, ()))
               for n in part.owned]
    return positions, targets


PADDED_TARGETS = 1 << 22  # ids in one padded block of LM-head targets (32 MiB of int64)


@torch.inference_mode()
def score_batch(checkpoint: Checkpoint, sequences: list[Sequence], batch: Batch,
                boundary: torch.Tensor, scores: dict[int, TrieScores]) -> None:
    """Fill `scores` with what the LM head gives at the owned nodes of every part in `batch`."""
    device = checkpoint.device
    hidden = checkpoint.model.hidden_states(
        batch.input_ids.to(device), batch.position_ids.to(device), batch.span_end.to(device)
    )
    flat = hidden.reshape(-1, hidden.shape[-1])
    owners, rows, targets = [], [], []
    for part, offset in batch.placements:
        positions, kids = lm_head_rows(sequences[part.seq], part, offset)
        owners += [(part.seq, n) for n in part.owned]
        rows += positions
        targets += kids
    # Rows padded to the widest row's targets: even a root with a thousand children costs less
    # to gather than the log-sum-exp over the vocabulary that every row needs anyway. Where the
    # padded block would pass PADDED_TARGETS (a root with 100,000 children among 100,000 rows:
    # 10^10 ids), the rows too wide for it get their targets in a call of their own each.
    widths = [len(kids) for kids in targets]
    width = max([w for w in widths if w * len(widths) <= PADDED_TARGETS] or [1])
    target_ids = torch.full((len(targets), max(1, width)), -1, dtype=torch.long)
    for r, kids in enumerate(targets):
        if len(kids) <= width:
            target_ids[r, : len(kids)] = torch.tensor(kids, dtype=torch.long)
    head_rows, boundary = flat[torch.tensor(rows, device=device)], boundary.to(device)
    target_lp, boundary_lp = checkpoint.model.answer_logprobs(head_rows, target_ids.to(device),
                                                              boundary)
    target_lp, boundary_lp = list(target_lp.cpu().numpy()), boundary_lp.cpu().numpy()
    for r, kids in enumerate(targets):
        if len(kids) > width:
            wide, _ = checkpoint.model.answer_logprobs(
                head_rows[r:r + 1], torch.tensor([kids], dtype=torch.long, device=device), boundary)
            target_lp[r] = wide[0].cpu().numpy()
    for r, (seq, n) in enumerate(owners):
        trie, into = sequences[seq].trie, scores[seq]
        children = trie.children(n)
        for slot, child in enumerate(children):
            into.node[child] = target_lp[r][slot]
        if n >= 0:
            into.boundary[n] = boundary_lp[r]
        covers = sequences[seq].cover_nodes.get(n)
        if covers:  # float64, in order: the bits do not depend on the row's padding
            lp = np.asarray(target_lp[r][len(children):len(children) + len(covers)], np.float64)
            into.cover[n] = float(np.logaddexp.reduce(lp))


def score_task(checkpoint: Checkpoint, encoder: PromptEncoder, task: Task,
               sequences: list[Sequence], boundary: torch.Tensor,
               batch_tokens: int = RunSpec.batch_tokens, progress=None,
               pack: bool | None = None) -> TaskScores:
    """Score every prompt of `task` (sequences from `task_sequences`). `pack` None follows
    `packs_sequences` (the device's path); tests force it either way."""
    start = time.perf_counter()
    if pack is None:
        pack = packs_sequences(checkpoint.device)
    batches = make_batches(sequences, batch_tokens, pack)
    scores = {i: TrieScores(s) for i, s in enumerate(sequences)}
    remaining = {i: 0 for i in range(len(sequences))}
    for batch in batches:
        for part, _ in batch.placements:
            remaining[part.seq] += 1
    prompts: dict[int, PromptScores] = {}
    for batch in batches:
        score_batch(checkpoint, sequences, batch, boundary, scores)
        for part, _ in batch.placements:
            remaining[part.seq] -= 1
            if remaining[part.seq] == 0:  # all parts of this prompt scored
                prompts[part.seq] = prompt_scores(checkpoint, task, sequences[part.seq],
                                                  scores.pop(part.seq))
                if progress is not None:
                    progress.update(1)
    return TaskScores(
        task, encoder.mode, [prompts[i] for i in range(len(sequences))],
        tokens_needed=sum(len(s) for s in sequences),
        tokens_processed=sum(b.processed_tokens for b in batches),
        seconds=time.perf_counter() - start,
    )


def _logsumexp_by(values: np.ndarray, groups: list[int], n: int) -> np.ndarray:
    """log-sum-exp of `values` per group 0..n-1, each group's values added in order (the bits of
    np.logaddexp.reduce over the group); one pass, not one per group (a thousand answers)."""
    out = np.full(n, -np.inf)
    np.logaddexp.at(out, np.asarray(groups, dtype=np.intp), values)
    return out


def prompt_scores(checkpoint: Checkpoint, task: Task, s: Sequence,
                  scores: TrieScores) -> PromptScores:
    """Variant and answer log-probabilities from a prompt's trie scores (summed in float64)."""
    path_lp = scores.path_logprobs(s)  # a non-finite log D makes every path non-finite too
    if not np.isfinite(path_lp).all():
        raise NonFiniteError(
            f"task {task.name!r}, prompt {s.prompt_id!r}: the model's log-probabilities "
            f"are NaN or infinite ({checkpoint.path}); check the weights for NaN/inf, or use "
            "--dtype float32 if bfloat16 overflows")
    n_variants, n_answers = len(s.continuations), len(task.answers)
    if all(s.path_canonical) and len(path_lp) == n_variants:  # canonical tokenizations only
        return PromptScores(s, path_lp, _logsumexp_by(path_lp, s.answer_of, n_answers))
    variant = _logsumexp_by(path_lp, s.path_variant, n_variants)
    if all(s.path_canonical):  # canonical only, several paths per variant (end = "line")
        return PromptScores(s, variant, _logsumexp_by(variant, s.answer_of, n_answers))
    chosen = np.flatnonzero(s.path_canonical)
    canonical = _logsumexp_by(path_lp[chosen], [s.path_variant[k] for k in chosen], n_variants)
    return PromptScores(s, variant, _logsumexp_by(variant, s.answer_of, n_answers),
                        canonical, _logsumexp_by(canonical, s.answer_of, n_answers))
