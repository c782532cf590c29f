"""How scoring one prompt grows with the number of answers: K = 1,000, 10,000 and 100,000.

One prompt ("Pick a number between 1 and K.") whose answers are the numbers 1..K, scored exactly
in base mode on a small random Llama checkpoint (byte-level BPE of 512 tokens, so a number is a
few tokens and the answer trie holds about 1.1 K nodes), float32 on the CPU. For each K it
times the three steps separately, in one process: preparing the prompt (tokenizing every
answer, building and checking the trie), scoring it (forward pass and LM head at every trie
node), and building the results table. The last column is each step's time against K / 10
answers: about 10 where the step is linear in K.

    python -m benchmarks.bench_answers [--sizes 1000,10000,100000] [--record]

transformers (a test-only dependency) writes the random checkpoint: a developer tool.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

import answerdist
from answerdist.engine.scoring.scorer import PromptEncoder, score_task, task_sequences
from answerdist.engine.scoring.tables import main_table
from answerdist.engine.tasks import Answer, Prompt, Task

RESULTS = Path(__file__).parent / "results"


def build_checkpoint(directory: Path) -> None:
    """A random 2-layer Llama with a 512-token byte-level BPE trained on numbers and text."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from answerdist.lab.corpus import train_bpe

    corpus = [" ".join(str(n) for n in range(i, i + 50)) for i in range(0, 100_000, 50)]
    corpus += ["Pick a number between 1 and 100000. Answer:"] * 20
    tok = train_bpe(corpus, 512, ["<|endoftext|>"])
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=False,
                         bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    LlamaForCausalLM(config).float().save_pretrained(directory)
    PreTrainedTokenizerFast(tokenizer_object=tok,
                            eos_token="<|endoftext|>").save_pretrained(directory)


def numbers_task(k: int) -> Task:
    return Task(f"rng_1_{k}", f"a number from 1 to {k}",
                tuple(Answer(str(n), (str(n),)) for n in range(1, k + 1)),
                (Prompt("plain", f"Pick a number between 1 and {k}."),))


def measure(ck, encoder, k: int) -> dict:
    task = numbers_task(k)
    started = time.perf_counter()
    sequences = task_sequences(encoder, task)
    prepared = time.perf_counter()
    scores = score_task(ck, encoder, task, sequences, encoder.boundary, pack=False)
    scored = time.perf_counter()
    table = main_table(scores, "bench")
    tabled = time.perf_counter()
    assert table.num_rows == k
    return {"answers": k, "trie_nodes": len(sequences[0].trie),
            "prepare_s": round(prepared - started, 3), "score_s": round(scored - prepared, 3),
            "table_s": round(tabled - scored, 3), "total_s": round(tabled - started, 3),
            "coverage": float(scores.prompts[0].coverage)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--record", action="store_true",
                   help="write benchmarks/results/answers-cpu-DATE.json")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        build_checkpoint(Path(tmp))
        ck = answerdist.load(tmp)
        encoder = PromptEncoder(ck, "base")
        measure(ck, encoder, 100)  # warm-up: first calls pay for lazy set-up
        rows = [measure(ck, encoder, k) for k in sizes]
    print(f"{'answers':>8} {'nodes':>8} {'prepare s':>10} {'score s':>9} {'table s':>8} "
          f"{'total s':>8}  x previous")
    for i, r in enumerate(rows):
        ratio = "" if i == 0 else " / ".join(
            f"{r[key] / max(rows[i - 1][key], 1e-9):.1f}"
            for key in ("prepare_s", "score_s", "table_s", "total_s"))
        print(f"{r['answers']:>8} {r['trie_nodes']:>8} {r['prepare_s']:>10.3f} "
              f"{r['score_s']:>9.3f} {r['table_s']:>8.3f} {r['total_s']:>8.3f}  {ratio}")
    if args.record:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"answers-cpu-{date.today().isoformat()}.json"
        out.write_text(json.dumps({"date": date.today().isoformat(),
                                   "machine": f"{platform.machine()}, "
                                              f"{torch.get_num_threads()} threads, CPU",
                                   "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
