"""Task suite: the shipped task files, the loader, every validation error, rendering, specs."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from answerdist.engine.tasks import (
    DEFAULT_BASE_FORMAT,
    Answer,
    Prompt,
    Task,
    builtin_task_names,
    check_variants_tokenize,
    format_task_list,
    load_task_file,
    load_tasks,
    parse_tasks,
    task_groups,
)
from answerdist.errors import TaskError

RANKS = ["Ace"] + [str(i) for i in range(2, 11)] + ["Jack", "Queen", "King"]
SUITS = ["Spades", "Hearts", "Diamonds", "Clubs"]

EXPECTED_ANSWERS = {
    "rng_1_10": [str(i) for i in range(1, 11)],
    "digit": [str(i) for i in range(10)],
    "rng_1_100": [str(i) for i in range(1, 101)],
    "coin": ["Heads", "Tails"],
    "die": [str(i) for i in range(1, 7)],
    "rps": ["Rock", "Paper", "Scissors"],
    "letter": list(string.ascii_uppercase),
    "color": ["Red", "Orange", "Yellow", "Green", "Blue", "Purple", "Pink", "Brown", "Black",
              "White", "Gray"],
    "weekday": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "month": ["January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December"],
    "suit": ["Hearts", "Diamonds", "Clubs", "Spades"],
    "continent": ["Africa", "Antarctica", "Asia", "Australia", "Europe", "North America",
                  "South America"],
    "card": [f"{r} of {s}" for s in SUITS for r in RANKS],
}

GOOD = '''
name = "coin"
description = "Flip a coin."
answers = [
  { answer = "Heads", variants = ["Heads", "heads"] },
  "Tails",
]

[[prompts]]
id = "plain"
text = "Flip a coin: {options}? ({n} sides)"

[[prompts]]
id = "braces"
text = "Reply as {{side}}."
'''


def write(tmp_path: Path, text: str, name: str = "t.toml") -> Path:
    """Write a task file under tmp_path and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def task_text(answers: str = '["A", "B"]', prompts: str | None = None, extra: str = "",
              name: str = "bad") -> str:
    """A task file with the given answers array, prompts tables and extra top-level lines."""
    if prompts is None:
        prompts = '[[prompts]]\nid = "p"\ntext = "Pick."\n'
    return f'name = "{name}"\n{extra}\nanswers = {answers}\n\n{prompts}'


def assert_error(tmp_path: Path, text: str, *fragments: str) -> str:
    """Loading `text` raises one-line TaskError naming the file and every fragment."""
    path = write(tmp_path, text)
    with pytest.raises(TaskError) as info:
        load_task_file(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# ---------------------------------------------------------------------------------------------
# The shipped suite


def test_fifteen_builtin_tasks_ship():
    names = builtin_task_names()
    assert len(names) == 15
    assert set(EXPECTED_ANSWERS) | {"fruit", "animal"} == set(names)
    assert [t.name for t in load_tasks("all")] == names


@pytest.mark.parametrize("name", sorted(EXPECTED_ANSWERS))
def test_builtin_answer_sets_exact(name):
    (task,) = load_tasks(name)
    assert list(task.answer_names) == EXPECTED_ANSWERS[name]


@pytest.mark.parametrize("name", ["fruit", "animal"])
def test_fruit_and_animal_have_fifteen_answers(name):
    (task,) = load_tasks(name)
    assert len(task.answers) == 15
    assert all(1 <= len(a.name.split()) <= 2 for a in task.answers)


def test_letter_is_upper_case_only():
    (task,) = load_tasks("letter")
    assert all(v.isupper() for a in task.answers for v in a.variants)


def test_card_variants_are_moderate():
    (task,) = load_tasks("card")
    assert sum(len(a.variants) for a in task.answers) <= 104


@pytest.mark.parametrize("name", builtin_task_names())
def test_builtin_task_is_well_formed(name):
    (task,) = load_tasks(name)
    assert task.source == f"answerdist/engine/tasks/{name}.toml"
    assert task.description
    assert task.base_format == DEFAULT_BASE_FORMAT
    assert len(task.prompts) >= 12
    texts = [task.prompt_text(p) for p in task.prompts]
    assert len(set(texts)) == len(texts), "two prompts have the same text"
    for p, text in zip(task.prompts, texts, strict=True):
        assert text == text.strip(), f"prompt {p.id!r} has leading/trailing whitespace"
        assert "{" not in text and "}" not in text, f"prompt {p.id!r} left a brace"
        assert task.render_base(p) == f"{text}\nAnswer:"
    for a in task.answers:
        assert a.variants[0] == a.name
        assert len(a.variants) == len(set(a.variants))


@pytest.mark.parametrize("name", builtin_task_names())
def test_builtin_files_pass_the_validator_again(name):
    """Re-parse each shipped file from disk with the public loader (not the cached one)."""
    path = Path(__file__).resolve().parents[1] / "answerdist" / "engine" / "tasks" / f"{name}.toml"
    (task,) = load_task_file(path)
    assert task.name == name


def test_builtin_prompts_are_diverse():
    """Every task mixes framings: plain, think-of, roleplay, format instruction, placeholders."""
    for task in load_tasks("all"):
        ids = {p.id for p in task.prompts}
        assert {"plain", "think_of", "pirate", "terse", "polite", "casual"} <= ids, task.name
        assert any("{" in p.text for p in task.prompts), task.name


# ---------------------------------------------------------------------------------------------
# The large group


LARGE = ["country", "first_name", "rng_1_1000"]


def test_groups_keep_all_unchanged_and_add_large():
    groups = task_groups()
    assert list(groups) == ["all", "large", "open"]
    assert groups["all"] == builtin_task_names() and len(groups["all"]) == 15
    assert groups["large"] == builtin_task_names("large") == LARGE
    assert [t.name for t in load_tasks("large")] == LARGE
    assert not set(groups) & {n for names in groups.values() for n in names}
    with pytest.raises(TaskError,
                       match="unknown task group 'huge'; known groups: all, large, open"):
        builtin_task_names("huge")
    mixed = load_tasks("coin,large,all")
    assert [t.name for t in mixed] == ["coin", *LARGE, *[n for n in groups["all"] if n != "coin"]]


@pytest.mark.parametrize("name", LARGE)
def test_large_task_is_well_formed(name):
    (task,) = load_tasks(name)
    assert task.source == f"answerdist/engine/tasks/large/{name}.toml"
    assert task.description and task.base_format == DEFAULT_BASE_FORMAT
    assert len(task.prompts) >= 12
    ids = {p.id for p in task.prompts}
    assert {"plain", "think_of", "pirate", "terse", "polite", "casual"} <= ids
    texts = [task.prompt_text(p) for p in task.prompts]
    assert len(set(texts)) == len(texts)
    for p, text in zip(task.prompts, texts, strict=True):
        assert text == text.strip() and "{" not in text and "}" not in text
        # No prompt lists the answer set: with hundreds of answers the prompt would dominate
        # the tokens scored and overflow small models' contexts.
        assert len(text) < 200, p.id
    path = (Path(__file__).resolve().parents[1] / "answerdist" / "engine" / "tasks" / "large"
            / f"{name}.toml")
    (again,) = load_task_file(path)
    assert (again.name, again.answers, again.prompts) == (task.name, task.answers, task.prompts)


def test_rng_1_1000_answers():
    (task,) = load_tasks("rng_1_1000")
    assert list(task.answer_names) == [str(i) for i in range(1, 1001)]
    assert all(a.variants == (a.name,) for a in task.answers)


def test_country_is_the_193_un_member_states():
    (task,) = load_tasks("country")
    names = task.answer_names
    assert len(names) == 193 and list(names) == sorted(names)
    # The pairs the prefix rule constrains, named as docs/tasks.md and the file explain.
    assert {"Republic of Guinea", "Guinea-Bissau", "Equatorial Guinea", "Papua New Guinea",
            "Republic of the Congo", "Democratic Republic of the Congo", "Niger", "Nigeria",
            "Dominica", "Dominican Republic", "Sudan", "South Sudan", "United States",
            "United Kingdom", "North Korea", "South Korea"} <= set(names)
    variants = {v for a in task.answers for v in a.variants}
    assert not {"Guinea", "Congo"} & variants
    assert {"Czechia", "Timor-Leste", "Côte d'Ivoire", "USA"} <= variants
    assert all(v[0].isupper() for v in variants)  # proper nouns: no lower-case variants


def test_first_name_is_a_thousand_capitalised_single_words():
    (task,) = load_tasks("first_name")
    names = task.answer_names
    assert len(names) == 1000 and list(names) == sorted(names)
    assert all(n.isalpha() and n[0].isupper() and n[1:].islower() for n in names)
    assert all(a.variants == (a.name,) for a in task.answers)
    assert {"Mary", "James", "Olivia", "Oliver", "Niamh", "Callum"} <= set(names)


# ---------------------------------------------------------------------------------------------
# Loading a good file, placeholders, rendering


def test_load_good_file(tmp_path):
    path = write(tmp_path, GOOD)
    (task,) = load_task_file(path)
    assert task.name == "coin"
    assert task.source == str(path)
    assert task.answers == (Answer("Heads", ("Heads", "heads")), Answer("Tails", ("Tails",)))
    assert task.answer_names == ("Heads", "Tails")
    assert [p.id for p in task.prompts] == ["plain", "braces"]
    assert task.base_format == "{prompt}\nAnswer:"
    assert task.assistant_prefix == ""


def test_placeholders_and_literal_braces(tmp_path):
    (task,) = load_task_file(write(tmp_path, GOOD))
    assert task.prompt_text(task.prompt("plain")) == "Flip a coin: Heads, Tails? (2 sides)"
    assert task.prompt_text(task.prompt("braces")) == "Reply as {side}."


def test_render_base_default_and_custom(tmp_path):
    (task,) = load_task_file(write(tmp_path, GOOD))
    assert task.render_base(task.prompt("braces")) == "Reply as {side}.\nAnswer:"
    custom = GOOD.replace('description = "Flip a coin."',
                          'base_format = "Q: {prompt}\\nA:"\nassistant_prefix = "Result: "')
    (task,) = load_task_file(write(tmp_path, custom, "custom.toml"))
    assert task.render_base(task.prompt("plain")) == "Q: Flip a coin: Heads, Tails? (2 sides)\nA:"
    assert task.assistant_prefix == "Result: "
    assert task.description == ""


def test_prompt_lookup_unknown_id(tmp_path):
    (task,) = load_task_file(write(tmp_path, GOOD))
    with pytest.raises(KeyError):
        task.prompt("nope")


def test_answers_as_array_of_tables(tmp_path):
    text = ('name = "t"\n[[answers]]\nanswer = "Rock"\nvariants = ["Rock", "rock"]\n'
            '[[answers]]\nanswer = "Paper"\n[[prompts]]\nid = "p"\ntext = "Go."\n')
    (task,) = load_task_file(write(tmp_path, text))
    assert task.answers == (Answer("Rock", ("Rock", "rock")), Answer("Paper", ("Paper",)))


def test_multi_task_file(tmp_path):
    text = ('[[tasks]]\nname = "one"\nanswers = ["A"]\n[[tasks.prompts]]\nid = "p"\ntext = "x"\n'
            '[[tasks]]\nname = "two"\nanswers = ["B"]\n[[tasks.prompts]]\nid = "p"\ntext = "y"\n')
    tasks = load_task_file(write(tmp_path, text))
    assert [t.name for t in tasks] == ["one", "two"]


def test_task_constructor_validates():
    with pytest.raises(TaskError, match="absorb"):
        Task("t", "", (Answer("A", ("A", "A.")),), (Prompt("p", "x"),))


# ---------------------------------------------------------------------------------------------
# Validation errors: file level


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(TaskError, match="not found") as info:
        load_task_file(path)
    assert str(path) in str(info.value)


def test_directory_is_unreadable(tmp_path):
    with pytest.raises(TaskError, match="cannot read") as info:
        load_task_file(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(TaskError, match="UTF-8"):
        load_task_file(path)


def test_toml_syntax_error_names_line(tmp_path):
    assert_error(tmp_path, 'name = "x"\nanswers = [\n"A",\nbroken\n', "TOML syntax error", "line")


def test_tasks_array_with_other_top_level_keys(tmp_path):
    text = 'name = "x"\n[[tasks]]\nname = "y"\n'
    assert_error(tmp_path, text, "top-level key 'name'", "[[tasks]]")


def test_tasks_must_be_tables(tmp_path):
    assert_error(tmp_path, 'tasks = ["a"]\n', "tasks", "array of [[tasks]] tables")


def test_duplicate_task_names_in_one_file(tmp_path):
    text = ('[[tasks]]\nname = "one"\nanswers = ["A"]\n[[tasks.prompts]]\nid = "p"\ntext = "x"\n'
            '[[tasks]]\nname = "one"\nanswers = ["B"]\n[[tasks.prompts]]\nid = "p"\ntext = "y"\n')
    assert_error(tmp_path, text, "task 'one'", "also defined")


# ---------------------------------------------------------------------------------------------
# Validation errors: missing fields, types, unknown keys


def test_missing_name(tmp_path):
    assert_error(tmp_path, 'answers = ["A"]\n', "task", "missing field 'name'")


def test_missing_name_in_tasks_array(tmp_path):
    text = '[[tasks]]\nanswers = ["A"]\n'
    assert_error(tmp_path, text, "[[tasks]] #1", "missing field 'name'")


@pytest.mark.parametrize("field", ["answers", "prompts"])
def test_missing_answers_or_prompts(tmp_path, field):
    text = task_text()
    if field == "answers":
        text = text.replace('answers = ["A", "B"]', "")
    else:
        text = text.split("[[prompts]]")[0]
    assert_error(tmp_path, text, "task 'bad'", f"missing field '{field}'")


def test_missing_answer_field(tmp_path):
    text = task_text(answers='[{ answer = "A" }, { variants = ["B"] }]')
    assert_error(tmp_path, text, "task 'bad'", "answers #2", "missing field 'answer'")


def test_missing_prompt_id(tmp_path):
    text = task_text(prompts='[[prompts]]\ntext = "Pick."\n')
    assert_error(tmp_path, text, "task 'bad'", "prompts #1", "missing field 'id'")


def test_missing_prompt_text(tmp_path):
    text = task_text(prompts='[[prompts]]\nid = "plain"\n')
    assert_error(tmp_path, text, "task 'bad'", "prompt 'plain'", "missing field 'text'")


@pytest.mark.parametrize("text, fragments", [
    ('name = 3\nanswers = ["A"]\n', ("field 'name' must be a string", "integer")),
    (task_text(extra="description = 1"), ("task 'bad'", "'description' must be a string")),
    (task_text(extra="base_format = true"), ("'base_format' must be a string", "boolean")),
    (task_text(extra="assistant_prefix = []"), ("'assistant_prefix' must be a string",)),
    (task_text(answers='"A"'), ("task 'bad'", "answers", "must be an array, got string")),
    (task_text(answers="[1, 2]"), ("answers #1", "integer", 'quote numbers')),
    (task_text(answers='[{ answer = 1 }]'), ("answers #1", "'answer' must be a string")),
    (task_text(answers='[{ answer = "A", variants = "A" }]'), ("answer 'A'", "must be an array")),
    (task_text(answers='[{ answer = "1", variants = ["1", 1] }]'),
     ("answer '1'", "variant 1 must be a string", "quote numbers")),
    (task_text(prompts='prompts = "x"\n'), ("prompts", "array of [[prompts]] tables")),
    (task_text(prompts='prompts = ["x"]\n'), ("prompts #1", "must be a table")),
    (task_text(prompts='[[prompts]]\nid = 1\ntext = "x"\n'), ("prompts #1", "'id' must be")),
    (task_text(prompts='[[prompts]]\nid = "p"\ntext = 2\n'), ("prompt 'p'", "'text' must be")),
])
def test_wrong_types(tmp_path, text, fragments):
    assert_error(tmp_path, text, *fragments)


def test_unknown_top_level_key_suggests_fix(tmp_path):
    text = task_text(answers='["A"]\nanwers = ["B"]')
    assert_error(tmp_path, text, "task 'bad'", "unknown key 'anwers'", "did you mean 'answers'")


def test_unknown_answer_key(tmp_path):
    text = task_text(answers='[{ answer = "A", variant = ["A"] }]')
    assert_error(tmp_path, text, "answers #1", "unknown key 'variant'", "'variants'")


def test_unknown_prompt_key(tmp_path):
    text = task_text(prompts='[[prompts]]\nid = "p"\ntext = "x"\nweight = 2\n')
    assert_error(tmp_path, text, "prompts #1", "unknown key 'weight'", "allowed")


# ---------------------------------------------------------------------------------------------
# Validation errors: answers and variants


def test_bad_task_name(tmp_path):
    assert_error(tmp_path, task_text(name="my task"), "task name 'my task'", "letters, digits")


def test_empty_answer_set(tmp_path):
    assert_error(tmp_path, task_text(answers="[]"), "task 'bad'", "answer set is empty")


def test_empty_prompt_list(tmp_path):
    text = task_text(prompts="prompts = []\n")
    assert_error(tmp_path, text, "task 'bad'", "no prompts")


def test_duplicate_answers(tmp_path):
    text = task_text(answers='["A", "B", "A"]')
    assert_error(tmp_path, text, "task 'bad'", "answer 'A'", "duplicate answer")


def test_duplicate_variant_within_answer(tmp_path):
    text = task_text(answers='[{ answer = "A", variants = ["A", "a", "a"] }]')
    assert_error(tmp_path, text, "answer 'A', variant 'a'", "duplicate variant", "twice")


def test_duplicate_variant_across_answers(tmp_path):
    text = task_text(answers='[{ answer = "A", variants = ["A", "x"] }, '
                             '{ answer = "B", variants = ["B", "x"] }]')
    assert_error(tmp_path, text, "answer 'B', variant 'x'", "also under answer 'A'")


def test_first_variant_must_be_answer(tmp_path):
    text = task_text(answers='[{ answer = "Heads", variants = ["heads", "Heads"] }]')
    assert_error(tmp_path, text, "answer 'Heads'", "first variant is 'heads'")


def test_empty_variants_list(tmp_path):
    text = task_text(answers='[{ answer = "A", variants = [] }]')
    assert_error(tmp_path, text, "answer 'A'", "variants is empty")


@pytest.mark.parametrize("variant, problem", [
    ("", "empty or whitespace"),
    ("   ", "empty or whitespace"),
    (" a", "leading or trailing whitespace"),
    ("a\\n", "leading or trailing whitespace"),
])
def test_blank_or_padded_variant(tmp_path, variant, problem):
    text = task_text(answers=f'[{{ answer = "A", variants = ["A", "{variant}"] }}]')
    assert_error(tmp_path, text, "task 'bad'", "answer 'A', variant", problem)


def test_blank_answer_name(tmp_path):
    assert_error(tmp_path, task_text(answers='["A", ""]'), "answer '', variant ''", "empty")


@pytest.mark.parametrize("short, long", [
    ("Ace", "Ace of Spades"),
    ("1", "1.5"),
    ("Heads", "Heads!"),
    ("North", "North-West"),
])
def test_variant_prefix_that_would_absorb(tmp_path, short, long):
    text = task_text(answers=f'["{long}", "{short}"]')
    assert_error(tmp_path, text, f"variant '{short}'", f"prefix of variant '{long}'", "absorb")


def test_variant_prefix_within_one_answer(tmp_path):
    text = task_text(answers='[{ answer = "Ace of Spades", variants = ["Ace of Spades", "Ace"] }]')
    assert_error(tmp_path, text, "variant 'Ace'", "prefix of variant 'Ace of Spades'")


def test_alphanumeric_continuation_is_fine(tmp_path):
    text = task_text(answers='["1", "10", "100", "Heart", "Hearts", "North America"]')
    (task,) = load_task_file(write(tmp_path, text))
    assert len(task.answers) == 6


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="ab .1", min_size=1, max_size=4), min_size=1, max_size=8,
                unique=True))
def test_prefix_rule_matches_brute_force(variants):
    """The sorted-scan prefix check agrees with the obvious quadratic definition."""
    variants = [v for v in variants if v == v.strip()]
    if not variants:
        return
    bad = any(u != v and v.startswith(u) and not v[len(u)].isalnum()
              for u in variants for v in variants)
    answers = tuple(Answer(v, (v,)) for v in variants)
    try:
        Task("t", "", answers, (Prompt("p", "x"),))
        raised = False
    except TaskError as exc:
        assert "absorb" in str(exc)
        raised = True
    assert raised == bad


# ---------------------------------------------------------------------------------------------
# Validation errors: prompts, placeholders, base_format


def test_duplicate_prompt_ids(tmp_path):
    prompts = '[[prompts]]\nid = "p"\ntext = "a"\n[[prompts]]\nid = "p"\ntext = "b"\n'
    assert_error(tmp_path, task_text(prompts=prompts), "prompt 'p'", "duplicate prompt id")


def test_bad_prompt_id(tmp_path):
    prompts = '[[prompts]]\nid = "two words"\ntext = "a"\n'
    assert_error(tmp_path, task_text(prompts=prompts), "prompt 'two words'", "prompt id")


def test_empty_prompt_text(tmp_path):
    prompts = '[[prompts]]\nid = "p"\ntext = "  "\n'
    assert_error(tmp_path, task_text(prompts=prompts), "prompt 'p'", "text is empty")


@pytest.mark.parametrize("text, shown", [
    ("Pick {option}.", "{option}"),
    ("Pick {prompt}.", "{prompt}"),
    ("Pick {}.", "{}"),
    ("Pick {0}.", "{0}"),
    ("Pick {n:02d}.", "{n:02d}"),
    ("Pick {options!r}.", "{options!r}"),
    ("Pick {options[0]}.", "{options[0]}"),
])
def test_unknown_placeholder_in_prompt(tmp_path, text, shown):
    prompts = f'[[prompts]]\nid = "p"\ntext = "{text}"\n'
    assert_error(tmp_path, task_text(prompts=prompts), "task 'bad'", "prompt 'p'",
                 f"unknown placeholder {shown}", "{options}, {n}")


@pytest.mark.parametrize("text", ["Pick { one.", "Pick } one."])
def test_unbalanced_brace_in_prompt(tmp_path, text):
    prompts = f'[[prompts]]\nid = "p"\ntext = "{text}"\n'
    assert_error(tmp_path, task_text(prompts=prompts), "prompt 'p'", "malformed placeholder",
                 "{{")


def test_base_format_without_prompt(tmp_path):
    text = task_text(extra='base_format = "Answer:"')
    assert_error(tmp_path, text, "task 'bad'", "base_format 'Answer:'", "must contain {prompt}")


def test_base_format_unknown_placeholder(tmp_path):
    text = task_text(extra='base_format = "{prompt} {options}\\nAnswer:"')
    assert_error(tmp_path, text, "base_format", "unknown placeholder {options}", "{prompt}")


def test_base_format_trailing_whitespace(tmp_path):
    text = task_text(extra='base_format = "{prompt}\\nAnswer: "')
    assert_error(tmp_path, text, "base_format", "ends with whitespace")


def test_assistant_prefix_is_literal(tmp_path):
    text = task_text(extra='assistant_prefix = "{options} "')
    (task,) = load_task_file(write(tmp_path, text))
    assert task.assistant_prefix == "{options} "


# ---------------------------------------------------------------------------------------------
# Tokenizer-dependent check


def test_check_variants_tokenize_passes():
    (task,) = load_tasks("coin")
    check_variants_tokenize(task, lambda s: [ord(c) for c in s])


def test_check_variants_tokenize_empty_encoding():
    (task,) = load_tasks("coin")
    encode = lambda s: [] if s == "tails" else [1, 2]
    with pytest.raises(TaskError) as info:
        check_variants_tokenize(task, encode)
    message = str(info.value)
    assert "answerdist/engine/tasks/coin.toml" in message
    assert "task 'coin'" in message
    assert "answer 'Tails', variant 'tails'" in message
    assert "tokenizes to nothing" in message


# ---------------------------------------------------------------------------------------------
# Specs


def test_spec_names_in_order_and_deduplicated():
    assert [t.name for t in load_tasks("die, coin,die")] == ["die", "coin"]


def test_spec_default_is_all():
    assert [t.name for t in load_tasks()] == builtin_task_names()


def test_spec_unknown_name_lists_known():
    with pytest.raises(TaskError) as info:
        load_tasks("coin,dice")
    message = str(info.value)
    assert "unknown task 'dice'" in message
    assert "rng_1_10" in message and "coin" in message
    assert "'large'" in message and "rng_1_1000" in message
    assert "\n" not in message


@pytest.mark.parametrize("spec", ["", " , "])
def test_spec_empty(spec):
    with pytest.raises(TaskError, match="no tasks"):
        load_tasks(spec)


def test_spec_path_and_mix(tmp_path):
    path = write(tmp_path, GOOD.replace('name = "coin"', 'name = "my_coin"'))
    assert [t.name for t in load_tasks(str(path))] == ["my_coin"]
    assert [t.name for t in load_tasks(f"die,{path}")] == ["die", "my_coin"]


def test_spec_path_with_comma(tmp_path):
    path = write(tmp_path, GOOD.replace('name = "coin"', 'name = "odd"'), "a,b.toml")
    assert [t.name for t in load_tasks(str(path))] == ["odd"]


def test_spec_missing_path():
    with pytest.raises(TaskError, match="not found"):
        load_tasks("no/such/file.toml")


def test_spec_user_task_clashing_with_builtin(tmp_path):
    path = write(tmp_path, GOOD)  # also named "coin"
    with pytest.raises(TaskError) as info:
        load_tasks(f"coin,{path}")
    assert "task 'coin'" in str(info.value)
    assert "answerdist/engine/tasks/coin.toml" in str(info.value)


def test_parse_tasks_uses_source_name():
    with pytest.raises(TaskError, match=r"^inline\.toml: "):
        parse_tasks("name = [", "inline.toml")


# ---------------------------------------------------------------------------------------------
# --list-tasks table


def test_format_task_list():
    table = format_task_list(load_tasks("coin,rng_1_100"))
    lines = table.splitlines()
    assert lines[0].split() == ["task", "answers", "prompts", "description"]
    assert lines[1].split()[:3] == ["coin", "2", "15"]
    assert "Flip a fair coin." in lines[1]
    assert lines[2].split()[:2] == ["rng_1_100", "100"]
    column = lines[0].index("description")
    assert lines[1].index("Flip a fair coin.") == column
    assert lines[2].index("Pick a random integer") == column
    assert all(line == line.rstrip() for line in lines)
