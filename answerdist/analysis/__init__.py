"""Phase metrics of exact answer distributions (liquid -> nucleation -> settling).

    from answerdist import analysis
    results = analysis.load("results")
    phases = analysis.analyse(results, {"olmo2": {"base": "olmo2-base", "sft": "olmo2-sft"}})
    series = analysis.trajectory(results, {"olmo2": [("step0", 0), ("step1000", 1000), ...]})

Also `analysis.from_table(table)` for distributions made elsewhere. The analysis reads what the
engine's results layer (answerdist/engine/results/) writes and never imports torch or triton.
"""

import importlib

__all__ = ["PhaseResult", "TrajectoryResult", "analyse", "from_table", "load", "trajectory"]


def __getattr__(name):
    # Imported on first use: importing this package stays cheap (the Numba metrics behind
    # api.py and dynamics.py load only when a function is called).
    if name in ("TrajectoryResult", "trajectory"):
        return getattr(importlib.import_module("answerdist.analysis.dynamics"), name)
    if name in __all__:
        return getattr(importlib.import_module("answerdist.analysis.api"), name)
    raise AttributeError(f"module 'answerdist.analysis' has no attribute {name!r}")
