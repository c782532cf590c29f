"""A trajectory of 200 checkpoints x 15 tasks x 16 prompts with 1000 bootstrap resamples.

Synthetic distributions (15 tasks with the shipped tasks' answer counts, 2 to 100; every prompt
moving from its own Dirichlet draw toward one seed prompt's over the series), analysed with
`answerdist.analysis.trajectory` (order parameters, intervals, susceptibilities, located
transitions): target under 60 s on 2 cores. Then the bootstrap alone, side by side in one run: the
Numba kernel of analysis/bootstrap.py (parallel over resamples) against a plain numpy implementation
of the same six order parameters (vectorised over resamples, one task and point at a time).

    python -m benchmarks.bench_trajectory [--points 200] [--bootstrap 1000] [--record]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np

from answerdist.analysis.bootstrap import resample_counts
from answerdist.analysis.dynamics import trajectory
from answerdist.analysis.metrics import entropy, pairwise_js, support
from answerdist.analysis.null import draw_rng
from answerdist.analysis.phases import TAU, Results, TaskData, ladder_values, weights

RESULTS = Path(__file__).parent / "results"
ANSWERS = (2, 3, 4, 6, 7, 7, 10, 10, 11, 12, 15, 15, 26, 52, 100)  # the shipped tasks' K
PROMPTS = 16


def synthetic(points: int, seed: int = 0) -> tuple[Results, list]:
    rng = np.random.default_rng(seed)
    data = {f"step{100 * s}": {} for s in range(points)}
    for t, k in enumerate(ANSWERS):
        base = rng.dirichlet(np.full(k, min(0.4, 8 / k)), size=PROMPTS)
        base = np.maximum(base, 1e-12)
        base /= base.sum(axis=1, keepdims=True)
        ids, answers = [f"p{i:02d}" for i in range(PROMPTS)], [str(a) for a in range(k)]
        for s, label in enumerate(data):
            w = 1 / (1 + np.exp(-(s - points / 2) / (points / 20)))
            P = (1 - w) * base + w * base[3]
            P = P * np.exp(0.02 * rng.standard_normal(P.shape))
            data[label][f"task{t:02d}"] = TaskData(label, f"task{t:02d}", ids, answers,
                                                   P / P.sum(axis=1, keepdims=True),
                                                   rng.uniform(0.8, 1.0, PROMPTS))
    return Results(None, data), [(label, 100.0 * s) for s, label in enumerate(data)]


def _js_rows(C, q):
    """JS (bits) of each row of C to q."""
    m = 0.5 * (C + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(C > 0, C * (np.log2(C) - np.log2(m)), 0.0)
        b = np.where(q > 0, q * (np.log2(q) - np.log2(m)), 0.0)
    return np.clip(0.5 * (a + b).sum(axis=1), 0.0, 1.0)


def numpy_bootstrap(results: Results, series, bootstrap: int) -> int:
    """The six order parameters of every resample, in plain numpy; returns the values made."""
    labels = [label for label, _ in series]
    made = 0
    for task in results.data[labels[0]]:
        first = results.data[labels[0]][task]
        last = results.data[labels[-1]][task].P.mean(axis=0)
        seed = first.P[int(np.argmin(_js_rows(first.P, last / last.sum())))]
        mask = support(seed, 0.9)
        W = resample_counts(PROMPTS, bootstrap, draw_rng("numpy", task))
        pairs = PROMPTS**2 - (W**2).sum(axis=1)
        for label in labels:
            td = results.data[label][task]
            D, h = pairwise_js(td.P), entropy(td.P)
            C = W @ td.P / PROMPTS
            values = [np.einsum("bi,ij,bj->b", W, D, W) / pairs,  # liquidity
                      1 - _js_rows(C, seed),  # seed overlap
                      W @ h / PROMPTS / np.log2(td.P.shape[1]),  # entropy_norm
                      np.exp2(W @ h / PROMPTS),  # effective support
                      C[:, mask].sum(axis=1),  # retention
                      W @ td.coverage / PROMPTS]  # coverage
            made += sum(len(v) for v in values)
    return made


def kernel_bootstrap(results: Results, series, bootstrap: int) -> None:
    """The same bootstrap through the kernel that answerdist.analysis.trajectory runs (order
    parameters only), without locating transitions."""
    labels = [label for label, _ in series]
    for task in results.data[labels[0]]:
        arrays = [(results.data[label][task].P, results.data[label][task].coverage)
                  for label in labels]
        counts = resample_counts(PROMPTS, bootstrap, draw_rng("numpy", task))
        ladder_values(arrays, len(labels) - 1, TAU, weights([counts] * len(labels)), 3,
                      settle_from=0, everything=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_trajectory")
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--record", action="store_true",
                        help="write benchmarks/results/trajectory-cpu-DATE.json")
    args = parser.parse_args(argv)
    results, points = synthetic(args.points)
    small, few = synthetic(4, seed=1)
    trajectory(small, {"warm": few}, bootstrap=100)  # Numba compiles (or loads its cache)
    start = time.perf_counter()
    out = trajectory(results, {"run": points}, bootstrap=args.bootstrap)
    kernel = time.perf_counter() - start
    start = time.perf_counter()
    kernel_bootstrap(results, points, args.bootstrap)
    numba = time.perf_counter() - start
    start = time.perf_counter()
    numpy_bootstrap(results, points, args.bootstrap)
    plain = time.perf_counter() - start
    located = [r["position"] for r in out.transitions.to_pylist() if r["metric"] == "liquidity"]
    row = {"points": args.points, "tasks": len(ANSWERS), "prompts": PROMPTS,
           "bootstrap": args.bootstrap, "analysis_trajectory_s": round(kernel, 2),
           "bootstrap_numba_s": round(numba, 2), "bootstrap_numpy_s": round(plain, 2),
           "ratio_numpy_over_numba": round(plain / numba, 2),
           "median_located_liquidity_step": float(np.median(located)),
           "machine": platform.processor() or platform.machine()}
    print(f"answerdist.analysis.trajectory, all of it: {args.points} checkpoints x "
          f"{len(ANSWERS)} tasks x "
          f"{PROMPTS} prompts x {args.bootstrap} resamples in {kernel:.1f} s (target: < 60 s)")
    print(f"the bootstrap of the six order parameters alone: Numba kernel {numba:.1f} s, plain "
          f"numpy {plain:.1f} s (numpy / Numba = {plain / numba:.2f})")
    print(f"liquidity transitions located at step {np.median(located):.0f} (median over tasks; "
          f"planted at {100 * args.points / 2:.0f})")
    if args.record:
        path = RESULTS / f"trajectory-cpu-{date.today()}.json"
        path.write_text(json.dumps(row, indent=1) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
