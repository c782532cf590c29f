"""Micro-benchmark: answerdist.analysis.metrics.pairwise_js against scipy's pdist(P,
"jensenshannon")**2.

Both compute all pairwise Jensen-Shannon divergences of N = 2000 distributions over K = 100
answers; scipy's result is in nats (divided by ln 2 here, and checked to agree). The two are
timed alternately in the same process, several repeats each, after one untimed call of ours
(Numba compile or cache load); the medians and their ratio are printed.

    python -m benchmarks.bench_metrics [--n 2000] [--k 100] [--repeats 5]
"""

import argparse
import math
import statistics
import time

import numpy as np
from scipy.spatial.distance import pdist, squareform

from answerdist.analysis.metrics import pairwise_js


def _time(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    P = np.random.default_rng(0).dirichlet(np.full(args.k, 0.5), size=args.n)
    pairwise_js(P[:4])  # compile or load from the Numba cache, untimed

    ours, theirs = [], []
    for _ in range(args.repeats):
        t_ours, D = _time(lambda: pairwise_js(P))
        t_scipy, d = _time(lambda: pdist(P, "jensenshannon") ** 2)
        ours.append(t_ours)
        theirs.append(t_scipy)

    err = np.abs(D - squareform(d / math.log(2.0))).max()
    m_ours, m_scipy = statistics.median(ours), statistics.median(theirs)
    print(f"pairwise JS, N={args.n}, K={args.k}, {args.repeats} repeats (median)")
    print(f"  answerdist.analysis.metrics.pairwise_js : {m_ours:8.3f} s")
    print(f"  scipy pdist jensenshannon**2 : {m_scipy:8.3f} s")
    print(
        f"  speed-up vs scipy            : {m_scipy / m_ours:8.2f}x   (max |diff| {err:.1e} bits)"
    )


if __name__ == "__main__":
    main()
