"""Phase metrics of exact answer distributions (liquid -> nucleation -> settling).

    import analysis
    results = analysis.load("results")
    phases = analysis.analyse(results, {"olmo2": {"base": "olmo2-base", "sft": "olmo2-sft"}})
    series = analysis.trajectory(results, {"olmo2": [("step0", 0), ("step1000", 1000), ...]})

Also `analysis.from_table(table)` for distributions made elsewhere. Importing this package
is cheap and never imports torch or triton; these (analysis/api.py, analysis/dynamics.py)
import the Numba metrics on first use.
"""

__all__ = ["PhaseResult", "TrajectoryResult", "analyse", "from_table", "load", "trajectory"]


def __getattr__(name):
    if name in ("TrajectoryResult", "trajectory"):
        from analysis import dynamics

        return getattr(dynamics, name)
    if name in __all__:
        from analysis import api

        return getattr(api, name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
