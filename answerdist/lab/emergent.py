"""The emergent ladder: a toy experiment whose outcome is not built in.

The planted ladder (answerdist/lab/ladder.py) trains SFT toward the distribution the base gives
under its seed phrasing, so "SFT collapses onto a base seed" is its input: a sanity check of the
analysis, not evidence. Here SFT starts from the same cached base but trains on the chat format
and the answers of the TRAINING tasks only (every other task of the suite, the first included).
The HELD-OUT tasks get no SFT data at all: no answers, no distributions, not even their prompts.
Whatever SFT does to them, it does by generalising from the other tasks:

    answerdist demo    (after the planted ladder)

writes OUT/emergent/sft/ (a checkpoint, cached like the ladder, under build.json's fingerprint),
scores it into OUT/results/emergent-sft, analyses the ladder base -> emergent SFT per task, and
writes OUT/emergent.json: per task its role (training or held-out), the base's and the SFT's
liquidity with their intervals, the SFT's coverage, the seed test's verdict, the seed set and
whether it holds one prompt. A held-out task whose SFT does not answer in chat format (coverage
below answerdist.analysis.phases.MIN_COVERAGE) is reported as such, with no seed.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from answerdist.analysis.phases import MIN_COVERAGE, Results, analyse, load_results
from answerdist.engine.run.api import score_checkpoint
from answerdist.engine.tasks import load_tasks
from answerdist.engine.text.chat import ChatTemplate

from . import corpus, train
from .config import LabConfig
from .corpus import EOS, TULU_TEMPLATE
from .ladder import Encoder, learned_seeds, log, save_checkpoint

LABEL = "emergent-sft"


def split(tasks: list) -> tuple[list, list]:
    """(training, held-out): every other task of the suite, the first one training."""
    return tasks[0::2], tasks[1::2]


def build(cfg: LabConfig, out: Path, force: bool = False) -> dict:
    """OUT/emergent/sft from OUT/checkpoints/base (built by the ladder), or the cached one."""
    root, base = out / "emergent", out / "checkpoints" / "base"
    stamp_file = root / "build.json"
    fingerprint = cfg.fingerprint()
    if not force and stamp_file.is_file():
        stamp = json.loads(stamp_file.read_text())
        built = (root / "sft" / "model.safetensors").is_file()
        if stamp.get("fingerprint") == fingerprint and built:
            log(f"emergent: reusing {root / 'sft'}")
            return stamp
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _build(cfg, root, base, fingerprint)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _build(cfg: LabConfig, root: Path, base: Path, fingerprint: str) -> dict:
    start = time.perf_counter()
    training, held_out = split(load_tasks(cfg.tasks))
    tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
    model = train.new_model(cfg.model, tokenizer.get_vocab_size(), cfg.seed)
    model.load_state_dict(load_file(str(base / "model.safetensors")))
    enc = Encoder(tokenizer, ChatTemplate("lab", TULU_TEMPLATE,
                                          {"bos_token": EOS, "eos_token": EOS}))
    planted = learned_seeds(base, [corpus.plant(t, cfg.corpus, cfg.seed) for t in training])
    examples = [enc.response(enc.chat_context(p.task, pr), a) for p in planted
                for pr, a in corpus.sft_examples(p, cfg.sft.docs_per_prompt, cfg.seed)]
    log(f"emergent: SFT on {len(training)} training tasks ({len(examples)} examples); "
        f"{len(held_out)} held out: {', '.join(t.name for t in held_out)}")
    rng = np.random.default_rng([cfg.seed, 2])
    train.train_lm(model, examples, cfg.sft, enc.eos, rng, "emergent sft", log)
    partial = root.with_name("emergent.partial")
    shutil.rmtree(partial, ignore_errors=True)
    steps = json.loads((base / "trainer_state.json").read_text())["global_step"]
    save_checkpoint(model, tokenizer, partial / "sft", TULU_TEMPLATE, steps)
    stamp = {"fingerprint": fingerprint, "training": [t.name for t in training],
             "held_out": [t.name for t in held_out], "examples": len(examples),
             "planted": {p.task.name: p.seed_prompt.id for p in planted},
             "build_seconds": round(time.perf_counter() - start, 1)}
    (partial / "build.json").write_text(json.dumps(stamp, indent=2) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    log(f"emergent: built in {stamp['build_seconds']:.0f}s")
    return stamp


def score(cfg: LabConfig, out: Path, results: Path) -> None:
    """The emergent SFT's scores under results/emergent-sft, in chat mode (kept when the
    store already holds them: the scorer reuses what it finished)."""
    score_checkpoint(out / "emergent" / "sft", tasks=cfg.tasks, mode="chat", device="cpu",
                     out=results, label=LABEL, progress=False)


def analyse_ladder(results: Path, stamp: dict, bootstrap: int = 1000) -> dict:
    """Per task: role, liquidity of base and SFT (with 95% intervals), the SFT's coverage, the
    seed verdict, the seed set and whether it holds one prompt. Tasks the SFT does not answer
    (coverage below MIN_COVERAGE) get no analysis but their coverage."""
    loaded = load_results(results, ["base", LABEL])
    rows, answering = {}, {}
    for task, td in loaded.data[LABEL].items():
        cover = float(np.mean(td.coverage))
        role = "training" if task in stamp["training"] else "held-out"
        rows[task] = {"role": role, "sft_coverage": cover, "answers": cover >= MIN_COVERAGE}
        if cover >= MIN_COVERAGE:
            answering[task] = td
    if answering:
        subset = Results(loaded.results_dir,
                         {"base": {t: loaded.data["base"][t] for t in answering},
                          LABEL: answering},
                         {label: {t: e for t, e in entries.items() if t in answering}
                          for label, entries in loaded.entries.items()})
        phases = analyse(subset, [("emergent", [("base", "base"), ("sft", LABEL)])],
                         bootstrap=bootstrap)
        for task, t in phases.ladders["emergent"].tasks.items():
            base, sft = t.stages["base"], t.stages["sft"]
            rows[task].update({
                "liquidity_base": base.value("liquidity"),
                "liquidity_base_ci": base.figures["liquidity"].ci,
                "liquidity_sft": sft.value("liquidity"),
                "liquidity_sft_ci": sft.figures["liquidity"].ci,
                "nucleation": sft.value("nucleation"),
                "seed_verdict": t.seed.verdict, "seed_p_value": t.seed.p_value,
                "seed_set": list(t.seed.seed_set), "nearest_set": list(t.seed.nearest_set),
                "single_seed": t.seed.seed_prompt_id,
                "planted_seed": stamp["planted"].get(task),
                "phase_sft": sft.phase,
            })
    return rows


def summary(rows: dict) -> dict:
    """Counts over the held-out and the training tasks."""
    out = {}
    for role in ("held-out", "training"):
        mine = [r for r in rows.values() if r["role"] == role]
        analysed = [r for r in mine if "liquidity_sft" in r]
        out[role] = {
            "tasks": len(mine),
            "answering": len(analysed),
            "liquidity_falls_by_half": sum(r["liquidity_sft"] <= 0.5 * r["liquidity_base"]
                                           for r in analysed),
            "seed_found": sum(r["seed_verdict"] == "found" for r in analysed),
            "single_seed": sum(r["single_seed"] is not None for r in analysed),
        }
    return out


def format_table(rows: dict) -> str:
    """The demo's emergent-ladder table, one row per task, held-out tasks first."""
    head = (f"{'task':<10} {'role':<9} {'cover':>6} {'liquid base':>18} {'liquid sft':>18}  "
            "seed")
    lines = [head, "-" * len(head)]
    order = sorted(rows, key=lambda t: (rows[t]["role"] != "held-out", t))
    for task in order:
        r = rows[task]
        if "liquidity_sft" not in r:
            lines.append(f"{task:<10} {r['role']:<9} {r['sft_coverage']:>6.3f} "
                         f"{'-':>18} {'-':>18}  (does not answer in chat format)")
            continue
        seed = (r["single_seed"] if r["single_seed"] else
                "{" + ", ".join(r["seed_set"]) + "}" if r["seed_set"] else
                f"({r['seed_verdict']}, p {r['seed_p_value']:.2g})")
        lines.append(f"{task:<10} {r['role']:<9} {r['sft_coverage']:>6.3f} "
                     f"{_with_ci(r['liquidity_base'], r['liquidity_base_ci']):>18} "
                     f"{_with_ci(r['liquidity_sft'], r['liquidity_sft_ci']):>18}  {seed}")
    lines += ["cover: the emergent SFT's coverage in chat format; liquid: liquidity (bits) with",
              "  its 95% interval; seed: the base prompt the SFT consensus traces back to (one",
              "  prompt, or the set that cannot be told apart), or the seed test's verdict"]
    return "\n".join(lines)


def _with_ci(value, ci) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")


def run(cfg: LabConfig, out: Path, results: Path, force: bool = False) -> dict:
    """Build (or reuse), score and analyse the emergent ladder; write OUT/emergent.json."""
    stamp = build(cfg, out, force=force)
    log("emergent: scoring the emergent SFT")
    score(cfg, out, results)
    rows = analyse_ladder(results, stamp)
    report = {"training": stamp["training"], "held_out": stamp["held_out"],
              "summary": summary(rows), "tasks": rows}
    (out / "emergent.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
