"""What the toy ladder is trained on: planted answer distributions and each stage's data.

For every task and every prompt variant the lab plants one answer distribution, drawn from a
Dirichlet with a small concentration, so that the phrasing of the prompt selects a distinct,
peaked distribution: the "liquid" base the study describes. One prompt per task is the seed:

- pretraining documents read "{base prompt} {answer}" with the answer drawn from that prompt's
  own planted distribution, mixed with a little filler text;
- SFT conversations use every prompt's phrasing, but draw every answer from the SEED prompt's
  distribution: fine-tuning collapses the task onto a distribution the base already held;
- DPO pairs prefer the likelier of two answers under the seed's distribution, which pushes
  mass out of its tail and sharpens it; RL rewards the seed's top answers.

Everything is drawn from numpy Generators seeded from (config seed, task name), so a task's
data does not depend on which other tasks are built.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from answerdist.analysis.metrics import js_divergence, pairwise_js, support
from answerdist.engine.tasks import Prompt, Task

from .config import CorpusConfig

EOS = "<|endoftext|>"  # also BOS and padding, as in OLMo 2
SPECIALS = [EOS, "<|system|>", "<|user|>", "<|assistant|>"]

# Tulu 3's chat template (the same shape as tests/tiny.py's): the SFT, DPO and RL checkpoints
# carry it; the base checkpoint carries none, so the scorer reads it in base mode.
TULU_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ '<|assistant|>\n' + message['content'] + eos_token }}{% endif %}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    "{% endfor %}"
)

# Filler sentences for the pretraining corpus; slots take answers of random tasks.
FILLER = [
    "{a} and {b} went to the market together.",
    "Yesterday I wrote down {a}, then {b}, then {c}.",
    "Is {a} better than {b}? Nobody could say.",
    "A short list: {a}, {b}, {c}.",
    "The note only said: {a}.",
    "{a} is a word, and so is {b}.",
    "She thought of {a} but said {b}.",
]


def task_rng(seed: int, task: Task, stage: str) -> np.random.Generator:
    """A Generator for one task and one purpose, stable across runs and task selections."""
    return np.random.default_rng([seed, zlib.crc32(task.name.encode()), zlib.crc32(stage.encode())])


@dataclass(frozen=True)
class Planted:
    """The planted distributions of one task: dists[i] belongs to task.prompts[i].

    `learned`: the distribution the trained base model gives under the seed phrasing (its
    own seed, which the post-training stages nucleate onto), once the base is trained."""

    task: Task
    dists: np.ndarray  # [n_prompts, n_answers], rows sum to 1
    seed: int  # index of the seed prompt
    learned: np.ndarray | None = None

    @property
    def seed_prompt(self) -> Prompt:
        return self.task.prompts[self.seed]

    @property
    def seed_dist(self) -> np.ndarray:
        """What SFT, DPO and RL train toward: the base model's own seed distribution, or the
        planted one before the base is trained."""
        return self.dists[self.seed] if self.learned is None else self.learned


def concentration(cfg: CorpusConfig, k: int) -> float:
    """The per-answer Dirichlet concentration for a task with k answers."""
    return min(cfg.alpha, cfg.max_total_alpha / k)


def _dirichlet(rng: np.random.Generator, alpha: float, k: int) -> np.ndarray:
    d = rng.dirichlet(np.full(k, alpha))
    return d / d.sum()


def plant(task: Task, cfg: CorpusConfig, seed: int) -> Planted:
    """Draw one distribution per prompt, pick the seed, and keep the seed identifiable.

    The seed's distribution is drawn until its 90% support holds at least two answers (so
    that preference tuning has something to redistribute); every other prompt's is drawn
    until it is at least `min_seed_js` bits (Jensen-Shannon) from the seed's, so that the
    base prompt nearest to the SFT model's distribution is unambiguous; and the whole family
    is redrawn until its mean pairwise JS reaches `min_liquidity` bits, so that the base is
    clearly liquid even for a two-answer task (where peaked draws often agree).
    """
    rng = task_rng(seed, task, "plant")
    k, n = len(task.answers), len(task.prompts)
    seed_index = int(rng.integers(n))
    alpha = concentration(cfg, k)
    seed_dist = _dirichlet(rng, alpha, k)
    for _ in range(1000):
        if k < 2 or support(seed_dist, 0.9).sum() >= 2:
            break
        seed_dist = _dirichlet(rng, alpha, k)
    best, best_liquidity = None, -1.0
    for _ in range(100):  # keep the most liquid family if none reaches min_liquidity
        dists = np.stack([seed_dist if i == seed_index else _far_from(rng, seed_dist, cfg)
                          for i in range(n)])
        liquidity = _liquidity(dists)
        if liquidity > best_liquidity:
            best, best_liquidity = dists, liquidity
        if liquidity >= cfg.min_liquidity:
            break
    return Planted(task, best, seed_index)


def _far_from(rng: np.random.Generator, seed_dist: np.ndarray, cfg: CorpusConfig,
              tries: int = 256) -> np.ndarray:
    """The first of `tries` Dirichlet draws that lies at least min_seed_js bits from the seed
    (the farthest one if none does). Drawn as one batch: one JS call instead of a loop."""
    draws = rng.dirichlet(np.full(len(seed_dist), concentration(cfg, len(seed_dist))), size=tries)
    draws /= draws.sum(-1, keepdims=True)
    js = js_divergence(draws, np.broadcast_to(seed_dist, draws.shape))
    far = np.flatnonzero(js >= cfg.min_seed_js)
    return draws[far[0] if len(far) else int(np.argmax(js))]


def _liquidity(dists: np.ndarray) -> float:
    """Mean pairwise JS (bits) over distinct prompts: how much the phrasing matters."""
    n = len(dists)
    return float(pairwise_js(dists).sum() / (n * (n - 1))) if n > 1 else 0.0


def base_documents(planted: Planted, cfg: CorpusConfig, seed: int) -> list[str]:
    """Pretraining documents "{base prompt} {answer}", answers drawn per prompt."""
    task = planted.task
    rng = task_rng(seed, task, "base")
    n = cfg.docs_per_prompt + cfg.docs_per_answer * len(task.answers)
    docs = []
    for prompt, dist in zip(task.prompts, planted.dists, strict=True):
        context = task.render_base(prompt)
        for a in rng.choice(len(task.answers), size=n, p=dist):
            docs.append(f"{context} {task.answers[a].name}")
    return docs


def filler_documents(tasks: list[Task], n: int, seed: int) -> list[str]:
    """`n` filler sentences whose slots hold answers of random tasks (plain text, no task)."""
    rng = np.random.default_rng([seed, zlib.crc32(b"filler")])
    words = [a.name for t in tasks for a in t.answers]
    docs = []
    for _ in range(n):
        template = FILLER[rng.integers(len(FILLER))]
        a, b, c = (words[i] for i in rng.integers(len(words), size=3))
        docs.append(template.format(a=a, b=b, c=c))
    return docs


def sft_examples(planted: Planted, per_prompt: int, seed: int) -> list[tuple[Prompt, str]]:
    """(prompt, answer) pairs for chat SFT: every phrasing, answers from the seed only.

    The answers of all phrasings together hold each answer as often as the seed's
    probability says (largest-remainder rounding of per_prompt x prompts draws), dealt to
    the phrasings in a shuffled order: SFT learns the seed itself, not the sampling noise of
    a few hundred draws from it."""
    task = planted.task
    rng = task_rng(seed, task, "sft")
    total = per_prompt * len(task.prompts)
    share = planted.seed_dist * total
    counts = np.floor(share).astype(int)
    remainder = np.argsort(-(share - counts), kind="stable")[: total - counts.sum()]
    counts[remainder] += 1
    answers = rng.permutation(np.repeat(np.arange(len(task.answers)), counts))
    return [(prompt, task.answers[a].name) for i, prompt in enumerate(task.prompts)
            for a in answers[i * per_prompt:(i + 1) * per_prompt]]


def dpo_pairs(planted: Planted, per_prompt: int, seed: int) -> list[tuple[Prompt, str, str]]:
    """(prompt, chosen, rejected) triples. The chosen answer is drawn from the squared seed
    distribution (its head: this sharpens); the rejected one uniformly from outside the seed's
    90% support (this empties the tail), or, for an answer set the support covers entirely,
    among the answers the seed finds less likely. Chosen is always likelier than rejected."""
    task = planted.task
    rng = task_rng(seed, task, "dpo")
    s = planted.seed_dist
    tail = ~support(s, 0.9)
    has_lower = np.array([(s < x).any() for x in s])
    head = np.where(has_lower, s**2, 0.0)
    head /= head.sum()
    out = []
    for prompt in task.prompts:
        for c in rng.choice(len(s), size=per_prompt, p=head):
            rejectable = np.flatnonzero(tail & (s < s[c]))
            if len(rejectable) == 0:
                rejectable = np.flatnonzero(s < s[c])
            r = rejectable[rng.integers(len(rejectable))]
            out.append((prompt, task.answers[c].name, task.answers[r].name))
    return out


def rl_reward(planted: Planted, response: str | None) -> float:
    """Reward of one sampled response (None: no end-of-text within the budget).

    0 for anything that is not exactly one answer (any variant) followed by end-of-text;
    otherwise 0.2 for the format plus 0.8 times the answer's seed probability relative to
    the seed's top answer, so the seed's head is favoured over its tail."""
    if response is None:
        return 0.0
    s = planted.seed_dist
    for i, answer in enumerate(planted.task.answers):
        if response in answer.variants:
            return 0.2 + 0.8 * float(s[i] / s.max())
    return 0.0


def train_bpe(texts, vocab_size: int, specials: list[str], bos: str | None = None,
              added_tokens: tuple[str, ...] = ()) -> Tokenizer:
    """A byte-level BPE (GPT-2 alphabet, as OLMo's and Llama 3's) trained on `texts`, with
    `specials` never split or merged, `bos` (one of them) added in front by the post-processor,
    and `added_tokens`: whole-word tokens that are not special (Qwen 3's "<think>")."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    if added_tokens:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added_tokens])
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return tok


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """The demo's tokenizer: adds <|endoftext|> as BOS, like OLMo's GPT-style tokenizers."""
    return train_bpe(texts, vocab_size, SPECIALS, bos=EOS)
