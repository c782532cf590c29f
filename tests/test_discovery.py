"""Open tasks: answers discovered by sampling, then scored exactly (`--discover N`).

The checkpoint is the sampler tests' tiny model with short replies ("7", "ed", "17", ...), so a
few hundred samples find a handful of answers."""

from __future__ import annotations

import json
import math
import time

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from answerdist import score_checkpoint
from answerdist.cli import score
from answerdist.engine.tasks import (
    Answer,
    Prompt,
    Task,
    load_task_file,
    load_tasks,
    normalize_reply,
)
from answerdist.engine.tasks.task import NORMALIZE_SECONDS
from answerdist.errors import TaskError
from tests.tiny import short_reply_checkpoint

OPEN_TASK = """
name = "pick"
answers = "open"
end = "turn"
normalize = NORMALIZE
[[prompts]]
id = "plain"
text = "Pick a number or a word."
[[prompts]]
id = "terse"
text = "Number? Word?"
"""


def task_file(directory, normalize='["strip", "casefold"]', name="open.toml", **replace):
    text = OPEN_TASK.replace("NORMALIZE", normalize)
    for old, new in replace.items():
        text = text.replace(old, new)
    path = directory / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    directory = tmp_path_factory.mktemp("open")
    short_reply_checkpoint(directory)
    return directory


def test_discovered_answers_are_scored_exactly(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    args = [str(ckpt), "--tasks", str(task_file(tmp_path)), "--discover", "300",
            "--max-new-tokens", "8", "--out", str(out), "--label", "l"]
    assert score.main(args) == 0
    manifest = json.loads((out / "l" / "manifest.json").read_text())
    counts = manifest["tasks"]["pick"]["discovery"]
    said = capsys.readouterr().out  # the unfinished replies are said, not only recorded
    assert (f"pick: 600 replies sampled: {counts['finished']} finished, {counts['unfinished']} "
            f"unfinished (past --max-new-tokens or inside a UTF-8 character), "
            f"{counts['other_end']} ended at another special token, {counts['no_answer']} of "
            "the finished normalised to nothing") in said
    assert counts["samples"] == 600
    assert counts["samples"] == counts["finished"] + counts["unfinished"] + counts["other_end"]
    assert manifest["run"]["discovery"]["replies"] == 300
    found = pq.read_table(out / "l" / "discovery" / "pick.parquet").to_pylist()
    main = pq.read_table(out / "l" / "pick.parquet").to_pylist()
    variants = pq.read_table(out / "l" / "variants" / "pick.parquet").to_pylist()
    answers = {r["answer"] for r in found}
    assert {r["answer"] for r in main} == answers and "7" in answers
    for prompt in ("plain", "terse"):
        rows = [r for r in main if r["prompt_id"] == prompt]
        assert len(rows) == len(answers)  # every answer scored at every prompt
        coverage = sum(math.exp(r["logprob"]) for r in rows)
        assert all(r["coverage"] == pytest.approx(coverage, rel=1e-12) for r in rows)
        assert 0 < coverage < 1
        sampled = sum(r["count"] for r in found if r["prompt_id"] == prompt)
        assert sampled <= 300
    forms = {(r["answer"], r["continuation"]) for r in variants}
    assert {(r["answer"], r["continuation"]) for r in found} <= forms
    # the same seed finds the same answers: the rerun resumes instead of rescoring
    assert score.main(args) == 0
    again = json.loads((out / "l" / "manifest.json").read_text())
    assert again["timings"]["skipped_tasks"] == 1


def test_discovery_is_seeded_and_the_api_returns_its_table(ckpt, tmp_path):
    path = task_file(tmp_path)
    runs = [score_checkpoint(ckpt, tasks=str(path), discover=100, max_new_tokens=8,
                             progress=False, seed=seed) for seed in (0, 0, 1)]
    tables = [r.discovery_tables["pick"].to_pylist() for r in runs]
    assert tables[0] == tables[1] and tables[0] != tables[2]


def test_a_rerun_after_a_stop_keeps_the_discovery_already_written(ckpt, tmp_path, monkeypatch):
    import answerdist.engine.run.job
    import answerdist.engine.scoring.discovery

    tasks = [*load_task_file(task_file(tmp_path)),
             *load_task_file(task_file(tmp_path, name="open2.toml", **{'"pick"': '"pick2"'}))]
    run = dict(tasks=tasks, discover=60, max_new_tokens=8, progress=False, label="l")
    whole = score_checkpoint(ckpt, out=tmp_path / "whole", **run)
    score_task = answerdist.engine.run.job.Scoring.score

    def stop_at_the_second_task(self, task, bar):
        if task.name == "pick2":
            raise KeyboardInterrupt
        return score_task(self, task, bar)

    monkeypatch.setattr(answerdist.engine.run.job.Scoring, "score", stop_at_the_second_task)
    with pytest.raises(KeyboardInterrupt):
        score_checkpoint(ckpt, out=tmp_path / "out", **run)
    monkeypatch.setattr(answerdist.engine.run.job.Scoring, "score", score_task)
    sampled = []
    sample = answerdist.engine.scoring.discovery.ReplySampler.sample

    def counted(self, *args, **kwargs):
        sampled.append(args)
        return sample(self, *args, **kwargs)

    monkeypatch.setattr(answerdist.engine.scoring.discovery.ReplySampler, "sample", counted)
    again = score_checkpoint(ckpt, out=tmp_path / "out", **run)
    per_task = len(sampled)
    assert per_task > 0  # pick2 was sampled again: it was never written
    for name in ("pick", "pick2"):
        assert again.tables[name].equals(whole.tables[name])
        assert again.discovery_tables[name].equals(whole.discovery_tables[name])
        assert (again.manifest["tasks"][name]["discovery"]
                == whole.manifest["tasks"][name]["discovery"])
    assert again.manifest["timings"]["skipped_tasks"] == 1
    sampled.clear()
    score_checkpoint(ckpt, out=tmp_path / "out", **run)  # all written: nothing sampled
    assert sampled == []
    score_checkpoint(ckpt, out=tmp_path / "out", overwrite=True, **run)
    assert len(sampled) == 2 * per_task  # --overwrite samples every open task again


def test_normalizers():
    t = Task("t", "", (), (Prompt("p", "x"),), end="turn", open_answers=True,
             normalize=("strip", "casefold", "strip_punctuation"))
    assert normalize_reply(t, "  «Cat!»  ") == "cat"
    regex = Task("t", "", (), (Prompt("p", "x"),), end="turn", open_answers=True,
                 normalize=r"\{(.+?)\}")
    assert normalize_reply(regex, "I pick {7} now") == "7" and normalize_reply(regex, "7") == ""


@pytest.mark.parametrize("args, message", [
    (["--tasks", "coin", "--discover", "10"], "--discover applies to open tasks only, and task "
                                              "'coin' lists its answers"),
    (["--tasks", "OPEN"], "--discover must be given for the open task 'pick'"),
    (["--tasks", "OPEN", "--discover", "0"], "--discover must be an integer from 1 to"),
    (["--tasks", "OPEN", "--discover", "1000001"], "--discover must be an integer from 1 to "
                                                   "1,000,000"),
    (["--tasks", "OPEN", "--discover", "5", "--top-p", "1.5"], "--top-p must be a number in"),
    (["--tasks", "OPEN", "--discover", "5", "--temperature", "0"], "--temperature must be a "
                                                                   "number from 0.001"),
    (["--tasks", "OPEN", "--discover", "5", "--temperature", "5e-324"], "--temperature must be"),
    (["--tasks", "OPEN", "--discover", "5", "--max-new-tokens", "10000000"],
     "--max-new-tokens must be an integer from 1 to 1,000,000"),
    (["--tasks", "OPEN", "--discover", "5", "--max-new-tokens", "100000"],
     "--max-new-tokens must be below the model's context"),
    (["--tasks", "OPEN", "--discover", "5", "--template-timeout", "inf"],
     "--template-timeout must be a positive number of seconds, at most 604,800"),
    (["--tasks", "OPEN", "--discover", "5", "--dist-timeout", "inf"],
     "--dist-timeout must be a positive number of seconds"),
    (["--tasks", "NEVER", "--discover", "20", "--max-new-tokens", "8"],
     "none of its 40 sampled replies gave an answer"),
    (["--tasks", "OPEN", "--discover", "5", "--end", "boundary"], "an open task needs end"),
])
def test_bad_discovery_input_is_one_line_exit_2_nothing_written(ckpt, tmp_path, capsys, args,
                                                                 message):
    paths = {"OPEN": str(task_file(tmp_path)),
             "NEVER": str(task_file(tmp_path, normalize="'<(x+)>'", name="never.toml"))}
    out = tmp_path / "out"
    argv = [str(ckpt), *[paths.get(a, a) for a in args], "--out", str(out)]
    assert score.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("edit, message", [
    (dict(normalize="'(a)(b)'"), "has 2 groups"),
    (dict(normalize="'(a'"), "not a regular expression"),
    (dict(normalize='["strip", "lowercase"]'), "unknown step 'lowercase'"),
    ({'end = "turn"': 'end = "boundary"'}, 'an open task needs end = "turn" or "line"'),
])
def test_bad_open_task_files(tmp_path, edit, message):
    path = task_file(tmp_path, **edit)
    with pytest.raises(TaskError, match=message):
        load_task_file(path)


def test_a_closed_task_may_not_normalize():
    with pytest.raises(TaskError, match="only an open task"):
        Task("t", "", (Answer("a", ("a",)),), (Prompt("p", "x"),), normalize=("strip",))


# ------------------------------------------------------------------------------- ladders


@pytest.fixture(scope="module")
def ladder(ckpt, tmp_path_factory):
    """Two checkpoints discovered apart, then both rescored on the union of their answers."""
    root = tmp_path_factory.mktemp("ladder")
    other = root / "sft"
    short_reply_checkpoint(other, seed=3)
    path = task_file(root)
    out = root / "out"
    common = ["--tasks", str(path), "--max-new-tokens", "8", "--out", str(out)]
    for directory, label in ((ckpt, "base"), (other, "sft")):
        assert score.main([str(directory), *common, "--discover", "200", "--label", label]) == 0
    for directory, label in ((ckpt, "base_u"), (other, "sft_u")):
        assert score.main([str(directory), *common, "--answers-from", "base,sft",
                           "--label", label]) == 0
    return root, path, out, other


def test_answers_from_scores_every_checkpoint_on_the_union(ladder):
    _, _, out, _ = ladder
    found = {label: {r["answer"] for r in pq.read_table(out / label / "pick.parquet").to_pylist()}
             for label in ("base", "sft", "base_u", "sft_u")}
    assert found["base_u"] == found["sft_u"] == found["base"] | found["sft"]
    manifest = json.loads((out / "sft_u" / "manifest.json").read_text())
    assert manifest["tasks"]["pick"]["answers_from"] == ["base", "sft"]
    assert manifest["run"]["discovery"]["answers_from"] == ["base", "sft"]
    # a discovered ladder runs through the analysis unchanged
    import answerdist.analysis

    phases = answerdist.analysis.analyse(answerdist.analysis.load(out, ["base_u", "sft_u"]),
                                         ["base=base_u,sft=sft_u"],
                                         bootstrap=200,  # a random model barely answers:
                                         min_coverage=0.0).records
    stages = next(iter(phases.ladders.values())).tasks["pick"].stages
    assert set(stages) == {"base", "sft"}
    assert all(s.n_answers == len(found["base_u"]) for s in stages.values())


def test_a_sweep_discovers_and_rescores_as_the_cli_does(ladder, tmp_path):
    """The sweep keys discover, max_new_tokens and answers_from: two sweep files (discover,
    then answers_from) give the tables the CLI gave the same checkpoints."""
    from answerdist.cli import sweep as sweep_cli

    _, path, cli_out, _ = ladder
    for name, seed in (("base", 0), ("sft", 3)):
        short_reply_checkpoint(tmp_path / name, seed=seed)
    common = ['checkpoints = ["base", "sft"]', f"tasks = {json.dumps(str(path))}",
              'modes = ["chat"]', 'out = "out"', "max_new_tokens = 8"]
    (tmp_path / "find.toml").write_text("\n".join(common + ["discover = 200"]) + "\n")
    (tmp_path / "union.toml").write_text("\n".join(
        common + ['answers_from = ["base", "sft"]', 'label = "{name}_u"']) + "\n")
    assert sweep_cli.main([str(tmp_path / "find.toml")]) == 0
    assert sweep_cli.main([str(tmp_path / "union.toml")]) == 0
    for label in ("base", "sft", "base_u", "sft_u"):
        for table in ("pick.parquet", "discovery/pick.parquet"):
            if label.endswith("_u") and table.startswith("discovery"):
                continue
            assert (pq.read_table(tmp_path / "out" / label / table).to_pylist()
                    == pq.read_table(cli_out / label / table).to_pylist()), (label, table)
    run = json.loads((tmp_path / "out" / "sft_u" / "manifest.json").read_text())["run"]
    assert run["discovery"]["answers_from"] == ["base", "sft"]
    # a label template borrows from every checkpoint of the sweep, however many it matches
    (tmp_path / "template.toml").write_text("\n".join(
        common + ['answers_from = "{name}"', 'label = "{name}_t"']) + "\n")
    assert sweep_cli.main([str(tmp_path / "template.toml")]) == 0
    for name in ("base", "sft"):
        assert (pq.read_table(tmp_path / "out" / f"{name}_t" / "pick.parquet").drop(["label"])
                .equals(pq.read_table(cli_out / f"{name}_u" / "pick.parquet").drop(["label"])))
    run = json.loads((tmp_path / "out" / "sft_t" / "manifest.json").read_text())["run"]
    assert run["discovery"]["answers_from"] == ["base", "sft"]


@pytest.mark.parametrize("value, message", [
    ('"{name:>300}"', "'answers_from' '{name:>300}': its fields must be plain"),
    ('"{step}"', "its fields must be plain"),
    ('"{name}/x"', "'answers_from' '{name}/x': the labels it makes must be a plain name"),
])
def test_bad_answers_from_templates_are_one_line(tmp_path, capsys, value, message):
    from answerdist.cli import sweep as sweep_cli

    (tmp_path / "base").mkdir()
    path = task_file(tmp_path)
    (tmp_path / "s.toml").write_text(f'checkpoints = ["base"]\ntasks = {json.dumps(str(path))}\n'
                                     f'answers_from = {value}\nlabel = "{{name}}_t"\n')
    assert sweep_cli.main([str(tmp_path / "s.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("case", ["other_definition", "missing_label", "closed"])
def test_answers_from_bad_labels_exit_2_and_write_nothing(ladder, tmp_path, capsys, case):
    root, path, out, other = ladder
    tasks = str(path)
    if case == "other_definition":
        tasks = str(task_file(tmp_path, normalize='["strip"]'))
    labels = "nowhere" if case == "missing_label" else "base"
    if case == "closed":
        tasks = "coin"
    argv = [str(other), "--tasks", tasks, "--answers-from", labels, "--out", str(out),
            "--label", "new"]
    assert score.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    want = {"other_definition": "from another definition of it",
            "missing_label": "holds no results", "closed": "applies to open tasks only"}[case]
    assert len(err) == 1 and want in err[0], err
    assert not (out / "new").exists()


# ----------------------------------------------------------------------- shipped open tasks

SHIPPED = ["open_animal", "open_cat_name", "open_city", "open_number_word", "open_scientist",
           "open_word"]


def test_shipped_open_tasks_are_well_formed():
    from answerdist.engine.tasks import task_groups

    groups = task_groups()
    assert groups["open"] == SHIPPED
    names = [n for names in groups.values() for n in names]
    assert len(names) == len(set(names))  # no open task shadows a closed one
    for task in load_tasks("open"):
        assert task.open_answers and task.end == "turn" and len(task.prompts) == 15
        assert all("{" not in p.text for p in task.prompts)
        proper = task.name in ("open_city", "open_scientist")
        assert ("casefold" in task.normalize) != proper


def test_a_shipped_open_task_runs_end_to_end(ckpt):
    result = score_checkpoint(ckpt, tasks="open_animal", discover=4, max_new_tokens=6,
                              progress=False)
    table = result.tables["open_animal"].to_pylist()
    assert {r["prompt_id"] for r in table} == {p.id for p in load_tasks("open_animal")[0].prompts}
    assert result.manifest["tasks"]["open_animal"]["discovery"]["samples"] == 60


def test_the_summary_says_where_borrowed_answers_came_from():
    from answerdist.cli.score import discovery_line

    none = dict(samples=0, finished=0, unfinished=0, other_end=0, no_answer=0)
    assert (discovery_line("pick", none, 3, ["base", "sft"])
            == "pick: 3 answers scored, the answers discovered under base, sft")
    some = dict(none, samples=4, finished=3, unfinished=1)
    line = discovery_line("pick", some, 5, ["base"])
    assert line.startswith("pick: 4 replies sampled: 3 finished, 1 unfinished")
    assert line.endswith("5 answers scored, joined with the answers discovered under base")


def test_answers_from_templates_fill_in_every_checkpoint_per_mode():
    from pathlib import Path

    from answerdist.engine.run.sweep import Item, Sweep, borrowed_labels
    from answerdist.engine.settings import RunSpec

    plan = Sweep(Path("s.toml"), [], ["base", "chat"], "{name}-{mode}-u", RunSpec(tasks="coin"),
                 answers_from=("{name}-{mode}", "extra"))
    items = [Item(0, "/m/step1", []), Item(1, "/m/step2", [])]
    assert borrowed_labels(plan, items) == {"base": ("step1-base", "step2-base", "extra"),
                                            "chat": ("step1-chat", "step2-chat", "extra")}
    assert borrowed_labels(Sweep(Path("s.toml"), [], ["base"], "{name}", RunSpec()), items) is None


def _regex_task(pattern):
    return Task("t", "", (), (Prompt("p", "x"),), end="turn", open_answers=True,
                normalize=pattern)


def test_a_group_that_takes_no_part_in_the_match_is_no_answer():
    assert normalize_reply(_regex_task("(7)?"), "I pick 5") == ""
    assert normalize_reply(_regex_task("x(7)?|y"), "y") == ""
    assert normalize_reply(_regex_task("(7)?"), "7") == "7"


# A small grammar of patterns with one group: nested and overlapping repetition, alternation.
_ATOM = st.sampled_from(["a", "aa", r"\w", ".", "a?", "[ab]"])
_REPEAT = st.builds(lambda a, q: f"(?:{a}){q}", _ATOM, st.sampled_from(["+", "*", "{1,3}"]))
_ALTERNATIVES = st.builds(lambda xs: "(?:" + "|".join(xs) + ")",
                          st.lists(st.one_of(_ATOM, _REPEAT), min_size=1, max_size=3))
_PATTERN = st.builds(lambda inner, q, tail: f"({inner}{q}){tail}",
                     st.one_of(_ALTERNATIVES, _REPEAT), st.sampled_from(["+", "*", ""]),
                     st.sampled_from(["b", "$", "!", ""]))


@settings(max_examples=60, deadline=None)
@given(pattern=_PATTERN, reply=st.text(alphabet="ab!c ", max_size=40))
def test_a_normalize_pattern_answers_or_is_refused_in_time(pattern, reply):
    """Any pattern of the grammar, on any reply: an answer (a string), or one TaskError line
    naming the pattern once it has searched for NORMALIZE_SECONDS; never a hang."""
    try:
        task = _regex_task(pattern)
    except TaskError as err:  # the grammar also makes patterns that do not compile
        assert "not a regular expression" in str(err)
        return
    start = time.monotonic()
    try:
        assert isinstance(normalize_reply(task, reply), str)
    except TaskError as err:
        assert "catastrophic backtracking" in str(err) and "\n" not in str(err)
    assert time.monotonic() - start < NORMALIZE_SECONDS + 2


@pytest.mark.parametrize("pattern", [r"((?:a|aa)+)b", r"((?:a|a)+)b"])
def test_a_backtracking_pattern_is_refused_in_one_line(pattern):
    with pytest.raises(TaskError, match="took over 1 s on a reply of 40 characters"):
        normalize_reply(_regex_task(pattern), "a" * 39 + "c")


def test_a_refused_label_is_refused_before_anything_is_sampled(ckpt, tmp_path, capsys,
                                                                monkeypatch):
    """Results of another checkpoint under the label, or a live writer holding it: one line
    before the first sample is drawn (a --discover 2048 run used to sample for a minute first)."""
    import fcntl
    import os

    from answerdist.engine.run import job

    def never(*args, **kwargs):
        raise AssertionError("sampled before the label was checked")

    out = tmp_path / "res"
    other = tmp_path / "other"
    short_reply_checkpoint(other, seed=5)
    assert score.main([str(other), "--tasks", "coin", "--out", str(out), "--label", "L"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(job, "discover", never)
    argv = [str(ckpt), "--tasks", str(task_file(tmp_path)), "--discover", "2048", "--out",
            str(out), "--label", "L"]
    assert score.main(argv) == 2
    assert "holds coin from another checkpoint" in capsys.readouterr().err
    fd = os.open(out / "L" / ".lock", os.O_RDWR)  # a live writer holds the label (flock:
    os.pwrite(fd, b"pid 4242 on elsewhere", 0)   # per open file, so this open conflicts with
    fcntl.flock(fd, fcntl.LOCK_EX)               # the run's own, in this process too)
    try:
        assert score.main([*argv, "--overwrite"]) == 2
        assert "being written by pid 4242" in capsys.readouterr().err
    finally:
        os.close(fd)
