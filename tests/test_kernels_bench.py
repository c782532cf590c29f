"""`make bench` plumbing: the CPU memory worker, the arguments, and the RESULTS.md section
update. The GPU code path end to end on tiny shapes (``--dry-run``) is checked on the output of
`gpu_check --dry-run`, which runs it (tests/test_gpu_check.py)."""

from pathlib import Path

import pytest

from benchmarks import bench_kernels, bench_record


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
