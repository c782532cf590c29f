"""The sampler: KV-cache decoding against the full forward for every family, seeded streams that
never depend on batching, and sampled frequencies against exact probabilities.

Agreement (the check researchers want between sampled and exact numbers): 20,000 replies to a
prompt of a closed task with end = "turn" are drawn from a tiny model whose replies are short,
and each answer's sampled count is compared with its exact probability, scored with
`tokenizations="all"` (a sampled reply may spell its text with any tokenization: "ed" is one
token or two). The test per answer is the two-sided binomial z-test (normal approximation,
every expected count >= 40 here); the null is that the sampler draws from the model's
distribution, and the family-wise level is 1e-3 (Bonferroni over the answers). Its power is
checked on a sampler that draws at temperature 1.3 instead of 1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import answerdist
from answerdist import score_checkpoint
from answerdist.engine.model.transformer import KVCache
from answerdist.engine.scoring.sampler import CHUNK, ReplySampler, draw
from answerdist.engine.scoring.scorer import PromptEncoder
from answerdist.engine.settings import SamplingSettings
from answerdist.engine.tasks import Answer, Prompt, Task
from tests import tiny
from tests.test_end_rules import FAMILIES, FAMILY_KWARGS

WINDOW = 6  # shorter than the decoded sequences: the cache path must apply it


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decoding_equals_the_full_forward(family, tmp_path):
    """Prefill 9 tokens, then decode 7 one at a time: every step's logits equal the full
    forward's at that position (float32 rounding), sliding windows and soft-caps included."""
    extra = dict(FAMILY_KWARGS.get(family, {}))
    if family in ("mistral", "phi3", "gemma2", "gemma3", "olmo3"):
        extra["sliding_window"] = WINDOW
    if family in ("gemma2",):
        extra.update(attn_logit_softcapping=2.0, final_logit_softcapping=3.0)
    tiny.make_checkpoint(tmp_path, arch=family, init=0.1, **extra)
    ck = answerdist.load(tmp_path)
    ids = torch.randint(0, ck.args.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    full = ck.model(ids)
    cache = KVCache(ck.args, 2, 16, ck.dtype, ck.device)
    hidden = ck.model.hidden_states(ids[:, :9], torch.arange(9).expand(2, 9), cache=cache)
    steps = [ck.model.next_token_logits(hidden[:, -1])]
    for t in range(9, 16):
        hidden = ck.model.hidden_states(ids[:, t:t + 1], torch.full((2, 1), t), cache=cache)
        steps.append(ck.model.next_token_logits(hidden[:, -1]))
    got = torch.stack(steps, dim=1)
    torch.testing.assert_close(got, full[:, 8:], rtol=1e-5, atol=1e-5)


def test_draw_inverts_the_cdf_and_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
    picks = [int(draw(logits, np.array([u]), SamplingSettings())) for u in (0.05, 0.2, 0.69,
                                                                           0.71, 0.999)]
    assert picks == [0, 1, 1, 2, 2]
    nucleus = SamplingSettings(top_p=0.8)  # tokens 1 (0.6) and 2 (0.3): renormalised 2/3, 1/3
    assert [int(draw(logits, np.array([u]), nucleus)) for u in (0.6, 0.7)] == [1, 2]
    cold = SamplingSettings(temperature=1e-3)
    assert int(draw(logits, np.array([0.99]), cold)) == 1


# ---------------------------------------------------------------- a model with short replies

# replies of tiny.short_reply_checkpoint likely enough to be counted (expected counts >= 40)
ANSWERS = ["7", "1", "e", "d", "ed", "77", "17", "71", "7e", "e7", "d7"]
short_reply_checkpoint = tiny.short_reply_checkpoint


@pytest.fixture(scope="module")
def short_replies(tmp_path_factory):
    directory = tmp_path_factory.mktemp("short")
    short_reply_checkpoint(directory)
    task = Task("pick", "", tuple(Answer(a, (a,)) for a in ANSWERS),
                (Prompt("plain", "Pick a number or a color."),
                 Prompt("terse", "Number? Color?")), end="turn")
    return directory, task


def test_streams_never_depend_on_batching(short_replies):
    directory, task = short_replies
    ck = answerdist.load(directory)
    sampler = ReplySampler(ck, PromptEncoder(ck, "chat"), SamplingSettings(max_new_tokens=6))
    few = sampler.sample(task, task.prompts[0], 5, start=CHUNK - 2)  # across a chunk boundary
    many = sampler.sample(task, task.prompts[0], 3 * CHUNK)
    other_first = ReplySampler(ck, PromptEncoder(ck, "chat"), SamplingSettings(max_new_tokens=6))
    other_first.sample(task, task.prompts[1], 7)
    again = other_first.sample(task, task.prompts[0], 5, start=CHUNK - 2)
    assert [r.index for r in few] == list(range(CHUNK - 2, CHUNK + 3))
    assert few == many[CHUNK - 2:CHUNK + 3] == again
    reseeded = ReplySampler(ck, PromptEncoder(ck, "chat"),
                            SamplingSettings(max_new_tokens=6, seed=1)).sample(
        task, task.prompts[0], 3 * CHUNK)
    assert [r.token_ids for r in reseeded] != [r.token_ids for r in many]


def test_unfinished_replies_are_reported(short_replies):
    directory, task = short_replies
    ck = answerdist.load(directory)
    replies = ReplySampler(ck, PromptEncoder(ck, "chat"),
                           SamplingSettings(max_new_tokens=1)).sample(task, task.prompts[0], 200)
    statuses = {r.status for r in replies}
    assert statuses <= {"finished", "unfinished", "other_end"} and "unfinished" in statuses
    assert all(len(r.token_ids) == 1 for r in replies)
    assert all(r.text == "" for r in replies if r.status == "finished")


SAMPLES = 20_000
LEVEL = 1e-3


def answer_counts(sampler, task, prompt) -> dict[str, int]:
    replies = sampler.sample(task, prompt, SAMPLES)
    return {a: sum(r.status == "finished" and r.text == a for r in replies) for a in ANSWERS}


def max_z(counts: dict[str, int], exact: list[dict]) -> float:
    """The largest |z| of the answers' binomial z-tests (every expected count >= 40)."""
    worst = 0.0
    for row in exact:
        p = math.exp(row["logprob"])
        assert SAMPLES * p >= 40, (row["answer"], p)  # the normal approximation holds
        worst = max(worst, abs(counts[row["answer"]] - SAMPLES * p)
                    / math.sqrt(SAMPLES * p * (1 - p)))
    return worst


@pytest.fixture(scope="module")
def sampled(short_replies):
    """20,000 replies to the first prompt at temperature 1, and 20,000 at 1.3."""
    directory, task = short_replies
    ck = answerdist.load(directory)
    encoder, prompt = PromptEncoder(ck, "chat"), task.prompts[0]
    right = answer_counts(ReplySampler(ck, encoder, SamplingSettings(max_new_tokens=8)), task,
                          prompt)
    hot = SamplingSettings(max_new_tokens=8, temperature=1.3)
    return right, answer_counts(ReplySampler(ck, encoder, hot), task, prompt)


def check_agreement(sampled, exact):
    """20,000 replies at temperature 1 pass; 20,000 at temperature 1.3 (a sampler drawing
    from the wrong distribution) fail, far beyond the critical value: the test has power."""
    z_crit = normal_quantile(1 - LEVEL / (2 * len(ANSWERS)))
    right, wrong = (max_z(counts, exact) for counts in sampled)
    print(f"max |z| {right:.2f} at temperature 1, {wrong:.1f} at 1.3 (critical {z_crit:.2f})")
    assert right < z_crit < 3 * z_crit < wrong


def test_sampled_frequencies_match_exact_probabilities(short_replies, sampled):
    """Exact probabilities from the torch path."""
    directory, task = short_replies
    exact = score_checkpoint(directory, tasks=[task], mode="chat", tokenizations="all",
                             device="cpu", progress=False).variant_tables["pick"].to_pylist()
    check_agreement(sampled, [r for r in exact if r["prompt_id"] == task.prompts[0].id])


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="with CUDA the kernel path is the default one")
def test_sampled_frequencies_match_the_interpreted_triton_kernels(short_replies, sampled,
                                                                   tmp_path):
    """Exact probabilities from the Triton kernels (interpreted), in a process of its own."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pyarrow.parquet as pq

    directory, task = short_replies
    answers = ", ".join(f'"{a}"' for a in ANSWERS)
    task_file = tmp_path / "pick.toml"
    task_file.write_text(f'name = "pick"\nend = "turn"\nanswers = [{answers}]\n'
                         f'[[prompts]]\nid = "{task.prompts[0].id}"\n'
                         f'text = "{task.prompts[0].text}"\n')
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1", ENGINE_FORCE_TRITON="1", PYTHONPATH=str(root))
    env.pop("ENGINE_FORCE_REFERENCE", None)
    result = subprocess.run([sys.executable, "-m", "answerdist", "score", str(directory), "--tasks",
                             str(task_file), "--tokenizations", "all", "--mode", "chat",
                             "--out", str(tmp_path / "out"), "--label", "l"],
                            capture_output=True, text=True, env=env, cwd=root, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = (tmp_path / "out" / "l" / "manifest.json").read_text()
    assert '"device": "cpu"' in manifest
    check_agreement(sampled, pq.read_table(tmp_path / "out" / "l" / "variants" /
                                           "pick.parquet").to_pylist())


def normal_quantile(q: float) -> float:
    """The standard normal quantile, by bisection on erf (no scipy needed)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < q else (lo, mid)
    return (lo + hi) / 2


def test_a_reply_that_stops_inside_a_utf8_character_is_unfinished(tmp_path):
    """Tokens that end (or break) a multi-byte character decode with U+FFFD: such a reply is
    'unfinished', never an answer, whatever token stopped it; whole characters stay finished."""
    tiny.make_checkpoint(tmp_path, template=tiny.CHATML_TEMPLATE)
    ck = answerdist.load(tmp_path)
    encoder = PromptEncoder(ck, "chat")
    sampler = ReplySampler(ck, encoder, SamplingSettings())
    end = encoder.reply_end
    whole = ck.encode("ok \u00e9", add_special_tokens=False)
    first_byte = ck.tokenizer.token_to_id("\u00c3")  # byte-level alphabet: the byte 0xC3
    assert first_byte is not None and ck.tokenizer.decode([first_byte]) == "\ufffd"
    closed = ck.encode(end.text, add_special_tokens=False) if end.text else []
    finished = sampler._reply(0, whole + closed + [end.token_id], "finished")
    assert finished.status == "finished" and finished.text == "ok \u00e9"
    for tokens in (whole + [first_byte], [first_byte] + whole):
        reply = sampler._reply(0, tokens + closed + [end.token_id], "finished")
        assert reply.status == "unfinished" and "\ufffd" in reply.text
