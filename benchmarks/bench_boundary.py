"""What a merged prompt boundary costs, beside an unmerged one, on a Mistral-v0.1-style model.

    python -m benchmarks.bench_boundary [--repeats 5] [--record]

A random Mistral (20M parameters, the shape of bench_scoring's Llama) with a 32k
SentencePiece-style vocabulary ("▁" for spaces, byte fallback, no pre-tokenizer) and Mistral
v0.1's [INST] template. One task in Zhang et al.'s shape, rng_1_10's prompts with the answers
"{1}" ... "{10}" and end = "turn", is scored twice in one process, side by side:

- merged: as published, the reply follows "[/INST]" directly and "]" + "{" tokenize as "]{",
  so the engine scores N / D after the shared head (docs/results.md);
- unmerged: the same answers after a reply prefix of one space, which does not merge.

Printed per case: tokens run through the model (prompt heads plus trie nodes, D's prefix nodes
included), the LM-head targets gathered, and the median wall time over --repeats runs
(alternating), then the merged / unmerged ratios. `--record` writes
benchmarks/results/boundary-cpu-DATE.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

import answerdist
from answerdist.engine.scoring.scorer import (
    PromptEncoder,
    boundary_mask,
    make_batches,
    score_task,
    task_sequences,
)
from answerdist.engine.tasks import load_tasks, parse_tasks

RESULTS = Path(__file__).parent / "results"


def build_checkpoint(directory: Path, vocab_size: int = 32000) -> None:
    from transformers import MistralConfig, MistralForCausalLM

    from tests import tiny

    rng = np.random.default_rng(0)
    suite = [p.text for t in load_tasks("all") for p in t.prompts]
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(100_000)]
    merges = [f"{w}]{{{d}}}" for w in words[:200] for d in range(1, 11)]
    corpus = suite * 20 + merges + [" ".join(words[i:i + 20]) for i in range(0, len(words), 20)]
    tok = tiny.write_sentencepiece_tokenizer(directory, corpus, merges=vocab_size - 259)
    config = MistralConfig(vocab_size=max(vocab_size, tok.get_vocab_size()), hidden_size=256,
                           intermediate_size=704, num_hidden_layers=6, num_attention_heads=8,
                           num_key_value_heads=4, max_position_embeddings=2048,
                           tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    MistralForCausalLM(config).float().save_pretrained(directory)


def tasks() -> dict:
    (source,) = load_tasks("rng_1_10")
    prompts = "".join(f'[[prompts]]\nid = "{p.id}"\ntext = {json.dumps(p.text)}\n'
                      for p in source.prompts)
    answers = json.dumps([f"{{{i}}}" for i in range(1, 11)])
    out = {}
    for name, prefix in (("merged", ""), ("unmerged", " ")):
        text = (f'name = "{name}"\nanswers = {answers}\nend = "turn"\n'
                f"response_prefix = {json.dumps(prefix)}\n{prompts}")
        (out[name],) = parse_tasks(text, f"{name}.toml")
    return out


def run(ck, encoder, boundary, task) -> tuple[float, dict]:
    start = time.perf_counter()
    sequences = task_sequences(encoder, task)
    result = score_task(ck, encoder, task, sequences, boundary)
    seconds = time.perf_counter() - start
    batches = make_batches(sequences, 1 << 20, pack=False)
    assert sum(b.processed_tokens for b in batches) == result.tokens_processed
    merged = [s.boundary for s in sequences if s.boundary is not None]
    return seconds, {
        "tokens": result.tokens_processed,
        "lm_head_targets": sum(len(s.trie) + sum(len(c) for _, c in s.covers)
                               for s in sequences),
        "merged": len(merged) == len(sequences),
        "tails": sorted({b.tail.decode("utf-8", "replace") for b in merged}),
        "d_prefixes": sum(len(b.prefixes) for b in merged),
        "d_cover_tokens": sum(len(c) for b in merged for c in b.covers),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--record", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        build_checkpoint(Path(tmp))
        ck = answerdist.load(tmp)
        encoder = PromptEncoder(ck, "chat")
        boundary = boundary_mask(ck)
        cases = tasks()
        times = {name: [] for name in cases}
        info = {}
        for _ in range(args.repeats):  # alternating, so that drift hits both alike
            for name, task in cases.items():
                seconds, info[name] = run(ck, encoder, boundary, task)
                times[name].append(seconds)
        vocab = ck.tokenizer.get_vocab_size()
    rows = {name: {**info[name], "median_seconds": statistics.median(times[name]),
                   "seconds": times[name]} for name in cases}
    assert rows["merged"]["merged"] and not rows["unmerged"]["merged"]
    print(f"vocabulary {vocab}; merged tails {rows['merged']['tails']}, D over "
          f"{rows['merged']['d_prefixes']} prefix paths and {rows['merged']['d_cover_tokens']} "
          "covering tokens (all prompts)")
    print(f"{'case':<10}{'tokens':>8}{'targets':>9}{'median s':>10}")
    for name, r in rows.items():
        print(f"{name:<10}{r['tokens']:>8}{r['lm_head_targets']:>9}{r['median_seconds']:>10.3f}")
    ratios = {k: rows["merged"][k] / rows["unmerged"][k]
              for k in ("tokens", "lm_head_targets", "median_seconds")}
    print("merged / unmerged: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    if args.record:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"boundary-cpu-{date.today().isoformat()}.json"
        out.write_text(json.dumps({"device": f"CPU ({platform.processor() or 'cpu'}, "
                                             f"{torch.get_num_threads()} threads)",
                                   "vocabulary": vocab, "rows": rows,
                                   "ratios": ratios}, indent=1) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
