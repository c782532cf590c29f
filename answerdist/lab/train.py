"""Training loops for the toy ladder: next-token (pretraining, SFT), DPO and REINFORCE.

All of them run the engine's own `Transformer` through its plain causal path
(`hidden_states(ids)` with span_end=None, torch's fused attention), so the checkpoints are
trained by exactly the model code that later scores them. Sequences are right-padded: with
causal attention a padding token never influences a real one, and padded positions are masked
out of every loss.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from answerdist.engine.model.transformer import ModelArgs, Transformer

from .config import DPOStage, LMStage, ModelConfig, RLStage

Log = Callable[[str], None]
OnStep = Callable[[int, int], None]  # called after each optimizer step with (step, total)


@dataclass(frozen=True)
class Example:
    """Token ids of one sequence; the loss covers ids[loss_from:] (loss_from >= 1)."""

    ids: tuple[int, ...]
    loss_from: int


# --------------------------------------------------------------------------------- the model


def model_args(cfg: ModelConfig, vocab_size: int) -> ModelArgs:
    return ModelArgs(
        arch="Olmo2ForCausalLM",
        vocab_size=vocab_size,
        dim=cfg.dim,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_heads,
        head_dim=cfg.dim // cfg.n_heads,
        intermediate_size=cfg.intermediate_size,
        norm_eps=1e-6,
        rope_theta=10000.0,
        rope_scaling=None,
        tie_embeddings=False,
        max_position_embeddings=cfg.max_position_embeddings,
    )


def new_model(cfg: ModelConfig, vocab_size: int, seed: int) -> Transformer:
    """A freshly initialised model: matrices N(0, init_std), RMSNorm weights 1. Draws from
    its own generator, so building a ladder leaves torch's global RNG alone."""
    generator = torch.Generator().manual_seed(seed)
    model = Transformer(model_args(cfg, vocab_size))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=cfg.init_std, generator=generator)
            else:
                nn.init.ones_(p)
    return model


def frozen_copy(model: Transformer) -> Transformer:
    """A copy for use as a reference policy: eval mode, no gradients."""
    return copy.deepcopy(model).eval().requires_grad_(False)


# ---------------------------------------------------------------------------- shared helpers


def pad(seqs: list[tuple[int, ...]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest: (ids [B, T], lengths [B])."""
    lengths = torch.tensor([len(s) for s in seqs])
    ids = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    return ids, lengths


def target_mask(lengths: torch.Tensor, loss_from: torch.Tensor, width: int) -> torch.Tensor:
    """[B, width] mask over predicted positions 1..width: True where loss_from <= t < length."""
    t = torch.arange(1, width + 1)[None]
    return (t >= loss_from[:, None]) & (t < lengths[:, None])


def token_logprobs(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    """[B, T-1]: log p(ids[:, t] | ids[:, :t]) for t = 1..T-1."""
    hidden = model.hidden_states(ids[:, :-1])
    logits = (hidden @ model.output_weight.T).float()
    return logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]


def sequence_logprobs(model: Transformer, examples: list[Example], pad_id: int) -> torch.Tensor:
    """[B]: the summed log-probability of each example's target tokens."""
    ids, lengths = pad([e.ids for e in examples], pad_id)
    loss_from = torch.tensor([e.loss_from for e in examples])
    mask = target_mask(lengths, loss_from, ids.shape[1] - 1)
    return (token_logprobs(model, ids) * mask).sum(-1)


def token_batches(lengths: list[int], batch_tokens: int,
                  rng: np.random.Generator) -> list[list[int]]:
    """Shuffled batches of indices, each within a padded-token budget.

    Sequences are shuffled, then sorted by length inside windows of a few thousand, so that a
    batch holds sequences of similar length (little padding) while the data order stays random.
    """
    order = rng.permutation(len(lengths))
    batches = []
    window = 4096
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batch: list[int] = []
        for i in chunk:
            if batch and (len(batch) + 1) * max(lengths[i], lengths[batch[-1]]) > batch_tokens:
                batches.append(batch)
                batch = []
            batch.append(int(i))
        if batch:
            batches.append(batch)
    return [batches[i] for i in rng.permutation(len(batches))]


def sized_batches(lengths: list[int], size: int, rng: np.random.Generator) -> list[list[int]]:
    """Shuffled batches of `size` indices, of similar lengths (little padding): sequences are
    shuffled, sorted by length inside windows of a few thousand and cut into batches, and the
    batches shuffled."""
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), 4096):
        chunk = sorted(order[start : start + 4096].tolist(), key=lambda i: lengths[i])
        batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def optimizer(model: nn.Module, lr: float, total_steps: int, warmup: int, final: float = 0.1):
    """AdamW with linear warmup and cosine decay to `final` times the peak rate."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def step(opt, scheduler, model: nn.Module, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    scheduler.step()


class Progress:
    """Concise progress lines, about ten per stage, with elapsed time."""

    def __init__(self, name: str, total: int, log: Log):
        self.name, self.total, self.log = name, total, log
        self.start = time.perf_counter()
        self.every = max(1, total // 10)

    def update(self, i: int, **values: float) -> None:
        if (i + 1) % self.every and i + 1 != self.total:
            return
        shown = " ".join(f"{k}={v:.4f}" for k, v in values.items())
        elapsed = time.perf_counter() - self.start
        self.log(f"  {self.name} step {i + 1}/{self.total} {shown} ({elapsed:.0f}s)")


# ----------------------------------------------------------------------------------- stages


def train_lm(model: Transformer, examples: list[Example], stage: LMStage, pad_id: int,
             rng: np.random.Generator, name: str, log: Log, on_step: OnStep | None = None
             ) -> float:
    """Next-token training on the examples' target tokens; returns the last running loss."""
    model.train()
    lengths = [len(e.ids) for e in examples]
    plan = [token_batches(lengths, stage.batch_tokens, rng) for _ in range(stage.epochs)]
    batches = [b for epoch in plan for b in epoch]
    opt, scheduler = optimizer(model, stage.lr, len(batches), stage.warmup_steps, stage.final_lr)
    progress = Progress(name, len(batches), log)
    running = None
    for i, batch in enumerate(batches):
        chosen = [examples[j] for j in batch]
        ids, lens = pad([e.ids for e in chosen], pad_id)
        mask = target_mask(lens, torch.tensor([e.loss_from for e in chosen]), ids.shape[1] - 1)
        loss = -(token_logprobs(model, ids) * mask).sum() / mask.sum()
        step(opt, scheduler, model, loss)
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        progress.update(i, loss=running)
        if on_step is not None:
            on_step(i + 1, len(batches))
    model.eval()
    return float(running)


def train_dpo(policy: Transformer, reference: Transformer, pairs: list[tuple[Example, Example]],
              stage: DPOStage, pad_id: int, rng: np.random.Generator, log: Log,
              on_step: OnStep | None = None) -> float:
    """Direct preference optimisation against a frozen reference (Rafailov et al., 2023):
    loss = -log sigmoid(beta * [(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))]),
    plus `nll_weight` times the chosen answer's per-token NLL. Returns the final pair accuracy
    (share of pairs whose implicit reward prefers the chosen answer)."""
    with torch.no_grad():
        ref = torch.cat([
            sequence_logprobs(reference, [e for pair in pairs[i : i + 256] for e in pair], pad_id)
            for i in range(0, len(pairs), 256)
        ]).view(-1, 2)
    lengths = [max(len(c.ids), len(r.ids)) for c, r in pairs]
    batches = [b for _ in range(stage.epochs)
               for b in sized_batches(lengths, stage.batch_pairs, rng)]
    opt, scheduler = optimizer(policy, stage.lr, len(batches), stage.warmup_steps)
    policy.train()
    progress = Progress("dpo", len(batches), log)
    accuracy = 0.0
    for i, batch in enumerate(batches):
        examples = [e for j in batch for e in pairs[j]]
        logp = sequence_logprobs(policy, examples, pad_id).view(-1, 2)
        margin = stage.beta * ((logp - ref[batch]) @ torch.tensor([1.0, -1.0]))
        chosen_tokens = torch.tensor([len(pairs[j][0].ids) - pairs[j][0].loss_from for j in batch])
        nll = -(logp[:, 0] / chosen_tokens).mean()
        loss = -F.logsigmoid(margin).mean() + stage.nll_weight * nll
        step(opt, scheduler, policy, loss)
        accuracy = (margin > 0).float().mean().item()
        progress.update(i, loss=loss.item(), accuracy=accuracy)
        if on_step is not None:
            on_step(i + 1, len(batches))
    policy.eval()
    return accuracy


@torch.no_grad()
def sample(model: Transformer, contexts: list[tuple[int, ...]], n: int, max_new: int,
           eos_id: int, generator: torch.Generator) -> list[list[tuple[int, ...] | None]]:
    """n responses to each context by ancestral sampling at temperature 1, all in one batch. A
    response is the tokens up to and including end-of-text, or None if it did not end within
    max_new.

    The contexts are right-padded: each row's next token is read at its own length and
    written just after it, and causal attention keeps whatever lies beyond a row's length
    from touching the positions it reads."""
    lengths = torch.tensor([len(c) for c in contexts]).repeat_interleave(n)
    ids = torch.full((len(lengths), int(lengths.max()) + max_new), eos_id, dtype=torch.long)
    for i, context in enumerate(contexts):
        ids[i * n : (i + 1) * n, : len(context)] = torch.tensor(context)
    rows = torch.arange(len(lengths))
    ended = torch.zeros(len(lengths), dtype=torch.bool)
    for t in range(max_new):
        at = lengths + t
        hidden = model.hidden_states(ids[:, : int(at.max())])[rows, at - 1]
        logits = (hidden @ model.output_weight.T).float()
        ids[rows, at] = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        ended |= ids[rows, at] == eos_id
        if ended.all():  # what would follow is cut off at end-of-text anyway
            break
    out = []
    for i, context in enumerate(contexts):
        group = []
        for row in ids[i * n : (i + 1) * n, len(context) : len(context) + max_new].tolist():
            group.append(tuple(row[: row.index(eos_id) + 1]) if eos_id in row else None)
        out.append(group)
    return out


def train_rl(policy: Transformer, reference: Transformer, contexts: list[tuple[int, ...]],
             rewards: list[Callable[[tuple[int, ...] | None], float]], stage: RLStage,
             pad_id: int, eos_id: int, seed: int, log: Log, on_step: OnStep | None = None
             ) -> float:
    """REINFORCE with a leave-one-out baseline (RLOO) over groups of samples per prompt.

    Each step draws `prompts_per_step` contexts, samples `samples_per_prompt` responses to
    each, and scores them with the context's reward function minus `kl_weight` times the
    sampled log-ratio log pi / pi_ref (a KL penalty folded into the reward). Responses that
    never end get the reward alone and no gradient (there is no sequence to reinforce).
    Returns the mean reward (before the KL term) of the last step."""
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt, scheduler = optimizer(policy, stage.lr, stage.steps, 5)
    progress = Progress("rl", stage.steps, log)
    mean_reward = 0.0
    n = stage.samples_per_prompt
    for i in range(stage.steps):
        policy.eval()
        chosen = rng.choice(len(contexts), size=stage.prompts_per_step, replace=False)
        responses = sample(policy, [contexts[c] for c in chosen], n, stage.max_new_tokens,
                           eos_id, generator)
        r = torch.tensor([[rewards[c](y) for y in group]
                          for c, group in zip(chosen, responses, strict=True)])
        mean_reward = r.mean().item()
        done = [(g, j) for g, group in enumerate(responses)
                for j, y in enumerate(group) if y is not None]
        batch = [Example(contexts[chosen[g]] + responses[g][j], len(contexts[chosen[g]]))
                 for g, j in done]
        if batch:
            g_index, j_index = (list(v) for v in zip(*done, strict=True))
            with torch.no_grad():
                log_ratio = (sequence_logprobs(policy, batch, pad_id)
                             - sequence_logprobs(reference, batch, pad_id))
            r[g_index, j_index] -= stage.kl_weight * log_ratio
            baseline = (r.sum(1, keepdim=True) - r) / (n - 1)  # leave-one-out: no critic
            advantages = (r - baseline)[g_index, j_index]
            policy.train()
            logp = sequence_logprobs(policy, batch, pad_id)
            loss = -(advantages * logp).sum() / (stage.prompts_per_step * n)
            step(opt, scheduler, policy, loss)
        progress.update(i, reward=mean_reward)
        if on_step is not None:
            on_step(i + 1, stage.steps)
    policy.eval()
    return mean_reward
