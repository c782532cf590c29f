"""Peers' prompt sets as tasks: Zhang et al.'s JSON prompt files (request, response, targets,
weights), one file or a directory of them. The repository ships no third-party data: the
files are written here, in that format."""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from answerdist.cli import score
from answerdist.engine.tasks import load_tasks
from answerdist.engine.tasks.task import normalised
from answerdist.errors import TaskError
from tests import tiny


def write(path, **entry):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entry))
    return path


DIGITS = ["{1}", "{2}", "{3}"]


@pytest.fixture
def prompt_dir(tmp_path):
    root = tmp_path / "prompts"
    write(root / "numbers" / "rng-0.json", request="Pick 1, 2 or 3, like this: {number}.",
          response=[""],
          targets=DIGITS)
    write(root / "numbers" / "rng-1.json", request="Choose one of 1, 2, 3 in braces.",
          response="Sure: ", targets=DIGITS)
    write(root / "coin.json", request="Flip a coin.", response=["My call: "],
          targets=["Heads", "Tails"], weights=[3, 1])
    return root


def test_a_file_becomes_a_task_of_one_prompt_scored_as_whole_replies(prompt_dir):
    [task] = load_tasks(str(prompt_dir / "coin.json"))
    assert task.name == "coin" and task.end == "turn"
    assert task.answer_names == ("Heads", "Tails") and task.target == (0.75, 0.25)
    [prompt] = task.prompts
    assert prompt.text == "Flip a coin." and task.reply_prefix(prompt) == "My call: "


def test_a_directory_groups_files_that_share_targets(prompt_dir):
    tasks = {t.name: t for t in load_tasks(str(prompt_dir))}
    assert sorted(tasks) == ["coin", "rng"]
    rng = tasks["rng"]
    assert [p.id for p in rng.prompts] == ["numbers_rng-0", "numbers_rng-1"]
    assert [rng.reply_prefix(p) for p in rng.prompts] == ["", "Sure: "]
    assert rng.answer_names == tuple(DIGITS) and rng.end == "turn"
    assert rng.target == (1 / 3, 1 / 3, 1 / 3)  # no weights: uniform, as their README says
    assert rng.prompt_text(rng.prompts[0]) == "Pick 1, 2 or 3, like this: {number}."


def test_different_weights_make_different_tasks(tmp_path):
    write(tmp_path / "a-0.json", request="x?", targets=["a", "b"], weights=[1, 1])
    write(tmp_path / "a-1.json", request="y?", targets=["a", "b"], weights=[1, 3])
    tasks = load_tasks(str(tmp_path))
    assert sorted(t.name for t in tasks) == ["a-0", "a-1"]  # both would be "a": first files
    assert sorted(t.target for t in tasks) == [(0.25, 0.75), (0.5, 0.5)]


@pytest.mark.parametrize("entry, message", [
    (dict(targets=["a"]), "request: must be a non-empty string"),
    (dict(request="q", targets=[]), "targets: is empty: a file for generation only"),
    (dict(request="q", targets=["a", 1]), "targets: must be a list of strings"),
    (dict(request="q", targets="a"), "targets: must be a list of strings"),
    (dict(request="q", targets=["a"], eos="no"), "eos: must be true"),
    (dict(request="q", targets=["a"], eos=1), "eos: must be true"),
    (dict(request="q", targets=["1", "10"], eos=False), "absorb"),
    (dict(request="q", targets=["a", "b"], weights=[1]), "weights: must be 2 finite numbers"),
    (dict(request="q", targets=["a"], weights=[-1]), "weights: must be 1 finite numbers"),
    (dict(request="q", response=["a", "b"], targets=["a"]), "response: must be a string or a list"),
    (dict(request="q", targets=["a"], extra=1), "key 'extra': unknown; the keys are request, "
     "response, targets, weights, eos"),
    (dict(request="q", targets=["a", "a"]), "duplicate answer"),
])
def test_bad_prompt_files_are_one_line(tmp_path, entry, message):
    path = write(tmp_path / "bad.json", **entry)
    with pytest.raises(TaskError, match=message) as info:
        load_tasks(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_not_json_and_empty_directory(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(TaskError, match="not a readable UTF-8 JSON file"):
        load_tasks(str(tmp_path / "x.json"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskError, match="holds no .json prompt files"):
        load_tasks(str(tmp_path / "empty"))


def test_cli_scores_a_prompt_directory_and_writes_nothing_on_a_bad_file(prompt_dir, tmp_path):
    import pyarrow.parquet as pq

    ckpt = tmp_path / "ckpt"
    tiny.make_checkpoint(ckpt, template=tiny.CHATML_TEMPLATE)
    out = tmp_path / "out"
    assert score.main([str(ckpt), "--tasks", str(prompt_dir), "--out", str(out),
                       "--label", "l"]) == 0
    rows = pq.read_table(out / "l" / "rng.parquet").to_pylist()
    assert {r["prompt_id"] for r in rows} == {"numbers_rng-0", "numbers_rng-1"}
    assert all(r["prompt_text"].endswith("Sure:") for r in rows
               if r["prompt_id"] == "numbers_rng-1")
    manifest = json.loads((out / "l" / "manifest.json").read_text())
    assert manifest["tasks"]["coin"]["target"] == [0.75, 0.25]
    # the analysis reports the distance to the file's weights
    import answerdist.analysis

    assert score.main([str(ckpt), "--tasks", str(prompt_dir), "--out", str(out),
                       "--label", "m"]) == 0
    phases = answerdist.analysis.analyse(answerdist.analysis.load(out), ["base=l,sft=m"],
                                         bootstrap=200, min_coverage=0.0).records  # random
    tv = next(iter(phases.ladders.values())).tasks["coin"].stages["base"].figures["tv_target"].value
    coin = pq.read_table(out / "l" / "coin.parquet").to_pylist()
    want = 0.5 * sum(abs(r["prob"] - w) for r, w in zip(coin, (0.75, 0.25), strict=True))
    assert tv == pytest.approx(want, abs=1e-9)
    write(prompt_dir / "broken.json", request="", targets=["a"])
    bad_out = tmp_path / "bad"
    assert score.main([str(ckpt), "--tasks", str(prompt_dir), "--out", str(bad_out)]) == 2
    assert not bad_out.exists()


@pytest.fixture
def their_shapes(tmp_path):
    """A directory laid out as Zhang et al.'s prompts/ is, each file in the exact shape of one
    of theirs (keys, key types, `response` as a list of one or a bare string), with text of our
    own: no third-party data."""
    root = tmp_path / "prompts"
    for i, request in enumerate(["Name a fruit in braces.", "A random fruit, in braces."]):
        write(root / "fruits" / f"fruit-{i}.json", request=request, response=[""],
              targets=["{Apple}", "{Pear}", "{Plum}"])  # no weights: uniform
    for i in range(2):
        write(root / "numbers" / f"even-{i}.json", request=f"An even number {i}?", response=[""],
              targets=["{2}", "{4}", "{6}"], eos=True)
    write(root / "people" / "people-train.json", request="Invent a person: {Name}\n{Gender}",
          response="", targets=["{Ann Lee}\n{Female}", "{Bo Kim}\n{Male}"], eos=False)
    write(root / "people" / "people.json", request="Invent a person.", response="", targets=[])
    write(root / "readme-example.json", request="Flip a coin.", response=["Result: "],
          targets=["{Heads}", "{Tails}"], weights=[2, 1])
    return root


def test_every_file_shape_of_theirs_loads(their_shapes, capsys):
    """eos true or absent: whole replies (turn); eos false: the reply's start (prefix); no
    weights: uniform; a generation-only file (empty targets) is skipped in a directory with a
    one-line note naming it, and refused alone."""
    tasks = {t.name: t for t in load_tasks(str(their_shapes))}
    assert sorted(tasks) == ["even", "fruit", "people-train", "readme-example"]
    assert [len(tasks[n].prompts) for n in ("fruit", "even")] == [2, 2]
    assert {n: t.end for n, t in tasks.items()} == {
        "even": "turn", "fruit": "turn", "people-train": "prefix", "readme-example": "turn"}
    assert tasks["fruit"].target == (1 / 3, 1 / 3, 1 / 3)
    assert tasks["readme-example"].target == (2 / 3, 1 / 3)
    notes = capsys.readouterr().err.strip().splitlines()
    assert notes == [f"note: {their_shapes / 'people' / 'people.json'}: skipped, its targets "
                     "are empty (a prompt for generation only)"]
    [people] = load_tasks(str(their_shapes / "people"))
    assert people.name == "people-train" and people.end == "prefix"
    with pytest.raises(TaskError, match="is empty: a file for generation only"):
        load_tasks(str(their_shapes / "people" / "people.json"))
    only = their_shapes.parent / "only"
    write(only / "gen.json", request="Invent a person.", response="", targets=[])
    with pytest.raises(TaskError, match="holds only files with empty targets"):
        load_tasks(str(only))


def test_cli_scores_their_directory_with_both_end_rules(their_shapes, tmp_path, capsys):
    import pyarrow.parquet as pq

    ckpt = tmp_path / "ckpt"
    tiny.make_checkpoint(ckpt, template=tiny.CHATML_TEMPLATE)
    out = tmp_path / "out"
    assert score.main([str(ckpt), "--tasks", str(their_shapes), "--out", str(out),
                       "--label", "l"]) == 0
    assert "people.json: skipped" in capsys.readouterr().err
    manifest = json.loads((out / "l" / "manifest.json").read_text())
    assert manifest["tasks"]["fruit"]["target"] == [1 / 3, 1 / 3, 1 / 3]
    people = pq.read_table(out / "l" / "people-train.parquet").to_pylist()
    fruit = pq.read_table(out / "l" / "fruit.parquet").to_pylist()
    assert len(people) == 2 and all(0 < r["prob"] <= 1 for r in people + fruit)


def test_noveltybench_lines_become_open_tasks_with_their_paraphrases(tmp_path):
    """A line with prompt_paraphrases is one task whose phrasings are its prompt and its
    paraphrases; a line without is a task of one phrasing; category is kept."""
    path = tmp_path / "curated.jsonl"
    lines = [{"id": "animal-1", "prompt": "Name an animal.", "category": "naming",
              "prompt_paraphrases": ["Give me an animal.", "Any animal?", "Name an animal."]},
             {"id": 7, "prompt": "Tell me a joke about {cats}."}]
    path.write_text(json.dumps(lines[0]) + "\n\n" + json.dumps(lines[1]) + "\n")
    animal, joke = load_tasks(str(path))
    assert animal.name == "animal-1" and animal.open_answers and animal.end == "turn"
    assert [p.id for p in animal.prompts] == ["prompt", "paraphrase-1", "paraphrase-2"]
    assert [animal.prompt_text(p) for p in animal.prompts] == [
        "Name an animal.", "Give me an animal.", "Any animal?"]  # a repeat is one phrasing
    assert animal.category == "naming" and joke.category == ""
    assert joke.name == "7" and [p.id for p in joke.prompts] == ["prompt"]
    assert joke.prompt_text(joke.prompts[0]) == "Tell me a joke about {cats}."
    from answerdist.engine.results.schema import task_hash

    assert task_hash(animal) == task_hash(dataclasses.replace(animal, category="other"))


@pytest.mark.parametrize("text, message", [
    ('{"id": "a"}\n', 'line 1: must be an object with "id" and a non-empty "prompt"'),
    ('{"id": "a", "prompt": "x"}\nnot json\n', "line 2: not JSON"),
    ("\n\n", "holds no prompts"),
    ('{"id": "a", "prompt": "x", "prompt_paraphrases": "y"}\n', "line 1, prompt_paraphrases: "
     "must be a list of non-empty strings"),
    ('{"id": "a", "prompt": "x", "prompt_paraphrases": ["y", ""]}\n', "must be a list of"),
    ('{"id": "a", "prompt": "x", "category": 3}\n', "line 1, category: must be a string"),
    ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "line 2: has the id of line 1"),
    ('{"id": true, "prompt": "x"}\n', 'must be an object with "id"'),
])
def test_bad_jsonl_is_one_line(tmp_path, text, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(TaskError, match=message):
        load_tasks(str(path))


WEIGHT = st.one_of(st.integers(0, 10**400), st.floats(0, None, allow_nan=False),
                   st.sampled_from([0, 1e-300, 1e308, 10**400, float("inf"), float("nan"), -1]))


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(WEIGHT, min_size=1, max_size=6))
def test_weights_give_a_distribution_or_one_line(weights):
    """Zhang et al.'s `weights` (and a task file's `target`) go through one normaliser: finite
    numbers >= 0, not all 0, give a distribution summing to 1 (even at 1e308 each), anything
    else (10**400, inf, nan, negative, all 0) one TaskError line; never an OverflowError."""
    expected = normalised(weights)
    valid = all(isinstance(w, int) and w < 10**308 or isinstance(w, float) and math.isfinite(w)
                for w in weights) and all(w >= 0 for w in weights if w == w) and any(
        w > 0 for w in weights if w == w)
    assert (expected is not None) == valid
    if expected is not None:
        assert abs(math.fsum(expected) - 1) < 1e-12 and all(0 <= p <= 1 for p in expected)
    targets = [f"t{i}" for i in range(len(weights))]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.json"
        path.write_text(json.dumps({"request": "q?", "targets": targets, "weights": weights}))
        try:
            (task,) = load_tasks(str(path))
            assert expected is not None and task.target == expected
        except TaskError as err:
            assert expected is None and "weights: must be" in str(err)
