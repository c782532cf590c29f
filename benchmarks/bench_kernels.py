"""`make bench`: the two Triton kernels against the torch paths and peers a user would pick.

    python -m benchmarks.bench_kernels            # full run (GPU table on CUDA, CPU table else);
                                                  # prints the table, writes nothing
    python -m benchmarks.bench_kernels --record   # also write benchmarks/results/<device>-<date>
                                                  # .json and this device's RESULTS.md section
    python -m benchmarks.bench_kernels --dry-run  # the whole GPU code path on tiny shapes; on a
                                                  # machine without CUDA under TRITON_INTERPRET
    python -m benchmarks.bench_kernels --lm-configs "128,256,64,2048,8,3;128,128,64,1024,8,4"
                                                  # also time other tiles (tuning a new GPU)

On CUDA:
* kernel 1 (fused LM head -> log-probs) at D=4096, V in {100352, 128256}, N in {256, 4096,
  16384}, bf16, against torch eager (bf16 matmul -> float32 log_softmax -> gather -> boundary
  logsumexp), torch.compile of the same function, and the chunked approach of Liger-Kernel and
  others (cuBLAS bf16 matmul over 16384-row vocabulary chunks, float32 online log-sum-exp,
  target logits from gathered weight rows): median milliseconds
  (``triton.testing.do_bench``, which also flushes L2 before every call), achieved TFLOP/s
  (2*N*D*V / time) against the measured bf16 matmul rate of the same GPU at the same shape, and
  peak extra memory (``torch.cuda.max_memory_allocated`` above what was allocated before the
  call, after ``reset_peak_memory_stats``);
* kernel 2 (tree attention) against ``scaled_dot_product_attention`` with a dense boolean mask
  and against FlexAttention (``torch.nn.attention.flex_attention``, compiled, with a block mask
  built from span_end once per row, its build time reported apart), at prompt 512/2048 + trie
  64/512 nodes (one sequence per row) and on rows packed like the engine's (40 x (150 + 50)
  and 16 x (450 + 50) tokens), 32 query heads (8 kv heads, expanded for SDPA outside the timed
  region), head_dim 128, bf16.

The performance targets (LM head at N=4096, D=4096, V=128256 >= 70% of the bf16 matmul rate and
>= 1.3x the chunked peer; tree attention >= 1.5x FlexAttention on packed rows) are printed
with the measured ratios, met or not.
Inputs are rotated over several buffers between calls so that no call finds its inputs in
cache. Each kernel's output is also checked against the plain-torch reference, once per shape.

Without CUDA, kernel timings are impossible (the interpreter is ~200x slower than torch and
says nothing about a GPU), so the run compares what the engine does on CPU: the chunked LM-head
reference against full [N, V] logits at V=128256, time and peak memory, each variant in a fresh
process. Peak memory there is the resident-set high-water mark (VmHWM, reset through
/proc/self/clear_refs) above the resident set just before the call.

Results: printed. With ``--record`` also ``benchmarks/results/<device>-<date>.json`` and a
section per device in the tracked ``benchmarks/RESULTS.md`` (the latest run of a device
replaces its section); ``--out DIR`` writes both under DIR instead.

The pieces: benchmarks/bench_env.py (environment, device slug, timing and memory helpers),
benchmarks/bench_lm_head.py and benchmarks/bench_tree_attention.py (the two kernel tables),
benchmarks/bench_cpu.py (the CPU table, one subprocess per row, through ``--cpu-worker``) and
benchmarks/bench_record.py (markdown tables, targets, the JSON and RESULTS.md); this module
ties them together: the command line, the GPU suite, the run and its report.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import torch

from benchmarks.bench_cpu import cpu_suite, cpu_worker
from benchmarks.bench_env import (
    default_device,
    device_slug,
    environment,
    progress,
    square_matmul_tflops,
    use_interpreter_without_cuda,
)
from benchmarks.bench_lm_head import DRY_LM_SHAPES, GPU_LM_SHAPES, bench_lm_head_shape
from benchmarks.bench_record import RESULTS_DIR, RESULTS_MD, render_section, targets, write_results
from benchmarks.bench_tree_attention import DRY_TREE_SHAPES, GPU_TREE_SHAPES, bench_tree_shape

NEEDS_CUDA = ("Kernel timings need CUDA: this machine has none, so only the CPU reference "
              "comparison ran (chunked LM head vs full logits).")


# --------------------------------------------------------------------------- GPU suite

def gpu_suite(device: torch.device, dry_run: bool, use_compile: bool, lm_configs=(),
              tree_configs=()) -> dict:
    """Both kernel tables. Dry run: tiny shapes (interpreted without CUDA), same code path.

    ``lm_configs`` / ``tree_configs``: extra tile configurations (tuples of the kernels' config
    fields) timed beside the defaults, for tuning on a new GPU without editing code.
    """
    dtype = torch.bfloat16
    lm_shapes = DRY_LM_SHAPES if dry_run else GPU_LM_SHAPES
    tree_shapes = DRY_TREE_SHAPES if dry_run else GPU_TREE_SHAPES
    result = {"matmul_8192_tflops": square_matmul_tflops(device, dtype), "lm_head": [],
              "tree_attention": []}
    for n, d, v in lm_shapes:
        result["lm_head"].append(bench_lm_head_shape(n, d, v, device, dtype, use_compile,
                                                     lm_configs))
        progress("lm_head", result["lm_head"][-1])
    for shape in tree_shapes:
        result["tree_attention"].append(bench_tree_shape(*shape, device, dtype, tree_configs,
                                                         use_compile))
        progress("tree_attention", result["tree_attention"][-1])
    return result


# --------------------------------------------------------------------------- entry point

def _configs(text: str) -> tuple[tuple[int, ...], ...]:
    """'128,128,64,2048,8,3;64,128,64,2048,4,3' -> ((128, 128, ...), (64, 128, ...))."""
    return tuple(tuple(int(x) for x in part.split(",")) for part in text.split(";") if part)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_kernels",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="run the GPU code path on tiny shapes (interpreted without CUDA)")
    parser.add_argument("--record", action="store_true",
                        help="write the JSON under benchmarks/results/ and this device's "
                             "section of the tracked benchmarks/RESULTS.md (default: print only)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the JSON and a RESULTS.md under this directory instead")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="time the torch.compile baseline (default: yes on CUDA, no in a "
                             "dry run without CUDA, where Inductor takes ~20 s per shape)")
    parser.add_argument("--lm-configs", type=_configs, default=(),
                        help="extra LM-head kernel tiles to time, ';'-separated, each "
                             "'block_n,block_v,block_k,split_v,num_warps,num_stages'")
    parser.add_argument("--tree-configs", type=_configs, default=(),
                        help="extra tree-attention tiles to time, ';'-separated, each "
                             "'block_m,block_n,block_scan,num_warps,num_stages[,qk_chunk]'")
    parser.add_argument("--cpu-threads", type=int, default=1,
                        help="intra-op threads for the CPU comparison (default 1: on a shared "
                             "machine, OpenMP barriers across busy cores distort the timings "
                             "far more than a second thread helps)")
    parser.add_argument("--cpu-worker", nargs=4, metavar=("VARIANT", "N", "D", "V"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """The benchmark itself; returns the result record."""
    device = default_device()
    has_cuda = device.type == "cuda"
    if args.dry_run:
        use_interpreter_without_cuda()  # before environment() imports triton
    result = {"date": _dt.date.today().isoformat(), "device_slug": device_slug(device),
              "environment": environment(device), "notes": []}
    use_compile = has_cuda if args.compile is None else args.compile
    if args.dry_run:
        result["mode"] = "dry run" + ("" if has_cuda else ", Triton interpreter on CPU")
        result["notes"].append("Dry run on tiny shapes: checks the code path, not performance.")
        if not use_compile:
            result["notes"].append("torch.compile baseline skipped.")
        result.update(gpu_suite(device, True, use_compile, args.lm_configs, args.tree_configs))
    elif has_cuda:
        result["mode"] = "gpu"
        result.update(gpu_suite(device, False, use_compile, args.lm_configs, args.tree_configs))
    if result.get("lm_head") or result.get("tree_attention"):
        result["targets"] = targets(result)
    else:
        result["mode"] = "cpu reference"
        result["notes"].append(NEEDS_CUDA)
        print(NEEDS_CUDA, flush=True)
        result.update(cpu_suite(args.cpu_threads))
    return result


def report(result: dict, record: bool, out: Path | None) -> Path | None:
    """Print this run's section; write the JSON and the RESULTS.md section only when asked
    (``--record``: the tracked benchmarks/RESULTS.md; ``--out DIR``: under DIR). Returns the
    JSON path written, if any."""
    print()
    print(render_section(result))
    if not (record or out):
        print("(printed only; --record writes benchmarks/results/ and this device's section of "
              "benchmarks/RESULTS.md, --out DIR writes them under DIR)")
        return None
    results_md = out / "RESULTS.md" if out else RESULTS_MD
    path = write_results(result, out / "results" if out else RESULTS_DIR, results_md)
    print(f"wrote {path} and the {result['device_slug']} section of {results_md}")
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cpu_worker:
        variant, n, d, v = args.cpu_worker
        print(json.dumps(cpu_worker(variant, int(n), int(d), int(v), args.cpu_threads)))
        return 0
    report(run(args), args.record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
