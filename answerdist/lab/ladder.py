"""Build the toy crystallization ladder: base -> SFT -> DPO -> RL, as Hugging Face checkpoints.

    answerdist demo [--small] [--out demo] [--force]

writes OUT/checkpoints/{base,sft,dpo,rl}/ (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, trainer_state.json), the intermediate checkpoints of each post-training
stage as OUT/checkpoints/steps/<stage>-stepNNNNN/, OUT/checkpoints/build.json (the cache stamp
plus the lab's own check of the ladder), OUT/checkpoints/planted_distributions.json, and
OUT/planted.json (task -> planted seed prompt id). A second call with the same config reuses
the checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from answerdist.engine.model.transformer import Transformer
from answerdist.engine.run.api import score_checkpoint
from answerdist.engine.tasks import load_tasks
from answerdist.engine.text.chat import ChatTemplate
from answerdist.version import __version__

from . import corpus, train
from .config import FULL, LabConfig
from .corpus import EOS, SPECIALS, TULU_TEMPLATE, Planted
from .train import Example

STAGES = ("base", "sft", "dpo", "rl")


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------- checkpoints


def hf_config(model: Transformer, tokenizer: Tokenizer) -> dict:
    """config.json as transformers 5 writes it for Olmo2ForCausalLM."""
    a = model.args
    eos = tokenizer.token_to_id(EOS)
    return {
        "architectures": ["Olmo2ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": eos,
        "dtype": "float32",
        "eos_token_id": eos,
        "hidden_act": "silu",
        "hidden_size": a.dim,
        "initializer_range": 0.02,
        "intermediate_size": a.intermediate_size,
        "max_position_embeddings": a.max_position_embeddings,
        "model_type": "olmo2",
        "num_attention_heads": a.n_heads,
        "num_hidden_layers": a.n_layers,
        "num_key_value_heads": a.n_kv_heads,
        "pad_token_id": eos,
        "rms_norm_eps": a.norm_eps,
        "rope_parameters": {"rope_theta": a.rope_theta, "rope_type": "default"},
        "tie_word_embeddings": a.tie_embeddings,
        "use_cache": True,
        "vocab_size": a.vocab_size,
    }


def tokenizer_config(tokenizer: Tokenizer, chat_template: str | None, max_length: int) -> dict:
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "model_max_length": max_length,
        "added_tokens_decoder": {
            str(tokenizer.token_to_id(t)): {"content": t, "special": True, "lstrip": False,
                                            "rstrip": False, "normalized": False,
                                            "single_word": False}
            for t in SPECIALS
        },
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config


def save_checkpoint(model: Transformer, tokenizer: Tokenizer, directory: Path,
                    chat_template: str | None, global_step: int) -> None:
    """Write a Hugging Face checkpoint directory (float32 safetensors, bitwise reproducible).
    trainer_state.json holds the optimizer steps taken since initialisation, as the Hugging
    Face Trainer records them: answerdist.engine.run.sweep reads it as the checkpoint's position."""
    directory.mkdir(parents=True)
    dump = lambda obj: json.dumps(obj, indent=2, sort_keys=True) + "\n"
    (directory / "config.json").write_text(dump(hf_config(model, tokenizer)))
    (directory / "trainer_state.json").write_text(dump({"global_step": global_step}))
    state = {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(str(directory / "tokenizer.json"))
    max_length = model.args.max_position_embeddings
    (directory / "tokenizer_config.json").write_text(
        dump(tokenizer_config(tokenizer, chat_template, max_length)))


# ---------------------------------------------------------------------------------- data


class Encoder:
    """Tokenizes stage data into training examples, caching each prompt context."""

    def __init__(self, tokenizer: Tokenizer, template: ChatTemplate):
        self.tokenizer = tokenizer
        self.template = template
        self.eos = tokenizer.token_to_id(EOS)
        self._contexts: dict[str, tuple[int, ...]] = {}

    def chat_context(self, task, prompt) -> str:
        user = {"role": "user", "content": task.prompt_text(prompt)}
        return self.template.render([user], add_generation_prompt=True) + task.assistant_prefix

    def context_ids(self, context: str) -> tuple[int, ...]:
        """Tokens of a rendered chat context. Like the scorer (and transformers'
        apply_chat_template) this adds no BOS: the rendered text holds its special tokens."""
        if context not in self._contexts:
            self._contexts[context] = self.chat_ids(context)
        return self._contexts[context]

    def chat_ids(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def document(self, text: str) -> Example:
        """A pretraining document: loss on every token after BOS, then end-of-text."""
        return Example(tuple(self.tokenizer.encode(text).ids) + (self.eos,), 1)

    def response(self, context: str, answer: str) -> Example:
        """context + answer + end-of-text, the loss on the answer and end-of-text only."""
        prompt = self.context_ids(context)
        full = self.chat_ids(context + answer)
        if full[: len(prompt)] != prompt:
            raise ValueError(f"tokens of {context!r} are not a prefix of its answer {answer!r}")
        return Example(full + (self.eos,), len(prompt))


def learned_seeds(base: Path, planted: list[Planted]) -> list[Planted]:
    """Each task with the distribution the trained base gives under its seed phrasing (scored
    exactly by the engine, in base mode): the seed the base already has, as the study's
    hypothesis puts it, which SFT then nucleates onto. Training SFT on the planted
    distribution instead would aim it at a point the base only approximates."""
    result = score_checkpoint(base, tasks=[p.task for p in planted], mode="base",
                                     device="cpu", progress=False)
    out = []
    for p in planted:
        rows = result.tables[p.task.name].to_pydict()
        prob = {a: v for pid, a, v in zip(rows["prompt_id"], rows["answer"], rows["prob"],
                                          strict=True) if pid == p.seed_prompt.id}
        learned = np.array([prob[name] for name in p.task.answer_names], dtype=np.float64)
        out.append(dataclasses.replace(p, learned=learned / learned.sum()))
    return out


def reward_function(planted: Planted, tokenizer: Tokenizer):
    """Reward on sampled token ids: decode the response before its end-of-text, then score."""
    def reward(response: tuple[int, ...] | None) -> float:
        if response is None:
            return corpus.rl_reward(planted, None)
        return corpus.rl_reward(planted, tokenizer.decode(list(response[:-1]),
                                                          skip_special_tokens=False))
    return reward


class Snapshots:
    """Saves a stage's intermediate checkpoints while it trains: `count - 1` of them at steps
    spaced geometrically from its first step (dense early, where SFT nucleates), the stage's
    own final checkpoint being the last of its `count`. Named `<stage>-stepNNNNN` after the
    global step (every optimizer step since initialisation, the base's included)."""

    def __init__(self, save: Callable[[Path, int], None], stage: str, offset: int, count: int,
                 root: Path):
        self.save, self.stage, self.offset, self.count = save, stage, offset, count
        self.root = root
        self.names: list[str] = []
        self.total = 0
        self.at: set[int] = set()  # the steps to save, once the stage's length is known

    def __call__(self, step: int, total: int) -> None:
        if total != self.total:
            self.total = total
            self.at = snapshot_steps(total, self.count) - {total} if self.count > 1 else set()
        if step in self.at:
            name = f"{self.stage}-step{self.offset + step:05d}"
            self.save(self.root / name, self.offset + step)
            self.names.append(name)


def snapshot_steps(total: int, count: int) -> set[int]:
    """Up to `count` steps of 1..total, geometrically spaced, the last one `total`."""
    return set(np.unique(np.round(np.geomspace(1, total, count)).astype(int)).tolist())


# ---------------------------------------------------------------------------------- build


def is_current(out: Path, cfg: LabConfig) -> bool:
    """True when OUT holds a complete ladder built from this exact config."""
    stamp = out / "checkpoints" / "build.json"
    if not stamp.is_file() or not (out / "planted.json").is_file():
        return False
    try:
        built = json.loads(stamp.read_text())
    except json.JSONDecodeError:
        return False
    stages = STAGES if cfg.rl is not None else STAGES[:3]
    steps = [f"steps/{name}" for names in built.get("snapshots", {}).values() for name in names]
    return built.get("fingerprint") == cfg.fingerprint() and all(
        (out / "checkpoints" / s / "model.safetensors").is_file() for s in [*stages, *steps])


def build(cfg: LabConfig = FULL, out: Path | str = "demo", force: bool = False) -> dict:
    """Build the ladder under OUT (or reuse it); returns the contents of build.json."""
    out = Path(out)
    if not force and is_current(out, cfg):
        log(f"ladder: reusing {out / 'checkpoints'} (config {cfg.fingerprint()})")
        return json.loads((out / "checkpoints" / "build.json").read_text())
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _build(cfg, out)
    finally:  # leave the caller's torch settings as they were
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _build(cfg: LabConfig, out: Path) -> dict:
    start = time.perf_counter()
    fingerprint = cfg.fingerprint()  # once: the source it hashes may change while we train
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = round(time.perf_counter() - start - sum(timings.values()), 1)
        log(f"ladder: {name} done ({timings[name]:.1f}s)")

    tasks = load_tasks(cfg.tasks)
    log(f"ladder: building {len(tasks)} tasks into {out / 'checkpoints'} (config {fingerprint})")
    planted = [corpus.plant(t, cfg.corpus, cfg.seed) for t in tasks]
    docs = [d for p in planted for d in corpus.base_documents(p, cfg.corpus, cfg.seed)]
    docs += corpus.filler_documents(tasks, int(cfg.corpus.filler_fraction * len(docs)), cfg.seed)
    answers = [a.name for p in planted for _ in p.task.prompts for a in p.task.answers]
    tokenizer = corpus.train_tokenizer(docs + answers, cfg.corpus.vocab_size)
    template = ChatTemplate("lab", TULU_TEMPLATE, {"bos_token": EOS, "eos_token": EOS})
    enc = Encoder(tokenizer, template)
    base_examples = [enc.document(d) for d in docs]
    n_tokens = sum(len(e.ids) for e in base_examples)
    log(f"ladder: corpus of {len(docs)} documents, {n_tokens} tokens; vocabulary "
        f"{tokenizer.get_vocab_size()}")
    lap("corpus")

    partial = out / "checkpoints.partial"
    shutil.rmtree(partial, ignore_errors=True)
    references: dict[str, Transformer] = {}
    rng = np.random.default_rng([cfg.seed, 1])

    model = train.new_model(cfg.model, tokenizer.get_vocab_size(), cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"ladder: base model {n_params} parameters")
    stages: dict[str, Snapshots] = {}

    def save(directory: Path, step: int, template: str | None = TULU_TEMPLATE) -> None:
        save_checkpoint(model, tokenizer, directory, template, step)

    def begin(stage: str) -> Snapshots:
        offset = sum(s.total for s in stages.values())
        stages[stage] = Snapshots(save, stage, offset, 1 if stage == "base" else cfg.snapshots,
                                  partial / "steps")
        return stages[stage]

    def finish(stage: str) -> None:
        snap = stages[stage]
        save(partial / stage, snap.offset + snap.total, None if stage == "base" else TULU_TEMPLATE)
        if stage != "base":
            lap(stage)

    train.train_lm(model, base_examples, cfg.base, enc.eos, rng, "base", log,
                   on_step=begin("base"))
    finish("base")
    planted = learned_seeds(partial / "base", planted)
    lap("base")

    sft_examples = [enc.response(enc.chat_context(p.task, pr), a) for p in planted
                    for pr, a in corpus.sft_examples(p, cfg.sft.docs_per_prompt, cfg.seed)]
    train.train_lm(model, sft_examples, cfg.sft, enc.eos, rng, "sft", log, on_step=begin("sft"))
    references["sft"] = train.frozen_copy(model)
    finish("sft")

    pairs = []
    for p in planted:
        for pr, chosen, rejected in corpus.dpo_pairs(p, cfg.dpo.pairs_per_prompt, cfg.seed):
            context = enc.chat_context(p.task, pr)
            pairs.append((enc.response(context, chosen), enc.response(context, rejected)))
    dpo_accuracy = train.train_dpo(model, references["sft"], pairs, cfg.dpo, enc.eos, rng, log,
                                   on_step=begin("dpo"))
    references["dpo"] = train.frozen_copy(model)
    finish("dpo")

    rl_reward = None
    if cfg.rl is not None:
        contexts, rewards = [], []
        for p in planted:
            for pr in p.task.prompts:
                contexts.append(enc.context_ids(enc.chat_context(p.task, pr)))
                rewards.append(reward_function(p, tokenizer))
        rl_reward = train.train_rl(model, references["dpo"], contexts, rewards, cfg.rl, enc.eos,
                                   enc.eos, cfg.seed, log, on_step=begin("rl"))
        finish("rl")

    stamp = {
        "fingerprint": fingerprint,
        "engine_version": __version__,
        "config": cfg.to_dict(),
        "parameters": n_params,
        "corpus": {"documents": len(docs), "tokens": n_tokens,
                   "vocab_size": tokenizer.get_vocab_size()},
        "planted": {p.task.name: p.seed_prompt.id for p in planted},
        "global_steps": {name: snap.offset + snap.total for name, snap in stages.items()},
        "snapshots": {name: snap.names for name, snap in stages.items() if name != "base"},
        "timings_s": timings,
        "build_seconds": round(time.perf_counter() - start, 1),
        "dpo_final_pair_accuracy": dpo_accuracy,
        "rl_final_mean_reward": rl_reward,
    }
    write_outputs(out, partial, stamp, planted)
    log(f"ladder: built in {stamp['build_seconds']:.0f}s")
    return stamp


def write_outputs(out: Path, partial: Path, stamp: dict, planted: list[Planted]) -> None:
    """Stamp the finished ladder, then move it into place: an interrupted build never leaves
    a checkpoints/ directory that looks complete."""
    dump = lambda obj: json.dumps(obj, indent=2) + "\n"
    dists = {p.task.name: {"answers": list(p.task.answer_names),
                           "prompts": {pr.id: d.tolist()
                                       for pr, d in zip(p.task.prompts, p.dists, strict=True)},
                           "learned_seed": None if p.learned is None else p.learned.tolist()}
             for p in planted}
    (partial / "planted_distributions.json").write_text(dump(dists))
    (partial / "build.json").write_text(dump(stamp))
    final = out / "checkpoints"
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    (out / "planted.json").write_text(dump(stamp["planted"]))
