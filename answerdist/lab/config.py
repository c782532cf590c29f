"""Every knob of the toy ladder in one frozen dataclass, with a full and a small preset.

The config is the cache key of a build (see `answerdist.lab.ladder`): its JSON, together with the
task files, the lab's own source and the engine version, is hashed into `build.json`, and a build
is reused only when that hash matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from answerdist.version import __version__


@dataclass(frozen=True)
class CorpusConfig:
    """The planted distributions and the documents drawn from them."""

    alpha: float = 0.4  # Dirichlet concentration per answer (small: peaked distributions) ...
    max_total_alpha: float = 8.0  # ... capped at this over the whole answer set, so that a
    # 100-answer task is about as peaked as a 20-answer one (and as learnable from samples)
    min_seed_js: float = 0.1  # bits: every other prompt is at least this far from the seed
    min_liquidity: float = 0.3  # bits: mean pairwise JS of a task's planted family, at least
    docs_per_prompt: int = 120  # base documents per prompt ...
    docs_per_answer: int = 4  # ... plus this many per answer of the task (big sets need more)
    filler_fraction: float = 0.05  # share of filler documents in the pretraining corpus
    vocab_size: int = 1024  # byte-level BPE vocabulary, special tokens included


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the OLMo 2-architecture model (about 1M parameters at the defaults)."""

    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 512
    init_std: float = 0.02


@dataclass(frozen=True)
class LMStage:
    """A next-token (pretraining or SFT) stage: one AdamW run with warmup and cosine decay."""

    lr: float
    epochs: int
    batch_tokens: int  # padded tokens per batch (batch size x longest sequence)
    warmup_steps: int = 30
    final_lr: float = 0.1  # the cosine schedule ends at this fraction of lr
    docs_per_prompt: int = 0  # SFT only: conversations per prompt


@dataclass(frozen=True)
class DPOStage:
    pairs_per_prompt: int = 12
    beta: float = 0.2
    lr: float = 5e-4
    epochs: int = 1
    batch_pairs: int = 64
    nll_weight: float = 0.1  # small NLL term on the chosen answer keeps coverage (RPO-style)
    warmup_steps: int = 10


@dataclass(frozen=True)
class RLStage:
    steps: int = 40
    prompts_per_step: int = 8
    samples_per_prompt: int = 8
    lr: float = 3e-4
    kl_weight: float = 0.05  # penalty on log pi - log pi_ref of the sampled response
    max_new_tokens: int = 8


@dataclass(frozen=True)
class LabConfig:
    seed: int = 0
    threads: int = 2  # torch CPU threads; bitwise reproducibility holds for a fixed count
    tasks: str = "all"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    base: LMStage = field(
        default_factory=lambda: LMStage(lr=3e-3, epochs=1, batch_tokens=2048, final_lr=0.02)
    )
    # Three SFT epochs, and a cosine schedule ending at 2% of the peak rate: with two epochs,
    # or a schedule ending at 10%, the SFT consensus stays 0.002 to 0.01 bits from the base's
    # seed on tasks of 3 to 7 answers, where 15 base phrasings already come that close to each
    # other, and the seed test cannot tell it from a blend of them.
    sft: LMStage = field(
        default_factory=lambda: LMStage(lr=1e-3, epochs=3, batch_tokens=1024, final_lr=0.02,
                                        docs_per_prompt=40)
    )
    dpo: DPOStage = field(default_factory=DPOStage)
    rl: RLStage | None = field(default_factory=RLStage)
    snapshots: int = 8  # checkpoints per post-training stage, its final one included

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything a build depends on: this config, the task files, the lab's
        source and the engine version. A different hash means the cached ladder is stale."""
        h = hashlib.sha256()
        h.update(json.dumps(self.to_dict(), sort_keys=True).encode())
        h.update(__version__.encode())
        tasks_dir = resources.files("answerdist.engine.tasks")
        for name in sorted(f.name for f in tasks_dir.iterdir() if f.name.endswith(".toml")):
            h.update(name.encode() + tasks_dir.joinpath(name).read_bytes())
        for path in sorted(Path(__file__).parent.glob("*.py")):
            h.update(path.name.encode() + path.read_bytes())
        return h.hexdigest()[:16]


FULL = LabConfig()

# A few tasks of different answer-set sizes, a smaller model and fewer documents: the same
# pipeline in well under a minute, for the tests.
SMALL = LabConfig(
    tasks="coin,die,weekday,color",
    corpus=CorpusConfig(docs_per_prompt=120, docs_per_answer=6, vocab_size=512),
    model=ModelConfig(dim=64, n_layers=2, n_heads=4, intermediate_size=192),
    base=LMStage(lr=3e-3, epochs=3, batch_tokens=1024),
    sft=LMStage(lr=2e-3, epochs=3, batch_tokens=1024, docs_per_prompt=32),
    dpo=DPOStage(pairs_per_prompt=16, lr=1e-3),
    rl=RLStage(steps=20, prompts_per_step=4, samples_per_prompt=16),
    snapshots=4,
)
