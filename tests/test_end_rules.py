"""End rules and reply prefixes against transformers by brute force, for every family.

For each family a tiny random checkpoint is scored in chat and base mode under the three end
rules (docs/tasks.md, "End rules") and with a reply prefix; every variant's log-probability is
then recomputed from scratch: one float64 transformers forward per token path, the prompt and
the reply tokenized by transformers' own tokenizer, the end of a reply found by rendering the
whole conversation with transformers' apply_chat_template (chat mode) or as the EOS token (base
mode), and the newline tokens found by decoding every id.

The four templates cover the ends a template can give a reply: the EOS right after it (Tulu),
a special end-of-turn token then a newline that is never generated (ChatML), and text between
the reply and its special token, starting with a newline (then end = "line" counts the end of
the turn in its newline factor) or not (then it is a path of its own).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from answerdist import score_checkpoint
from answerdist.engine.tasks import Answer, Prompt, Task
from answerdist.errors import TaskError
from answerdist.lab.corpus import TULU_TEMPLATE
from tests import tiny

ANSWERS = (Answer("7", ("7",)), Answer("1", ("1",)), Answer("10", ("10",)),
           Answer("Red", ("Red", "red")))
PROMPTS = (Prompt("number", "Pick a random number between 1 and 10."),
           Prompt("color", "Name a color, or a number."))
PREFIX = "My pick: "


def task(name: str, end: str, response_prefix: str = "") -> Task:
    return Task(name, "", ANSWERS, PROMPTS, end=end, response_prefix=response_prefix)


TASKS = [task("boundary", "boundary"), task("turn", "turn"), task("line", "line"),
         task("turn_prefixed", "turn", PREFIX), task("line_prefixed", "line", PREFIX),
         task("boundary_prefixed", "boundary", PREFIX)]


def im_template(between: str) -> str:
    """ChatML-like, with `between` after the reply and before <|im_end|>."""
    return ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
            f"message['content'] + '{between}' + " "'<|im_end|>\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


TEMPLATES = {"tulu": TULU_TEMPLATE, "chatml": tiny.CHATML_TEMPLATE,
             "newline_then_end": im_template("\\n"), "space_then_end": im_template(" ")}
FAMILIES = ("llama", "olmo2", "olmo3", "qwen2", "qwen3", "mistral", "olmo1", "neox", "phi3",
            "gemma2", "gemma3", "olmoe")
FAMILY_KWARGS = {"olmoe": dict(num_experts=4, num_experts_per_tok=2)}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """(name, template name, checkpoint directory, float64 transformers model)."""
    i = FAMILIES.index(request.param)
    template = sorted(TEMPLATES)[i % len(TEMPLATES)]
    directory = tmp_path_factory.mktemp(f"end_{request.param}")
    model = tiny.make_checkpoint(directory, arch=request.param, template=TEMPLATES[template],
                                 add_bos=i % 2 == 0, init=0.1,
                                 **FAMILY_KWARGS.get(request.param, {}))
    return request.param, template, directory, model.double()


# ------------------------------------------------------------------------------ the oracle

def hf_tokenizer(directory):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(directory))


def newline_ids(tok, vocab: int) -> list[int]:
    special = {i for i, t in tok.added_tokens_decoder.items() if t.special}
    return [i for i in range(vocab) if i not in special
            and tok.decode([i], clean_up_tokenization_spaces=False)[:1] in ("\n", "\r")]


def oracle_stops(tok, directory, template_end: int) -> list[int]:
    """Where generation stops, as transformers' generate would (its generation_config's
    eos_token_id) and the tokenizer's EOS, after the template's own end: special tokens only."""
    config = json.loads((directory / "generation_config.json").read_text())
    eos = config.get("eos_token_id")
    special = {i for i, x in tok.added_tokens_decoder.items() if x.special}
    found = [template_end, *(eos if isinstance(eos, list) else [eos] if eos is not None else []),
             tok.eos_token_id]
    return list(dict.fromkeys(i for i in found if i is not None and i in special))


def oracle_paths(tok, t: Task, prompt: Prompt, variant: str, mode: str, directory=None):
    """[(prompt ids, reply ids, open)]: the token paths of a variant under the task's end rule,
    built with transformers alone. `open` paths take the end factor (boundary or newline).
    Under turn and line the reply ends at any stop token (`oracle_stops`): the template's own
    after the text it renders before it, any other right after the reply."""
    if mode == "chat":
        user = [{"role": "user", "content": prompt.text}]
        reply = t.response_prefix + variant
        prompt_text = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        stem = t.response_prefix.rstrip()
        prompt_ids = tok(prompt_text + stem, add_special_tokens=False).input_ids
        text = tok(prompt_text + reply, add_special_tokens=False).input_ids
        full = tok.apply_chat_template(user + [{"role": "assistant", "content": reply}],
                                       tokenize=False)
        assert full.startswith(prompt_text + reply)
        ids = tok(full, add_special_tokens=False).input_ids
        special = {i for i, x in tok.added_tokens_decoder.items() if x.special}
        assert ids[:len(prompt_ids)] == prompt_ids
        stop = next(k for k in range(len(prompt_ids), len(ids)) if ids[k] in special)
        closed = ids[len(prompt_ids):stop + 1]
    else:
        base = f"{prompt.text}\nAnswer:"
        reply = " " + t.response_prefix + variant
        stem = (" " + t.response_prefix).rstrip()
        prompt_ids = tok(base + stem).input_ids
        text = tok(base + reply).input_ids
        closed = text[len(prompt_ids):] + [tok.eos_token_id]
    assert text[:len(prompt_ids)] == prompt_ids
    opened = text[len(prompt_ids):]
    if t.end == "prefix":
        return prompt_ids, [(opened, False)]  # the reply begins with it: no factor after
    if t.end == "boundary":
        return prompt_ids, [(opened, True)]
    others = ([] if directory is None else
              [(opened + [s], False) for s in oracle_stops(tok, directory, closed[-1])[1:]])
    if t.end == "turn":
        return prompt_ids, [(closed, False)] + others
    after = tok.decode(closed[len(opened):len(opened) + 1], clean_up_tokenization_spaces=False)
    counted = closed[:len(opened)] == opened and after[:1] in ("\n", "\r")
    return prompt_ids, [(opened, True)] + ([] if counted else [(closed, False)]) + others


@torch.no_grad()
def oracle_logprob(model, prompt_ids, paths, end_ids) -> float:
    """log of the sum over paths of P(path | prompt) (times P(end token next) when open)."""
    total = []
    for reply, is_open in paths:
        ids = torch.tensor([prompt_ids + reply])
        lp = model(input_ids=ids).logits[0].double().log_softmax(-1)
        at = torch.arange(len(prompt_ids) - 1, len(prompt_ids) + len(reply) - 1)
        value = lp[at, torch.tensor(reply)].sum()
        if is_open:
            value = value + lp[len(prompt_ids) + len(reply) - 1, end_ids].logsumexp(0)
        total.append(float(value))
    return float(np.logaddexp.reduce(total))


@pytest.mark.parametrize("mode", ["chat", "base"])
def test_end_rules_equal_brute_force_transformers(family, mode):
    from benchmarks.naive_scoring import boundary_ids

    name, template, directory, model = family
    result = score_checkpoint(directory, tasks=TASKS, mode=mode, device="cpu", progress=False)
    tok = hf_tokenizer(directory)
    vocab = model.config.vocab_size
    ends = {"boundary": boundary_ids(tok, vocab), "line": torch.tensor(newline_ids(tok, vocab)),
            "turn": None}
    worst = 0.0
    for t in TASKS:
        rows = result.variant_tables[t.name].to_pylist()
        for prompt in PROMPTS:
            for answer in ANSWERS:
                for variant in answer.variants:
                    prompt_ids, paths = oracle_paths(tok, t, prompt, variant, mode, directory)
                    want = oracle_logprob(model, prompt_ids, paths, ends[t.end])
                    got = next(r for r in rows if r["prompt_id"] == prompt.id
                               and r["continuation"].strip() == variant)
                    error = abs(got["logprob"] - want) / max(1.0, abs(want))
                    worst = max(worst, error)
                    assert error <= 2e-6, (name, template, mode, t.name, prompt.id, variant,
                                           got["logprob"], want)
    print(f"{name} ({template} template) {mode}: max relative error vs float64 {worst:.1e}")


# Under end = "prefix" answers are disjoint beginnings of the reply: none a prefix of another.
PREFIX_ANSWERS = (Answer("7", ("7",)), Answer("Red", ("Red", "red")), Answer("42", ("42",)))
PREFIX_TASKS = [Task("prefix", "", PREFIX_ANSWERS, PROMPTS, end="prefix"),
                Task("prefix_prefixed", "", PREFIX_ANSWERS, PROMPTS, end="prefix",
                     response_prefix=PREFIX)]


@pytest.mark.parametrize("mode", ["chat", "base"])
def test_the_prefix_rule_equals_brute_force_transformers(family, mode):
    """end = "prefix" (Zhang et al.'s eos: false): P(the reply begins with the tokens of v),
    with no factor after them, against one float64 transformers forward per variant."""
    name, template, directory, model = family
    result = score_checkpoint(directory, tasks=PREFIX_TASKS, mode=mode, device="cpu",
                              progress=False)
    tok = hf_tokenizer(directory)
    for t in PREFIX_TASKS:
        rows = result.variant_tables[t.name].to_pylist()
        for prompt in PROMPTS:
            for answer in PREFIX_ANSWERS:
                for variant in answer.variants:
                    prompt_ids, paths = oracle_paths(tok, t, prompt, variant, mode)
                    want = oracle_logprob(model, prompt_ids, paths, None)
                    got = next(r for r in rows if r["prompt_id"] == prompt.id
                               and r["continuation"].strip() == variant)
                    assert abs(got["logprob"] - want) / max(1.0, abs(want)) <= 2e-6, (
                        name, template, mode, t.name, prompt.id, variant, got["logprob"], want)
    # No end factor: a prefix is at least as probable as the same text ending at a boundary.
    bounded = score_checkpoint(directory, tasks=[Task("b", "", PREFIX_ANSWERS, PROMPTS)],
                               mode=mode, device="cpu", progress=False)
    for ours, theirs in zip(result.variant_tables["prefix"].to_pylist(),
                            bounded.variant_tables["b"].to_pylist(), strict=True):
        assert ours["logprob"] >= theirs["logprob"] - 1e-9


def test_the_end_rule_changes_the_probabilities(family):
    """The three rules give three different answers on the same checkpoint (so each test
    above checks a rule of its own), and turn is never more probable than line."""
    _, _, directory, _ = family
    result = score_checkpoint(directory, tasks=TASKS[:3], mode="chat", device="cpu",
                              progress=False)
    lp = {t.name: np.array(result.variant_tables[t.name].column("logprob").to_pylist())
          for t in TASKS[:3]}
    assert not np.allclose(lp["boundary"], lp["turn"])
    assert not np.allclose(lp["line"], lp["turn"])
    assert (lp["turn"] <= lp["line"] + 1e-9).all()


# ------------------------------------------------------------------ settings and bad input


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    directory = tmp_path_factory.mktemp("end_llama")
    tiny.make_checkpoint(directory, template=tiny.CHATML_TEMPLATE)
    return directory


def test_end_setting_overrides_every_task_and_enters_the_run_key(llama):
    plain = score_checkpoint(llama, tasks=TASKS[:1], device="cpu", progress=False)
    forced = score_checkpoint(llama, tasks=TASKS[:1], device="cpu", progress=False, end="turn")
    turn = score_checkpoint(llama, tasks=[TASKS[1]], device="cpu", progress=False)
    assert "end" not in plain.manifest["run"] and forced.manifest["run"]["end"] == "turn"
    assert (forced.variant_tables["boundary"].column("logprob").to_pylist()
            == turn.variant_tables["turn"].column("logprob").to_pylist())
    assert (forced.variant_tables["boundary"].column("continuation_token_ids").to_pylist()
            == turn.variant_tables["turn"].column("continuation_token_ids").to_pylist())


def test_end_as_a_sweep_key(llama, tmp_path):
    """`end = "turn"` in a sweep file scores what `end="turn"` in the API scores."""
    from answerdist.cli import sweep as sweep_cli

    (tmp_path / "sweep.toml").write_text(
        f'checkpoints = [{json.dumps(str(llama))}]\ntasks = "coin"\nmodes = ["chat"]\n'
        'out = "out"\nend = "turn"\n')
    assert sweep_cli.main([str(tmp_path / "sweep.toml")]) == 0
    (label,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir() and p.name != ".sweep"]
    assert json.loads((label / "manifest.json").read_text())["run"]["end"] == "turn"
    api = score_checkpoint(llama, tasks="coin", device="cpu", progress=False, end="turn")
    assert (pq.read_table(label / "coin.parquet").column("prob").to_pylist()
            == api.tables["coin"].column("prob").to_pylist())


def test_turn_paths_end_with_the_end_of_turn_token(llama):
    result = score_checkpoint(llama, tasks=[TASKS[1]], device="cpu", progress=False)
    tok = hf_tokenizer(llama)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert all(ids[-1] == end and end not in ids[:-1] for ids in
               result.variant_tables["turn"].column("continuation_token_ids").to_pylist())


def test_existing_tasks_keep_their_hash():
    """end, response_prefix and the open-task settings at their defaults leave task_hash as it
    was before they existed, so results already scored are not rescored."""
    import dataclasses
    import hashlib

    from answerdist.engine.results.schema import task_hash

    t = TASKS[0]
    old = dataclasses.asdict(t)
    for key in ("source", "target", "end", "response_prefix", "open_answers", "normalize",
                "category", "end_tokens"):  # fields added since, at their defaults
        old.pop(key)
    for prompt in old["prompts"]:
        prompt.pop("response_prefix")
    assert task_hash(t) == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    prompted = dataclasses.replace(t, prompts=(Prompt("number", PROMPTS[0].text, "Mine:"),
                                               PROMPTS[1]))
    variants = (t, dataclasses.replace(t, end="turn"), prompted,
                dataclasses.replace(t, response_prefix="My pick:"))
    assert len({task_hash(x) for x in variants}) == len(variants)


def test_bad_end_rule_in_a_task_file_is_one_line(tmp_path):
    from answerdist.engine.tasks import load_task_file

    path = tmp_path / "t.toml"
    path.write_text('name = "t"\nend = "sentence"\nanswers = ["a"]\n'
                    '[[prompts]]\nid = "p"\ntext = "Say a."\n')
    with pytest.raises(TaskError, match="end 'sentence': must be one of boundary, turn, line"):
        load_task_file(path)


def test_line_rule_refuses_a_variant_that_a_newline_would_absorb():
    with pytest.raises(TaskError, match="under end = 'line' it would absorb"):
        Task("t", "", (Answer("a", ("a",)), Answer("a\nb", ("a\nb",))), PROMPTS, end="line")
    Task("t", "", (Answer("a", ("a",)), Answer("a b", ("a b",))), PROMPTS, end="line")
    Task("t", "", (Answer("a", ("a",)), Answer("a\nb", ("a\nb",))), PROMPTS, end="turn")


@pytest.mark.parametrize("flag, message", [
    (["--end", "turn", "--end-tokens", "<nope>"], "end_tokens names '<nope>', which is no token"),
    (["--end-tokens", ""], "--end-tokens must name tokens"),
    (["--end", "word"], "--end must be one of boundary, turn, line, prefix, got 'word'"),
])
def test_cli_end_flag_bad_value_exits_2(llama, tmp_path, capsys, flag, message):
    from answerdist.cli import score

    out = tmp_path / "out"
    assert score.main([str(llama), "--tasks", "coin", "--out", str(out), *flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_a_template_without_an_end_token_refuses_turn_in_one_line(tmp_path):
    directory = tmp_path / "ckpt"
    template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}"
                "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    tiny.make_checkpoint(directory, template=template)
    with pytest.raises(TaskError, match="puts no special token after an assistant message"):
        score_checkpoint(directory, tasks=[TASKS[1]], device="cpu", progress=False)


# --------------------------------------------------------------------- the stop set of a reply

@pytest.fixture(scope="module", params=["llama", "gemma2", "gemma3", "qwen2"])
def three_stops(request, tmp_path_factory):
    """A ChatML checkpoint whose generation_config stops at three tokens (as Llama 3 instruct's
    lists <|eot_id|>, <|eom_id|> and <|end_of_text|>, Gemma's <end_of_turn> and <eos>, Qwen's
    <|im_end|> and <|endoftext|>): <|im_end|>, <|endoftext|>, <|system|>; in each family with a
    multi-token stop set (the forward passes are the family's, the stop set the same)."""
    directory = tmp_path_factory.mktemp(f"three_stops_{request.param}")
    model = tiny.make_checkpoint(directory, arch=request.param, template=tiny.CHATML_TEMPLATE,
                                 init=0.1)
    config = json.loads((directory / "generation_config.json").read_text())
    config["eos_token_id"] = [6, 0, 2]
    (directory / "generation_config.json").write_text(json.dumps(config))
    return directory, model.double()


def paths_through(tok, t, prompt, variant, mode, stops):
    """The paths of a variant ending at exactly the tokens `stops` (the template's own end
    after the text it puts before it, the others right after the reply)."""
    prompt_ids, paths = oracle_paths(tok, t, prompt, variant, mode)
    (closed, _), = [p for p in paths if not p[1]]
    opened = oracle_paths(tok, changed(t, end="boundary"), prompt, variant, mode)[1][0][0]
    return prompt_ids, [(closed if s == closed[-1] else opened + [s], False) for s in stops]


def changed(t: Task, **fields) -> Task:
    import dataclasses

    return dataclasses.replace(t, **fields)


@pytest.mark.parametrize("mode", ["chat", "base"])
def test_turn_sums_over_every_stop_token_by_brute_force(three_stops, mode):
    """end = "turn" is P(reply, then any stop token): the sum of one float64 transformers
    forward per stop token; the manifest and the run key record the set; --end-tokens names a
    smaller set and gives that set's sum (a peer's one-token convention, reproduced)."""
    directory, model = three_stops
    tok = hf_tokenizer(directory)
    turn = TASKS[1]
    expected_stops = [6, 0, 2] if mode == "chat" else [0, 6, 2]
    worst = 0.0
    for names, stops in ((None, expected_stops), ("<|endoftext|>", [0]),
                         ("<|im_end|>,<|system|>", [6, 2])):
        result = score_checkpoint(directory, tasks=[turn], mode=mode, device="cpu",
                                  progress=False, end_tokens=names)
        rows = result.variant_tables["turn"].to_pylist()
        for prompt in PROMPTS:
            for answer in ANSWERS:
                for variant in answer.variants:
                    prompt_ids, paths = paths_through(tok, turn, prompt, variant, mode, stops)
                    want = oracle_logprob(model, prompt_ids, paths, None)
                    got = next(r for r in rows if r["prompt_id"] == prompt.id
                               and r["continuation"].strip() == variant)
                    error = abs(got["logprob"] - want) / max(1.0, abs(want))
                    worst = max(worst, error)
                    assert error <= 2e-6, (mode, names, prompt.id, variant, got["logprob"],
                                           want)
        run = result.manifest["run"]
        if names is None:
            assert run["stop_tokens"] == expected_stops
            assert result.manifest["stop_tokens"] == [tok.convert_ids_to_tokens(i)
                                                      for i in expected_stops]
        else:
            assert run["end_tokens"] == names.split(",") and "stop_tokens" not in run
    print(f"{directory.name} {mode}: worst relative error {worst:.1e}")


def test_a_single_stop_token_keeps_the_run_key(llama):
    """Where generation stops at one token the run key has no stop_tokens: results scored
    before the stop set existed stay valid."""
    config = json.loads((llama / "generation_config.json").read_text())
    tok = hf_tokenizer(llama)
    result = score_checkpoint(llama, tasks=[TASKS[0]], device="cpu", progress=False,
                              mode="base")
    assert config["eos_token_id"] == tok.eos_token_id
    assert "stop_tokens" not in result.manifest["run"]


def test_a_task_file_names_its_end_tokens(three_stops, tmp_path):
    directory, _ = three_stops
    path = tmp_path / "t.toml"
    path.write_text('name = "pick"\nend = "turn"\nend_tokens = ["<|endoftext|>"]\n'
                    'answers = ["7", "Red"]\n[[prompts]]\nid = "p"\ntext = "Pick."\n')
    from answerdist.engine.tasks import load_tasks

    (task,) = load_tasks(str(path))
    assert task.end_tokens == ("<|endoftext|>",)
    named = score_checkpoint(directory, tasks=[task], device="cpu", progress=False, mode="chat")
    flag = score_checkpoint(directory, tasks=[changed(task, end_tokens=())], device="cpu",
                            progress=False, mode="chat", end_tokens="<|endoftext|>")
    assert (named.tables["pick"].column("prob").to_pylist()
            == flag.tables["pick"].column("prob").to_pylist())
    from answerdist.engine.results.schema import task_hash

    assert task_hash(task) != task_hash(changed(task, end_tokens=()))


def test_sampling_finishes_at_every_stop_token(three_stops):
    import answerdist
    from answerdist.engine.scoring.sampler import ReplySampler
    from answerdist.engine.scoring.scorer import PromptEncoder
    from answerdist.engine.settings import SamplingSettings

    directory, _ = three_stops
    ck = answerdist.load(directory)
    sampler = ReplySampler(ck, PromptEncoder(ck, "chat"), SamplingSettings())
    turn = TASKS[1]
    assert [sampler._stop(turn, t) for t in (6, 0, 2, 5, 40)] == [
        "finished", "finished", "finished", "other_end", None]
    only = changed(turn, end_tokens=("<|im_end|>",))
    assert [sampler._stop(only, t) for t in (6, 0)] == ["finished", "other_end"]
