"""Reading tasks: parsing TOML task files into validated `Task`s, the built-in task files and
their groups (`TASK_GROUPS`), `--tasks` specs, and the `--list-tasks` table. The file format
is in docs/tasks.md."""

from __future__ import annotations

import difflib
import functools
import tomllib
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

from answerdist.engine.tasks.importers import is_prompt_set, load_prompt_set
from answerdist.engine.tasks.task import (
    DEFAULT_BASE_FORMAT,
    Answer,
    Prompt,
    Task,
    _fail,
    normalised,
)
from answerdist.errors import TaskError
from answerdist.files import read_user_text

_TASK_KEYS = ("name", "description", "base_format", "assistant_prefix", "answers", "prompts",
              "target", "end", "response_prefix", "normalize", "end_tokens")
_ANSWER_KEYS = ("answer", "variants")
_PROMPT_KEYS = ("id", "text", "response_prefix")
# The package whose directory holds the built-in task files, and that directory as named in
# error messages.
_PACKAGE = "answerdist.engine.tasks"
_BUILTIN_DIR = "answerdist/engine/tasks"
# Built-in task groups: group name -> the subdirectory of answerdist/engine/tasks holding its
# files. "all" is the default suite (what the demo trains on and `--tasks` defaults to); the large
# answer spaces are opt-in, since scoring them costs a hundred times more.
TASK_GROUPS = {"all": "", "large": "large", "open": "open"}


def _toml_type(value: object) -> str:
    """The TOML name of a parsed value's type, for error messages."""
    names = {str: "string", bool: "boolean", int: "integer", float: "float", list: "array",
             dict: "table"}
    return names.get(type(value), type(value).__name__)


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
    if table["answers"] == "open":
        return Task(
            name=name, description=_string(table, "description", "", fail, None), answers=(),
            prompts=_parse_prompts(table["prompts"], fail),
            base_format=_string(table, "base_format", DEFAULT_BASE_FORMAT, fail, None),
            assistant_prefix=_string(table, "assistant_prefix", "", fail, None), source=source,
            end=_string(table, "end", "turn", fail, None),
            response_prefix=_string(table, "response_prefix", "", fail, None),
            open_answers=True, normalize=_parse_normalize(table.get("normalize"), fail),
            end_tokens=_parse_end_tokens(table.get("end_tokens"), fail))
    answers = _parse_answers(table["answers"], fail)
    return Task(
        name=name,
        description=_string(table, "description", "", fail, None),
        answers=answers,
        prompts=_parse_prompts(table["prompts"], fail),
        base_format=_string(table, "base_format", DEFAULT_BASE_FORMAT, fail, None),
        assistant_prefix=_string(table, "assistant_prefix", "", fail, None),
        source=source,
        target=_parse_target(table.get("target"), answers, fail),
        end=_string(table, "end", "boundary", fail, None),
        response_prefix=_string(table, "response_prefix", "", fail, None),
        end_tokens=_parse_end_tokens(table.get("end_tokens"), fail),
    )


def _parse_end_tokens(value: object, fail: Callable[..., TaskError]) -> tuple[str, ...]:
    """end_tokens = ["<eos>", "<end_of_turn>"] (or one string): the tokens that end a reply
    under end = "turn" or "line", instead of every token at which generation stops."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v
                                                           for v in value):
        raise fail("end_tokens", "must be a token's text or a non-empty list of them, such as "
                   '["<eos>", "<end_of_turn>"]')
    return tuple(dict.fromkeys(value))


def _parse_normalize(value: object, fail: Callable[..., TaskError]):
    """normalize = ["strip", ...] (steps) or "regex" (its one group is the answer); by default
    strip only."""
    if value is None:
        return ("strip",)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise fail("normalize", "must be a list of steps or a regular expression string, got "
                            f"{_toml_type(value)}")


def _parse_target(value: object, answers, fail: Callable[..., TaskError]):
    """target = "uniform", or a table {answer = weight, ...} (answers left out weigh 0; the
    weights are normalised) -> one probability per answer, or None when absent."""
    if value is None:
        return None
    names = [a.name for a in answers]
    if value == "uniform":
        return tuple(1.0 / len(names) for _ in names)
    if not isinstance(value, dict):
        raise fail("target", f'must be "uniform" or a table of answer = weight, got '
                             f"{_toml_type(value)}")
    unknown = [key for key in value if key not in names]
    if unknown:
        raise fail("target", f"{unknown[0]!r} is not an answer of the task")
    target = normalised(value.get(name, 0.0) for name in names)
    if target is None:
        raise fail("target", "weights must be finite numbers >= 0, not all 0")
    return target


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
        where = f"prompt {pid!r}"
        prefix = (_string(entry, "response_prefix", None, fail, where)
                  if "response_prefix" in entry else None)
        prompts.append(Prompt(pid, _string(entry, "text", None, fail, where), prefix))
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
        text = read_user_text(path)
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
        root = resources.files(_PACKAGE)
        folder = root.joinpath(subdir) if subdir else root
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            if f.name.endswith(".toml"):
                files[f.name[:-5]] = (group, f"{subdir}/{f.name}" if subdir else f.name)
    return files


@functools.lru_cache(maxsize=None)
def _builtin_task(name: str) -> Task:
    """Load one built-in task; its file must hold exactly that task."""
    filename = _builtin_files()[name][1]
    source = f"{_BUILTIN_DIR}/{filename}"
    tasks = parse_tasks(resources.files(_PACKAGE).joinpath(filename).read_text("utf-8"), source)
    if len(tasks) != 1 or tasks[0].name != name:
        raise _fail(source, None, None, f"a built-in task file must hold exactly the task {name!r}")
    return tasks[0]


def load_tasks(spec: str = "all") -> list[Task]:
    """Load tasks from a spec: group names ("all", "large"), built-in task names, .toml paths,
    or a comma-separated mix.

    Order follows the spec (a group expands to its tasks sorted by name); a task named twice
    is kept once; two different tasks with the same name are an error.
    """
    items = ([spec] if Path(spec).expanduser().exists()
             else [s.strip() for s in spec.split(",")])
    items = [s for s in items if s]
    if not items:
        raise TaskError(f"no tasks given in {spec!r}; name built-in tasks, 'all', or a .toml file")
    tasks: list[Task] = []
    for item in items:
        tasks.extend(_load_item(item))
    _check_unique_names(tasks)
    unique = {t.name: t for t in tasks}
    return list(unique.values())


def is_builtin(item: str) -> bool:
    """Whether a spec item names a task group or a built-in task (not a file)."""
    return item in TASK_GROUPS or item in _builtin_files()


def names_a_file(item: str) -> bool:
    """Whether a spec item that is not built in is written as a path (`x.toml`, `dir/x`)."""
    return item.endswith((".toml", ".json", ".jsonl")) or "/" in item or "\\" in item


def _load_item(item: str) -> list[Task]:
    """Tasks for one spec item: a group, a built-in name, or a path to a task file."""
    if item in TASK_GROUPS:
        return [_builtin_task(n) for n in builtin_task_names(item)]
    if item in _builtin_files():
        return [_builtin_task(item)]
    if is_prompt_set(item):
        return load_prompt_set(item)
    if names_a_file(item) or Path(item).expanduser().exists():
        return load_task_file(item)
    groups = ", ".join(f"{g!r} ({', '.join(names)})" for g, names in task_groups().items())
    raise TaskError(f"unknown task {item!r}; known task groups: {groups}; or a path to a .toml "
                    "task file, a .json prompt file or a directory of them")


def format_task_list(tasks: Iterable[Task]) -> str:
    """A compact table for --list-tasks: name, number of answers and prompts, description."""
    rows = [("task", "answers", "prompts", "description")]
    rows += [(t.name, str(len(t.answers)), str(len(t.prompts)), t.description) for t in tasks]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    lines = [f"{r[0]:<{w0}}  {r[1]:>{w1}}  {r[2]:>{w2}}  {r[3]}".rstrip() for r in rows]
    return "\n".join(lines)
