"""answerdist.analysis.from_table: distributions made elsewhere go through the same analysis."""

import numpy as np
import pyarrow as pa
import pytest

import answerdist.analysis
from answerdist.analysis.synthetic import planted_ladder
from answerdist.errors import AnalysisError


def _rows(ladder, answers, shuffle=None):
    rows = []
    for stage, (P, coverage) in ladder.items():
        for i, (p, cov) in enumerate(zip(P, coverage, strict=True)):
            for a, prob in zip(answers, p, strict=True):
                rows.append({"label": f"m-{stage}", "task": "pick", "prompt_id": f"q{i}",
                             "answer": a, "prob": float(prob), "coverage": float(cov)})
    return rows


def test_a_table_of_distributions_gives_what_the_store_would():
    rng = np.random.default_rng(0)
    answers = [f"a{k}" for k in range(8)]
    ladder = planted_ladder(rng, 12, len(answers), seed_index=5)
    results = answerdist.analysis.from_table(pa.Table.from_pylist(_rows(ladder, answers)))
    assert set(results.data) == {f"m-{s}" for s in ladder}
    td = results.data["m-base"]["pick"]
    assert td.answers == answers and np.allclose(td.P, ladder["base"][0])
    phases = answerdist.analysis.analyse(results, {"m": {s: f"m-{s}" for s in ladder}},
                                         bootstrap=100)
    seed = phases.records.ladders["m"].tasks["pick"].seed
    assert seed.found and seed.seed_prompt_id == "q5"
    assert phases.phases["ladders"]["m"]["tasks"]["pick"]["seed"] == seed.to_json()
    assert phases.stages.num_rows == 4 and "liquidity_lo" in phases.stages.column_names


def test_a_pandas_frame_without_coverage_is_taken():
    pandas = pytest.importorskip("pandas", reason="pandas is the optional extra")
    rows = [{"label": "x", "task": "coin", "prompt_id": p, "answer": a, "prob": v}
            for p, probs in (("p0", (0.7, 0.3)), ("p1", (0.2, 0.8)))
            for a, v in zip(("H", "T"), probs, strict=True)]
    td = answerdist.analysis.from_table(pandas.DataFrame(rows)).data["x"]["coin"]
    assert np.allclose(td.P, [[0.7, 0.3], [0.2, 0.8]]) and np.all(td.coverage == 1.0)


@pytest.mark.parametrize(("table", "expected"), [
    (pa.table({"label": ["x"], "task": ["t"], "prompt_id": ["p"], "answer": ["a"]}),
     "missing column(s) prob"),
    (pa.table({"label": ["x", "x"], "task": ["t", "t"], "prompt_id": ["p", "p"],
               "answer": ["a", "b"], "prob": [0.5, 0.2]}), "prob column is not a distribution"),
    (pa.table({"label": ["x"] * 4, "task": ["t"] * 4, "prompt_id": ["p", "p", "q", "q"],
               "answer": ["a", "b", "a", "c"], "prob": [0.5, 0.5, 0.5, 0.5]}),
     "mismatched answer sets"),
    (pa.table({"label": pa.array([], pa.string()), "task": pa.array([], pa.string()),
               "prompt_id": pa.array([], pa.string()), "answer": pa.array([], pa.string()),
               "prob": pa.array([], pa.float64())}), "no rows"),
    ([1, 2, 3], "expected an Arrow table or a pandas DataFrame"),
])
def test_a_bad_table_is_one_clear_error(table, expected):
    with pytest.raises(AnalysisError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        answerdist.analysis.from_table(table)


def test_a_ladder_naming_a_label_the_table_lacks_is_refused():
    rows = [{"label": "x", "task": "coin", "prompt_id": p, "answer": a, "prob": 0.5}
            for p in ("p0", "p1") for a in ("H", "T")]
    results = answerdist.analysis.from_table(pa.Table.from_pylist(rows))
    with pytest.raises(AnalysisError, match="label 'y' is not in the results"):
        answerdist.analysis.analyse(results, {"l": {"base": "x", "sft": "y"}})
