"""The engine end to end through the Triton kernels, on a machine without a GPU.

A subprocess runs `python -m answerdist score` with TRITON_INTERPRET=1 and ENGINE_FORCE_TRITON=1,
so the scorer's real calls (packed rows, strided q/k/v, int32 span_end, gathered LM-head rows)
go through both kernels; its results must equal the torch reference path's within 1e-5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from answerdist.cli import score
from tests import tiny

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import answerdist.kernels.lm_head as lm, answerdist.kernels.tree_attention as ta
    calls = {"lm_head": 0, "tree_attention": 0}
    def counted(module, name, key):
        original = getattr(module, name)
        def wrapper(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)
        setattr(module, name, wrapper)
    counted(lm, "lm_head_logprobs_triton", "lm_head")
    counted(ta, "tree_attention_triton", "tree_attention")
    from answerdist.cli import score
    code = score.main(sys.argv[1:])
    print(json.dumps(calls))
    sys.exit(code)
    """
)


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="with CUDA the kernel path is the default one")
def test_scores_through_the_triton_kernels_equal_the_reference(tmp_path):
    ckpt = tmp_path / "ckpt"
    tiny.make_checkpoint(ckpt, arch="llama", hidden=32, heads=2, kv_heads=1, init=0.1)
    args = [str(ckpt), "--tasks", "coin", "--batch-tokens", "256", "--label", "l"]
    assert score.main(args + ["--out", str(tmp_path / "reference")]) == 0
    env = dict(os.environ, TRITON_INTERPRET="1", ENGINE_FORCE_TRITON="1", PYTHONPATH=str(ROOT))
    env.pop("ENGINE_FORCE_REFERENCE", None)
    result = subprocess.run([sys.executable, "-c", SCRIPT, *args, "--out",
                             str(tmp_path / "kernels")],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    calls = next(json.loads(line) for line in result.stdout.splitlines() if line.startswith("{"))
    assert calls["lm_head"] > 0 and calls["tree_attention"] > 0
    for task in ("coin",):
        ref = pq.read_table(tmp_path / "reference" / "l" / f"{task}.parquet").to_pylist()
        got = pq.read_table(tmp_path / "kernels" / "l" / f"{task}.parquet").to_pylist()
        assert len(ref) == len(got)
        for a, b in zip(ref, got, strict=True):
            assert (a["prompt_id"], a["answer"]) == (b["prompt_id"], b["answer"])
            assert abs(a["logprob"] - b["logprob"]) <= 1e-5, (task, a["prompt_id"], a["answer"])
