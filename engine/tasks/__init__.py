"""The task suite: stochastic tasks, their answer sets and prompt variants, loaded from TOML.

A task is a question with a finite answer set ("pick a random number between 1 and 10") asked
in many phrasings. Built-in tasks ship as data files beside this module, one task per file, the
file named after the task, in groups (`TASK_GROUPS`): the default suite "all" (fifteen tasks,
`engine/tasks/*.toml`) and "large" (hundreds to a thousand answers each,
`engine/tasks/large/*.toml`), each task also loadable by name; users add their own with
`--tasks FILE`.

File format (one task per file)::

    name = "coin"                         # required; letters, digits, "_" and "-"
    description = "Flip a fair coin."     # optional; default ""
    base_format = "{prompt}\\nAnswer:"     # optional; default "{prompt}\\nAnswer:"
    assistant_prefix = ""                 # optional; default ""

    answers = [                           # required, non-empty, in a fixed order
      { answer = "Heads", variants = ["Heads", "heads"] },
      "Tails",                            # a bare string: an answer with no other variant
    ]

    [[prompts]]                           # required, non-empty
    id = "plain"                          # short slug, unique within the task
    text = "Flip a coin. Reply with {options} only."

Answers may also be written as `[[answers]]` tables. `variants` defaults to `[answer]`; when
given, its first entry must be the answer itself. A file may instead hold several tasks as
`[[tasks]]` tables, each with the keys above, and nothing else at top level.

Placeholders (`str.format` syntax, no format spec or conversion): prompt texts may use
`{options}` (the canonical answers joined by ", ") and `{n}` (the number of answers);
`base_format` must contain `{prompt}` and may use nothing else. `{{` and `}}` are literal
braces. `assistant_prefix` is literal text, never formatted.

Modes: in chat mode the filled prompt text is the user message, the assistant turn starts with
`assistant_prefix`, and the answer follows directly. In base mode the prompt is
`render_base(prompt)` and the scorer puts one space before the answer, so `base_format` must not
end with whitespace.

Validation happens on load and raises `TaskError` with one line naming the file, the task and
the offending entry: missing fields, wrong types, unknown keys, empty answer or prompt lists,
duplicate answers, variants or prompt ids, variants that are empty or carry leading/trailing
whitespace, a variant that is a prefix of another variant where the next character of the
longer one is not alphanumeric (it would absorb the other's probability mass through the
boundary token), unknown placeholders, and a `base_format` without `{prompt}`. Variants that
tokenize to nothing are caught by `check_variants_tokenize`, which the scorer calls once it has
a tokenizer. See docs/tasks.md.
"""

from __future__ import annotations

import difflib
import functools
import re
import string
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

from engine.errors import TaskError

__all__ = [
    "DEFAULT_BASE_FORMAT",
    "Answer",
    "Prompt",
    "TASK_GROUPS",
    "Task",
    "builtin_task_names",
    "check_variants_tokenize",
    "format_task_list",
    "load_task_file",
    "load_tasks",
    "parse_tasks",
    "task_groups",
]

DEFAULT_BASE_FORMAT = "{prompt}\nAnswer:"

_TASK_KEYS = ("name", "description", "base_format", "assistant_prefix", "answers", "prompts")
_ANSWER_KEYS = ("answer", "variants")
_PROMPT_KEYS = ("id", "text")
_PROMPT_PLACEHOLDERS = ("options", "n")
_BASE_PLACEHOLDERS = ("prompt",)
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")
_BUILTIN_DIR = "engine/tasks"
# Built-in task groups: group name -> the subdirectory of engine/tasks holding its files. "all"
# is the default suite (what the demo trains on and `--tasks` defaults to); the large answer
# spaces are opt-in, since scoring them costs a hundred times more.
TASK_GROUPS = {"all": "", "large": "large"}


# ---------------------------------------------------------------------------------------------
# Data model


@dataclass(frozen=True)
class Answer:
    """A canonical answer and its surface variants (the first variant is the answer itself)."""

    name: str
    variants: tuple[str, ...]


@dataclass(frozen=True)
class Prompt:
    """One phrasing of a task; `text` may hold the placeholders {options} and {n}."""

    id: str
    text: str


@dataclass(frozen=True)
class Task:
    """A validated stochastic task. Constructing one runs every tokenizer-free check."""

    name: str
    description: str
    answers: tuple[Answer, ...]
    prompts: tuple[Prompt, ...]
    base_format: str = DEFAULT_BASE_FORMAT
    assistant_prefix: str = ""
    source: str = "<memory>"

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def answer_names(self) -> tuple[str, ...]:
        """The canonical answers, in order."""
        return tuple(a.name for a in self.answers)

    def prompt(self, prompt_id: str) -> Prompt:
        """The prompt with this id (KeyError if there is none)."""
        for p in self.prompts:
            if p.id == prompt_id:
                return p
        raise KeyError(prompt_id)

    def prompt_text(self, prompt: Prompt) -> str:
        """The prompt's text with {options} and {n} filled: the chat-mode user message."""
        return prompt.text.format(options=", ".join(self.answer_names), n=len(self.answers))

    def render_base(self, prompt: Prompt) -> str:
        """The base-mode prompt: base_format around the filled text (the scorer adds the space)."""
        return self.base_format.format(prompt=self.prompt_text(prompt))


# ---------------------------------------------------------------------------------------------
# Errors


def _fail(source: str, task: str | None, entry: str | None, problem: str) -> TaskError:
    """Build a one-line TaskError: '<source>: task '<name>': <entry>: <problem>'."""
    parts = [source]
    if task is not None:
        parts.append(f"task {task!r}")
    if entry:
        parts.append(entry)
    parts.append(problem)
    return TaskError(": ".join(parts).replace("\r", " ").replace("\n", " "))


def _toml_type(value: object) -> str:
    """The TOML name of a parsed value's type, for error messages."""
    names = {str: "string", bool: "boolean", int: "integer", float: "float", list: "array",
             dict: "table"}
    return names.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------------
# Validation of a constructed Task (no tokenizer needed)


def _validate(task: Task) -> None:
    """Run every tokenizer-free check on a task; raise TaskError at the first problem."""
    fail = functools.partial(_fail, task.source, task.name)
    if not isinstance(task.name, str) or not _SLUG.match(task.name):
        raise _fail(task.source, None, f"task name {task.name!r}",
                    "must be letters, digits, '_' or '-', starting with a letter or digit")
    if not task.answers:
        raise fail("answers", "the answer set is empty; list at least one answer")
    if not task.prompts:
        raise fail("prompts", "no prompts; add at least one [[prompts]] table")
    _check_answers(task.answers, fail)
    _check_variants([(a.name, v) for a in task.answers for v in a.variants], fail)
    _check_prompts(task.prompts, fail)
    _check_base_format(task.base_format, fail)


def _check_answers(answers: tuple[Answer, ...], fail: Callable[..., TaskError]) -> None:
    """Answer names are unique, and each answer's first variant is the answer itself."""
    seen: set[str] = set()
    for a in answers:
        if a.name in seen:
            raise fail(f"answer {a.name!r}", "duplicate answer; list each answer once")
        seen.add(a.name)
        if not a.variants:
            raise fail(f"answer {a.name!r}", "variants is empty; omit it to use the answer alone")
        if a.variants[0] != a.name:
            raise fail(f"answer {a.name!r}",
                       f"first variant is {a.variants[0]!r}; the first variant must be the "
                       "answer itself")


def _check_variants(pairs: list[tuple[str, str]], fail: Callable[..., TaskError]) -> None:
    """Variants are non-empty, unpadded, distinct, and no variant can absorb another."""
    owner: dict[str, str] = {}
    for answer, v in pairs:
        entry = f"answer {answer!r}, variant {v!r}"
        if not v.strip():
            raise fail(entry, "variant is empty or whitespace; remove it")
        if v != v.strip():
            raise fail(entry, "variant has leading or trailing whitespace; remove the whitespace")
        if v in owner:
            where = "twice" if owner[v] == answer else f"also under answer {owner[v]!r}"
            raise fail(entry, f"duplicate variant (listed {where}); variants must be distinct")
        owner[v] = answer
    pair = _absorbing_pair(list(owner))
    if pair:
        short, long = pair
        raise fail(f"answer {owner[short]!r}, variant {short!r}",
                   f"is a prefix of variant {long!r} (answer {owner[long]!r}) followed by "
                   f"{long[len(short)]!r}, so it would absorb that variant's probability; "
                   "remove or rename one of them")


def _absorbing_pair(variants: list[str]) -> tuple[str, str] | None:
    """A pair (short, long) where long = short + a non-alphanumeric character + ..., if any."""
    ordered = sorted(variants)
    for i, short in enumerate(ordered):
        # Strings that start with `short` sit right after it in sorted order.
        for long in ordered[i + 1:]:
            if not long.startswith(short):
                break
            if not long[len(short)].isalnum():
                return short, long
    return None


def _check_prompts(prompts: tuple[Prompt, ...], fail: Callable[..., TaskError]) -> None:
    """Prompt ids are unique slugs; texts are non-empty and use only known placeholders."""
    seen: set[str] = set()
    for p in prompts:
        entry = f"prompt {p.id!r}"
        if not _SLUG.match(p.id):
            raise fail(entry, "prompt id must be letters, digits, '_' or '-', starting with a "
                              "letter or digit")
        if p.id in seen:
            raise fail(entry, "duplicate prompt id; give each prompt its own id")
        seen.add(p.id)
        if not p.text.strip():
            raise fail(entry, "prompt text is empty; write the request")
        _check_placeholders(p.text, _PROMPT_PLACEHOLDERS, fail, entry)


def _check_base_format(base_format: str, fail: Callable[..., TaskError]) -> None:
    """base_format contains {prompt}, nothing else, and does not end with whitespace."""
    entry = f"base_format {base_format!r}"
    found = _check_placeholders(base_format, _BASE_PLACEHOLDERS, fail, entry)
    if "prompt" not in found:
        raise fail(entry, "base_format must contain {prompt}")
    if base_format != base_format.rstrip():
        raise fail(entry, "base_format ends with whitespace; remove it (the scorer puts one "
                          "space before the answer)")


def _check_placeholders(text: str, allowed: tuple[str, ...], fail: Callable[..., TaskError],
                        entry: str) -> set[str]:
    """Raise on a malformed or unknown placeholder; return the placeholder names found."""
    allowed_text = ", ".join("{" + a + "}" for a in allowed)
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(text)
                  if f is not None]
    except ValueError as exc:
        raise fail(entry, f"malformed placeholder ({exc}); write {{{{ and }}}} for literal "
                          "braces") from None
    found = set()
    for field, spec, conv in fields:
        shown = "{" + field + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
        if field not in allowed or spec or conv:
            raise fail(entry, f"unknown placeholder {shown}; allowed here: {allowed_text}; "
                              "write {{ and }} for literal braces")
        found.add(field)
    return found


def check_variants_tokenize(task: Task, encode: Callable[[str], list[int]]) -> None:
    """Raise TaskError if any variant of `task` encodes to no tokens at all under `encode`."""
    for a in task.answers:
        for v in a.variants:
            if len(encode(v)) == 0:
                raise _fail(task.source, task.name, f"answer {a.name!r}, variant {v!r}",
                            "tokenizes to nothing with this tokenizer; change or remove it")


# ---------------------------------------------------------------------------------------------
# Parsing TOML data into tasks


def parse_tasks(text: str, source: str) -> list[Task]:
    """Parse the TOML text of a task file; `source` names the file in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(source, None, None, f"TOML syntax error: {exc}; fix the file") from None
    if "tasks" not in data:
        return [_parse_task(data, source, None)]
    extra = sorted(set(data) - {"tasks"})
    if extra:
        raise _fail(source, None, f"top-level key {extra[0]!r}",
                    "a file with [[tasks]] may hold nothing else at top level; move it into "
                    "a [[tasks]] table")
    tables = data["tasks"]
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise _fail(source, None, "tasks", "must be a non-empty array of [[tasks]] tables")
    tasks = [_parse_task(t, source, i) for i, t in enumerate(tables)]
    _check_unique_names(tasks)
    return tasks


def _parse_task(table: dict, source: str, index: int | None) -> Task:
    """Turn one task table into a Task, checking presence, types and unknown keys."""
    label = "task" if index is None else f"[[tasks]] #{index + 1}"
    if "name" not in table:
        raise _fail(source, None, label, "missing field 'name'; add name = \"...\"")
    name = table["name"]
    if not isinstance(name, str):
        raise _fail(source, None, label, f"field 'name' must be a string, got {_toml_type(name)}")
    fail = functools.partial(_fail, source, name)
    _check_keys(table, _TASK_KEYS, fail, None)
    for key in ("answers", "prompts"):
        if key not in table:
            raise fail(None, f"missing field {key!r}; add it (see docs/tasks.md)")
    return Task(
        name=name,
        description=_string(table, "description", "", fail, None),
        answers=_parse_answers(table["answers"], fail),
        prompts=_parse_prompts(table["prompts"], fail),
        base_format=_string(table, "base_format", DEFAULT_BASE_FORMAT, fail, None),
        assistant_prefix=_string(table, "assistant_prefix", "", fail, None),
        source=source,
    )


def _check_keys(table: dict, allowed: tuple[str, ...], fail: Callable[..., TaskError],
                entry: str | None) -> None:
    """Reject keys not in `allowed`, suggesting the closest allowed key (typo protection)."""
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
            where = f"{entry}: unknown key {key!r}" if entry else f"unknown key {key!r}"
            raise fail(where, hint)


def _string(table: dict, key: str, default: str | None, fail: Callable[..., TaskError],
            entry: str | None) -> str:
    """table[key] as a string; `default` if absent (None: the field is required)."""
    if key not in table:
        if default is None:
            raise fail(entry, f"missing field {key!r}")
        return default
    value = table[key]
    if not isinstance(value, str):
        hint = ' (quote numbers: "1")' if isinstance(value, (int, float)) else ""
        raise fail(entry, f"field {key!r} must be a string, got {_toml_type(value)}{hint}")
    return value


def _parse_answers(entries: object, fail: Callable[..., TaskError]) -> tuple[Answer, ...]:
    """Parse the answers array: strings or tables with 'answer' and optional 'variants'."""
    if not isinstance(entries, list):
        raise fail("answers", f"must be an array, got {_toml_type(entries)}")
    return tuple(_parse_answer(e, i, fail) for i, e in enumerate(entries))


def _parse_answer(entry: object, index: int, fail: Callable[..., TaskError]) -> Answer:
    """One answer: a bare string, or a table {answer = ..., variants = [...]}."""
    label = f"answers #{index + 1}"
    if isinstance(entry, str):
        return Answer(entry, (entry,))
    if not isinstance(entry, dict):
        hint = ' (quote numbers: "1")' if isinstance(entry, (int, float)) else ""
        raise fail(label, f"must be a string or a table, got {_toml_type(entry)}{hint}")
    _check_keys(entry, _ANSWER_KEYS, fail, label)
    name = _string(entry, "answer", None, fail, label)
    variants = entry.get("variants", [name])
    label = f"answer {name!r}"
    if not isinstance(variants, list):
        raise fail(label, f"field 'variants' must be an array, got {_toml_type(variants)}")
    for v in variants:
        if not isinstance(v, str):
            hint = ' (quote numbers: "1")' if isinstance(v, (int, float)) else ""
            raise fail(label, f"variant {v!r} must be a string, got {_toml_type(v)}{hint}")
    return Answer(name, tuple(variants))


def _parse_prompts(entries: object, fail: Callable[..., TaskError]) -> tuple[Prompt, ...]:
    """Parse the prompts array of tables, each with 'id' and 'text'."""
    if not isinstance(entries, list):
        raise fail("prompts", f"must be an array of [[prompts]] tables, got {_toml_type(entries)}")
    prompts = []
    for i, entry in enumerate(entries):
        label = f"prompts #{i + 1}"
        if not isinstance(entry, dict):
            raise fail(label, f"must be a table with 'id' and 'text', got {_toml_type(entry)}")
        _check_keys(entry, _PROMPT_KEYS, fail, label)
        pid = _string(entry, "id", None, fail, label)
        prompts.append(Prompt(pid, _string(entry, "text", None, fail, f"prompt {pid!r}")))
    return tuple(prompts)


def _check_unique_names(tasks: Iterable[Task]) -> None:
    """Two different tasks may not share a name (results are stored per task name)."""
    seen: dict[str, Task] = {}
    for t in tasks:
        other = seen.get(t.name)
        if other is not None and other != t:
            raise _fail(t.source, t.name, None,
                        f"task name also defined in {other.source}; rename one of them")
        seen[t.name] = t


# ---------------------------------------------------------------------------------------------
# Loading files, built-ins and specs


def load_task_file(path: str | Path) -> list[Task]:
    """Load and validate every task in a TOML task file."""
    path = Path(path).expanduser()
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise _fail(str(path), None, None, "task file not found; check the path") from None
    except UnicodeDecodeError as exc:
        raise _fail(str(path), None, None, f"not UTF-8 text ({exc.reason} at byte "
                                           f"{exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise _fail(str(path), None, None, f"cannot read task file ({exc.strerror}); check "
                                           "the path and permissions") from None
    return parse_tasks(text, str(path))


def builtin_task_names(group: str = "all") -> list[str]:
    """Names of the built-in tasks of a group (default: the suite "all"), sorted."""
    if group not in TASK_GROUPS:
        raise TaskError(f"unknown task group {group!r}; known groups: {', '.join(TASK_GROUPS)}")
    return sorted(n for n, (g, _) in _builtin_files().items() if g == group)


def task_groups() -> dict[str, list[str]]:
    """{group: sorted task names} for every built-in group, in `TASK_GROUPS` order."""
    return {group: builtin_task_names(group) for group in TASK_GROUPS}


@functools.lru_cache(maxsize=1)
def _builtin_files() -> dict[str, tuple[str, str]]:
    """Map built-in task name -> (group, file path relative to this package)."""
    files: dict[str, tuple[str, str]] = {}
    for group, subdir in TASK_GROUPS.items():
        folder = resources.files(__name__).joinpath(subdir) if subdir else resources.files(__name__)
        for f in folder.iterdir():
            if f.name.endswith(".toml"):
                files[f.name[:-5]] = (group, f"{subdir}/{f.name}" if subdir else f.name)
    return files


@functools.lru_cache(maxsize=None)
def _builtin_task(name: str) -> Task:
    """Load one built-in task; its file must hold exactly that task."""
    filename = _builtin_files()[name][1]
    source = f"{_BUILTIN_DIR}/{filename}"
    tasks = parse_tasks(resources.files(__name__).joinpath(filename).read_text("utf-8"), source)
    if len(tasks) != 1 or tasks[0].name != name:
        raise _fail(source, None, None, f"a built-in task file must hold exactly the task {name!r}")
    return tasks[0]


def load_tasks(spec: str = "all") -> list[Task]:
    """Load tasks from a spec: group names ("all", "large"), built-in task names, .toml paths,
    or a comma-separated mix.

    Order follows the spec (a group expands to its tasks sorted by name); a task named twice
    is kept once; two different tasks with the same name are an error.
    """
    items = [spec] if Path(spec).expanduser().is_file() else [s.strip() for s in spec.split(",")]
    items = [s for s in items if s]
    if not items:
        raise TaskError(f"no tasks given in {spec!r}; name built-in tasks, 'all', or a .toml file")
    tasks: list[Task] = []
    for item in items:
        tasks.extend(_load_item(item))
    _check_unique_names(tasks)
    unique = {t.name: t for t in tasks}
    return list(unique.values())


def _load_item(item: str) -> list[Task]:
    """Tasks for one spec item: a group, a built-in name, or a path to a task file."""
    if item in TASK_GROUPS:
        return [_builtin_task(n) for n in builtin_task_names(item)]
    if item in _builtin_files():
        return [_builtin_task(item)]
    if item.endswith(".toml") or "/" in item or "\\" in item or Path(item).expanduser().exists():
        return load_task_file(item)
    groups = ", ".join(f"{g!r} ({', '.join(names)})" for g, names in task_groups().items())
    raise TaskError(f"unknown task {item!r}; known task groups: {groups}; or a path to a .toml "
                    "task file")


def format_task_list(tasks: Iterable[Task]) -> str:
    """A compact table for --list-tasks: name, number of answers and prompts, description."""
    rows = [("task", "answers", "prompts", "description")]
    rows += [(t.name, str(len(t.answers)), str(len(t.prompts)), t.description) for t in tasks]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    lines = [f"{r[0]:<{w0}}  {r[1]:>{w1}}  {r[2]:>{w2}}  {r[3]}".rstrip() for r in rows]
    return "\n".join(lines)
