"""The Python API (answerdist.score_checkpoint, answerdist.analysis.load / analyse), the
README's "From Python" example, file modes, and the package layout (no import cycle, no torch behind
analysis)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import answerdist
import answerdist.analysis
import answerdist.analysis.phases
import answerdist.cli.analyse
from answerdist.analysis.synthetic import write_planted_store
from answerdist.cli import score
from answerdist.engine.results.schema import MAIN_SCHEMA, VARIANT_SCHEMA
from tests import tiny

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
PACKAGES = ("answerdist", "benchmarks")


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint(arch="llama", kv_heads=2, init=0.1)


def test_score_checkpoint_in_memory_writes_nothing(ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = answerdist.score_checkpoint(ckpt, tasks="coin,card", mode="chat")
    assert result.directory is None and list(tmp_path.iterdir()) == []
    table = result.to_arrow()
    assert table.schema.equals(MAIN_SCHEMA)
    assert table.num_rows == sum(len(t.prompts) * len(t.answers) for t in engine_tasks("coin,card"))
    assert result.to_arrow(variants=True).schema.equals(VARIANT_SCHEMA)
    frame = result.to_pandas()
    assert list(frame.columns) == MAIN_SCHEMA.names and len(frame) == table.num_rows
    sums = frame.groupby(["task", "prompt_id"])["prob"].sum().to_numpy()
    assert np.allclose(sums, 1.0, atol=1e-12)
    assert result.manifest["fingerprint"] == answerdist.load(ckpt).fingerprint


def engine_tasks(spec):
    from answerdist.engine.tasks import load_tasks

    return load_tasks(spec)


def test_score_checkpoint_writes_what_the_cli_writes(ckpt, tmp_path):
    assert score.main([str(ckpt), "--tasks", "coin,suit", "--out", str(tmp_path / "cli"),
                       "--label", "L"]) == 0
    result = answerdist.score_checkpoint(ckpt, tasks="coin,suit", out=tmp_path / "api", label="L")
    assert result.directory == tmp_path / "api" / "L"
    for task in ("coin", "suit"):
        cli = pq.read_table(tmp_path / "cli" / "L" / f"{task}.parquet")
        assert cli.equals(pq.read_table(tmp_path / "api" / "L" / f"{task}.parquet"))
        assert cli.equals(result.tables[task])
    # a loaded checkpoint can be scored again without reloading, and resumes from the store
    again = answerdist.score_checkpoint(answerdist.load(ckpt), tasks="coin,suit",
                                        out=tmp_path / "api",
                                    label="L")
    assert again.manifest["timings"]["skipped_tasks"] == 2
    assert again.tables["coin"].equals(result.tables["coin"])


def test_to_pandas_without_pandas_names_the_extra(ckpt, monkeypatch):
    result = answerdist.score_checkpoint(ckpt, tasks="coin")
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ModuleNotFoundError, match=r"answerdist\[pandas\]"):
        result.to_pandas()


def test_analysis_api_gives_the_numbers_the_cli_writes(tmp_path):
    ladders, seeds = write_planted_store(tmp_path, n_prompts=8)
    flags = [f for name, stages in ladders
             for f in ("--ladder", f"{name}:" + ",".join(f"{s}={lab}" for s, lab in stages))]
    assert answerdist.cli.analyse.main([str(tmp_path), *flags]) == 0
    written = json.loads((tmp_path / "phases.json").read_text())
    result = answerdist.analysis.analyse(answerdist.analysis.load(tmp_path),
                              {name: dict(stages) for name, stages in ladders})
    assert result.phases == written
    stages = result.stages.to_pylist()
    assert len(stages) == sum(len(s) * len(written["ladders"][n]["tasks"]) for n, s in ladders)
    for row in stages:
        metrics = written["ladders"][row["ladder"]]["tasks"][row["task"]]["stages"][row["stage"]]
        assert row["liquidity"] == metrics["liquidity"] and row["phase"] == metrics["phase"]
        for column in ("effective_support", "consensus_support", "entropy_norm"):
            assert row[column] == metrics[column]
        assert 1.0 <= row["effective_support"] <= row["consensus_support"]
    found = {(r["ladder"], r["task"]): r["seed_prompt_id"] for r in result.seeds.to_pylist()}
    assert found == {(n, t): s for n, ts in seeds.items() for t, s in ts.items()}
    assert set(result.to_pandas()) == {"stages", "seeds", "cross_ladder"}


README_EXAMPLE = re.compile(r"## From Python\n.*?```python\n(.*?)```", re.S)


def test_readme_from_python_example_runs(tmp_path, monkeypatch):
    """The README's notebook example, on tiny checkpoints standing in for /models/..."""
    code = README_EXAMPLE.search((ROOT / "README.md").read_text()).group(1)
    models = tmp_path / "models"
    for i, name in enumerate(sorted(set(re.findall(r"/models/([\w.-]+)", code)))):
        tiny.make_checkpoint(models / name, arch="olmo2", hidden=32, heads=2, kv_heads=2, seed=i,
                             init=0.1)
    monkeypatch.chdir(tmp_path)
    # Random stand-ins put almost no mass on any answer: they do not answer in the scored
    # format, which the analysis would refuse (docs/metrics.md, "Phase labels").
    import functools

    import answerdist.analysis

    monkeypatch.setattr(answerdist.analysis, "analyse",
                        functools.partial(answerdist.analysis.analyse, min_coverage=0.0))
    exec(compile(code.replace("/models/", f"{models}/"), "README.md", "exec"), {})
    assert (tmp_path / "results").is_dir()


def test_outputs_follow_the_umask(ckpt, tmp_path):
    ladders, _ = write_planted_store(tmp_path / "r", n_prompts=6)
    old = os.umask(0o022)
    try:
        name, stages = ladders[0]
        assert answerdist.cli.analyse.main([str(tmp_path / "r"), "--ladder",
                                     ",".join(f"{s}={lab}" for s, lab in stages),
                                     "--report", str(tmp_path / "report")]) == 0
        assert score.main([str(ckpt), "--tasks", "coin", "--out", str(tmp_path / "s"), "--label",
                           "L"]) == 0
    finally:
        os.umask(old)
    files = [tmp_path / "r" / "phases.json", *(tmp_path / "report").iterdir(),
             *(tmp_path / "s" / "L").glob("*.*")]
    assert files and all(f.stat().st_mode & 0o777 == 0o644 for f in files), [
        (f.name, oct(f.stat().st_mode)) for f in files]


def test_importing_analysis_or_reading_results_loads_no_torch():
    code = ("import sys, answerdist.engine.results.store, answerdist.analysis.api\n"
            "import answerdist.cli.analyse, answerdist.cli.trajectory, answerdist.cli.tasks\n"
            "from answerdist import analysis\n"
            "print(sorted(m for m in ('torch', 'triton') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                         cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def module_imports(path: Path, module: str) -> set[str]:
    """Package modules imported when `module` is imported (module level; the body of an
    `if __name__ == "__main__":` block runs only as a script)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            continue
        for sub in (ast.walk(node)
                    if isinstance(node, (ast.Import, ast.ImportFrom, ast.If, ast.Try)) else ()):
            if isinstance(sub, ast.Import):
                found |= {a.name for a in sub.names}
            elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                found.add(sub.module)
                found |= {f"{sub.module}.{a.name}" for a in sub.names}
    return {m for m in found if m.split(".")[0] in PACKAGES and m != module}


def test_no_import_cycle_in_the_package():
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    graph = {name: {m for m in module_imports(path, name) if m in modules}
             for name, path in modules.items()}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: "
                                     + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_thinking_switch_is_recorded_in_the_manifest_and_the_run(tmp_path):
    qwen3 = tmp_path / "qwen3"
    tiny.make_checkpoint(qwen3, arch="qwen3", kv_heads=1, hidden=32, heads=2, init=0.1,
                         add_bos=False, template=tiny.QWEN3_CHAT_TEMPLATE,
                         added_tokens=tiny.THINK_TOKENS, vocab_size=320)
    result = answerdist.score_checkpoint(qwen3, tasks="coin", mode="chat")
    assert (result.manifest["enable_thinking"] is False
            and result.manifest["run"]["enable_thinking"] is False)
    assert "<think>\n\n</think>\n\n" in result.tables["coin"].column("prompt_text")[0].as_py()
    llama = tmp_path / "llama"
    tiny.make_checkpoint(llama, arch="llama", hidden=32, heads=2, kv_heads=2, init=0.1)
    assert answerdist.score_checkpoint(llama, tasks="coin",
                                   mode="chat").manifest["enable_thinking"] is None


def test_progress_bar_in_a_notebook_but_not_into_a_pipe(ckpt, monkeypatch, capsys):
    answerdist.score_checkpoint(ckpt, tasks="coin")  # pytest's stderr is no terminal: no bar
    assert "prompt" not in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))  # as in Jupyter
    answerdist.score_checkpoint(ckpt, tasks="coin")
    assert "15/15" in capsys.readouterr().err
    answerdist.score_checkpoint(ckpt, tasks="coin", progress=False)
    assert "prompt" not in capsys.readouterr().err


@pytest.mark.parametrize("checkpoint", [123, None, b"/tmp", ["ckpt"], 1.5, {"path": "x"}, True])
def test_a_checkpoint_that_is_no_path_is_one_line(checkpoint):
    """score_checkpoint and load take a directory path (or a loaded Checkpoint): anything else
    is one CheckpointError line, not a TypeError from inside."""
    from answerdist.errors import CheckpointError

    for call in (answerdist.score_checkpoint, answerdist.load):
        with pytest.raises(CheckpointError, match="expected the path of a local Hugging Face"):
            call(checkpoint)
