"""The phase analysis's results as dataclasses: what `answerdist.analysis.analyse` returns and what
the CLI, the report and the API tables read.

Every figure is a `Figure` (its value and its 95% bootstrap interval). The metrics themselves
are not fields: they are the names the kernel computes (analysis/bootstrap.py: STAGE_METRICS,
SETTLING_METRICS, SEED_METRICS), held in `figures` mappings in the kernel's order, so that a
new metric is one kernel column (plus its docs) and reaches phases.json, the Arrow tables and
the report without further edits. `to_json()` gives the phases.json layout
(docs/metrics.md): each figure as `<metric>` beside `<metric>_ci`; `Phases.from_json` reads a
phases.json back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Interval = tuple[float, float] | None


@dataclass(frozen=True)
class Figure:
    """A figure and its 95% interval over resampled phrasings (None where undefined)."""

    value: float | int | None
    ci: Interval = None

    def __post_init__(self):
        if self.ci is not None:  # a list from the kernel or from JSON: one type throughout
            object.__setattr__(self, "ci", (float(self.ci[0]), float(self.ci[1])))


def _figures_from(d: dict) -> dict[str, Figure]:
    """The figures of a phases.json object: every key that has a `<key>_ci` beside it."""
    return {k: Figure(v, None if d[f"{k}_ci"] is None else tuple(d[f"{k}_ci"]))
            for k, v in d.items() if f"{k}_ci" in d}


def _figures_json(figures: dict[str, Figure]) -> dict:
    """{name: value, ..., name_ci: [lo, hi], ...}: values first, then intervals."""
    out = {name: f.value for name, f in figures.items()}
    out.update({f"{name}_ci": None if f.ci is None else list(f.ci) for name, f in figures.items()})
    return out


@dataclass
class Stage:
    """One stage of one task along a ladder: its checkpoint's metrics, its phase label, and
    the share of resamples giving that label."""

    label: str
    n_prompts: int
    n_answers: int
    figures: dict[str, Figure]  # the per-checkpoint metrics and nucleation
    consensus: list[float]
    phase: str = "unclear"
    phase_support: float = 0.0

    def value(self, name: str):
        return self.figures[name].value

    @classmethod
    def from_json(cls, d: dict) -> Stage:
        return cls(d["label"], d["n_prompts"], d["n_answers"], _figures_from(d), d["consensus"],
                   d["phase"], d["phase_support"])

    def to_json(self) -> dict:
        values = _figures_json(self.figures)
        checkpoint = {k: v for k, v in values.items() if k in self.figures and k != "nucleation"}
        return {"label": self.label, "n_prompts": self.n_prompts, "n_answers": self.n_answers,
                **checkpoint, "consensus": self.consensus,
                "nucleation": values.get("nucleation"),
                **{k: v for k, v in values.items() if k.endswith("_ci")},
                "phase": self.phase, "phase_support": self.phase_support}


@dataclass
class Seed:
    """The base prompt nearest to the seed stage's consensus, and the seed test's verdict
    (analysis/null.py): found, "no seed", or "unresolved"."""

    stage: str
    found: bool
    verdict: str
    seed_prompt_id: str | None
    nearest_prompt_id: str
    figures: dict[str, Figure]  # js, median_js, margin
    p_value: float
    level: float
    noise_floor: float
    resolvable: bool
    distribution: list[float]
    # The base prompts compatible with being the nearest at `level` (analysis/seedset.py),
    # nearest first; seed_set is that set when a seed is found, else empty.
    seed_set: list[str] = field(default_factory=list)
    nearest_set: list[str] = field(default_factory=list)

    def value(self, name: str):
        return self.figures[name].value

    @classmethod
    def from_json(cls, d: dict) -> Seed:
        # phases.json written before the seed set: the one named seed was its whole set
        nearest = d.get("nearest_set", [d["nearest_prompt_id"]])
        return cls(d["stage"], d["found"], d["verdict"], d["seed_prompt_id"],
                   d["nearest_prompt_id"], _figures_from(d), d["p_value"], d["level"],
                   d["noise_floor"], d["resolvable"], d["distribution"],
                   d.get("seed_set", nearest if d["found"] else []), nearest)

    def to_json(self) -> dict:
        values = _figures_json(self.figures)
        return {"found": self.found, "verdict": self.verdict,
                "seed_prompt_id": self.seed_prompt_id,
                "seed_set": list(self.seed_set),
                "nearest_prompt_id": self.nearest_prompt_id,
                "nearest_set": list(self.nearest_set),
                **{k: v for k, v in values.items() if not k.endswith("_ci")},
                "p_value": self.p_value, "level": self.level, "noise_floor": self.noise_floor,
                "resolvable": self.resolvable, "distribution": self.distribution,
                "stage": self.stage,
                **{k: v for k, v in values.items() if k.endswith("_ci")}}


@dataclass
class TaskLadder:
    """One task along one ladder: every stage, the seed, and the settling figures of the
    seed stage and every later stage."""

    answers: list[str]
    stages: dict[str, Stage]
    seed: Seed
    settling: dict[str, dict[str, Figure]]  # stage -> SETTLING_METRICS

    @classmethod
    def from_json(cls, d: dict) -> TaskLadder:
        return cls(d["answers"], {k: Stage.from_json(v) for k, v in d["stages"].items()},
                   Seed.from_json(d["seed"]),
                   {k: _figures_from(v) for k, v in d["settling"].items()})

    def to_json(self) -> dict:
        return {"answers": self.answers,
                "stages": {name: s.to_json() for name, s in self.stages.items()},
                "seed": self.seed.to_json(),
                "settling": {name: _interleaved(f) for name, f in self.settling.items()}}


def _interleaved(figures: dict[str, Figure]) -> dict:
    out = {}
    for name, f in figures.items():
        out[name] = f.value
        out[f"{name}_ci"] = None if f.ci is None else list(f.ci)
    return out


@dataclass
class Ladder:
    """A named ladder: its (stage, label) pairs in order, the seed stage, and every task."""

    stages: list[tuple[str, str]]
    seed_stage: str
    tasks: dict[str, TaskLadder]

    def labels(self) -> dict[str, str]:
        return dict(self.stages)

    @classmethod
    def from_json(cls, d: dict) -> Ladder:
        return cls([(s["stage"], s["label"]) for s in d["stages"]], d["seed_stage"],
                   {k: TaskLadder.from_json(v) for k, v in d["tasks"].items()})

    def to_json(self) -> dict:
        return {"stages": [{"stage": s, "label": label} for s, label in self.stages],
                "seed_stage": self.seed_stage,
                "tasks": {task: t.to_json() for task, t in self.tasks.items()}}


@dataclass(frozen=True)
class SeedMatch:
    """One task across a pair of ladders: are both seeds the same base prompt?"""

    seed_prompt_ids: tuple[str | None, str | None]
    js_between_seeds: float | None
    same_prompt: bool  # both seeds found, each set holding one prompt, the same one
    p_value: float
    seed_sets: tuple[list[str], list[str]] = ([], [])
    compatible: bool = False  # both seeds found and their sets share a prompt


@dataclass
class LadderPair:
    ladders: tuple[str, str]
    tasks: dict[str, SeedMatch]

    @classmethod
    def from_json(cls, d: dict) -> LadderPair:
        return cls(tuple(d["ladders"]),
                   {task: SeedMatch(tuple(m["seed_prompt_ids"]), m["js_between_seeds"],
                                    m["same_prompt"], m["p_value"],
                                    tuple(m.get("seed_sets", ([], []))),
                                    m.get("compatible", m["same_prompt"]))
                    for task, m in d["tasks"].items()})

    def to_json(self) -> dict:
        return {"ladders": list(self.ladders),
                "tasks": {task: {"seed_prompt_ids": list(m.seed_prompt_ids),
                                 "js_between_seeds": m.js_between_seeds,
                                 "same_prompt": m.same_prompt, "p_value": m.p_value,
                                 "seed_sets": [list(s) for s in m.seed_sets],
                                 "compatible": m.compatible}
                          for task, m in self.tasks.items()}}


@dataclass
class Phases:
    """Everything `answerdist analyse` computes; `to_json()` is phases.json."""

    tau: float
    level: float
    bootstrap: int
    confidence: float
    thresholds: dict[str, float]
    ladders: dict[str, Ladder] = field(default_factory=dict)
    cross_ladder: list[LadderPair] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: dict) -> Phases:
        """A phases.json, read back (json.loads of the file) into these dataclasses."""
        return cls(d["tau"], d["level"], d["bootstrap"], d["confidence"], d["thresholds"],
                   {k: Ladder.from_json(v) for k, v in d["ladders"].items()},
                   [LadderPair.from_json(p) for p in d["cross_ladder"]], d["warnings"])

    def to_json(self) -> dict:
        return {"tau": self.tau, "level": self.level, "bootstrap": self.bootstrap,
                "confidence": self.confidence, "thresholds": self.thresholds,
                "ladders": {name: ladder.to_json() for name, ladder in self.ladders.items()},
                "cross_ladder": [pair.to_json() for pair in self.cross_ladder],
                "warnings": self.warnings}
