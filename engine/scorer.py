"""Exact answer probabilities: one forward pass per prompt and its whole answer trie.

Definitions (DESIGN.md, binding):
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
from dataclasses import dataclass

import numpy as np
import torch

from engine.chat import ChatTemplate
from engine.checkpoint import Checkpoint
from engine.distributed import lm_head_logprobs
from engine.errors import ChatTemplateError, NonFiniteError, PromptTooLongError, TaskError
from engine.tasks import Task, check_variants_tokenize
from engine.trie import DuplicateContinuation, Trie, build_trie
from kernels import use_triton

MODES = ("chat", "base")


def boundary_mask(checkpoint: Checkpoint) -> torch.Tensor:
    """[vocab_size] bool: which token ids end an answer (docs/results.md, "boundary token").

    A special token, or a token whose text on its own is empty or starts with a character that
    is not alphanumeric; except a token whose text starts with U+FFFD, i.e. whose bytes start
    with an incomplete UTF-8 sequence (a byte-level piece of a multi-byte character such as the
    first byte of "咪"): it continues the text with a character it does not determine, so it never
    ends an answer (otherwise "猫" would absorb "猫咪"). Ids past the tokenizer's vocabulary
    (padding rows of the embedding) decode to "" and so count as boundary tokens."""
    tokenizer = checkpoint.tokenizer
    vocab = checkpoint.args.vocab_size
    texts = tokenizer.decode_batch([[i] for i in range(vocab)], skip_special_tokens=False)
    mask = [not t or (t[0] != "\ufffd" and not t[0].isalnum()) for t in texts]
    for token_id in special_token_ids(checkpoint):
        if token_id < vocab:
            mask[token_id] = True
    return torch.tensor(mask, dtype=torch.bool)


def special_token_ids(checkpoint: Checkpoint) -> dict[int, str]:
    """{id: text} of the tokenizer's special tokens (EOS, end of turn, chat markers, ...)."""
    return {i: t.content for i, t in checkpoint.tokenizer.get_added_tokens_decoder().items() if t.special}


@dataclass
class Sequence:
    """One prompt with every continuation of every answer, ready to score."""

    task: str
    prompt_id: str
    user_prompt: str  # the task's prompt text (the user message in chat mode)
    prompt_text: str  # exactly what the model reads before the answer
    prompt_ids: list[int]
    continuations: list[str]  # one per variant, in answer order
    continuation_ids: list[list[int]]
    answer_of: list[int]  # answer index of each continuation
    trie: Trie

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.trie)

    @property
    def max_position(self) -> int:
        return len(self.prompt_ids) - 1 + max(self.trie.depth)


class PromptEncoder:
    """Renders a task's prompts for one mode and tokenizes prompt and continuations.

    BOS/EOS come from the tokenizer's own post-processor in base mode; a rendered chat already
    holds its special tokens as text, so it is tokenized without adding any (as transformers'
    apply_chat_template does)."""

    def __init__(self, checkpoint: Checkpoint, mode: str, chat_template: ChatTemplate | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.checkpoint = checkpoint
        self.mode = mode
        self.template = chat_template or checkpoint.chat_template
        if mode == "chat" and self.template is None:
            raise ChatTemplateError(
                f"{checkpoint.path}: chat mode needs a chat template and the checkpoint has none; "
                "use --mode base or --chat-template PATH_OR_CHECKPOINT"
            )
        self.add_special = mode == "base"
        self.suffix = self._post_processor_suffix()
        self.boundary = boundary_mask(checkpoint)
        self.specials = special_token_ids(checkpoint)

    def _post_processor_suffix(self) -> int:
        """How many tokens the post-processor appends after the text (an EOS, for some)."""
        if not self.add_special:
            return 0
        with_special = self.checkpoint.encode("a", add_special_tokens=True)
        plain = self.checkpoint.encode("a", add_special_tokens=False)
        start = next(i for i in range(len(with_special)) if with_special[i : i + len(plain)] == plain)
        return len(with_special) - start - len(plain)

    def encode(self, text: str) -> list[int]:
        ids = self.checkpoint.encode(text, add_special_tokens=self.add_special)
        return ids[: len(ids) - self.suffix]

    def prompt_text(self, task: Task, prompt) -> str:
        if self.mode == "base":
            return task.render_base(prompt)
        messages = [{"role": "user", "content": task.prompt_text(prompt)}]
        return self.template.render(messages, add_generation_prompt=True) + task.assistant_prefix

    def continuation(self, variant: str) -> str:
        return " " + variant if self.mode == "base" else variant

    def sequence(self, task: Task, prompt) -> Sequence:
        where = f"task {task.name!r}, prompt {prompt.id!r}"
        special = next((t for t in self.specials.values() if t in task.prompt_text(prompt)), None)
        if special is not None:
            raise TaskError(f"{where}: the prompt contains the special token {special!r}; prompts are "
                            "plain text (the chat template adds the special tokens)")
        text = self.prompt_text(task, prompt)
        prompt_ids = self.encode(text)
        continuations, ids, answer_of = [], [], []
        for a, answer in enumerate(task.answers):
            for variant in answer.variants:
                cont = self.continuation(variant)
                joint = self.encode(text + cont)
                if joint[: len(prompt_ids)] != prompt_ids or len(joint) == len(prompt_ids):
                    raise TaskError(
                        f"{where}, answer {answer.name!r}: the prompt's tokens are "
                        f"not a prefix of the tokens of prompt + {cont!r} in {self.mode} mode; "
                        "change the prompt's ending or the task's base_format / assistant_prefix"
                    )
                cont_ids = joint[len(prompt_ids):]
                special = next((self.specials[i] for i in cont_ids if i in self.specials), None)
                if special is not None:
                    raise TaskError(f"{where}, answer {answer.name!r}: variant {variant!r} contains the "
                                    f"special token {special!r}; answers are plain text")
                continuations.append(cont)
                ids.append(cont_ids)
                answer_of.append(a)
        try:
            trie = build_trie(ids)
        except DuplicateContinuation as e:
            raise TaskError(
                f"{where}: variants {continuations[e.first]!r} and "
                f"{continuations[e.second]!r} tokenize identically; drop one of them from the task file"
            ) from None
        self._check_separable(where, trie, continuations)
        return Sequence(task.name, prompt.id, task.prompt_text(prompt), text, prompt_ids,
                        continuations, ids, answer_of, trie)

    def _check_separable(self, where: str, trie: Trie, continuations: list[str]) -> None:
        """Refuse a variant whose tokens continue into another's with a boundary token: the
        boundary factor of the shorter would then include the longer one's mass."""
        end_of = {node: v for v, node in enumerate(trie.ends)}
        for node, v in end_of.items():
            for child in trie.children(node):
                if self.boundary[trie.tokens[child]]:
                    w = next(w for w, n in enumerate(trie.ends) if child <= n < child + trie.span[child])
                    raise TaskError(
                        f"{where}: after the tokens of {continuations[v]!r}, variant {continuations[w]!r} "
                        f"goes on with a token that ends answers, so the first would absorb the second's "
                        "probability; remove or rename one of them")


def task_sequences(encoder: PromptEncoder, task: Task) -> list[Sequence]:
    """All prompts of a task, tokenized and checked against the model's context length."""
    check_variants_tokenize(task, lambda s: encoder.checkpoint.encode(s, add_special_tokens=False))
    sequences = [encoder.sequence(task, p) for p in task.prompts]
    limit = encoder.checkpoint.args.max_position_embeddings
    for s in sequences:
        if s.max_position >= limit:
            raise PromptTooLongError(
                f"task {task.name!r}, prompt {s.prompt_id!r}: prompt plus longest answer needs "
                f"{s.max_position + 1} positions but the model's context is {limit}; shorten the prompt"
            )
    return sequences


# ---------------------------------------------------------------------------------------------
# Packing: sequences -> rows, one row per forward pass


@dataclass
class Batch:
    """[1, T] inputs for one forward pass: sequences packed end to end, and where each sits."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    span_end: torch.Tensor
    placements: list[tuple[int, int]]  # (sequence index, offset in the row)

    @property
    def processed_tokens(self) -> int:
        return self.input_ids.numel()


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: sequence indices per row, no row over `capacity` (a longer
    sequence gets a row of its own)."""
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


def packs_sequences(checkpoint: Checkpoint) -> bool:
    """Whether several sequences share a forward pass.

    Only on the Triton path (CUDA). The torch reference path (CPU) runs every sequence in a
    forward pass of its own: then every matmul, norm and softmax that touches a sequence sees
    tensors holding that sequence alone, in the same shapes every time, so its bits cannot
    depend on `batch_tokens` or on which other prompts are scored (BLAS libraries pick kernels,
    blockings and thread splits by shape; a packed row changes the shapes). It is no slower
    there: the bench_scoring suite runs faster one sequence per pass than packed on 2 cores.
    """
    return use_triton(checkpoint.model.output_weight)


def make_batches(sequences: list[Sequence], batch_tokens: int, pack: bool = True) -> list[Batch]:
    """Sequences packed end to end into rows of at most `batch_tokens` tokens (a longer
    sequence alone), one row per forward pass: no padding at all. Packed neighbours cannot see
    each other (span_end ends at each sequence's end), and attention skips what they cannot see.
    With `pack=False` every sequence is a row of its own."""
    rows = pack_rows([len(s) for s in sequences], batch_tokens) if pack else [[i] for i in range(len(sequences))]
    return [_layout(sequences, row) for row in rows]


def _layout(sequences: list[Sequence], row: list[int]) -> Batch:
    ids, positions, span_end, placements = [], [], [], []
    for i in row:
        s, offset = sequences[i], len(ids)
        p, trie = len(s.prompt_ids), s.trie
        end = offset + len(s)
        ids += s.prompt_ids + list(trie.tokens)
        positions += list(range(p)) + [p - 1 + d for d in trie.depth]  # a node sits at its depth
        span_end += [end] * p  # the prompt is causal and seen by all of its own trie
        span_end += [offset + p + k + trie.span[k] for k in range(len(trie))]  # ancestors only
        placements.append((i, offset))
    as_row = lambda values, dtype: torch.tensor([values], dtype=dtype)
    return Batch(as_row(ids, torch.long), as_row(positions, torch.long), as_row(span_end, torch.int32), placements)


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass
class PromptScores:
    """Exact log-probabilities for one prompt."""

    sequence: Sequence
    variant_logprob: np.ndarray  # float64 [n_continuations]
    answer_logprob: np.ndarray  # float64 [n_answers]: log-sum-exp over each answer's variants

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


@dataclass
class TaskScores:
    task: Task
    mode: str
    prompts: list[PromptScores]
    tokens_needed: int = 0
    tokens_processed: int = 0
    seconds: float = 0.0


def lm_head_rows(sequence: Sequence, offset: int):
    """Where the LM head is needed for one sequence placed at `offset` of its row.

    Returns (positions, targets, slot_of, row_of): the row positions that predict something
    (the prompt's last token, and every trie node with children or where a continuation ends),
    the child tokens each of them predicts, for each trie node the (LM-head row, slot) of its own
    log-probability, and for each trie node its own LM-head row (for the boundary factor)."""
    p, trie = len(sequence.prompt_ids), sequence.trie
    ends = set(trie.ends)
    positions, targets = [], []
    slot_of: list[tuple[int, int]] = [(-1, -1)] * len(trie)
    row_of: dict[int, int] = {}
    for node in [-1, *range(len(trie))]:
        kids = trie.children(node)
        if not kids and node not in ends:
            continue
        row_of[node] = len(positions)
        positions.append(offset + (p - 1 if node < 0 else p + node))
        targets.append([trie.tokens[k] for k in kids])
        for slot, k in enumerate(kids):
            slot_of[k] = (row_of[node], slot)
    return positions, targets, slot_of, row_of


@torch.inference_mode()
def score_batch(checkpoint: Checkpoint, sequences: list[Sequence], batch: Batch,
                boundary: torch.Tensor) -> dict[int, np.ndarray]:
    """Variant log-probabilities (float64) of every sequence placed in `batch`."""
    device = checkpoint.device
    hidden = checkpoint.model.hidden_states(
        batch.input_ids.to(device), batch.position_ids.to(device), batch.span_end.to(device)
    )
    flat = hidden.reshape(-1, hidden.shape[-1])
    plans, all_rows, all_targets = [], [], []
    for i, offset in batch.placements:
        positions, targets, slot_of, row_of = lm_head_rows(sequences[i], offset)
        plans.append((i, len(all_rows), slot_of, row_of))
        all_rows += positions
        all_targets += targets
    k = max(1, max(len(t) for t in all_targets))
    target_ids = torch.full((len(all_targets), k), -1, dtype=torch.long)
    for n, t in enumerate(all_targets):
        target_ids[n, : len(t)] = torch.tensor(t, dtype=torch.long)
    lse, target_logits, boundary_lse = lm_head_logprobs(  # merged across ranks under --tp
        checkpoint.model, flat[torch.tensor(all_rows, device=device)], target_ids.to(device),
        boundary.to(device),
    )
    lse = lse.double().cpu().numpy()
    target_lp = target_logits.double().cpu().numpy() - lse[:, None]
    boundary_lp = boundary_lse.double().cpu().numpy() - lse
    out = {}
    for i, base, slot_of, row_of in plans:
        trie = sequences[i].trie
        node_lp = np.array([target_lp[base + r, slot] for r, slot in slot_of])
        out[i] = np.array([
            node_lp[trie.path(v)].sum() + boundary_lp[base + row_of[trie.ends[v]]]
            for v in range(len(trie.ends))
        ])
    return out


def score_task(checkpoint: Checkpoint, encoder: PromptEncoder, task: Task, sequences: list[Sequence],
               boundary: torch.Tensor, batch_tokens: int = 8192, progress=None,
               pack: bool | None = None) -> TaskScores:
    """Score every prompt of `task` (sequences from `task_sequences`). `pack` None follows
    `packs_sequences` (the device's path); tests force it either way."""
    start = time.perf_counter()
    if pack is None:
        pack = packs_sequences(checkpoint)
    batches = make_batches(sequences, batch_tokens, pack)
    variant_lp: dict[int, np.ndarray] = {}
    for batch in batches:
        scored = score_batch(checkpoint, sequences, batch, boundary)
        for i, lp in scored.items():
            if not np.isfinite(lp).all():
                raise NonFiniteError(
                    f"task {task.name!r}, prompt {sequences[i].prompt_id!r}: the model's log-probabilities "
                    f"are NaN or infinite ({checkpoint.path}); check the weights for NaN/inf, or use "
                    "--dtype float32 if bfloat16 overflows")
        variant_lp.update(scored)
        if progress is not None:
            progress.update(len(batch.placements))
    prompts = []
    for i, s in enumerate(sequences):
        lp = variant_lp[i]
        answers = np.array([
            np.logaddexp.reduce(lp[[v for v, a in enumerate(s.answer_of) if a == k]])
            for k in range(len(task.answers))
        ])
        prompts.append(PromptScores(s, lp, answers))
    return TaskScores(
        task, encoder.mode, prompts,
        tokens_needed=sum(len(s) for s in sequences),
        tokens_processed=sum(b.processed_tokens for b in batches),
        seconds=time.perf_counter() - start,
    )
