"""The argument checks at the analysis's front doors. The Python API (`load`, `analyse`,
`trajectory`, `from_table`) and the CLI reach the same functions, so a bad argument is one
`AnalysisError` line naming it as the caller spells it (`tau` or `--tau`), never a TypeError or
IndexError from inside."""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

from answerdist.errors import AnalysisError


def number_in(value, name: str, low: float, high: float, *, open_low: bool = False,
              open_high: bool = False, default=None) -> float:
    """`value` as a float when it is a finite real number (not a bool) in the interval."""
    inside = (isinstance(value, numbers.Real) and not isinstance(value, bool)
              and math.isfinite(value)
              and (low < value if open_low else low <= value)
              and (value < high if open_high else value <= high))
    if not inside:
        bounds = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        hint = f" (default {default})" if default is not None else ""
        raise AnalysisError(f"{name} {short(value)}: must be in {bounds}, a finite number{hint}")
    return float(value)


def path_argument(value, name: str) -> Path:
    if not isinstance(value, str | os.PathLike) or isinstance(value, bytes):
        raise AnalysisError(f"{name}: expected a directory path, got {type(value).__name__} "
                            f"{short(value)}")
    return Path(value)


def text_list(value, name: str) -> list[str]:
    """A non-empty list (or tuple, or set) of strings; a lone string is refused, not split into
    letters."""
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset) \
            or not value or not all(isinstance(v, str) for v in value):
        raise AnalysisError(f"{name} {short(value)}: give a list of strings, e.g. "
                            f"[{short(value) if isinstance(value, str) else repr('olmo-base')}]")
    return list(value)


def short(value) -> str:
    """repr(value), cut to 60 characters: a message line stays one line of reasonable length."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
