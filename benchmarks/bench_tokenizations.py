"""What `--tokenizations all` costs and changes on the shipped suite, beside canonical scoring.

    python -m benchmarks.bench_tokenizations [--checkpoint DIR] [--tasks all] [--mode base]
        [--max-tokenizations 2000]

Scores each task twice in one process, canonical then all tokenizations, side by side, and
prints per task: trie tokens run, seconds, how many token paths were scored per variant, the
mean and largest non-canonical share of an answer's probability, and how far the distributions
moved (mean over prompts of the Jensen-Shannon divergence, bits, and of the largest |Δ prob|).
A task with a variant spelled more than --max-tokenizations ways is listed as refused, as the
engine refuses it (a card's name has up to 13,524 tokenizations in bench_scoring's 32k
vocabulary). Without --checkpoint it builds the random 20.8M-parameter Llama of bench_scoring (a
random model spreads its mass over tokenizations much more than a trained one: read its shares
as an upper bound); the demo ladder's checkpoints (demo/checkpoints/*, after `make demo`) are
trained ones.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import answerdist
from answerdist.analysis.metrics import js_divergence
from answerdist.engine.tasks import load_tasks
from answerdist.errors import TaskError

RESULTS = Path(__file__).parent / "results"


def score(ck, task, mode, tokenizations, limit):
    start = time.perf_counter()
    result = answerdist.score_checkpoint(ck, tasks=task, mode=mode, tokenizations=tokenizations,
                                     max_tokenizations=limit, progress=False)
    return time.perf_counter() - start, result


def compare(canonical, every) -> dict:
    """One task's row: cost and how far the distributions moved."""
    (task, table), = every.tables.items()
    base = canonical.tables[task]
    prompts = table.column("prompt_id").to_pylist()
    k = len(prompts) // len(set(prompts))
    p_all = table.column("prob").to_numpy().reshape(-1, k)
    p_can = base.column("prob").to_numpy().reshape(-1, k)
    share = table.column("noncanonical_share").to_numpy()
    paths = every.variant_tables[task].column("tokenizations").to_numpy()
    return {
        "tokens_canonical": canonical.manifest["tasks"][task]["tokens_processed"],
        "tokens_all": every.manifest["tasks"][task]["tokens_processed"],
        "paths_per_variant_mean": float(paths.mean()), "paths_per_variant_max": int(paths.max()),
        "share_mean": float(share.mean()), "share_max": float(share.max()),
        "js_mean_bits": float(js_divergence(p_all, p_can).mean()),
        "max_abs_dprob_mean": float(np.abs(p_all - p_can).max(axis=1).mean()),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint",
                   help="a checkpoint directory (default: bench_scoring's random Llama)")
    p.add_argument("--tasks", default="all")
    p.add_argument("--mode", default="base", choices=["base", "chat"])
    p.add_argument("--max-tokenizations", type=int, default=2000,
                   help="as the engine's flag; a task with a variant past it is listed as refused")
    args = p.parse_args(argv)
    rows, refused = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(args.checkpoint) if args.checkpoint else Path(tmp)
        if not args.checkpoint:
            from benchmarks.bench_scoring import build_checkpoint

            build_checkpoint(directory)
        ck = answerdist.load(directory)
        for task in load_tasks(args.tasks):  # one task at a time, canonical then all, side by side
            seconds, canonical = score(ck, [task], args.mode, "canonical", args.max_tokenizations)
            try:
                seconds_all, every = score(ck, [task], args.mode, "all", args.max_tokenizations)
            except TaskError as e:
                refused[task.name] = str(e)
                continue
            rows[task.name] = compare(canonical, every) | {"seconds_canonical": seconds,
                                                            "seconds_all": seconds_all}
    print(f"checkpoint {args.checkpoint or 'random Llama 20.8M (bench_scoring)'}, "
          f"{args.mode} mode, float32, CPU, --max-tokenizations {args.max_tokenizations}")
    print(f"{'task':<11}{'tokens':>8}{'(all)':>8}{'s':>7}{'(all)':>7}{'paths/var':>10}{'max':>6}"
          f"{'share mean':>12}{'share max':>11}{'JS bits':>10}{'max|dp|':>9}")
    for task, r in rows.items():
        print(f"{task:<11}{r['tokens_canonical']:>8}{r['tokens_all']:>8}"
              f"{r['seconds_canonical']:>7.2f}"
              f"{r['seconds_all']:>7.2f}{r['paths_per_variant_mean']:>10.1f}"
              f"{r['paths_per_variant_max']:>6}"
              f"{r['share_mean']:>12.4f}{r['share_max']:>11.4f}{r['js_mean_bits']:>10.5f}"
              f"{r['max_abs_dprob_mean']:>9.4f}")
    for task, why in refused.items():
        print(f"{task:<11}refused: {why}")
    canonical_s = sum(r["seconds_canonical"] for r in rows.values())
    all_s = sum(r["seconds_all"] for r in rows.values())
    print(f"time over the {len(rows)} tasks scored both ways: canonical {canonical_s:.2f} s, "
          f"all {all_s:.2f} s ({all_s / canonical_s:.1f}x)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"tokenizations-{time.strftime('%Y-%m-%d')}.json"
    out.write_text(json.dumps({"checkpoint": args.checkpoint or "bench_scoring random Llama",
                               "mode": args.mode, "max_tokenizations": args.max_tokenizations,
                               "tasks": rows,
                               "refused": refused}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
