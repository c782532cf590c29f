"""Scoring benchmark of the large tasks (group "large"): this engine against the lm-eval way.

The checkpoint is bench_scoring's (`benchmarks.bench_scoring.build_checkpoint`: random Llama,
~20M parameters, 32k byte-level BPE trained on the default suite's text), scored in base mode,
float32, in one process, side by side:
  * engine: each prompt once with the trie of all its answers (a thousand answers: about a
    thousand trie tokens), the LM head only where a trie node is predicted;
  * naive: transformers, one forward per (prompt, variant) over prompt + continuation with a
    full log-softmax, batched as the harness batches (benchmarks/naive_scoring.py).

Both sides score the same prompts: the first --naive-prompts of each task (default 5 of 15),
which gives the measured ratio and the max |logprob difference|. They alternate prompt by
prompt (engine, then naive), so that load from other processes on a shared machine slows both
alike; times include tokenizing, not loading. The engine also scores every prompt of every
task (the full-suite time it reports is measured). The naive side's full-suite time is NOT
measured by default (it took 5.5 minutes on 2 nearly idle cores, the whole default run 2.5):
it is estimated per task as its time on the first prompts times (its tokens on all prompts /
its tokens on those), since its cost is one forward per token of prompt + answer, and printed
as an estimate. `--naive-prompts 15` measures it instead.

    python -m benchmarks.bench_large [--naive-prompts 5]

transformers is a test-only dependency, so this benchmark is a developer tool.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

import answerdist
from answerdist.engine.scoring.scorer import PromptEncoder, boundary_mask, score_task
from answerdist.engine.tasks import load_tasks
from benchmarks.bench_scoring import build_checkpoint
from benchmarks.naive_scoring import boundary_ids, naive_logprobs

RESULTS = Path(__file__).parent / "results"


def run_task(ck, encoder, boundary, model, tok, naive_boundary, task, compared: int) -> dict:
    """Score every prompt of `task` with the engine and the first `compared` prompts the
    naive way, alternating prompt by prompt, so that other load on the machine falls on both
    sides alike. Per side: seconds (tokenizing included), tokens processed."""
    row = {"engine_s": [], "engine_tokens": [], "engine_needed": 0, "naive_s": [],
           "naive_tokens": [], "max_abs_logprob_diff": 0.0}
    for i, prompt in enumerate(task.prompts):
        start = time.perf_counter()
        sequence = encoder.sequence(task, prompt)
        scores = score_task(ck, encoder, task, [sequence], boundary)
        row["engine_s"].append(time.perf_counter() - start)
        row["engine_tokens"].append(scores.tokens_processed)
        row["engine_needed"] += scores.tokens_needed
        text = task.render_base(prompt)
        if i < compared:
            start = time.perf_counter()
            naive = naive_logprobs(model, tok, text, sequence.continuations, True, naive_boundary)
            row["naive_s"].append(time.perf_counter() - start)
            ours = scores.prompts[0].variant_logprob
            row["max_abs_logprob_diff"] = max(row["max_abs_logprob_diff"],
                                              float(np.abs(np.array(naive) - ours).max()))
        # What the naive way runs through the model: prompt + continuation, per variant.
        row["naive_tokens"].append(sum(len(tok(text + c).input_ids)
                                       for c in sequence.continuations))
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="large")
    p.add_argument("--naive-prompts", type=int, default=5,
                   help="prompts per task scored by both sides (default 5; the engine also "
                        "scores all of them)")
    args = p.parse_args(argv)
    if args.naive_prompts < 1:
        p.error("--naive-prompts must be at least 1")
    load_at_start = os.getloadavg()[0]
    tasks = load_tasks(args.tasks)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        build_checkpoint(directory)
        start = time.perf_counter()
        ck = answerdist.load(directory)
        engine_load = time.perf_counter() - start
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(directory)
        boundary = boundary_ids(tok, model.config.vocab_size)
        naive_load = time.perf_counter() - start
        params = sum(p.numel() for p in ck.model.parameters())
        encoder = PromptEncoder(ck, "base")
        engine_boundary = boundary_mask(ck)
        runs = {t.name: run_task(ck, encoder, engine_boundary, model, tok, boundary, t,
                                 args.naive_prompts) for t in tasks}

    rows = {}
    for task in tasks:
        r = runs[task.name]
        m = len(r["naive_s"])
        engine_s, naive_s = sum(r["engine_s"][:m]), sum(r["naive_s"])
        # Estimate, when fewer prompts were compared: the naive cost is one forward per token
        # of prompt + answer, so its time scales with its tokens over all prompts.
        scale = sum(r["naive_tokens"]) / sum(r["naive_tokens"][:m])
        rows[task.name] = {
            "answers": len(task.answers),
            "variants": sum(len(a.variants) for a in task.answers),
            "prompts": len(task.prompts),
            "prompts_compared": m,
            "engine_seconds_compared": round(engine_s, 3),
            "naive_seconds_compared": round(naive_s, 3),
            "speedup_measured": round(naive_s / engine_s, 2),
            "engine_tokens_compared": sum(r["engine_tokens"][:m]),
            "naive_tokens_compared": sum(r["naive_tokens"][:m]),
            "max_abs_logprob_diff": r["max_abs_logprob_diff"],
            "engine_seconds_all_prompts": round(sum(r["engine_s"]), 3),
            "engine_tokens_all_prompts": sum(r["engine_tokens"]),
            "engine_token_efficiency": round(r["engine_needed"] / sum(r["engine_tokens"]), 6),
            "naive_tokens_all_prompts": sum(r["naive_tokens"]),
            "naive_seconds_all_prompts": round(naive_s * scale, 3),
            "naive_all_prompts_estimated": m < len(task.prompts),
        }
    total = {key: sum(r[key] for r in rows.values()) for key in (
        "engine_seconds_compared", "naive_seconds_compared", "engine_tokens_compared",
        "naive_tokens_compared", "engine_seconds_all_prompts", "naive_seconds_all_prompts",
        "engine_tokens_all_prompts", "naive_tokens_all_prompts")}
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU",
        "torch": torch.__version__,
        # Other work on the machine slows both sides; a load above the core count makes the
        # absolute times, and to a lesser degree the ratio, unreliable.
        "load_average_1min": {"start": round(load_at_start, 2),
                              "end": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()},
        "checkpoint": "benchmarks.bench_scoring.build_checkpoint (random Llama, 32k BPE), base "
                      "mode, float32",
        "parameters": params,
        "load_seconds": {"engine": round(engine_load, 3), "naive": round(naive_load, 3)},
        "naive_prompts_per_task": args.naive_prompts,
        "tasks": rows,
        "total": {k: round(v, 3) for k, v in total.items()} | {
            "speedup_measured": round(total["naive_seconds_compared"]
                                      / total["engine_seconds_compared"], 2),
            "max_abs_logprob_diff": max(r["max_abs_logprob_diff"] for r in rows.values()),
        },
    }
    report(result)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"large-cpu-{result['date']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def report(result: dict) -> None:
    print(f"checkpoint: random Llama, {result['parameters'] / 1e6:.1f}M parameters, vocab 32000, "
          f"float32, base mode, {result['machine']}")
    m = result["naive_prompts_per_task"]
    print(f"same prompts on both sides (first {m} of each task), scoring time without loading:")
    head = (f"{'task':<11} {'K':>5} {'prompts':>7} {'engine s':>9} {'naive s':>9} {'ratio':>7} "
            f"{'engine tok':>11} {'naive tok':>10} {'max|dlp|':>9}")
    print(head)
    for name, r in result["tasks"].items():
        print(f"{name:<11} {r['answers']:>5} {r['prompts_compared']:>7} "
              f"{r['engine_seconds_compared']:>9.2f} {r['naive_seconds_compared']:>9.2f} "
              f"{r['speedup_measured']:>6.1f}x {r['engine_tokens_compared']:>11} "
              f"{r['naive_tokens_compared']:>10} {r['max_abs_logprob_diff']:>9.1e}")
    t = result["total"]
    print(f"{'total':<11} {'':>5} {'':>7} {t['engine_seconds_compared']:>9.2f} "
          f"{t['naive_seconds_compared']:>9.2f} {t['speedup_measured']:>6.1f}x "
          f"{int(t['engine_tokens_compared']):>11} {int(t['naive_tokens_compared']):>10} "
          f"{t['max_abs_logprob_diff']:>9.1e}")
    estimated = any(r["naive_all_prompts_estimated"] for r in result["tasks"].values())
    kind = "estimated" if estimated else "measured"
    print(f"all prompts: engine {t['engine_seconds_all_prompts']:.2f} s measured "
          f"({int(t['engine_tokens_all_prompts'])} tokens, token efficiency "
          f"{min(r['engine_token_efficiency'] for r in result['tasks'].values()):.3f}); naive "
          f"{t['naive_seconds_all_prompts']:.2f} s {kind} ({int(t['naive_tokens_all_prompts'])} "
          "tokens)"
          + (f" (time on {m} prompts x its tokens on all / on those)" if estimated else "")
          + f"; ratio {t['naive_seconds_all_prompts'] / t['engine_seconds_all_prompts']:.1f}x")
    print(f"loading: engine {result['load_seconds']['engine']:.2f} s, transformers "
          f"{result['load_seconds']['naive']:.2f} s (not in the times above)")
    load = result["load_average_1min"]
    print(f"load average {load['start']} at the start, {load['end']} at the end, on {load['cpus']} "
          "CPUs")


if __name__ == "__main__":
    main()
