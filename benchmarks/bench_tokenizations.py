"""What `--tokenizations all` costs and changes on the shipped suite, beside canonical scoring.

    python -m benchmarks.bench_tokenizations [--checkpoint DIR] [--tasks all] [--mode base]

Scores the same tasks twice in one process, canonical then all tokenizations, and prints per
task: trie tokens run, seconds, how many token paths were scored per variant, the mean and
largest non-canonical share of an answer's probability, and how far the distributions moved
(mean over prompts of the Jensen-Shannon divergence, bits, and of the largest |Δ prob|).
Without --checkpoint it builds the random 20.8M-parameter Llama of bench_scoring (a random model
spreads its mass over tokenizations much more than a trained one: read its shares as an upper
bound); the demo ladder's checkpoints (demo/checkpoints/*, after `make demo`) are trained ones.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import engine
from analysis.metrics import js_divergence

RESULTS = Path(__file__).parent / "results"


def score(ck, tasks, mode, tokenizations):
    start = time.perf_counter()
    result = engine.score_checkpoint(ck, tasks=tasks, mode=mode, tokenizations=tokenizations,
                                     max_tokenizations=100_000, progress=False)
    return time.perf_counter() - start, result


def per_task(canonical, every) -> dict:
    rows = {}
    for task, table in every.tables.items():
        base = canonical.tables[task]
        prompts = table.column("prompt_id").to_pylist()
        k = len(prompts) // len(set(prompts))
        p_all = table.column("prob").to_numpy().reshape(-1, k)
        p_can = base.column("prob").to_numpy().reshape(-1, k)
        share = table.column("noncanonical_share").to_numpy()
        paths = every.variant_tables[task].column("tokenizations").to_numpy()
        rows[task] = {
            "tokens_canonical": canonical.manifest["tasks"][task]["tokens_processed"],
            "tokens_all": every.manifest["tasks"][task]["tokens_processed"],
            "paths_per_variant_mean": float(paths.mean()), "paths_per_variant_max": int(paths.max()),
            "share_mean": float(share.mean()), "share_max": float(share.max()),
            "js_mean_bits": float(js_divergence(p_all, p_can).mean()),
            "max_abs_dprob_mean": float(np.abs(p_all - p_can).max(axis=1).mean()),
        }
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a checkpoint directory (default: bench_scoring's random Llama)")
    p.add_argument("--tasks", default="all")
    p.add_argument("--mode", default="base", choices=["base", "chat"])
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(args.checkpoint) if args.checkpoint else Path(tmp)
        if not args.checkpoint:
            from benchmarks.bench_scoring import build_checkpoint

            build_checkpoint(directory)
        ck = engine.load(directory)
        times, results = {}, {}
        for how in ("canonical", "all"):
            times[how], results[how] = score(ck, args.tasks, args.mode, how)
    rows = per_task(results["canonical"], results["all"])
    print(f"checkpoint {args.checkpoint or 'random Llama 20.8M (bench_scoring)'}, {args.mode} mode, float32, CPU")
    print(f"{'task':<11}{'tokens':>8}{'(all)':>8}{'paths/var':>10}{'max':>6}{'share mean':>12}"
          f"{'share max':>11}{'JS bits':>10}{'max|dp|':>9}")
    for task, r in rows.items():
        print(f"{task:<11}{r['tokens_canonical']:>8}{r['tokens_all']:>8}{r['paths_per_variant_mean']:>10.1f}"
              f"{r['paths_per_variant_max']:>6}{r['share_mean']:>12.4f}{r['share_max']:>11.4f}"
              f"{r['js_mean_bits']:>10.5f}{r['max_abs_dprob_mean']:>9.4f}")
    print(f"time: canonical {times['canonical']:.2f} s, all {times['all']:.2f} s "
          f"({times['all'] / times['canonical']:.1f}x)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"tokenizations-{time.strftime('%Y-%m-%d')}.json"
    out.write_text(json.dumps({"checkpoint": args.checkpoint or "bench_scoring random Llama", "mode": args.mode,
                               "seconds": times, "tasks": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
