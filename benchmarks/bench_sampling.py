"""The sampler against transformers' `generate`, and discovery + exact scoring against
sampling alone, side by side in one run on the CPU.

1. Throughput: the same random Llama checkpoint (4 layers, hidden 256, a 301-token BPE) draws
   64 replies of 32 new tokens to one prompt, with this engine's sampler (KV cache, seeded
   streams) and with transformers' `generate(do_sample=True, use_cache=True)`; tokens per
   second, median of 3 runs each, and the ratio.
2. Accuracy at equal wall time, on an open task over a tiny model with short replies
   (tests/tiny.py `short_reply_checkpoint`): discovery with N samples per prompt, then exact
   scoring of every answer found, against sampling only for the same wall time. Each gives a
   distribution over the answers plus an "other" bucket (exact: 1 - coverage; sampled: the
   share of samples that gave no answer among the truth's); the truth is the exact distribution
   over the answers a 20,000-sample discovery finds (their complement lumped into "other" too).
   The figure is the total-variation distance to it.

    python -m benchmarks.bench_sampling [--record]

transformers (a test-only dependency) writes the checkpoints and is the peer: a developer tool.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

import answerdist
from answerdist.engine.scoring.discovery import discover
from answerdist.engine.scoring.sampler import CHUNK, ReplySampler
from answerdist.engine.scoring.scorer import PromptEncoder, score_task, task_sequences
from answerdist.engine.settings import SamplingSettings
from answerdist.engine.tasks import Prompt, Task, normalize_reply

RESULTS = Path(__file__).parent / "results"
NEW_TOKENS = 32


def throughput(directory: Path, runs: int = 3) -> dict:
    """Tokens per second of both samplers on one prompt, CHUNK replies of NEW_TOKENS each."""
    from transformers import AutoModelForCausalLM

    ck = answerdist.load(directory)
    task = Task("bench", "", (), (Prompt("p", "Pick a random number between 1 and 10."),),
                end="turn", open_answers=True)
    encoder = PromptEncoder(ck, "chat")
    sampler = ReplySampler(ck, encoder, SamplingSettings(max_new_tokens=NEW_TOKENS))
    sampler.specials = set()  # no reply stops early, as min_new_tokens makes generate's go on
    ids = torch.tensor([encoder.encode(encoder.prompt_text(task, task.prompts[0]))])
    hf = AutoModelForCausalLM.from_pretrained(directory).float().eval()

    def ours():
        replies = sampler.sample(task, task.prompts[0], CHUNK, start=CHUNK * ours.calls)
        ours.calls += 1
        return sum(len(r.token_ids) for r in replies)

    ours.calls = 0

    def theirs():
        with torch.inference_mode():
            out = hf.generate(ids.expand(CHUNK, -1), do_sample=True, max_new_tokens=NEW_TOKENS,
                              min_new_tokens=NEW_TOKENS, top_k=0, use_cache=True,
                              pad_token_id=0)
        return (out.shape[1] - ids.shape[1]) * CHUNK

    rows = {}
    for name, fn in (("engine sampler", ours), ("transformers generate", theirs)):
        fn()  # warm-up
        rates = []
        for _ in range(runs):
            start = time.perf_counter()
            tokens = fn()
            rates.append(tokens / (time.perf_counter() - start))
        rows[name] = round(statistics.median(rates), 1)
    return {"tokens_per_s": rows,
            "ratio": round(rows["engine sampler"] / rows["transformers generate"], 2)}


def distribution(probs: dict[str, float], support) -> dict[str, float]:
    """Over the truth's answers, the rest of the mass (answers outside them included) lumped
    into "<other>"."""
    kept = {a: p for a, p in probs.items() if a in support}
    return {**kept, "<other>": max(0.0, 1.0 - sum(kept.values()))}


def tv(p: dict[str, float], q: dict[str, float]) -> float:
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def exact_answers(ck, encoder, task, n: int, settings) -> tuple[dict, float]:
    """Discovery with n samples, then exact scoring: {answer: P} at the prompt, and seconds."""
    start = time.perf_counter()
    found = discover(ck, encoder, task, n, settings)
    scores = score_task(ck, encoder, found.task, task_sequences(encoder, found.task),
                        encoder.end_mask(found.task), pack=False)
    probs = {a.name: math.exp(scores.prompts[0].answer_logprob[i])
             for i, a in enumerate(found.task.answers)}
    return probs, time.perf_counter() - start


def accuracy(directory: Path, discoveries=(16, 64, 256), truth_samples: int = 20_000) -> list:
    ck = answerdist.load(directory)
    encoder = PromptEncoder(ck, "chat", tokenizations="all")
    task = Task("pick", "", (), (Prompt("plain", "Pick a number or a word."),), end="turn",
                open_answers=True, normalize=("strip", "casefold"))
    settings = SamplingSettings(max_new_tokens=8)
    truth, _ = exact_answers(ck, encoder, task, truth_samples, settings)
    truth = distribution(truth, truth)
    rows = []
    for n in discoveries:
        probs, seconds = exact_answers(ck, encoder, task, n, settings)
        # sampling only, for the same wall time (new seed: other samples than discovery's)
        sampler = ReplySampler(ck, encoder, SamplingSettings(max_new_tokens=8, seed=1))
        counts: dict[str, int] = {}
        drawn, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or drawn == 0:
            for r in sampler.sample(task, task.prompts[0], CHUNK, start=drawn):
                answer = normalize_reply(task, r.text) if r.status == "finished" else ""
                if answer:
                    counts[answer] = counts.get(answer, 0) + 1
            drawn += CHUNK
        sampled = distribution({a: c / drawn for a, c in counts.items()}, truth)
        rows.append({"discovery_samples": n, "seconds": round(seconds, 3),
                     "answers_found": len(probs), "tv_discovery_exact": round(
                         tv(distribution(probs, truth), truth), 4),
                     "sampling_only_samples": drawn,
                     "tv_sampling_only": round(tv(sampled, truth), 4)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--record", action="store_true",
                   help="write benchmarks/results/sampling-cpu-DATE.json")
    args = p.parse_args(argv)
    from tests import tiny

    with tempfile.TemporaryDirectory() as tmp:
        big, short = Path(tmp) / "big", Path(tmp) / "short"
        tiny.make_checkpoint(big, template=tiny.CHATML_TEMPLATE, hidden=256, layers=4,
                             heads=8, kv_heads=4)
        tiny.short_reply_checkpoint(short)
        speed = throughput(big)
        rows = accuracy(short)
    print(f"sampling throughput, {CHUNK} replies x {NEW_TOKENS} tokens (median of 3):")
    for name, rate in speed["tokens_per_s"].items():
        print(f"  {name:<22} {rate:>10.1f} tokens/s")
    print(f"  ratio engine / transformers: {speed['ratio']:.2f}")
    print("\nTV to the exact distribution at equal wall time:")
    print(f"{'discovery N':>11} {'seconds':>8} {'answers':>8} {'TV discovery+exact':>19} "
          f"{'sampling-only N':>16} {'TV sampling only':>17}")
    for r in rows:
        print(f"{r['discovery_samples']:>11} {r['seconds']:>8.3f} {r['answers_found']:>8} "
              f"{r['tv_discovery_exact']:>19.4f} {r['sampling_only_samples']:>16} "
              f"{r['tv_sampling_only']:>17.4f}")
    if args.record:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"sampling-cpu-{date.today().isoformat()}.json"
        out.write_text(json.dumps({"date": date.today().isoformat(),
                                   "machine": f"{platform.machine()}, "
                                              f"{torch.get_num_threads()} threads, CPU",
                                   "torch": torch.__version__, "throughput": speed,
                                   "equal_time": rows}, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
