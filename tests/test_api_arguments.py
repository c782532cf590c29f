"""The analysis's Python API refuses ill-typed or out-of-range arguments with one line (an
AnalysisError, or an OutputError for a path that holds no results), never a TypeError,
AttributeError or IndexError from inside, and never a silent accept: generated values for every
argument of `load`, `analyse`, `trajectory` and `from_table`."""

from __future__ import annotations

import math
import numbers

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from answerdist import analysis
from answerdist.analysis.synthetic import write_manifest, write_task
from answerdist.errors import AnalysisError, EngineError
from tests.budget import budget

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6), st.binary(max_size=3),
    st.lists(st.one_of(st.integers(), st.text(max_size=3)), max_size=3),
    st.tuples(st.text(max_size=3), st.integers()),
    st.dictionaries(st.text(max_size=3), st.one_of(st.integers(), st.text(max_size=3)),
                    max_size=2),
)
PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
LABELS = ["step0", "step100", "step200"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(1)
    for label in LABELS:
        write_task(root, label, "pick", list("abc"), rng.dirichlet(np.ones(3), size=4), np.ones(4))
        write_manifest(root, label)
    return root


@pytest.fixture(scope="module")
def results(store):
    return analysis.load(store)


def refused_or_fine(call):
    """Run `call`; only the project's one-line errors may come out (AnalysisError, or
    OutputError for a path that is no results store). Returns whether it was refused."""
    try:
        with budget(call):
            call()
    except EngineError as err:
        assert "\n" not in str(err)
        return True
    return False


def _real(value) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


@PROPERTY
@given(value=JUNK)
def test_analyse_tau_and_level(results, value):
    ladder = {"m": {"base": "step0", "sft": "step100"}}
    tau_ok = _real(value) and 0 <= value <= 1
    assert refused_or_fine(lambda: analysis.analyse(results, ladder, tau=value,
                                                    bootstrap=100)) is not tau_ok
    level_ok = _real(value) and 0 < value < 1
    assert refused_or_fine(lambda: analysis.analyse(results, ladder, level=value,
                                                    bootstrap=100)) is not level_ok


@PROPERTY
@given(value=JUNK)
def test_analyse_bootstrap(results, value):
    ok = isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 100_000
    if ok:
        return  # a valid count: covered elsewhere, and slow at the top of the range
    assert refused_or_fine(lambda: analysis.analyse(results, {"m": {"base": "step0",
                                                                    "sft": "step100"}},
                                                    bootstrap=value))


@PROPERTY
@given(value=JUNK)
def test_analyse_results_and_ladders(results, value):
    assert refused_or_fine(lambda: analysis.analyse(value, {"m": {"base": "step0",
                                                                  "sft": "step100"}}))
    assert refused_or_fine(lambda: analysis.analyse(results, value, bootstrap=100))
    assert refused_or_fine(lambda: analysis.analyse(results, {"m": value}, bootstrap=100))
    assert refused_or_fine(lambda: analysis.analyse(results, {"m": {"base": "step0",
                                                                    "sft": value}},
                                                    bootstrap=100))


@PROPERTY
@given(value=JUNK)
def test_trajectory_series(results, value):
    assert refused_or_fine(lambda: analysis.trajectory(value, {"s": [(x, i) for i, x in
                                                                     enumerate(LABELS)]}))
    assert refused_or_fine(lambda: analysis.trajectory(results, value, bootstrap=100))
    assert refused_or_fine(lambda: analysis.trajectory(results, {"s": value}, bootstrap=100))
    points = [(label, float(i)) for i, label in enumerate(LABELS)]
    points[1] = value  # one point of the wrong shape
    assert refused_or_fine(lambda: analysis.trajectory(results, {"s": points}, bootstrap=100))


@PROPERTY
@given(value=JUNK)
def test_load_arguments(store, value):
    assert refused_or_fine(lambda: analysis.load(value))
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return  # a list of (unknown) labels: refused as unknown, covered elsewhere
    assert refused_or_fine(lambda: analysis.load(store, labels=value)) or value is None


def test_a_lone_label_string_is_refused_not_split_into_letters(store):
    with pytest.raises(AnalysisError, match=r"labels 'step0': give a list of strings, "
                                            r"e\.g\. \['step0'\]"):
        analysis.load(store, labels="step0")
    assert set(analysis.load(store, labels=["step0"]).data) == {"step0"}


@PROPERTY
@given(column=st.sampled_from(["prob", "coverage", "target"]),
       values=st.one_of(st.lists(st.booleans(), min_size=4, max_size=4),
                        st.lists(st.text(max_size=3), min_size=4, max_size=4),
                        st.lists(st.lists(st.floats(0, 1), max_size=2), min_size=4,
                                 max_size=4)))
def test_from_table_numbers_must_be_numbers(column, values):
    table = {"label": ["m"] * 4, "task": ["t"] * 4, "prompt_id": ["p", "p", "q", "q"],
             "answer": ["x", "y", "x", "y"], "prob": [0.5, 0.5, 0.3, 0.7]}
    table[column] = values
    with pytest.raises(AnalysisError, match=f"column {column} holds"):
        analysis.from_table(pa.table(table))


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_every_engine_error_prints_as_one_line(text):
    """A path or value quoted in a message may hold line breaks: every EngineError escapes them
    (errors.one_line), so the CLIs' one `error:` line stays one line."""
    for error in (EngineError, AnalysisError):
        message = str(error(f"results dir {text}: not a directory"))
        assert len(message.splitlines()) == 1 and text.isprintable() <= (text in message)
