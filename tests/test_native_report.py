"""`python -m benchmarks.native_report` in CI: every kernel at every shipped configuration
compiled natively for sm_80 and sm_90 (no GPU needed), with no spill, pipelined bf16 matmul
loops and wgmma on Hopper.

The compile runs in a subprocess without TRITON_INTERPRET (other kernel test modules set it
for this process). About a minute on 2 cores the first time; Triton's on-disk cache makes
later runs take seconds.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import answerdist.kernels
from benchmarks import native_report

ROOT = Path(__file__).resolve().parents[1]


def _cuobjdump_present() -> bool:
    if not answerdist.kernels.triton_available():
        return False
    import importlib.util

    spec = importlib.util.find_spec("triton")
    return (Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists()


@pytest.mark.skipif(not _cuobjdump_present(), reason="triton (with its NVIDIA tools) missing")
def test_shipped_configurations_compile_clean(tmp_path):
    """Every shipped (kernel, dtype, head_dim or D, window, soft-cap, arch) compiles without
    spills, with asynchronous copies in bf16 matmul loops and wgmma on sm_90."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "native.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.native_report", "--quiet",
                           "--json", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    rows = [native_report.Row(**r) for r in json.loads(out.read_text())]
    assert native_report.problems(rows) == []
    seen = {(r.kernel, r.arch, r.dtype, case) for r in rows for case in r.cases}
    for arch in native_report.ARCHES:
        for dtype in ("bfloat16", "float32"):
            for dh in native_report.TREE_HEAD_DIMS:
                for suffix in ("", ",window"):
                    assert ("_tree_attn_kernel", arch, dtype, f"Dh={dh}{suffix}") in seen
            for dh in native_report.SOFTCAP_HEAD_DIMS:
                for suffix in (",softcap", ",window,softcap"):
                    assert ("_tree_attn_kernel", arch, dtype, f"Dh={dh}{suffix}") in seen
            for d in native_report.LM_DIMS:
                assert ("_lse_partials_kernel", arch, dtype, f"D={d}") in seen
                assert ("_target_logits_kernel", arch, dtype, f"D={d}") in seen
                for kernel in ("_lse_partials_kernel", "_target_logits_kernel"):
                    assert (kernel, arch, dtype, f"D={d},softcap") in seen
    assert "all" in proc.stdout and "PROBLEM" not in proc.stdout


def _row(**changes):
    base = dict(kernel="_tree_attn_kernel", arch=90, dtype="bfloat16", cases=["Dh=128"],
                config="M128 N64", registers=200, stack=0, shared_kib=64.0,
                ops={"LDGSTS": 24, "UTMALDG": 0, "HMMA": 0, "HGMMA": 24, "STL": 0, "LDL": 0})
    base.update(changes)
    return native_report.Row(**base)


@pytest.mark.parametrize("row, complaint", [
    (_row(), None),
    (_row(stack=16), "spills"),
    (_row(ops={"LDGSTS": 24, "HGMMA": 24, "STL": 3}), "spills"),
    (_row(ops={"LDGSTS": 0, "UTMALDG": 0, "HGMMA": 24}), "asynchronous copies"),
    (_row(ops={"UTMALDG": 4, "HGMMA": 24}), None),
    (_row(ops={"LDGSTS": 24, "HGMMA": 0, "HMMA": 64}), "wgmma"),
    (_row(arch=80, ops={"LDGSTS": 24, "HMMA": 64}), None),
    (_row(arch=80, ops={"LDGSTS": 24, "HMMA": 64}, shared_kib=128.0), "99 KiB"),
    (_row(dtype="float32", ops={"LDGSTS": 0, "HGMMA": 0}), None),
    (_row(kernel="_merge_kernel", dtype="bfloat16", ops={}), None),
    (_row(error="ptxas failed"), "compile failed"),
])
def test_problems_flags_each_check(row, complaint):
    """The checks themselves: each violation is reported, a clean row is not."""
    found = native_report.problems([row])
    if complaint is None:
        assert found == []
    else:
        assert len(found) == 1 and complaint in found[0]
