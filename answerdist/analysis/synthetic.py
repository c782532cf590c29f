"""Synthetic results stores with planted phases, for tests and for trying the report.

A planted ladder for one task, N prompts over K answers:
- base: liquid. Each prompt has its own distribution, Dirichlet(alpha) draws with alpha < 1,
  so that prompts put their mass on different answers;
- sft: nucleated. Every prompt gives the distribution of one base prompt (the planted seed),
  times a small multiplicative noise;
- dpo, rl: settled. The seed sharpened (p^beta, renormalised, beta = 2 then 3) with the same
  kind of noise, so that the mass stays inside the seed's support.

A large task (LARGE_TASKS, K = 1000) is planted the same way, with the Dirichlet
concentration capped at MAX_TOTAL_ALPHA over the whole answer set (as the demo's lab does), so
that its prompts are about as peaked as a small task's rather than spread over every answer.

    write_planted_store(OUT_DIR, tasks=["random_number", "random_number_1000"])
        writes OUT_DIR/<label>/<task>.parquet and manifests (default: the TASKS)
"""

import math

import numpy as np
import pyarrow as pa

from answerdist.engine.results.schema import MAIN_SCHEMA, VARIANT_SCHEMA, Col
from answerdist.engine.results.store import ResultsStore

TASKS = {
    "random_number": [str(i) for i in range(1, 11)],
    "random_color": ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"],
    "random_animal": ["cat", "dog", "owl", "fox", "bee", "elk"],
}
LARGE_TASKS = {"random_number_1000": [str(i) for i in range(1, 1001)]}
ANSWERS = {**TASKS, **LARGE_TASKS}
MAX_TOTAL_ALPHA = 8.0  # at most this Dirichlet mass over a whole answer set
STAGES = ("base", "sft", "dpo", "rl")
SHARPEN = {"dpo": 2.0, "rl": 3.0}


def _noisy(p, rng, sigma):
    q = p * np.exp(sigma * rng.standard_normal(p.shape))
    return q / q.sum(axis=-1, keepdims=True)


def planted_ladder(rng, n_prompts, n_answers, seed_index, base=None, alpha=None, sigma=0.1):
    """{stage: (P [N, K], coverage [N])} with base liquid, sft on base[seed_index], dpo/rl
    sharpened inside the seed's support. A given base array is reused (two ladders from one
    base model). alpha defaults to 0.3 per answer, capped at MAX_TOTAL_ALPHA in all."""
    if alpha is None:
        alpha = min(0.3, MAX_TOTAL_ALPHA / n_answers)
    if base is None:
        base = rng.dirichlet(np.full(n_answers, alpha), size=n_prompts)
        base = np.maximum(base, 1e-12)
        base /= base.sum(axis=1, keepdims=True)
    seed = base[seed_index]
    ladder = {"base": (base, rng.uniform(0.2, 0.6, n_prompts))}
    ladder["sft"] = (
        _noisy(np.tile(seed, (n_prompts, 1)), rng, sigma),
        rng.uniform(0.85, 0.97, n_prompts),
    )
    for stage, beta in SHARPEN.items():
        sharp = np.tile(seed**beta / (seed**beta).sum(), (n_prompts, 1))
        ladder[stage] = (_noisy(sharp, rng, sigma), rng.uniform(0.9, 0.99, n_prompts))
    return ladder


def write_task(results_dir, label, task, answers, P, coverage, mode="chat", target=None):
    """One task of a label, written through the results store (schema in docs/results.md);
    `target`, the task's target distribution, goes into its manifest entry."""
    main = {c: [] for c in MAIN_SCHEMA.names}
    for i, (p, cov) in enumerate(zip(P, coverage, strict=True)):
        text = f"Variant {i}: pick one of {', '.join(answers)}."
        for a, (answer, prob) in enumerate(zip(answers, p, strict=True)):
            row = {Col.label: label, Col.task: task, Col.mode: mode, Col.prompt_id: f"p{i:02d}",
                   Col.prompt_text: text + " Answer:", Col.user_prompt: text,
                   Col.continuation: " " + answer, Col.prompt_token_ids: [1, 2, 3 + i],
                   Col.continuation_token_ids: [100 + a], Col.answer: answer, Col.answer_index: a,
                   Col.logprob: math.log(prob * cov), Col.prob: float(prob),
                   Col.coverage: float(cov),
                   Col.noncanonical_share: None, Col.boundary_crossed: False,
                   Col.boundary_chars: 0}
            for column, value in row.items():
                main[column].append(value)
    main = pa.table(main, schema=MAIN_SCHEMA)
    variants = main.select([c for c in VARIANT_SCHEMA.names
                            if c != Col.tokenizations]).append_column(
        Col.tokenizations, pa.array([1] * main.num_rows, pa.int32())).cast(VARIANT_SCHEMA)
    store = ResultsStore(results_dir, label, {"fingerprint": f"synthetic/{label}"})
    store.write_tables(task, main, variants, prompts=len(P), answers=len(answers),
                       target=None if target is None else [float(t) for t in target])


def write_manifest(results_dir, label):
    """The label's checkpoint description, as answerdist.cli.score records it."""
    ResultsStore(results_dir, label).save_manifest(
        checkpoint=f"synthetic/{label}", fingerprint="synthetic", engine_version="synthetic",
        dtype="float64", device="cpu")


def write_planted_store(results_dir, n_prompts=12, rng_seed=0, tasks=None):
    """Write two planted ladders, "olmo" and "tulu", over `tasks` (names from TASKS or
    LARGE_TASKS; default: all of TASKS).

    Returns (ladders, seeds): ladders = [(name, [(stage, label), ...])] ready for
    answerdist.analysis.phases.analyse, seeds = {ladder: {task: planted seed prompt id}}. The tulu
    ladder plants the same seed prompt as olmo on the first task and a different one on the others.
    """
    rng = np.random.default_rng(rng_seed)
    tasks = list(tasks or TASKS)
    ladders, seeds = [], {}
    for name in ("olmo", "tulu"):
        stages = [(stage, f"{name}-{stage}") for stage in STAGES]
        ladders.append((name, stages))
        seeds[name] = {}
        for t, task in enumerate(tasks):
            index = (3 + t) % n_prompts if name == "olmo" or t == 0 else (7 + 2 * t) % n_prompts
            seeds[name][task] = f"p{index:02d}"
            planted = planted_ladder(rng, n_prompts, len(ANSWERS[task]), index)
            for stage, label in stages:
                write_task(results_dir, label, task, ANSWERS[task], *planted[stage])
        for _, label in stages:
            write_manifest(results_dir, label)
    return ladders, seeds
