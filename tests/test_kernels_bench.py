"""`make bench` plumbing: the GPU code path end to end on tiny shapes (``--dry-run``, under the
Triton interpreter without CUDA, in its own process so that TRITON_INTERPRET is set before
triton is imported), the CPU memory worker, and the RESULTS.md section update."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import answerdist.kernels
from benchmarks import bench_kernels, bench_record

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not answerdist.kernels.triton_available(), reason="triton is not installed")
def test_dry_run_writes_json_and_results_md(tmp_path):
    """The whole GPU benchmark path on tiny shapes: both tables, outputs checked against the
    references, a JSON file and a RESULTS.md section."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_kernels", "--dry-run",
                           "--no-compile", "--out", str(tmp_path),
                           "--lm-configs", "16,16,16,32,1,1", "--tree-configs", "16,16,16,1,1"],
                          cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (json_path,) = (tmp_path / "results").glob("*.json")
    result = json.loads(json_path.read_text())
    assert result["mode"].startswith("dry run")
    assert len(result["lm_head"]) == len(bench_kernels.DRY_LM_SHAPES)
    assert len(result["tree_attention"]) == len(bench_kernels.DRY_TREE_SHAPES)
    for row in result["lm_head"]:
        assert row["fused_ms"] > 0 and row["eager_ms"] > 0 and row["matmul_tflops"] > 0
        assert row["chunked_ms"] > 0 and row["fused_vs_chunked_speedup"] > 0
        assert row["max_abs_diff_vs_reference"] < 1e-4
        assert row["chunked_max_abs_diff_vs_reference"] < 5e-2  # bf16 logits, as Liger's
    for row in result["tree_attention"]:
        assert row["fused_ms"] > 0 and row["sdpa_dense_mask_ms"] > 0 and row["flex_ms"] > 0
        assert row["max_abs_diff_vs_reference"] < 5e-2  # bf16 outputs
        assert row["flex_max_abs_diff_vs_reference"] < 5e-2
        assert row["config_sweep"][0]["config"] == [16, 16, 16, 1, 1]
    assert any(row["sequences"] > 1 for row in result["tree_attention"])  # packed rows
    assert [t["met"] for t in result["targets"]] == ["n/a"] * len(result["targets"])
    assert result["lm_head"][0]["config_sweep"][0]["ms"] > 0
    md = (tmp_path / "RESULTS.md").read_text()
    assert f"<!-- begin {result['device_slug']} -->" in md and "Kernel 2" in md
    assert "Extra tile configurations" in md and "FlexAttention" in md and "Targets" in md
    assert "x chunked" in md and "| target |" in proc.stdout  # printed as well


def test_bench_prints_and_writes_only_when_asked(tmp_path, monkeypatch, capsys):
    """Without --record or --out nothing is written (a clean checkout stays clean); --record
    writes the JSON and the tracked RESULTS.md section; --out writes under its directory."""
    monkeypatch.setattr(bench_kernels, "RESULTS_DIR", tmp_path / "tracked" / "results")
    monkeypatch.setattr(bench_kernels, "RESULTS_MD", tmp_path / "tracked" / "RESULTS.md")
    result = {"date": "2026-01-01", "device_slug": "cpu", "mode": "cpu reference", "notes": [],
              "environment": bench_kernels.environment(bench_kernels.torch.device("cpu")),
              "cpu_reference": [{"variant": "full_logits", "N": 1, "D": 2, "V": 3, "threads": 1,
                                 "ms": 1.5, "peak_extra_mib": 0.1, "memory_method": "VmHWM",
                                 "mem_fraction_of_full_logits": 1.0}]}
    assert bench_kernels.report(result, record=False, out=None) is None
    assert "| full_logits | 1 | 2 | 3 | 1 | 1.50 |" in capsys.readouterr().out
    assert not (tmp_path / "tracked").exists()
    path = bench_kernels.report(result, record=True, out=None)
    assert path.parent == tmp_path / "tracked" / "results"
    assert "full_logits" in (tmp_path / "tracked" / "RESULTS.md").read_text()
    assert bench_kernels.report(result, record=False, out=tmp_path / "elsewhere").exists()
    assert (tmp_path / "elsewhere" / "RESULTS.md").exists()


@pytest.mark.parametrize("variant", ["full_logits", "chunked_reference"])
def test_cpu_worker_reports_time_and_memory(variant):
    """The CPU comparison's per-process worker, on a small problem."""
    row = bench_kernels.cpu_worker(variant, 16, 32, 5000)
    assert row["variant"] == variant and row["ms"] > 0
    assert row["peak_extra_mib"] >= 0 and row["memory_method"]


def test_results_md_replaces_only_its_own_section(tmp_path):
    """A new run of one device replaces that device's section and keeps the others."""
    path = tmp_path / "RESULTS.md"
    bench_record.update_results_md(path, "cpu", "cpu one")
    bench_record.update_results_md(path, "nvidia-h100", "gpu one")
    bench_record.update_results_md(path, "cpu", "cpu two")
    text = path.read_text()
    assert "cpu two" in text and "gpu one" in text and "cpu one" not in text
    assert text.count("<!-- begin cpu -->") == 1


def test_parse_args():
    args = bench_kernels.parse_args(["--dry-run", "--no-compile", "--out", "x",
                                     "--lm-configs", "128,128,64,2048,8,3;64,64,32,1024,4,2"])
    assert args.dry_run and args.compile is False and args.out == Path("x") and not args.record
    assert args.lm_configs == ((128, 128, 64, 2048, 8, 3), (64, 64, 32, 1024, 4, 2))
    assert bench_kernels.parse_args([]).compile is None
    assert bench_kernels.parse_args(["--record"]).record
