"""The toy ladder: planted data, Hugging Face checkpoints, caching, determinism, and the
end-to-end check that scoring + analysis recover what the ladder planted (issue 6).

The end-to-end tests build the SMALL configuration (four tasks, a 170k-parameter model; about
half a minute on two cores) once per module and run `answerdist.lab.demo` on it, which scores every
checkpoint (the intermediate ones included) with `python -m answerdist sweep` and analyses the
ladder with `answerdist analyse` and `answerdist trajectory`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import answerdist
from answerdist.analysis.metrics import js_divergence, support
from answerdist.analysis.records import Phases
from answerdist.cli import demo as demo_cli
from answerdist.engine.tasks import load_tasks
from answerdist.lab import check, corpus, ladder, train
from answerdist.lab.config import (
    SMALL,
    CorpusConfig,
    DPOStage,
    LabConfig,
    LMStage,
    ModelConfig,
    RLStage,
)

STAGES = ["base", "sft", "dpo", "rl"]

# A one-task ladder that builds in seconds: for determinism and cache tests only.
MICRO = LabConfig(
    tasks="coin",
    corpus=CorpusConfig(docs_per_prompt=20, docs_per_answer=2, vocab_size=300),
    model=ModelConfig(dim=32, n_layers=1, n_heads=2, intermediate_size=64),
    base=LMStage(lr=3e-3, epochs=1, batch_tokens=512, warmup_steps=2),
    sft=LMStage(lr=2e-3, epochs=1, batch_tokens=512, warmup_steps=2, docs_per_prompt=4),
    dpo=DPOStage(pairs_per_prompt=4, batch_pairs=16, warmup_steps=2),
    rl=RLStage(steps=2, prompts_per_step=2, samples_per_prompt=4),
)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """(out dir, demo exit status): the SMALL ladder built, scored, analysed and reported."""
    out = tmp_path_factory.mktemp("demo")
    ladder.build(SMALL, out)
    status = demo_cli.main(["--small", "--out", str(out)])
    return out, status


# ------------------------------------------------------------------------ planted data


@pytest.mark.parametrize("name", ["coin", "rps", "color", "card", "rng_1_100"])
def test_planted_seed_is_identifiable_and_the_family_liquid(name):
    task = load_tasks(name)[0]
    cfg = CorpusConfig()
    p = corpus.plant(task, cfg, seed=0)
    assert p.dists.shape == (len(task.prompts), len(task.answers))
    assert np.allclose(p.dists.sum(-1), 1.0)
    assert support(p.seed_dist, 0.9).sum() >= 2
    others = np.delete(p.dists, p.seed, axis=0)
    assert (js_divergence(others, np.broadcast_to(p.seed_dist, others.shape)).min()
            >= cfg.min_seed_js)
    again = corpus.plant(task, cfg, seed=0)
    assert again.seed == p.seed and np.array_equal(again.dists, p.dists)


def test_stage_data_follows_the_planted_distributions():
    task = load_tasks("weekday")[0]
    p = corpus.plant(task, CorpusConfig(), seed=0)
    docs = corpus.base_documents(p, CorpusConfig(docs_per_prompt=3, docs_per_answer=0), seed=0)
    assert len(docs) == 3 * len(task.prompts)
    first = task.render_base(task.prompts[0])
    assert all(d.startswith(first + " ") and d[len(first) + 1:] in task.answer_names
               for d in docs[:3])
    # SFT: every phrasing, but only answers the seed gives probability to.
    allowed = {task.answers[i].name for i in np.flatnonzero(p.seed_dist > 0)}
    sft = corpus.sft_examples(p, per_prompt=5, seed=0)
    assert {pr.id for pr, _ in sft} == {pr.id for pr in task.prompts}
    assert {a for _, a in sft} <= allowed
    # DPO: the chosen answer is always the likelier one under the seed.
    index = {a: i for i, a in enumerate(task.answer_names)}
    for _, chosen, rejected in corpus.dpo_pairs(p, per_prompt=5, seed=0):
        assert p.seed_dist[index[chosen]] > p.seed_dist[index[rejected]]


def test_rl_reward_favours_format_and_the_seed_head():
    task = load_tasks("coin")[0]
    p = corpus.plant(task, CorpusConfig(), seed=0)
    top = task.answers[int(np.argmax(p.seed_dist))]
    assert corpus.rl_reward(p, top.name) == pytest.approx(1.0)
    assert corpus.rl_reward(p, top.variants[-1]) == pytest.approx(1.0)  # a variant counts
    assert corpus.rl_reward(p, None) == 0.0
    assert corpus.rl_reward(p, top.name + "!") == 0.0


def test_batched_sampling_reads_each_context_at_its_own_length(monkeypatch):
    """Contexts of different lengths sampled in one right-padded batch give what each gives
    alone: with the draw made greedy, both equal a plain greedy decode of the full sequence."""
    model = train.new_model(ModelConfig(dim=32, n_layers=2, n_heads=2, intermediate_size=64),
                            50, seed=3)
    monkeypatch.setattr(torch, "multinomial",
                        lambda probs, n, generator=None: probs.argmax(-1, keepdim=True))
    contexts = [(1, 5, 7), (2, 9, 4, 4, 8, 11, 3), (6,)]
    eos, max_new = 0, 5
    batched = train.sample(model, contexts, 2, max_new, eos, torch.Generator())
    for context, group in zip(contexts, batched, strict=True):
        assert group == train.sample(model, [context], 2, max_new, eos, torch.Generator())[0]
        ids = list(context)
        with torch.no_grad():
            for _ in range(max_new):
                logits = model.hidden_states(torch.tensor([ids]))[0, -1] @ model.output_weight.T
                ids.append(int(logits.argmax()))
        tail = ids[len(context):]
        expected = tuple(tail[: tail.index(eos) + 1]) if eos in tail else None
        assert group == [expected, expected]


def test_snapshots_are_spaced_geometrically_and_end_at_the_last_step():
    assert sorted(ladder.snapshot_steps(1470, 8)) == [1, 3, 8, 23, 65, 183, 519, 1470]
    assert sorted(ladder.snapshot_steps(56, 8)) == [1, 2, 3, 6, 10, 18, 32, 56]
    assert sorted(ladder.snapshot_steps(4, 8)) == [1, 2, 3, 4]  # fewer steps than snapshots


def test_nucleation_counts_only_a_transition_inside_sft():
    series = [{"label": label, "position": at, "stage": stage} for label, at, stage in
              [("base", 100, "base"), ("sft-step101", 101, "sft"), ("sft", 200, "sft"),
               ("dpo", 250, "dpo")]]
    transitions = [
        {"task": task, "metric": metric, "position": at, "position_lo": at, "position_hi": at,
         "sharp": True, "delta_aic": 20.0}
        for task, metric, at in [("a", "liquidity", 100.5), ("b", "liquidity", 225.0),
                                 ("c", "liquidity", None), ("a", "seed_overlap", 225.0),
                                 ("a", "coverage", 100.5), ("b", "coverage", 150.5)]]
    located = check.nucleation({"series": {"ladder": series}, "transitions": transitions})
    assert {t: v["in_sft"] for t, v in located.items()} == {"a": True, "b": False, "c": False}
    # a's collapse is located where its format switches: not told apart; b's is elsewhere
    assert {t: v["apart"] for t, v in located.items()} == {"a": False, "b": True, "c": False}
    assert "~format" in check._located(located["a"]) and "~format" not in check._located(
        located["b"])


# ------------------------------------------------------------- checkpoints and caching


def test_checkpoints_are_hugging_face_directories(small_demo):
    out, _ = small_demo
    planted = json.loads((out / "planted.json").read_text())
    tasks = load_tasks(SMALL.tasks)
    assert set(planted) == {t.name for t in tasks}
    for t in tasks:
        assert planted[t.name] in {p.id for p in t.prompts}
    for stage in STAGES:
        directory = out / "checkpoints" / stage
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (directory / name).is_file(), (stage, name)
        ck = answerdist.load(directory)
        assert ck.args.arch == "Olmo2ForCausalLM"
        # Base has no chat template (scored in base mode); the tuned stages carry Tulu's.
        assert ck.has_chat_template == (stage != "base"), stage


@pytest.mark.parametrize("stage", ["base", "rl"])
def test_transformers_loads_the_same_model_and_tokenizer(small_demo, stage):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    directory = small_demo[0] / "checkpoints" / stage
    ours = answerdist.load(directory)
    task = load_tasks("die")[0]
    theirs_tok = PreTrainedTokenizerFast.from_pretrained(str(directory))
    text = task.render_base(task.prompts[0]) + " 4"
    assert theirs_tok(text)["input_ids"] == ours.encode(text)
    if stage != "base":
        messages = [{"role": "user", "content": task.prompt_text(task.prompts[0])}]
        rendered = theirs_tok.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)
        assert rendered == ours.render_chat(messages)
        text = rendered + "4"
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    ids = torch.tensor([ours.encode(text, add_special_tokens=stage == "base")])
    with torch.no_grad():
        expected = model(ids).logits.float()
    got = ours.logits(ids)
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    assert (got.log_softmax(-1) - expected.log_softmax(-1)).abs().max().item() <= 1e-5


def test_the_series_runs_through_every_checkpoint_by_global_step(small_demo):
    """The base, then each post-training stage's intermediate checkpoints and its final one,
    scored by the sweep and written to the series in global-step order."""
    out, _ = small_demo
    stamp = json.loads((out / "checkpoints" / "build.json").read_text())
    points = json.loads((out / "series.json").read_text())["points"]
    expected = ["base"]
    for stage in STAGES[1:]:
        assert len(stamp["snapshots"][stage]) == SMALL.snapshots - 1, stage
        expected += [*stamp["snapshots"][stage], stage]
    assert [p["label"] for p in points] == expected
    positions = [p["position"] for p in points]
    assert positions == sorted(set(positions)) and positions[0] == stamp["global_steps"]["base"]
    assert positions[-1] == stamp["global_steps"]["rl"]
    assert [p["stage"] for p in points] == [
        "base", *(s for s in STAGES[1:] for _ in range(SMALL.snapshots))]
    for label, position in zip(expected[1:], positions[1:], strict=True):
        directory = out / "checkpoints" / (label if label in STAGES else f"steps/{label}")
        state = json.loads((directory / "trainer_state.json").read_text())
        assert state["global_step"] == position, label
    assert (out / "report" / "trajectory" / "index.html").is_file()
    assert json.loads((out / "trajectory.json").read_text())["transitions"]


def test_a_second_build_reuses_the_ladder(small_demo, monkeypatch):
    out, _ = small_demo
    before = (out / "checkpoints" / "build.json").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("the cached ladder should have been reused")

    monkeypatch.setattr(train, "train_lm", no_training)
    assert ladder.build(SMALL, out) == json.loads(before)
    assert ladder.is_current(out, SMALL)
    assert not ladder.is_current(out, dataclasses.replace(SMALL, seed=1))


def _hashes(out):
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for stage in STAGES
            for p in sorted((out / "checkpoints" / stage).iterdir())}


def test_same_seed_gives_bitwise_identical_checkpoints(tmp_path):
    first = ladder.build(MICRO, tmp_path / "a")
    ladder.build(MICRO, tmp_path / "b")
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    assert first["planted"] == json.loads((tmp_path / "b" / "planted.json").read_text())
    ladder.build(dataclasses.replace(MICRO, seed=1), tmp_path / "c")
    a, c = _hashes(tmp_path / "a"), _hashes(tmp_path / "c")
    assert a["checkpoints/base/model.safetensors"] != c["checkpoints/base/model.safetensors"]


def test_an_interrupted_build_leaves_no_ladder(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(train, "train_dpo", crash)
    with pytest.raises(RuntimeError):
        ladder.build(MICRO, tmp_path)
    assert not (tmp_path / "checkpoints").exists()
    assert not ladder.is_current(tmp_path, MICRO)


# ---------------------------------------------------------------------------- end to end


def test_demo_recovers_what_was_planted(small_demo):
    out, status = small_demo
    summary = json.loads((out / "summary.json").read_text())
    rows, verdict = summary["tasks"], summary["acceptance"]
    assert status == 0 and verdict["passed"], check.format_table(rows, STAGES)
    assert set(rows) == set(SMALL.tasks.split(","))
    for task, r in rows.items():
        assert r["liquidity"]["sft"] < r["liquidity"]["base"], task
        assert r["retention"]["dpo"] >= check.DPO_RETENTION_MIN, task
        assert r["base_js_to_planted"] < 0.1, task
        if task == "coin":  # two answers over 15 phrasings: no seed test can tell
            assert r["seed_verdict"] == "unresolved" and r["detected_seed"] is None
            assert r["phases"]["base"] == "liquid"
            continue
        assert r["detected_seed"] == r["planted_seed"] and r["seed_p_value"] < 0.01, task
        assert r["phases"] == {"base": "liquid", "sft": "nucleated", "dpo": "settled",
                               "rl": "settled"}, task
    assert verdict["seeds_unresolved"] == 1 and verdict["seeds_wrong"] == 0
    for task, r in rows.items():  # coin too: its phrasings collapse, whichever the seed
        assert r["nucleation"]["in_sft"], (task, r["nucleation"])
    assert verdict["nucleation_in_sft"] == len(rows)
    assert (out / "phases.json").is_file()
    assert (out / "report" / "index.html").is_file()
    assert list((out / "report").glob("*.png"))


def open_version(closed, path):
    """A closed shipped task turned open as docs/demo.md says: its answer list replaced by
    `answers = "open"`, an end rule and a normaliser; same phrasings."""
    text = re.sub(r"(?ms)^answers = \[.*?^\]\n", 'answers = "open"\nend = "turn"\n'
                  'normalize = ["strip", "casefold"]\n', closed.read_text())
    path.write_text(text.replace('name = "color"', 'name = "open_color"'))
    return path


def test_a_discovered_ladder_over_the_demo_checkpoints(small_demo, tmp_path):
    """Discovery at every stage, then every stage scored on the union of the answers found
    (`--answers-from`), then `answerdist analyse`: the same seed and phases as the listed task
    (docs/demo.md, "Discovering the answers")."""
    from importlib import resources

    import pyarrow.parquet as pq

    from answerdist.cli import score

    out, _ = small_demo
    task = open_version(resources.files("answerdist.engine.tasks").joinpath("color.toml"),
                        tmp_path / "open_color.toml")
    results = tmp_path / "open"
    for stage in STAGES:
        assert score.main([str(out / "checkpoints" / stage), "--tasks", str(task), "--discover",
                           "16", "--out", str(results), "--label", stage]) == 0
    for stage in STAGES:
        assert score.main([str(out / "checkpoints" / stage), "--tasks", str(task),
                           "--answers-from", ",".join(STAGES), "--out", str(results),
                           "--label", f"{stage}_all"]) == 0
    found = set().union(*({r["answer"] for r in pq.read_table(
        results / s / "open_color.parquet").to_pylist()} for s in STAGES))
    colors = {a.name.casefold() for a in load_tasks("color")[0].answers}
    assert colors <= found  # 16 replies per phrasing find every planted color
    spec = ",".join(f"{s}={s}_all" for s in STAGES)
    subprocess.run([sys.executable, "-m", "answerdist", "analyse", str(results), "--ladder", spec,
                    "--out",
                    str(tmp_path / "phases.json")], check=True, stdout=subprocess.DEVNULL)
    phases = Phases.from_json(json.loads((tmp_path / "phases.json").read_text()))
    closed = json.loads((out / "summary.json").read_text())["tasks"]["color"]
    t = next(iter(phases.ladders.values())).tasks["open_color"]
    assert {s.n_answers for s in t.stages.values()} == {len(found)}
    assert t.seed.seed_prompt_id == closed["planted_seed"] and t.seed.p_value < 0.01
    assert {s: m.phase for s, m in t.stages.items()} == closed["phases"]
    assert all(m.value("coverage") > 0.9 for s, m in t.stages.items())


def test_every_symbol_of_the_demo_table_is_explained_under_it():
    rows = {"coin": {"planted_seed": "game", "detected_seed": "polite", "seed_verdict": "found",
                     "phases": {"base": "liquid", "sft": "nucleated"},
                     "base_js_to_planted": 0.12,
                     "nucleation": {"position": 736.0, "interval": [727.0, 752.0],
                                    "in_sft": False}},
            "die": {"planted_seed": "game", "detected_seed": None, "seed_verdict": "no seed",
                    "phases": {"base": "liquid"}, "base_js_to_planted": None,
                    "nucleation": None}}
    text = check.format_table(rows, ["base", "sft"])
    table, legend = text.split("\ndetected:", 1)
    assert "736 [727, 752] (outside SFT) *" in table and "(no seed)" in table
    for symbol in ("* marks", "base JS:", "nucleation at step:", "(outside SFT)",
                   "in parentheses"):
        assert symbol in "detected:" + legend, symbol


def test_the_emergent_ladder_trains_on_half_the_tasks_and_reports_every_task(small_demo):
    """SFT from the cached base on the training tasks only: the held-out tasks get no SFT
    example (the example count is exactly the training tasks'), and every task is reported,
    with its coverage, and where it answers, both liquidities with intervals and its seed."""
    from answerdist.lab import emergent

    out, _ = small_demo
    report = json.loads((out / "emergent.json").read_text())
    tasks = load_tasks(SMALL.tasks)
    training, held_out = emergent.split(tasks)
    assert report["training"] == [t.name for t in training]
    assert report["held_out"] == [t.name for t in held_out] and held_out
    stamp = json.loads((out / "emergent" / "build.json").read_text())
    assert stamp["examples"] == sum(len(t.prompts) for t in training) * SMALL.sft.docs_per_prompt
    assert set(report["tasks"]) == {t.name for t in tasks}
    for name, row in report["tasks"].items():
        assert row["role"] == ("training" if name in report["training"] else "held-out")
        assert 0.0 <= row["sft_coverage"] <= 1.0
        if row["answers"]:
            lo, hi = row["liquidity_sft_ci"]
            assert lo <= row["liquidity_sft"] <= hi
            assert row["seed_verdict"] in ("found", "no seed", "unresolved")
            assert (row["single_seed"] is not None) == (len(row["seed_set"]) == 1)
    summary = report["summary"]
    assert summary["held-out"]["tasks"] == len(held_out)
    text = emergent.format_table(report["tasks"])
    assert all(name in text for name in report["tasks"])
    # The emergent SFT is a chat checkpoint of the same base, cached like the ladder.
    assert (out / "emergent" / "sft" / "tokenizer_config.json").is_file()
