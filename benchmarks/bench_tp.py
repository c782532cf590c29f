"""Tensor parallelism on the CPU: TP=2 against TP=1 on one random checkpoint, side by side.

Builds a random Llama checkpoint (grouped-query attention, untied head, float32; ~155M
parameters, ~620 MB), then launches `torchrun --standalone --nproc-per-node N` for N = 1 and 2,
each rank loading the checkpoint with --tp N and scoring the same tasks in memory (base mode).
Prints per rank: resident memory before loading (torch and the engine imported, process group
up), once every weight has been read (float32 weights on the CPU are views of the mapped file,
resident only once touched, so the loader's own figure would flatter it), and at its peak after
scoring; the seconds to load and to score; the wall time of the launch (best of --repeats, the
launches interleaved); and the max |logprob| difference between the two runs.

    python -m benchmarks.bench_tp [--tasks coin,rng_1_10,card] [--repeats 2] [--checkpoint DIR]

torchrun sets OMP_NUM_THREADS=1, so each rank computes on one thread: TP=2 uses two cores where
TP=1 uses one. transformers builds the checkpoint (a test-only dependency: a developer tool).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def build_checkpoint(directory: Path) -> int:
    """A random Llama checkpoint; returns its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny import write_tokenizer

    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                         num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                         max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=1,
                         eos_token_id=0, initializer_range=0.02)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float()
    model.save_pretrained(directory)
    write_tokenizer(directory, template=None)  # a small BPE: ids past it are padding rows
    return sum(p.numel() for p in model.parameters())


def memory() -> dict[str, float]:
    """This process's resident memory now and at its peak (MiB), from /proc/self/status, and the
    resident pages of its mapped safetensors files (from /proc/self/smaps)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    mapped, weights = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):  # a mapping's first line
            weights = head[-1].endswith(".safetensors")
        elif weights and head and head[0] == "Rss:":
            mapped += int(head[1])
    fields["weights_mapped"] = mapped / 1024
    return fields


def worker(checkpoint: str, tasks: str, out: Path) -> None:
    """One rank: load with --tp WORLD_SIZE, score in memory, write what it measured."""
    import answerdist
    import answerdist.engine.run.api
    import answerdist.engine.scoring.scorer  # noqa: F401 (every module the run needs, before the first measure)
    from answerdist.engine.model import distributed

    tp = int(os.environ.get("WORLD_SIZE", "1"))
    layout = distributed.setup(tp, "cpu")
    before = memory()
    start = time.perf_counter()
    ck = answerdist.load(checkpoint, dtype="float32", device="cpu", tp=tp)
    load_s = time.perf_counter() - start
    for param in ck.model.parameters():  # fault every weight page in: what a rank holds
        param.sum()
    loaded = memory()
    start = time.perf_counter()
    result = answerdist.score_checkpoint(ck, tasks=tasks, mode="base", progress=False)
    score_s = time.perf_counter() - start
    peak = memory()
    logprobs = np.concatenate([t.column("logprob").to_numpy() for t in result.tables.values()])
    record = {"tp": tp, "rank": layout.rank, "before_mib": before["VmRSS"],
              "loaded_mib": loaded["VmRSS"],
              "loaded_anon_mib": loaded["RssAnon"] - before["RssAnon"],
              "loaded_file_mib": loaded["RssFile"] - before["RssFile"],
              "weights_mapped_mib": loaded["weights_mapped"],
              "peak_mib": peak["VmHWM"], "load_s": load_s, "score_s": score_s,
              "weights_mib": sum(p.numel() * p.element_size()
                                 for p in ck.model.parameters()) / 2**20,
              "logprobs": logprobs.tolist()}
    (out / f"tp{tp}-rank{layout.rank}.json").write_text(json.dumps(record))
    distributed.shutdown()


def launch(nproc: int, checkpoint: Path, tasks: str, out: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "benchmarks.bench_tp", "--worker",
               str(checkpoint), "--tasks", tasks, "--results", str(out)]
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="coin,rng_1_10,card")
    p.add_argument("--repeats", type=int, default=1,
                   help="launches per tp, interleaved (best kept)")
    p.add_argument("--checkpoint", help="reuse (or build once into) this directory")
    p.add_argument("--worker", metavar="CHECKPOINT", help=argparse.SUPPRESS)
    p.add_argument("--results", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.tasks, Path(args.results))
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.checkpoint or Path(tmp) / "ckpt")
        params = None
        if not (checkpoint / "config.json").exists():
            params = build_checkpoint(checkpoint)
        size = sum(f.stat().st_size for f in checkpoint.glob("*.safetensors")) / 2**20
        walls, records = {1: [], 2: []}, {}
        for _ in range(args.repeats):
            for tp in (1, 2):
                walls[tp].append(launch(tp, checkpoint, args.tasks, Path(tmp)))
                for r in range(tp):
                    record = json.loads((Path(tmp) / f"tp{tp}-rank{r}.json").read_text())
                    best = records.get((tp, r))
                    if best is None or record["score_s"] < best["score_s"]:
                        records[(tp, r)] = record
        records = [records[key] for key in sorted(records)]
        walls = {tp: min(times) for tp, times in walls.items()}
    described = f"{params / 1e6:.0f}M parameters, " if params else ""
    print(f"checkpoint: random Llama, {described}{size:.0f} MiB of float32 weights; "
          f"tasks {args.tasks}, base mode, CPU, gloo, one thread per rank")
    print(f"{'tp':>2} {'rank':>4} {'weights':>8} {'RSS before':>10} {'weights in':>10} "
          f"{'+anon':>6} {'+file':>6} "
          f"{'mapped':>7} {'peak':>7} {'load s':>7} {'score s':>8} {'wall s':>7}")
    for r in records:
        print(f"{r['tp']:>2} {r['rank']:>4} {r['weights_mib']:>8.0f} {r['before_mib']:>10.0f} "
              f"{r['loaded_mib']:>10.0f} "
              f"{r['loaded_anon_mib']:>6.0f} {r['loaded_file_mib']:>6.0f} "
              f"{r['weights_mapped_mib']:>7.0f} "
              f"{r['peak_mib']:>7.0f} {r['load_s']:>7.2f} {r['score_s']:>8.2f} "
              f"{walls[r['tp']]:>7.1f}")
    one, two = (np.array(r["logprobs"]) for r in records[:2])
    grown = {r["tp"]: r["loaded_mib"] - r["before_mib"] for r in records if r["rank"] == 0}
    print("MiB of resident memory. 'weights': the rank's parameters; '+anon', '+file': "
          "growth from 'before' to 'weights in' in private memory (copies) and in file pages "
          "(the mapped weights, and library code run for the first time); 'mapped': resident "
          "pages of the safetensors mapping itself")
    print(f"growth from 'before' to 'weights in': {grown[1]:.0f} at tp=1, {grown[2]:.0f} at tp=2 "
          f"({grown[2] / grown[1]:.2f}x); mapped weight pages + copies: " + ", ".join(
              f"tp={r['tp']} rank {r['rank']} "
              f"{r['weights_mapped_mib'] + r['loaded_anon_mib']:.0f}" for r in records))
    print(f"load average when done: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(a shared machine gives two processes more CPU than one: the times are only as "
          "good as it is idle)")
    print(f"wall time tp=2 / tp=1 = {walls[2] / walls[1]:.2f}; scoring time tp=2 / tp=1 = "
          f"{records[1]['score_s'] / records[0]['score_s']:.2f}")
    print(f"max |dlogprob| / max(1, |logprob|) tp=2 vs tp=1: "
          f"{float((np.abs(one - two) / np.maximum(1, np.abs(one))).max()):.2e}")


if __name__ == "__main__":
    main()
