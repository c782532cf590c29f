"""Ladders as the analysis takes them: `--ladder [NAME:]base=LABEL,sft=LABEL,...` specs, or
{name: {stage: label}} from Python, checked and named once."""

from answerdist.analysis.checks import short
from answerdist.errors import AnalysisError


def parse_ladder(spec):
    """'[name:]stage=label,stage=label,...' -> (name, [(stage, label), ...])."""
    name = None
    head = spec.split("=", 1)[0]
    if ":" in head:
        name, spec = spec.split(":", 1)
    stages = []
    for part in spec.split(","):
        stage, sep, label = (x.strip() for x in part.partition("="))
        if not sep or not stage or not label or "=" in label:
            raise AnalysisError(
                f"--ladder {spec!r}: expected stage=label pairs separated by commas, "
                "e.g. base=olmo2-7b,sft=olmo2-7b-sft,dpo=olmo2-7b-dpo,rl=olmo2-7b-instruct"
            )
        stages.append((stage, label))
    names = [s for s, _ in stages]
    if len(set(names)) != len(names):
        raise AnalysisError(f"--ladder {spec!r}: a stage name appears twice; name each once")
    labels = [label for _, label in stages]
    if len(set(labels)) != len(labels):
        twice = next(label for label in labels if labels.count(label) > 1)
        raise AnalysisError(f"--ladder {spec!r}: label {twice!r} is given for two stages; "
                            "each stage is a different checkpoint")
    if len(stages) < 2:
        raise AnalysisError(f"--ladder {spec!r}: give a base and at least one later stage")
    return (name or stages[0][1]), stages


LADDERS_SHAPE = ("give {name: {stage: label, ...}}, or a list of 'name:base=LABEL,sft=LABEL' "
                 "strings as --ladder takes them")


def ladder_list(ladders):
    """[(name, [(stage, label), ...]), ...] from --ladder specs or {name: {stage: label}} (or
    [(name, [(stage, label), ...])]), each checked as `parse_ladder` checks a spec; repeated
    names get a #i suffix. Any other shape is one AnalysisError line."""
    if isinstance(ladders, dict):
        ladders = [(name, _stage_pairs(name, stages)) for name, stages in ladders.items()]
    elif isinstance(ladders, str) or not isinstance(ladders, list | tuple):
        raise AnalysisError(f"ladders {short(ladders)}: {LADDERS_SHAPE}")
    parsed = []
    for x in ladders:
        if isinstance(x, str):
            parsed.append(parse_ladder(x))
        elif isinstance(x, list | tuple) and len(x) == 2 and isinstance(x[0], str):
            pairs = _stage_pairs(x[0], x[1])
            parsed.append(parse_ladder(f"{x[0]}:" + ",".join(f"{s}={label}" for s, label in pairs)))
        else:
            raise AnalysisError(f"ladder {short(x)}: {LADDERS_SHAPE}")
    if not parsed:
        raise AnalysisError(f"ladders {short(ladders)}: no ladder given; {LADDERS_SHAPE}")
    return _unique_names(parsed)


def _stage_pairs(name, stages) -> list[tuple[str, str]]:
    """[(stage, label)] from {stage: label} or [(stage, label)], every one a string."""
    pairs = list(stages.items()) if isinstance(stages, dict) else stages
    if not isinstance(name, str) or not isinstance(pairs, list | tuple) or not all(
            isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(v, str) for v in p)
            for p in pairs):
        raise AnalysisError(f"ladder {short(name)}: stages {short(stages)}: {LADDERS_SHAPE}")
    return [tuple(p) for p in pairs]


def _unique_names(ladders):
    seen = set()
    out = []
    for i, (name, stages) in enumerate(ladders, start=1):
        if name in seen:
            name = f"{name}#{i}"
        seen.add(name)
        out.append((name, stages))
    return out
