"""`make demo`: build (or reuse) the toy ladder, score it, analyse it, and say what was found.

    answerdist demo [--out demo] [--small] [--force]

1. `answerdist.lab.ladder.build` writes demo/checkpoints/{base,sft,dpo,rl}, the intermediate
checkpoints
   demo/checkpoints/steps/<stage>-stepNNNNN and demo/planted.json, or reuses them when
   demo/checkpoints/build.json matches the current config;
2. `answerdist sweep demo/sweep.toml` scores every checkpoint (base in base mode, the
   others in chat mode, which `auto` picks from the chat template) into demo/results/<label>/
   and writes the series demo/series.json (label, global step and stage of each);
3. `answerdist analyse` writes demo/phases.json and the report demo/report/index.html;
   `answerdist trajectory` writes demo/trajectory.json and demo/report/trajectory/;
4. a table: per task the planted seed prompt beside the detected one, each stage's phase and
   where nucleation was located; also written to demo/summary.json;
5. the emergent ladder (answerdist.lab.emergent): SFT from the same base on half of the tasks,
   the other half held out; its table, and demo/emergent.json. Reported whatever it shows: the
   exit status is the planted ladder's acceptance alone.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from . import check, emergent, ladder
from .config import FULL, SMALL


def fresh_results(out: Path, fingerprint: str) -> Path:
    """demo/results, emptied when it holds scores of an earlier ladder (the scorer would
    refuse to mix them), and tagged with the ladder it scores."""
    results = out / "results"
    tag = results / "ladder.txt"
    if results.exists() and (not tag.is_file() or tag.read_text().strip() != fingerprint):
        shutil.rmtree(results)
    results.mkdir(parents=True, exist_ok=True)
    tag.write_text(fingerprint + "\n")
    return results


def run(out: Path | str = "demo", small: bool = False, force: bool = False) -> int:
    """The demo (the module doc); 0 when the analysis recovered what the ladder planted."""
    cfg = SMALL if small else FULL
    out = Path(out)
    start = time.perf_counter()

    stamp = ladder.build(cfg, out, force=force)
    stages = [s for s in ladder.STAGES if (out / "checkpoints" / s).is_dir()]
    results = fresh_results(out, stamp["fingerprint"])
    print(f"demo: scoring {len(stages)} stages and their intermediate checkpoints", flush=True)
    check.score_ladder(check.write_sweep(out, stages, cfg.tasks))
    print("demo: analysing the ladder", flush=True)
    phases = check.run_phases(results, stages, out / "phases.json", out / "report")
    print("demo: analysing the trajectory", flush=True)
    trajectory = check.run_trajectory(results, out / "series.json", out / "trajectory.json",
                                      out / "report" / "trajectory")

    print("demo: the emergent ladder (SFT on half of the tasks)", flush=True)
    emerged = emergent.run(cfg, out, results, force=force)

    planted = json.loads((out / "planted.json").read_text())
    planted_dists = json.loads((out / "checkpoints" / "planted_distributions.json").read_text())
    rows = check.compare(phases, planted, check.base_js_to_planted(results, "base", planted_dists),
                         trajectory)
    verdict = check.acceptance(rows)
    summary = {"build": {k: stamp[k] for k in ("fingerprint", "parameters", "build_seconds")},
               "acceptance": verdict, "tasks": rows, "emergent": emerged["summary"],
               "demo_seconds": round(time.perf_counter() - start, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    print()
    print(check.format_table(rows, stages))
    print()
    n = verdict["tasks"]
    print(f"seeds recovered {verdict['seeds_recovered']}/{n} at p < 0.01 "
          f"({verdict['seeds_unresolved']} unresolvable, {verdict['seeds_wrong']} wrong); "
          f"liquidity falls base -> sft "
          f"{verdict['liquidity_falls_base_to_sft']}/{n}; DPO keeps >= 90% in the seed's "
          f"support {verdict['dpo_retains_90pct']}/{n}; nucleation located inside SFT "
          f"{verdict['nucleation_in_sft']}/{n} (told apart from the format switch on "
          f"{verdict['nucleation_apart_from_format']}); base JS to planted "
          f"{verdict['mean_base_js_to_planted_bits']:.3f} bits (mean)")
    print()
    print("The emergent ladder: SFT on the training tasks only; the held-out tasks saw no SFT "
          "data")
    print(emergent.format_table(emerged["tasks"]))
    held = emerged["summary"]["held-out"]
    print(f"held-out tasks: {held['answering']}/{held['tasks']} answer in chat format; liquidity "
          f"falls by half on {held['liquidity_falls_by_half']}; a seed is found on "
          f"{held['seed_found']}, named alone on {held['single_seed']} (demo/emergent.json)")
    print()
    print(f"ladder of {stamp['parameters']} parameters, built in {stamp['build_seconds']:.0f}s; "
          f"demo took {summary['demo_seconds']:.0f}s")
    print(f"report: {out / 'report' / 'index.html'}   phases: {out / 'phases.json'}")
    print(f"trajectory: {out / 'report' / 'trajectory' / 'index.html'}   "
          f"{out / 'trajectory.json'}")
    if not verdict["passed"]:
        print("demo: the analysis did NOT recover what the ladder planted (see summary.json)")
        return 1
    return 0
