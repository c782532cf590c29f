"""Phase metrics of exact answer distributions (liquid -> nucleation -> settling).

    import analysis
    results = analysis.load("results")
    phases = analysis.analyse(results, {"olmo2": {"base": "olmo2-base", "sft": "olmo2-sft"}})

Importing this package is cheap and never imports torch or triton; `load` and `analyse`
(analysis/api.py) import the Numba metrics on first use.
"""

__all__ = ["PhaseResult", "analyse", "from_table", "load"]


def __getattr__(name):
    if name in __all__:
        from analysis import api

        return getattr(api, name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
