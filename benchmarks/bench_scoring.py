"""End-to-end scoring benchmark: this engine against the lm-evaluation-harness way.

Same random checkpoint (Llama architecture, ~20M parameters, 32k vocabulary), same shipped task
suite, base mode, float32, in one process, side by side:
  * engine: each prompt once with its answer trie, packed, LM head only at trie rows;
  * naive: transformers, one forward per (prompt, variant) pair over prompt + continuation with a
    full log-softmax (batched, as the harness batches), plus the boundary mass.
Prints wall times and their ratio, tokens processed by each, and the max |logprob difference|.

    python -m benchmarks.bench_scoring [--tasks all] [--repeats 1]

transformers is a test-only dependency, so this benchmark is a developer tool.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import answerdist
from answerdist.engine.scoring.scorer import (
    PromptEncoder,
    boundary_mask,
    score_task,
    task_sequences,
)
from answerdist.engine.tasks import load_tasks
from benchmarks.naive_scoring import boundary_ids, naive_logprobs

RESULTS = Path(__file__).parent / "results"


def build_checkpoint(directory: Path, vocab_size: int = 32000) -> None:
    """A random Llama checkpoint with a 32k byte-level BPE trained on the suite's own text plus
    pseudo-words (enough distinct pairs to reach the vocabulary size)."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = np.random.default_rng(0)
    suite = [p.text for t in load_tasks("all") for p in t.prompts]
    suite += [v for t in load_tasks("all") for a in t.answers for v in a.variants]
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(200_000)]
    corpus = suite * 50 + [" ".join(words[i:i + 20]) for i in range(0, len(words), 20)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=256, intermediate_size=704,
                         num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=0,
                         eos_token_id=0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float()
    model.save_pretrained(directory)
    PreTrainedTokenizerFast(tokenizer_object=tok,
                            eos_token="<|endoftext|>").save_pretrained(directory)


def run_engine(directory: Path, tasks) -> tuple[float, int, dict]:
    start = time.perf_counter()
    ck = answerdist.load(directory)
    encoder = PromptEncoder(ck, "base")
    boundary = boundary_mask(ck)
    tokens, scores = 0, {}
    for task in tasks:
        result = score_task(ck, encoder, task, task_sequences(encoder, task), boundary)
        tokens += result.tokens_processed
        for p in result.prompts:
            scores[(task.name, p.sequence.prompt_id)] = (p.sequence, p.variant_logprob)
    return time.perf_counter() - start, tokens, scores


@torch.no_grad()
def run_naive(directory: Path, tasks, engine_scores: dict) -> tuple[float, int, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(directory)
    boundary = boundary_ids(tok, model.config.vocab_size)
    tokens, worst = 0, 0.0
    for task in tasks:
        for prompt in task.prompts:
            sequence, ours = engine_scores[(task.name, prompt.id)]
            text = task.render_base(prompt)
            naive = naive_logprobs(model, tok, text, sequence.continuations, True, boundary)
            tokens += sum(len(tok(text + c).input_ids) for c in sequence.continuations)
            worst = max(worst, float(np.abs(np.array(naive) - ours).max()))
    return time.perf_counter() - start, tokens, worst


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="all")
    args = p.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    tasks = load_tasks(args.tasks)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        build_checkpoint(directory)
        params = sum(p.numel() for p in answerdist.load(directory).model.parameters())
        ours_s, ours_tokens, scores = run_engine(directory, tasks)
        naive_s, naive_tokens, worst = run_naive(directory, tasks, scores)
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU",
        "torch": torch.__version__,
        "parameters": params,
        "tasks": len(tasks),
        "prompts": sum(len(t.prompts) for t in tasks),
        "engine_seconds": round(ours_s, 2),
        "naive_seconds": round(naive_s, 2),
        "speedup": round(naive_s / ours_s, 2),
        "engine_tokens": ours_tokens,
        "naive_tokens": naive_tokens,
        "max_abs_logprob_diff": worst,
    }
    print(f"checkpoint: random Llama, {params / 1e6:.1f}M parameters, vocab 32000, float32, CPU")
    print(f"{'':<8} {'seconds':>9} {'tokens':>10}")
    print(f"{'engine':<8} {ours_s:>9.2f} {ours_tokens:>10}")
    print(f"{'naive':<8} {naive_s:>9.2f} {naive_tokens:>10}")
    print(f"speedup {naive_s / ours_s:.1f}x, max |logprob difference| {worst:.2e}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"scoring-cpu-{result['date']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
