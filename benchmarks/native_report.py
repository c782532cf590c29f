"""Native compile report: what each Triton kernel becomes on sm_80 (A100) and sm_90 (H100/H200).

    python -m benchmarks.native_report                 # table + checks, exit 1 on a problem
    python -m benchmarks.native_report --json out.json # also the rows as JSON
    python -m benchmarks.native_report --arch 90       # one architecture only

No GPU needed. The kernels' own launchers are called on ``meta`` tensors laid out as the
engine lays them out (q/k/v as transposed views of a [B, T, H, Dh] projection, packed rows of a
length that is not a multiple of 16, row-major weights), with every ``@triton.jit`` kernel
replaced by a recorder. Each recorded launch goes through Triton's own argument binder for the
target architecture, so the compile gets exactly the specialisation a real launch gets (unit
strides as constants, ``tt.divisibility`` 16 on pointers and on 16-divisible ints, the tiles
``default_config`` picks for that architecture). Then ``triton.compile`` and the ``cuobjdump``
shipped in the triton wheel give:

* registers and stack (bytes per thread; stack is spill space in these kernels, which have no
  local arrays) from ``cuobjdump -res-usage``; shared memory from the compiled metadata;
* the instruction mix from the SASS: LDGSTS (cp.async), UTMALDG (TMA loads), HMMA (mma.sync
  tensor cores), HGMMA (wgmma, Hopper), and STL/LDL (local-memory stores/loads: spills).

Checks (also run by tests/test_native_report.py in CI): no spill anywhere (stack 0, no STL);
every bf16 matmul kernel (the LM head's vocabulary loop, tree attention) issues asynchronous
copies (LDGSTS or UTMALDG), i.e. its main loop is software-pipelined; on sm_90 it also uses
wgmma (HGMMA); sm_80 tiles fit in 99 KiB of shared memory (sm_86 / sm_89 run them too).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

ARCHES = (80, 90)
# Shared memory per block on sm_86 / sm_89 (A10, L4, L40, RTX 30/40): they run the sm_80 tiles.
SM86_SHARED_KIB = 99
# Instruction mnemonics counted in the SASS.
OPS = ("LDGSTS", "UTMALDG", "HMMA", "HGMMA", "STL", "LDL")
# Kernels whose main loop is a matmul, so bf16 must be pipelined (async copies) and use
# wgmma on Hopper.
MATMUL_KERNELS = ("_lse_partials_kernel", "_tree_attn_kernel")

# Shipped configurations: what the engine runs. Tree attention: the models' head_dim (64 for
# small models, 128 for OLMo 2 / Llama 3 / Qwen, 256 for some), every dtype the engine uses,
# with and without a sliding window (OLMo 3). 32 query heads over 8 kv heads, one packed row of
# 8173 positions (not a multiple of 16, as the engine's rows usually are not).
TREE_DTYPES = (torch.bfloat16, torch.float32)
TREE_HEAD_DIMS = (64, 128, 256)
TREE_T = 8173
# LM head: D from 2048 (OLMo 2 1B) to 8192 (70B), V of OLMo 2 and Llama 3, N rows (any).
# D and V are runtime ints (16-divisible ones specialise alike), so every (D, V) compiles to
# the same kernel; the cases column lists D.
LM_DTYPES = (torch.bfloat16, torch.float32)
LM_DIMS = (2048, 4096, 8192)
LM_VOCABS = (100352, 128256)
LM_ROWS = 4093
# Soft-capping (Gemma 2, head_dim 256 for 2B and 9B, 128 for 27B; 64 for small ones), on
# sliding and full layers alike, and its final-logit cap at its vocabulary.
SOFTCAP_HEAD_DIMS = TREE_HEAD_DIMS
SOFTCAP_VOCAB = 256000
ATTN_SOFTCAP = 50.0
FINAL_SOFTCAP = 30.0


@dataclass
class Row:
    """One compiled kernel at one architecture (identical compiles are merged)."""

    kernel: str
    arch: int
    dtype: str
    cases: list[str]
    config: str
    registers: int = 0
    stack: int = 0
    shared_kib: float = 0.0
    ops: dict = field(default_factory=dict)
    error: str | None = None


# --------------------------------------------------------------------------- capture

class _Recorder:
    """Stands in for a JITFunction: ``kernel[grid](*args, **kwargs)`` records the launch."""

    def __init__(self, fn, sink: list):
        self.fn, self.sink = fn, sink

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.sink.append((self.fn, args, kwargs))


@contextlib.contextmanager
def recording(modules, arch: int):
    """Replace the modules' jitted kernels by recorders and make the launchers believe they
    run on a CUDA device of compute capability ``arch``; yields the list of launches."""
    from triton.runtime.jit import JITFunction

    launches: list = []
    saved = []
    for module in modules:
        for name, value in vars(module).items():
            if isinstance(value, JITFunction) and name.endswith("_kernel"):
                saved.append((module, name, value))
                setattr(module, name, _Recorder(value, launches))
        for name, value in (("_check_device", lambda *a, **k: None),
                            ("check_device", lambda *a, **k: None),
                            ("device_capability", lambda *a, **k: divmod(arch, 10))):
            if hasattr(module, name):
                saved.append((module, name, getattr(module, name)))
                setattr(module, name, value)
    try:
        yield launches
    finally:
        for module, name, value in reversed(saved):
            setattr(module, name, value)


def _kernel_modules():
    import answerdist.kernels._lm_head_triton as lm
    import answerdist.kernels._tree_attention_triton as ta

    modules = [lm, ta]
    with contextlib.suppress(ImportError):
        import answerdist.kernels._triton_common as common  # shared helpers (capability, device)

        modules.append(common)
    return modules


def tree_launches(arch: int, dtype: torch.dtype, head_dim: int, window: int | None,
                  softcap: float | None = None) -> list:
    """The launches tree attention makes for one packed engine row, on meta tensors."""
    from answerdist.kernels.tree_attention import tree_attention_triton

    b, t, hq, hkv = 1, TREE_T, 32, 8
    q = torch.empty(b, t, hq, head_dim, dtype=dtype, device="meta").transpose(1, 2)
    k = torch.empty(b, t, hkv, head_dim, dtype=dtype, device="meta").transpose(1, 2)
    v = torch.empty(b, t, hkv, head_dim, dtype=dtype, device="meta").transpose(1, 2)
    span_end = torch.empty(b, t, dtype=torch.int32, device="meta")
    kwargs = {} if window is None else {"positions": torch.empty(b, t, dtype=torch.int64,
                                                                  device="meta"),
                                        "window": window}
    with recording(_kernel_modules(), arch) as launches:
        tree_attention_triton(q, k, v, span_end, head_dim**-0.5, softcap=softcap, **kwargs)
    return launches


def lm_launches(arch: int, dtype: torch.dtype, d: int, v: int,
                softcap: float | None = None) -> list:
    """The launches of the LM head for LM_ROWS gathered rows, on meta tensors (the launcher
    directly: the public function's range check on targets needs real values)."""
    import answerdist.kernels._lm_head_triton as lm

    hidden = torch.empty(LM_ROWS, d, dtype=dtype, device="meta")
    weight = torch.empty(v, d, dtype=dtype, device="meta")
    targets = torch.empty(LM_ROWS, 8, dtype=torch.int64, device="meta")
    mask = torch.empty(v, dtype=torch.bool, device="meta")
    with recording(_kernel_modules(), arch) as launches:
        lm.lm_head_logprobs(hidden, weight, targets, mask, softcap=softcap)
    return launches


# --------------------------------------------------------------------------- compile + read

def _bin(tool: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool)


def compile_launch(fn, args, kwargs, arch: int):
    """Compile one recorded launch as Triton's launcher would for ``arch``. Returns (compiled
    kernel, a short description of its tiles and launch options)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound,
                                                          specialization, options)
    src = ASTSource(fn, signature, constexprs, attrs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Triton 3.9's FP-fusion default notice
        compiled = triton.compile(src, target=target, options=options.__dict__)
    tiles = [f"{SHORT[k]}{v}" for k, v in kwargs.items() if k in SHORT]
    desc = " ".join(tiles + [f"w{options.num_warps}", f"s{options.num_stages}"])
    return compiled, desc


# Launch constants shown in the config column (tile sizes), abbreviated; w = warps, s = stages.
SHORT = {"BLOCK_M": "M", "BLOCK_N": "N", "BLOCK_V": "V", "BLOCK_K": "K", "SPLIT_V": "split",
         "QK_CHUNK": "qk", "BLOCK_T": "T", "BLOCK": "B"}


def read_cubin(cubin: bytes) -> tuple[int, int, Counter]:
    """(registers, stack bytes per thread, SASS mnemonic counts) via the wheel's cuobjdump."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        res = subprocess.run([_bin("cuobjdump"), "-res-usage", str(path)], check=True,
                             capture_output=True, text=True).stdout
        sass = subprocess.run([_bin("cuobjdump"), "-sass", str(path)], check=True,
                              capture_output=True, text=True).stdout
    regs = int(re.search(r"REG:(\d+)", res).group(1))
    stack = int(re.search(r"STACK:(\d+)", res).group(1))
    ops = Counter(m.group(1).split(".")[0] for m in re.finditer(
        r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_.]*)", sass))
    return regs, stack, ops


def cases(arches=ARCHES, pattern: str | None = None) -> list[tuple[str, int, str, object]]:
    """(kernel family, arch, case label, launches thunk) for every shipped configuration, or
    those whose "family dtype label" (e.g. "tree_attention bfloat16 Dh=128,window") matches
    the regular expression ``pattern``."""
    out = []
    for arch in arches:
        for dtype in TREE_DTYPES:
            for dh in TREE_HEAD_DIMS:
                for window in (None, 4096):
                    label = f"Dh={dh}" + ("" if window is None else ",window")
                    out.append(("tree_attention", arch, dtype, label,
                                lambda a=arch, d=dtype, h=dh, w=window: tree_launches(a, d, h, w)))
            for dh in SOFTCAP_HEAD_DIMS:
                for window in (None, 4096):
                    label = f"Dh={dh}" + ("" if window is None else ",window") + ",softcap"
                    out.append(("tree_attention", arch, dtype, label,
                                lambda a=arch, d=dtype, h=dh, w=window:
                                tree_launches(a, d, h, w, ATTN_SOFTCAP)))
        for dtype in LM_DTYPES:
            for d in LM_DIMS:
                for v in LM_VOCABS:
                    out.append(("lm_head", arch, dtype, f"D={d}",
                                lambda a=arch, t=dtype, dd=d, vv=v: lm_launches(a, t, dd, vv)))
                out.append(("lm_head", arch, dtype, f"D={d},softcap",
                            lambda a=arch, t=dtype, dd=d:
                            lm_launches(a, t, dd, SOFTCAP_VOCAB, FINAL_SOFTCAP)))
    name = lambda family, dtype, label: f"{family} {str(dtype).removeprefix('torch.')} {label}"
    return [(family, arch, label, thunk) for family, arch, dtype, label, thunk in out
            if pattern is None or re.search(pattern, name(family, dtype, label))]


def _dtype_of(args) -> str:
    """The dtype of the first floating tensor argument (the kernel's compute dtype)."""
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return str(a.dtype).removeprefix("torch.")
    return "?"


def build_rows(arches=ARCHES, progress=None, pattern: str | None = None) -> list[Row]:
    """Compile every shipped configuration (identical compiles once) and read each."""
    rows: dict[tuple, Row] = {}
    for family, arch, label, launches in cases(arches, pattern):
        try:
            recorded = launches()
        except TypeError as e:  # an older kernel without this argument (e.g. window)
            if progress:
                progress(f"{family} {label} sm_{arch}: not supported by these kernels ({e})")
            continue
        for fn, args, kwargs in recorded:
            key_args = tuple((str(a.dtype), tuple(a.stride()) if a.dim() else ())
                             if isinstance(a, torch.Tensor) else a for a in args)
            dtype = _dtype_of(args)
            try:
                compiled, desc = compile_launch(fn, args, kwargs, arch)
                key = (fn.__name__, arch, compiled.hash)
            except Exception as e:  # report it as a row: a compile failure is a finding
                key = (fn.__name__, arch, str(key_args), str(sorted(kwargs.items())))
                if key not in rows:
                    rows[key] = Row(fn.__name__, arch, dtype, [], "", error=str(e)[:300])
                if label not in rows[key].cases:
                    rows[key].cases.append(label)
                continue
            if key in rows:
                if label not in rows[key].cases:
                    rows[key].cases.append(label)
                continue
            regs, stack, ops = read_cubin(compiled.asm["cubin"])
            rows[key] = Row(fn.__name__, arch, dtype, [label], desc, regs, stack,
                            compiled.metadata.shared / 1024, {op: ops.get(op, 0) for op in OPS})
            if progress:
                progress(_format_row(rows[key]))
    return list(rows.values())


# --------------------------------------------------------------------------- checks + output

def problems(rows: list[Row]) -> list[str]:
    """Every violated check, one line each (empty list: all good)."""
    out = []
    for r in rows:
        name = f"{r.kernel} {r.dtype} sm_{r.arch} ({'; '.join(r.cases)})"
        if r.error:
            out.append(f"{name}: compile failed: {r.error}")
            continue
        if r.stack or r.ops.get("STL", 0) or r.ops.get("LDL", 0):
            out.append(f"{name}: spills ({r.stack} bytes of stack per thread, "
                       f"{r.ops.get('STL', 0)} STL / {r.ops.get('LDL', 0)} LDL)")
        if r.kernel in MATMUL_KERNELS and r.dtype == "bfloat16":
            if not (r.ops.get("LDGSTS", 0) or r.ops.get("UTMALDG", 0)):
                out.append(f"{name}: main loop without asynchronous copies (no LDGSTS/UTMALDG)")
            if r.arch >= 90 and not r.ops.get("HGMMA", 0):
                out.append(f"{name}: no wgmma (HGMMA) on Hopper")
        if r.arch == 80 and r.shared_kib > SM86_SHARED_KIB:
            out.append(f"{name}: {r.shared_kib:.0f} KiB of shared memory does not fit the "
                       f"{SM86_SHARED_KIB} KiB of sm_86 / sm_89, which use the sm_80 tiles")
    return out


COLUMNS = ("kernel", "dtype", "cases", "arch", "config", "regs", "stack B", "smem KiB",
           *OPS)


def _cells(r: Row) -> list[str]:
    if r.error:
        return [r.kernel, r.dtype, "; ".join(r.cases), f"sm_{r.arch}", "compile failed",
                *[""] * (len(COLUMNS) - 5)]
    return [r.kernel, r.dtype, "; ".join(r.cases), f"sm_{r.arch}", r.config, str(r.registers),
            str(r.stack), f"{r.shared_kib:.0f}", *(str(r.ops.get(op, 0)) for op in OPS)]


def _format_row(r: Row) -> str:
    return "  ".join(_cells(r))


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.native_report",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHES),
                        help="compute capabilities to compile for (default: 80 90)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--quiet", action="store_true", help="no per-compile progress lines")
    parser.add_argument("--filter", default=None, metavar="REGEX",
                        help='only cases whose "family dtype label" matches, e.g. '
                             '"tree_attention float32" or "Dh=128"')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "").strip() not in ("", "0"):
        print("native_report: unset TRITON_INTERPRET (it compiles natively)", file=sys.stderr)
        return 2
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    rows = build_rows(tuple(args.arch), progress, args.filter)
    print(markdown(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    found = problems(rows)
    print()
    print("\n".join(f"PROBLEM: {p}" for p in found) if found else
          f"all {len(rows)} compiled kernels pass: no spills, bf16 matmul loops pipelined with "
          "asynchronous copies, wgmma on sm_90, sm_80 tiles within 99 KiB of shared memory")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
