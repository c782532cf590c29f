"""`make gpu-check` cannot rot on machines without a GPU: its dry run executes every step (the
kernel tests, the bench, the native report, the end-to-end comparison) on CPU, tiny and
interpreted, and writes the summary the GPU run writes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import answerdist.kernels
from benchmarks import bench_kernels, gpu_check

ROOT = Path(__file__).resolve().parents[1]


NEEDS_TRITON = pytest.mark.skipif(not answerdist.kernels.triton_available(),
                                  reason="triton is not installed")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One `gpu_check --dry-run` for the tests below: (its --out directory, its summary path)."""
    out = tmp_path_factory.mktemp("gpu-check")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    (summary_path,) = out.glob("gpu-check-*.json")
    return out, summary_path


@NEEDS_TRITON
def test_dry_run_runs_every_step(dry_run):
    _, summary_path = dry_run
    summary = json.loads(summary_path.read_text())
    assert [s["step"] for s in summary["steps"]] == ["tests", "bench", "native_report",
                                                     "end_to_end"]
    assert all(s["status"] == "ok" and Path(s["log"]).exists() for s in summary["steps"])
    e2e = summary["end_to_end"]
    assert e2e["checkpoint"]["arch"].startswith("Olmo2ForCausalLM")
    assert set(e2e["engine"]) == set(e2e["lm_eval_way"]) == {"bfloat16", "float32"}
    assert e2e["max_abs_dlogprob_engine_fp32_vs_transformers_fp32"] < 1e-4  # exact mode
    assert e2e["max_abs_dlogprob_engine_bf16_vs_transformers_fp32"] < 0.1
    assert e2e["engine"]["bfloat16"]["tokens"] < e2e["lm_eval_way"]["bfloat16"]["tokens"]
    step_dir = summary_path.with_suffix("")
    native = json.loads((step_dir / "native_report.json").read_text())
    assert {r["kernel"] for r in native} >= {"_tree_attn_kernel", "_lse_partials_kernel"}
    assert list((step_dir / "bench" / "results").glob("*.json"))  # the bench's dry run
    md = summary_path.with_suffix(".md").read_text()
    assert "end_to_end | ok" in md and "max |d logprob|" in md
    invariance = e2e["batch_invariance_bf16"]  # on the CPU every run is unpacked: equal bits
    assert invariance["invariant_repeats_bitwise"] is True
    assert invariance["packed_8192_vs_1024_max_abs_dlogprob"] == 0.0
    assert "--batch-invariant (bf16)" in md
    assert set(e2e["families"]) == set(gpu_check.FAMILY_CHECKS)  # Gemma 2 and OLMoE too
    assert e2e["sampler"]["max_abs_dlogit_cached_vs_full_float32"] < 1e-3
    assert e2e["sampler"]["bf16_tokens_per_second"] > 0 and "sampler: KV-cache" in md
    for arch, r in e2e["families"].items():
        assert r["max_abs_dlogprob_engine_fp32_vs_transformers_fp32"] < 1e-4, arch
        assert r["max_abs_dlogprob_engine_bf16_vs_transformers_fp32"] < 0.1, arch
        assert arch in md


@NEEDS_TRITON
def test_bench_dry_run_writes_json_and_results_md(dry_run):
    """`make bench`'s whole GPU path on tiny shapes (the dry run's bench step, under the Triton
    interpreter, in its own process so that TRITON_INTERPRET is set before triton is imported):
    both tables, outputs checked against the references, a JSON file and a RESULTS.md section."""
    _, summary_path = dry_run
    bench_dir = summary_path.with_suffix("") / "bench"
    (json_path,) = (bench_dir / "results").glob("*.json")
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
    md = (bench_dir / "RESULTS.md").read_text()
    assert f"<!-- begin {result['device_slug']} -->" in md and "Kernel 2" in md
    assert "Extra tile configurations" in md and "FlexAttention" in md and "Targets" in md
    bench_log = (summary_path.with_suffix("") / "bench.log").read_text()
    assert "x chunked" in md and "| target |" in bench_log  # printed as well


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_says_so(capsys):
    """Without a GPU and without --dry-run: one clear line and exit status 2."""
    assert gpu_check.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_end_to_end_shape_is_olmo2_1b():
    """The checkpoint the GPU run builds has OLMo 2 1B's shape."""
    cfg = gpu_check.OLMO2_1B
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]) == (2048, 16, 100352)
