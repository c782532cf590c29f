"""Writing `make bench`'s results: the markdown tables of a run, the targets checked against
its rows, the JSON under benchmarks/results/ and the device's section of benchmarks/RESULTS.md
(the latest run of a device replaces its section)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks.bench_cpu import CPU_VOCAB

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
# The performance targets on H100/H200, bf16 (checked on the GPU table, reported met or not).
TARGET_LM_SHAPE = (4096, 4096, 128256)
TARGET_LM_OF_MATMUL = 0.70
TARGET_LM_VS_CHUNKED = 1.3
TARGET_TREE_VS_FLEX = 1.5


def _fmt(x, digits=2) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) >= 0.01 or x == 0 else f"{x:.1e}"
    return str(x)


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> list[str]:
    head = "| " + " | ".join(title for title, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(key)) for _, key in columns) + " |" for r in rows]
    return [head, rule, *body]


LM_COLUMNS = [("N", "N"), ("D", "D"), ("V", "V"), ("fused ms", "fused_ms"),
              ("eager ms", "eager_ms"), ("compile ms", "compile_ms"),
              ("chunked ms", "chunked_ms"),
              ("x eager", "fused_vs_eager_speedup"), ("x compile", "fused_vs_compile_speedup"),
              ("x chunked", "fused_vs_chunked_speedup"),
              ("fused TFLOP/s", "fused_tflops"), ("matmul TFLOP/s", "matmul_tflops"),
              ("of matmul", "fused_fraction_of_matmul_rate"),
              ("fused MiB", "fused_peak_mib"), ("eager MiB", "eager_peak_mib"),
              ("compile MiB", "compile_peak_mib"), ("chunked MiB", "chunked_peak_mib"),
              ("mem of eager", "fused_mem_fraction_of_eager"),
              ("max abs diff", "max_abs_diff_vs_reference"),
              ("chunked max abs diff", "chunked_max_abs_diff_vs_reference")]
TREE_COLUMNS = [("seqs", "sequences"), ("prompt", "prompt"), ("trie", "trie_nodes"),
                ("T", "T"), ("heads", "heads"),
                ("kv", "kv_heads"), ("Dh", "head_dim"), ("fused ms", "fused_ms"),
                ("SDPA+mask ms", "sdpa_dense_mask_ms"), ("x SDPA", "fused_vs_sdpa_speedup"),
                ("flex ms", "flex_ms"), ("x flex", "fused_vs_flex_speedup"),
                ("flex mask ms", "flex_block_mask_ms"),
                ("fused MiB", "fused_peak_mib"), ("SDPA MiB", "sdpa_dense_mask_peak_mib"),
                ("flex MiB", "flex_peak_mib"), ("max abs diff", "max_abs_diff_vs_reference"),
                ("flex max abs diff", "flex_max_abs_diff_vs_reference")]
TARGET_COLUMNS = [("target", "target"), ("measured", "measured"), ("needed", "needed"),
                  ("met", "met")]
CPU_COLUMNS = [("variant", "variant"), ("N", "N"), ("D", "D"), ("V", "V"),
               ("threads", "threads"), ("ms", "ms"),
               ("peak extra MiB", "peak_extra_mib"),
               ("of full logits", "mem_fraction_of_full_logits")]


def targets(result: dict) -> list[dict]:
    """The performance targets against this run's rows: measured ratio, threshold, met or not
    ('n/a' where the row is missing, and for a dry run, whose timings mean nothing)."""
    def check(name, value, needed):
        if value is None or result["mode"] != "gpu":
            met = "n/a"
        else:
            met = "yes" if value >= needed else "NO"
        return {"target": name, "measured": value, "needed": needed, "met": met}

    n, d, v = TARGET_LM_SHAPE
    lm = next((r for r in result.get("lm_head", []) if (r["N"], r["D"], r["V"]) == (n, d, v)),
              {})
    out = [check(f"LM head N={n} D={d} V={v}: fraction of the bf16 matmul rate",
                 lm.get("fused_fraction_of_matmul_rate"), TARGET_LM_OF_MATMUL),
           check(f"LM head N={n} D={d} V={v}: speedup over the chunked peer",
                 lm.get("fused_vs_chunked_speedup"), TARGET_LM_VS_CHUNKED)]
    packed = [r for r in result.get("tree_attention", []) if r["sequences"] > 1]
    for r in packed or [{}]:
        shape = (f"{r['sequences']} x ({r['prompt']} + {r['trie_nodes']}), T={r['T']}"
                 if r else "packed rows")
        out.append(check(f"tree attention {shape}: speedup over FlexAttention",
                         r.get("fused_vs_flex_speedup"), TARGET_TREE_VS_FLEX))
    return out


def render_section(result: dict) -> str:
    """This run's section of RESULTS.md."""
    env = result["environment"]
    lines = [f"## {result['device_slug']} ({result['mode']}, {result['date']})", "",
             f"Device: {env['device']}; torch {env['torch']}, CUDA {env['cuda']}, "
             f"triton {env['triton']}, Python {env['python']}, {env['cpu_count']} CPUs, "
             f"load average {_fmt(env.get('load_average_1min'))} at the start.",
             ""]
    lines += [f"{note}" for note in result["notes"]] + [""]
    if result.get("matmul_8192_tflops"):
        lines += [f"Measured bf16 matmul rate (8192^3): "
                  f"{result['matmul_8192_tflops']:.0f} TFLOP/s.", ""]
    if result.get("lm_head"):
        lines += ["Kernel 1, fused LM head -> log-probs (bf16; ms are medians; TFLOP/s = "
                  "2NDV/time; MiB = peak extra memory; 'of matmul' = fused rate / torch bf16 "
                  "matmul rate at the same shape):", ""]
        lines += _table(result["lm_head"], LM_COLUMNS) + [""]
    if result.get("tree_attention"):
        lines += ["Kernel 2, tree attention vs SDPA with a dense boolean mask and FlexAttention "
                  "with a block mask from span_end (bf16; seqs > 1: rows packed like the "
                  "engine's; flex mask ms = building the block mask, once per row, not in "
                  "flex ms):", ""]
        lines += _table(result["tree_attention"], TREE_COLUMNS) + [""]
    if result.get("targets"):
        lines += ["Targets (H100/H200, bf16, one run):", ""]
        lines += _table(result["targets"], TARGET_COLUMNS) + [""]
    lines += _sweep_lines(result)
    if result.get("cpu_reference"):
        lines += [f"CPU: chunked LM-head reference (chunks of 4096 vocabulary rows) vs full "
                  f"[N, V] float32 logits, V={CPU_VOCAB}, float32; ms = median of 3; peak "
                  f"extra MiB = {result['cpu_reference'][0]['memory_method']} above the "
                  f"resident set before the call, one fresh process per row:", ""]
        lines += _table(result["cpu_reference"], CPU_COLUMNS) + [""]
    return "\n".join(lines)


def _sweep_lines(result: dict) -> list[str]:
    """Extra-config timings (``--lm-configs`` / ``--tree-configs``), one table if any."""
    rows = []
    for kind, shape_keys, rate in (("lm_head", ("N", "D", "V"), "tflops"),
                                   ("tree_attention", ("sequences", "prompt", "trie_nodes"),
                                    "useful_tflops")):
        for r in result.get(kind, []):
            for c in r.get("config_sweep", []):
                rows.append({"kernel": kind, "shape": " ".join(f"{k}={r[k]}" for k in shape_keys),
                             "config": ",".join(map(str, c["config"])), "ms": c["ms"],
                             "default_ms": r["fused_ms"], "tflops": c[rate]})
    if not rows:
        return []
    columns = [("kernel", "kernel"), ("shape", "shape"), ("config", "config"), ("ms", "ms"),
               ("default config ms", "default_ms"), ("TFLOP/s", "tflops")]
    return ["Extra tile configurations:", "", *_table(rows, columns), ""]


def update_results_md(path: Path, slug: str, section: str) -> None:
    """Replace this device's section of RESULTS.md (or add it), keeping the others."""
    header = ("# Kernel benchmarks\n\nWritten by `make bench BENCH_ARGS=--record` (`python -m "
              "benchmarks.bench_kernels --record`): one section per device, the latest run of a "
              "device replacing its previous section; raw numbers in `benchmarks/results/`.\n")
    text = path.read_text() if path.exists() else header
    begin, end = f"<!-- begin {slug} -->", f"<!-- end {slug} -->"
    block = f"{begin}\n{section}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else \
        text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def write_results(result: dict, results_dir: Path, results_md: Path) -> Path:
    """JSON under results_dir, section in results_md; returns the JSON path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{result['device_slug']}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    update_results_md(results_md, result["device_slug"], render_section(result))
    return path
