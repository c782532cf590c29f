"""Score a built ladder with the engine, analyse it, and compare the result with what was planted.

The same functions serve `make demo` (on the full ladder) and the tests (on the small one):

- `write_sweep` and `score_ladder` score every checkpoint, the intermediate ones included,
  with `answerdist sweep` (in a subprocess, exactly as a user would);
- `run_phases` runs `answerdist analyse` over the ladder's stages (phases.json, and the HTML
  report if asked), `run_trajectory` runs `answerdist trajectory` over the series of
  every checkpoint (trajectory.json and its report);
- `compare` reads phases.json, trajectory.json, the base model's results and the planted
  distributions, and returns per task the planted seed beside the detected one, each stage's
  phase, liquidity and retention, where nucleation was located, and how far the base's
  learned distributions are from the planted ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from answerdist.analysis.metrics import js_divergence
from answerdist.analysis.phases import load_results
from answerdist.analysis.records import Phases

# Acceptance thresholds of the toy ladder (docs/demo.md, Acceptance), out of the 15 tasks of
# the full suite; `acceptance` scales them to the number of tasks actually built.
SEEDS_RECOVERED = 12 / 15
LIQUIDITY_FALLS = 13 / 15
DPO_RETAINS = 13 / 15
DPO_RETENTION_MIN = 0.9
NUCLEATION_IN_SFT = 13 / 15
NUCLEATION = "liquidity"  # the order parameter whose located transition is the nucleation


def write_sweep(out: Path, stages: list[str], tasks: str) -> Path:
    """OUT/sweep.toml: the base, then each post-training stage's intermediate checkpoints
    and its final one, labelled by directory name (base, sft-step01234, ..., sft, ...), with
    the series written to OUT/series.json (positions: each checkpoint's global step)."""
    checkpoints, stage_of = [], []
    for stage in stages:
        if stage != "base":
            checkpoints.append(f"checkpoints/steps/{stage}-step*")
            stage_of.append(stage)
        checkpoints.append(f"checkpoints/{stage}")
        stage_of.append(stage)
    toml = lambda xs: "[" + ", ".join(json.dumps(x) for x in xs) + "]"
    path = out / "sweep.toml"
    path.write_text(f"checkpoints = {toml(checkpoints)}\nstages = {toml(stage_of)}\n"
                    f'tasks = {json.dumps(tasks)}\nmodes = ["auto"]\ndevice = "cpu"\n'
                    'out = "results"\nseries = "series.json"\n')
    return path


def score_ladder(sweep: Path) -> None:
    """`answerdist sweep SWEEP`: every checkpoint not yet scored, then the series."""
    subprocess.run([sys.executable, "-m", "answerdist", "sweep", str(sweep)], check=True)


def ladder_spec(stages: list[str]) -> str:
    """The --ladder argument: stage=label, with each stage's results labelled by its name."""
    return ",".join(f"{s}={s}" for s in stages)


def run_phases(results: Path, stages: list[str], out: Path, report: Path | None = None
               ) -> Phases:
    """`answerdist analyse` over the ladder; returns the phases.json it wrote, read back."""
    cmd = [sys.executable, "-m", "answerdist", "analyse", str(results), "--ladder",
           ladder_spec(stages), "--out", str(out)]
    if report is not None:
        cmd += ["--report", str(report)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return Phases.from_json(json.loads(Path(out).read_text()))


def run_trajectory(results: Path, series: Path, out: Path, report: Path) -> dict:
    """`answerdist trajectory` over the series the sweep wrote; returns the
    trajectory.json it wrote."""
    cmd = [sys.executable, "-m", "answerdist", "trajectory", str(results), "--series",
           f"ladder={series}", "--out", str(out), "--report", str(report)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(Path(out).read_text())


def nucleation(trajectory: dict) -> dict[str, dict]:
    """Per task, where the NUCLEATION order parameter's transition was located, whether it
    lies inside the SFT stage (after the base's last point, at most SFT's last point), and
    whether it is told apart from the format switch (the coverage transition): `apart` when
    their intervals do not overlap. Where they overlap, the collapse happened somewhere
    between the base and the first checkpoints that answer in chat format, which cannot
    resolve it further (nothing between them answers)."""
    points = trajectory["series"]["ladder"]
    ends = {}
    for p in points:
        ends[p["stage"]] = max(ends.get(p["stage"], p["position"]), p["position"])
    fmt = {t["task"]: t for t in trajectory["transitions"] if t["metric"] == "coverage"}
    out = {}
    for t in trajectory["transitions"]:
        if t["metric"] != NUCLEATION:
            continue
        at, switch = t["position"], fmt.get(t["task"])
        located = switch is not None and switch["position"] is not None and at is not None
        out[t["task"]] = {
            "position": at, "interval": [t["position_lo"], t["position_hi"]],
            "sharp": t["sharp"], "delta_aic": t["delta_aic"],
            "in_sft": at is not None and ends["base"] < at <= ends["sft"],
            "format_switch": switch["position"] if located else None,
            "apart": bool(located and (t["position_hi"] < switch["position_lo"]
                                       or switch["position_hi"] < t["position_lo"])),
        }
    return out


def base_js_to_planted(results: Path, base_label: str, planted_dists: dict) -> dict[str, float]:
    """Per task, the mean JS (bits) between the base model's scored distribution for each
    prompt and the distribution planted for that prompt."""
    data = load_results(results, [base_label]).data[base_label]
    out = {}
    for task, td in data.items():
        if task not in planted_dists:
            continue
        planted = planted_dists[task]
        order = [planted["answers"].index(a) for a in td.answers]
        P = np.array([np.asarray(planted["prompts"][pid])[order] for pid in td.prompt_ids])
        out[task] = float(js_divergence(td.P, P / P.sum(-1, keepdims=True)).mean())
    return out


def compare(phases: Phases, planted: dict[str, str], base_js: dict[str, float],
            trajectory: dict | None = None) -> dict:
    """Per task: planted and detected seed, phase / liquidity / retention per stage, and
    where nucleation was located along the trajectory (when one is given)."""
    ladder = next(iter(phases.ladders.values()))
    located = nucleation(trajectory) if trajectory is not None else {}
    rows = {}
    for task, t in ladder.tasks.items():
        rows[task] = {
            "planted_seed": planted.get(task),
            "detected_seed": t.seed.seed_prompt_id,
            "seed_set": list(t.seed.seed_set),
            "nearest_prompt": t.seed.nearest_prompt_id,
            "seed_verdict": t.seed.verdict,
            "seed_p_value": t.seed.p_value,
            "base_js_to_planted": base_js.get(task),
            "phases": {s: m.phase for s, m in t.stages.items()},
            "liquidity": {s: m.value("liquidity") for s, m in t.stages.items()},
            "retention": {s: v["retention"].value for s, v in t.settling.items()},
            "nucleation": located.get(task),
        }
    return rows


def acceptance(rows: dict) -> dict:
    """Counts of the demo's acceptance properties (docs/demo.md), and whether each holds."""
    n = len(rows)
    seeds = sum(r["planted_seed"] == r["detected_seed"] for r in rows.values())
    # A task whose prompts cannot resolve a seed at all (two answers over 15 phrasings: any
    # distribution is near one of them) says so; it counts neither for nor against.
    unresolved = sum(r["seed_verdict"] == "unresolved" for r in rows.values())
    wrong = sum(r["detected_seed"] not in (None, r["planted_seed"]) for r in rows.values())
    falls = sum(r["liquidity"]["sft"] < r["liquidity"]["base"] for r in rows.values())
    retains = sum(r["retention"].get("dpo", 0.0) >= DPO_RETENTION_MIN for r in rows.values())
    nucleated = sum(bool(r["nucleation"] and r["nucleation"]["in_sft"]) for r in rows.values())
    apart = sum(bool(r["nucleation"] and r["nucleation"].get("apart")) for r in rows.values())
    js = [r["base_js_to_planted"] for r in rows.values() if r["base_js_to_planted"] is not None]
    return {
        "tasks": n,
        "seeds_recovered": seeds,
        "seeds_unresolved": unresolved,
        "seeds_wrong": wrong,
        "liquidity_falls_base_to_sft": falls,
        "dpo_retains_90pct": retains,
        "nucleation_in_sft": nucleated,
        "nucleation_apart_from_format": apart,
        "mean_base_js_to_planted_bits": float(np.mean(js)) if js else None,
        "passed": bool(seeds >= SEEDS_RECOVERED * (n - unresolved) and wrong == 0
                       and falls >= LIQUIDITY_FALLS * n
                       and retains >= DPO_RETAINS * n
                       and nucleated >= NUCLEATION_IN_SFT * n),
    }


def format_table(rows: dict, stages: list[str]) -> str:
    """The demo's closing table: planted vs detected seed, then the phase of each stage."""
    w_task = max(4, *(len(t) for t in rows))
    w_seed = max(12, *(len(str(r["planted_seed"])) for r in rows.values()),
                 *(len(_detected(r)) for r in rows.values()))
    head = (f"{'task':<{w_task}}  {'planted':<{w_seed}}  {'detected':<{w_seed}}  "
            + "  ".join(f"{s:<9}" for s in stages) + "  base JS  nucleation at step")
    lines = [head, "-" * len(head)]
    for task, r in rows.items():
        mark = "" if r["planted_seed"] == r["detected_seed"] else " *"
        detected = _detected(r)
        js = r["base_js_to_planted"]
        lines.append(
            f"{task:<{w_task}}  {str(r['planted_seed']):<{w_seed}}  {detected:<{w_seed}}  "
            + "  ".join(f"{r['phases'].get(s, '-'):<9}" for s in stages)
            + (f"  {js:.3f}  " if js is not None else "  -      ") + _located(r["nucleation"])
            + mark
        )
    lines += LEGEND
    return "\n".join(lines)


def _detected(row):
    """The detected seed; the set when it holds several prompts; else the verdict."""
    if row["detected_seed"]:
        return str(row["detected_seed"])
    if row.get("seed_set"):
        return "{" + ", ".join(row["seed_set"]) + "}"
    return f"({row['seed_verdict']})"


# Every symbol of the table, said under it.
LEGEND = [
    "detected: the seed the analysis found; {a, b} when a seed was found but the base prompts",
    "  in braces cannot be told apart at --level; its verdict in parentheses when it found none;",
    "  * marks a task whose detected seed is not the planted one",
    "base JS: mean Jensen-Shannon divergence (bits) of the base model's distributions to the",
    "  planted ones it was trained on",
    "nucleation at step: where the nucleation order parameter jumps along the checkpoints,",
    "  [95% interval, never narrower than the two checkpoints around it]; (outside SFT) when",
    "  not between the base and the last SFT checkpoint; ~format when its interval overlaps",
    "  the format switch's (coverage), so that the two cannot be told apart",
]


def _located(n: dict | None) -> str:
    if not n or n["position"] is None:
        return "-"
    lo, hi = n["interval"]
    ci = f" [{lo:.0f}, {hi:.0f}]" if lo is not None else ""
    return (f"{n['position']:.0f}{ci}{'' if n['in_sft'] else ' (outside SFT)'}"
            f"{'' if n.get('apart', True) else ' ~format'}")
