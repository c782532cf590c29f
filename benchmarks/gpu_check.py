"""`make gpu-check`: everything a lent GPU should tell us, in one command (< 8 min on H100/H200).

    python -m benchmarks.gpu_check              # on a CUDA machine
    python -m benchmarks.gpu_check --dry-run    # the same steps on CPU, tiny and interpreted

Steps, each in its own process with its output kept, timed:

1. ``tests``: the kernel tests natively (tests/test_kernels_lm_head.py and
   tests/test_kernels_tree_attention.py: kernel vs reference vs float64, packed rows, visit
   counts, bitwise batch invariance on the real tensor cores, engine-sized shapes);
2. ``bench``: ``make bench`` (benchmarks/bench_kernels.py, peers and targets), recorded;
3. ``native_report``: benchmarks/native_report.py (registers, spills, async copies, wgmma);
4. ``end_to_end``: a random OLMo-2-1B-shaped checkpoint (hidden 2048, 16 layers, 16 heads,
   vocabulary 100352) built on the GPU from transformers' Olmo2Config (no hub) and saved in
   bf16; the shipped task suite scored by the engine (bf16 and float32, Triton kernels) and the
   lm-eval way (transformers, one forward per (prompt, answer variant), full log-softmax; bf16
   for speed and float32 as the reference): wall and scoring seconds (after one warm-up task
   that lets Triton compile), tokens, and max |d logprob| of engine bf16 and engine float32
   against transformers float32;
   then the same comparison, on three tasks, for two of the other families built small from
   their config classes: Gemma 2 (attention and final soft-capping in the kernels, sliding
   layers) and OLMoE (routed experts: the grouped-matmul path in bfloat16).

Everything goes under ``benchmarks/results/`` (``--out`` to change), named with the device:
``gpu-check-<device>-<date>.md`` / ``.json`` (summary), ``gpu-check-<device>-<date>/`` (each
step's log and JSON), plus the bench's own ``<device>-<date>.json`` and RESULTS.md section.
The exit status is 1 if a step failed (the summary says which) or the run exceeded 8 minutes.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_env import default_device, device_slug
from benchmarks.bench_record import RESULTS_DIR

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 8 * 60
# OLMo 2 1B's shape (allenai/OLMo-2-0425-1B): built from the config, random weights.
OLMO2_1B = dict(vocab_size=100352, hidden_size=2048, intermediate_size=8192,
                num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16,
                max_position_embeddings=4096, rope_theta=500000.0, rms_norm_eps=1e-6)
TINY = dict(vocab_size=301, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
# Other families end to end, small (the kernels' new paths, not their speed): config class,
# shape; a dry run keeps the family keys on TINY's shape.
FAMILY_CHECKS = {
    "Gemma2ForCausalLM": ("Gemma2Config", dict(
        vocab_size=32768, hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=4, head_dim=128, max_position_embeddings=4096,
        query_pre_attn_scalar=128, sliding_window=32)),  # soft-caps 50 / 30: the defaults
    "OlmoeForCausalLM": ("OlmoeConfig", dict(
        vocab_size=32768, hidden_size=1024, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096,
        num_experts=16, num_experts_per_tok=4)),
}
FAMILY_KEYS = ("head_dim", "query_pre_attn_scalar", "sliding_window", "num_experts",
               "num_experts_per_tok")
KERNEL_TESTS = ["tests/test_kernels_lm_head.py", "tests/test_kernels_tree_attention.py"]
# (step, timeout in seconds): generous per step; the whole run is held to BUDGET_S.
TIMEOUTS = {"tests": 300, "bench": 300, "native_report": 240, "end_to_end": 300}


# --------------------------------------------------------------------------- steps

def step_commands(dry_run: bool, out: Path, step_dir: Path, record: bool) -> dict[str, list]:
    """The command of each step. A dry run keeps every code path but shrinks the work:
    one fast kernel test file subset (interpreted), the bench's dry run, one native compile
    per kernel, a tiny end-to-end checkpoint."""
    py = sys.executable
    tests = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *KERNEL_TESTS]
    bench = [py, "-m", "benchmarks.bench_kernels"]
    native = [py, "-m", "benchmarks.native_report", "--quiet", "--json",
              str(step_dir / "native_report.json")]
    e2e = [py, "-m", "benchmarks.gpu_check", "--end-to-end", str(step_dir / "end_to_end.json")]
    if dry_run:
        tests += ["-k", "sequence_starts or dispatch"]
        # One extra tile configuration per kernel: the dry run checks the --*-configs sweep too.
        bench += ["--dry-run", "--no-compile", "--lm-configs", "16,16,16,32,1,1",
                  "--tree-configs", "16,16,16,1,1"]
        native += ["--arch", "90", "--filter", "bfloat16 Dh=64$|lm_head bfloat16 D=2048"]
        e2e += ["--dry-run"]
    bench += ["--record"] if record else ["--out", str(step_dir / "bench")]
    return {"tests": tests, "bench": bench, "native_report": native, "end_to_end": e2e}


def run_step(name: str, cmd: list, env: dict, step_dir: Path, timeout: float) -> dict:
    """Run one step, its stdout+stderr to ``<step_dir>/<name>.log``; status and seconds."""
    start = time.perf_counter()
    log = step_dir / f"{name}.log"
    with log.open("w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    seconds = time.perf_counter() - start
    status = "ok" if rc == 0 else f"FAILED ({'timed out' if rc == 'timeout' else f'exit {rc}'})"
    print(f"{name}: {status} in {seconds:.0f} s (log: {log})", flush=True)
    return {"step": name, "status": status, "seconds": seconds, "log": str(log)}


def step_env(name: str, dry_run: bool) -> dict:
    """Native everywhere on a GPU; the CPU dry run interprets the kernel tests and the bench
    (they set it themselves too) and never the native report, which compiles for real."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if dry_run and name in ("tests", "bench"):
        env["TRITON_INTERPRET"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# --------------------------------------------------------------------------- end to end

def build_checkpoint(directory: Path, config_kwargs: dict, device: torch.device,
                     config_class: str = "Olmo2Config") -> int:
    """A random checkpoint (OLMo 2 unless told) built on ``device`` from transformers' config
    class, saved in bf16 (engine bf16, engine float32 and transformers float32 then share exact
    weights), with a small byte-level BPE tokenizer. Returns the parameter count."""
    import transformers
    from transformers import AutoModelForCausalLM

    from tests.tiny import write_tokenizer

    config = getattr(transformers, config_class)(tie_word_embeddings=False, bos_token_id=1,
                                                 eos_token_id=0, pad_token_id=0, **config_kwargs)
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    model.to(torch.bfloat16).save_pretrained(directory)
    del model
    write_tokenizer(directory)
    return params


def engine_scores(directory: Path, tasks, dtype: str, device: torch.device,
                  pack: bool | None = None, batch_tokens: int = 8192) -> dict:
    """Engine wall (load + score) and scoring seconds, tokens, variant log-probs per prompt.
    pack: None as the engine decides (packed on CUDA), False one pass per prompt
    (`--batch-invariant`)."""
    import answerdist
    from answerdist.engine.scoring.scorer import (
        PromptEncoder,
        boundary_mask,
        score_task,
        task_sequences,
    )

    _sync(device)
    start = time.perf_counter()
    ck = answerdist.load(directory, dtype=dtype, device=str(device))
    encoder = PromptEncoder(ck, "base")
    boundary = boundary_mask(ck)
    scoring, tokens, scores = 0.0, 0, {}
    for task in tasks:
        result = score_task(ck, encoder, task, task_sequences(encoder, task), boundary,
                            batch_tokens, pack=pack)
        scoring += result.seconds
        tokens += result.tokens_processed
        for p in result.prompts:
            scores[(task.name, p.sequence.prompt_id)] = (p.sequence, p.variant_logprob)
    _sync(device)
    return {"wall_seconds": time.perf_counter() - start, "scoring_seconds": scoring,
            "tokens": tokens, "scores": scores}


@torch.no_grad()
def naive_scores(directory: Path, tasks, reference: dict, dtype: torch.dtype,
                 device: torch.device) -> dict:
    """The lm-eval way with transformers: one forward per (prompt, variant); its log-probs,
    wall (load + score) and scoring seconds, tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.naive_scoring import boundary_ids, naive_logprobs

    _sync(device)
    start = time.perf_counter()
    # eager experts (OLMoE): transformers' own loop, the reference
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype,
                                                 experts_implementation="eager").to(device).eval()
    tok = AutoTokenizer.from_pretrained(directory)
    boundary = boundary_ids(tok, model.config.vocab_size).to(device)

    def on_device(input_ids, attention_mask):  # naive_logprobs builds its batches on CPU
        return model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))

    loaded = time.perf_counter()
    tokens, logprobs = 0, {}
    for task in tasks:
        for prompt in task.prompts:
            sequence, _ = reference[(task.name, prompt.id)]
            text = task.render_base(prompt)
            logprobs[(task.name, prompt.id)] = np.array(
                naive_logprobs(on_device, tok, text, sequence.continuations, True, boundary))
            tokens += sum(len(tok(text + c).input_ids) for c in sequence.continuations)
    _sync(device)
    end = time.perf_counter()
    return {"wall_seconds": end - start, "scoring_seconds": end - loaded, "tokens": tokens,
            "logprobs": logprobs}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def max_diff(engine: dict, naive: dict) -> float:
    return max(float(np.abs(lp - naive["logprobs"][key]).max())
               for key, (_, lp) in engine["scores"].items())


def end_to_end(dry_run: bool) -> dict:
    """The end-to-end comparison; on CPU (dry run) a tiny checkpoint and two tasks."""
    from answerdist.engine.tasks import load_tasks

    device = default_device()
    config_kwargs = TINY if dry_run else OLMO2_1B
    tasks = load_tasks("coin,die" if dry_run else "all")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        start = time.perf_counter()
        params = build_checkpoint(directory, config_kwargs, device)
        build_s = time.perf_counter() - start
        # Warm-up: Triton compiles the kernels for this checkpoint's shapes once (cached on
        # disk); the timed runs below then measure scoring, as a second user run would.
        warmup = {dt: engine_scores(directory, tasks[:1], dt, device)["wall_seconds"]
                  for dt in ("bfloat16", "float32")}
        ours = {dt: engine_scores(directory, tasks, dt, device) for dt in ("bfloat16", "float32")}
        invariance = batch_invariance(directory, tasks, device, ours["bfloat16"])
        sampling = sampler_check(directory, device)
        naive = {str(dt).removeprefix("torch."): naive_scores(directory, tasks,
                                                              ours["float32"]["scores"], dt,
                                                              device)
                 for dt in (torch.bfloat16, torch.float32)}
    row = lambda r: {k: r[k] for k in ("wall_seconds", "scoring_seconds", "tokens")}
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "checkpoint": {"arch": "Olmo2ForCausalLM (random, built from Olmo2Config)",
                       "parameters": params, "saved_dtype": "bfloat16", **config_kwargs,
                       "build_and_save_seconds": build_s},
        "tasks": len(tasks), "prompts": sum(len(t.prompts) for t in tasks),
        "variants": sum(len(t.prompts) * sum(len(a.variants) for a in t.answers) for t in tasks),
        "engine": {dt: row(r) for dt, r in ours.items()},
        "engine_warmup_seconds": warmup,
        "lm_eval_way": {dt: row(r) for dt, r in naive.items()},
        "scoring_speedup_bf16": naive["bfloat16"]["scoring_seconds"]
        / ours["bfloat16"]["scoring_seconds"],
        "wall_speedup_bf16": naive["bfloat16"]["wall_seconds"] / ours["bfloat16"]["wall_seconds"],
        "max_abs_dlogprob_engine_bf16_vs_transformers_fp32": max_diff(ours["bfloat16"],
                                                                      naive["float32"]),
        "max_abs_dlogprob_engine_fp32_vs_transformers_fp32": max_diff(ours["float32"],
                                                                      naive["float32"]),
        "batch_invariance_bf16": invariance,
        "sampler": sampling,
        "families": {arch: family_end_to_end(arch, dry_run, device) for arch in FAMILY_CHECKS},
    }


def family_end_to_end(arch: str, dry_run: bool, device: torch.device) -> dict:
    """One more family, small, on three tasks: engine bf16 and float32 against transformers
    float32 (after a warm-up task that lets Triton compile)."""
    from answerdist.engine.tasks import load_tasks

    config_class, shape = FAMILY_CHECKS[arch]
    if dry_run:
        shape = TINY | {k: v for k, v in shape.items() if k in FAMILY_KEYS} | (
            {"head_dim": 16, "query_pre_attn_scalar": 16} if "head_dim" in shape else {})
    tasks = load_tasks("coin,die,card")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        params = build_checkpoint(directory, shape, device, config_class)
        for dt in ("bfloat16", "float32"):
            engine_scores(directory, tasks[:1], dt, device)
        ours = {dt: engine_scores(directory, tasks, dt, device) for dt in ("bfloat16", "float32")}
        reference = naive_scores(directory, tasks, ours["float32"]["scores"], torch.float32,
                                 device)
    return {"parameters": params, **shape, "tasks": len(tasks),
            "engine_scoring_seconds": {dt: r["scoring_seconds"] for dt, r in ours.items()},
            "max_abs_dlogprob_engine_bf16_vs_transformers_fp32": max_diff(ours["bfloat16"],
                                                                          reference),
            "max_abs_dlogprob_engine_fp32_vs_transformers_fp32": max_diff(ours["float32"],
                                                                          reference)}


def sampler_check(directory: Path, device: torch.device, new_tokens: int = 32) -> dict:
    """The sampler on this device: KV-cache decoding against the full forward (max |d logit|
    over 2 x 48 positions, 16 prefilled), and bf16 throughput for CHUNK replies of
    `new_tokens` tokens each (no reply stops early)."""
    import answerdist
    from answerdist.engine.model.transformer import KVCache
    from answerdist.engine.scoring.sampler import CHUNK, ReplySampler
    from answerdist.engine.scoring.scorer import PromptEncoder
    from answerdist.engine.settings import SamplingSettings
    from answerdist.engine.tasks import Prompt, Task

    out = {}
    for dt in ("bfloat16", "float32"):
        ck = answerdist.load(directory, dtype=dt, device=str(device))
        ids = torch.randint(0, ck.args.vocab_size, (2, 48),
                            generator=torch.Generator().manual_seed(0)).to(device)
        with torch.inference_mode():
            full = ck.model(ids)
            cache = KVCache(ck.args, 2, 48, ck.dtype, device)
            h = ck.model.hidden_states(ids[:, :16], torch.arange(16, device=device).expand(2, 16),
                                       cache=cache)
            steps = [ck.model.next_token_logits(h[:, -1])]
            for t in range(16, 47):
                h = ck.model.hidden_states(ids[:, t:t + 1], torch.full((2, 1), t, device=device),
                                           cache=cache)
                steps.append(ck.model.next_token_logits(h[:, -1]))
        out[f"max_abs_dlogit_cached_vs_full_{dt}"] = float(
            (torch.stack(steps, 1) - full[:, 15:47]).abs().max())
    task = Task("bench", "", (), (Prompt("p", "Pick a random number between 1 and 10."),),
                end="turn", open_answers=True)
    ck = answerdist.load(directory, dtype="bfloat16", device=str(device))
    sampler = ReplySampler(ck, PromptEncoder(ck, "base"),
                           SamplingSettings(max_new_tokens=new_tokens))
    sampler.specials = set()  # no reply stops early
    sampler.sample(task, task.prompts[0], CHUNK)  # warm-up
    _sync(device)
    start = time.perf_counter()
    replies = sampler.sample(task, task.prompts[0], 4 * CHUNK, start=CHUNK)
    _sync(device)
    out["bf16_tokens_per_second"] = sum(len(r.token_ids) for r in replies) / (
        time.perf_counter() - start)
    out["replies"], out["new_tokens"] = len(replies), new_tokens
    return out


def batch_invariance(directory: Path, tasks, device: torch.device, packed: dict) -> dict:
    """What `--batch-invariant` costs on this device (a pass per prompt against packed rows of
    8192 tokens), whether it repeats bit for bit, and how far packing at another
    --batch-tokens moves results without it."""
    invariant = [engine_scores(directory, tasks, "bfloat16", device, pack=False) for _ in range(2)]
    repacked = engine_scores(directory, tasks, "bfloat16", device, batch_tokens=1024)
    bits = lambda r: [r["scores"][k][1].tobytes() for k in sorted(r["scores"])]
    return {"scoring_seconds_packed": packed["scoring_seconds"],
            "scoring_seconds_invariant": invariant[0]["scoring_seconds"],
            "slowdown": invariant[0]["scoring_seconds"] / packed["scoring_seconds"],
            "invariant_repeats_bitwise": bits(invariant[0]) == bits(invariant[1]),
            "packed_8192_vs_1024_max_abs_dlogprob": max(
                float(np.abs(lp - repacked["scores"][key][1]).max())
                for key, (_, lp) in packed["scores"].items())}


# --------------------------------------------------------------------------- summary

def render(summary: dict) -> str:
    lines = [f"# GPU check: {summary['device']} ({summary['mode']}, {summary['date']})", "",
             f"Total {summary['total_seconds']:.0f} s (budget {BUDGET_S} s): "
             f"{'within' if summary['total_seconds'] <= BUDGET_S else 'OVER'} budget.", "",
             "| step | status | seconds | log |", "|---|---|---|---|"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']:.0f} | {Path(s['log']).name} |"
              for s in summary["steps"]]
    e2e = summary.get("end_to_end")
    if e2e:
        ck = e2e["checkpoint"]
        lines += ["", f"End to end: random OLMo 2, {ck['parameters'] / 1e6:,.1f}M parameters "
                      f"(hidden {ck['hidden_size']}, {ck['num_hidden_layers']} layers, vocab "
                      f"{ck['vocab_size']}), {e2e['tasks']} tasks, {e2e['prompts']} prompts, "
                      f"{e2e['variants']} answer variants, base mode.", "",
                  "| scorer | dtype | wall s | scoring s | tokens |", "|---|---|---|---|---|"]
        for who, key in (("engine", "engine"), ("lm-eval way", "lm_eval_way")):
            for dt, r in e2e[key].items():
                lines.append(f"| {who} | {dt} | {r['wall_seconds']:.2f} | "
                             f"{r['scoring_seconds']:.2f} | {r['tokens']} |")
        lines += ["", f"bf16 speedup over the lm-eval way: scoring "
                      f"{e2e['scoring_speedup_bf16']:.1f}x, wall {e2e['wall_speedup_bf16']:.1f}x.",
                  f"max |d logprob| against transformers float32: engine bf16 "
                  f"{e2e['max_abs_dlogprob_engine_bf16_vs_transformers_fp32']:.2e}, engine "
                  f"float32 {e2e['max_abs_dlogprob_engine_fp32_vs_transformers_fp32']:.2e}."]
        inv = e2e["batch_invariance_bf16"]
        lines += [f"--batch-invariant (bf16): scoring {inv['scoring_seconds_invariant']:.2f} s "
                  f"against {inv['scoring_seconds_packed']:.2f} s packed "
                  f"({inv['slowdown']:.2f}x); repeats bit for bit: "
                  f"{inv['invariant_repeats_bitwise']}; packed at --batch-tokens 1024 "
                  f"instead of 8192 moves logprobs by up to "
                  f"{inv['packed_8192_vs_1024_max_abs_dlogprob']:.2e}."]
        if "sampler" in e2e:
            smp = e2e["sampler"]
            lines.append(f"sampler: KV-cache decoding against the full forward, max |d logit| "
                         f"bf16 {smp['max_abs_dlogit_cached_vs_full_bfloat16']:.2e}, float32 "
                         f"{smp['max_abs_dlogit_cached_vs_full_float32']:.2e}; "
                         f"{smp['bf16_tokens_per_second']:,.0f} tokens/s in bf16 "
                         f"({smp['replies']} replies x {smp['new_tokens']} tokens).")
        for arch, r in e2e.get("families", {}).items():
            lines.append(f"{arch} ({r['parameters'] / 1e6:,.1f}M parameters, {r['tasks']} tasks):"
                         f" max |d logprob| against transformers float32: engine bf16 "
                         f"{r['max_abs_dlogprob_engine_bf16_vs_transformers_fp32']:.2e}, engine "
                         f"float32 {r['max_abs_dlogprob_engine_fp32_vs_transformers_fp32']:.2e}.")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="every step on CPU, tiny and interpreted (checks the plumbing)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help="results directory (default benchmarks/results)")
    parser.add_argument("--end-to-end", type=Path, default=None, metavar="JSON",
                        help=argparse.SUPPRESS)  # run only step 4, into JSON (a subprocess)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.end_to_end:
        result = end_to_end(args.dry_run)
        args.end_to_end.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine, or --dry-run to check "
              "the plumbing on CPU", file=sys.stderr)
        return 2
    date = _dt.date.today().isoformat()
    slug = device_slug(default_device())
    name = f"gpu-check-{slug}-{date}"
    step_dir = args.out / name
    step_dir.mkdir(parents=True, exist_ok=True)
    record = args.out.resolve() == RESULTS_DIR.resolve() and not args.dry_run
    start = time.perf_counter()
    steps = [run_step(step, cmd, step_env(step, args.dry_run), step_dir, TIMEOUTS[step])
             for step, cmd in step_commands(args.dry_run, args.out, step_dir, record).items()]
    summary = {"device": slug, "mode": "dry run on CPU" if args.dry_run else "gpu",
               "date": date, "steps": steps, "total_seconds": time.perf_counter() - start}
    e2e_json = step_dir / "end_to_end.json"
    if e2e_json.exists():
        summary["end_to_end"] = json.loads(e2e_json.read_text())
    (args.out / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(render(summary))
    print(render(summary))
    print(f"wrote {args.out / name}.md / .json and {step_dir}/")
    failed = [s["step"] for s in steps if s["status"] != "ok"]
    return 1 if failed or summary["total_seconds"] > BUDGET_S else 0


if __name__ == "__main__":
    sys.exit(main())
