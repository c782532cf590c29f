"""Peers' prompt sets as tasks.

Zhang et al. (2024, "Forcing Diffuse Distributions out of Language Models") keep one prompt per
JSON file: `request` (the user message), `response` (a reply prefix, or a list holding one),
`targets` (the whole replies that count as answers), optional `weights` (the distribution the
prompt asks for; missing or empty: uniform, as their README and code define it) and optional
`eos`. With `eos` true (their default) they score each target as the whole assistant reply,
ended by the chat template's end of turn: this engine's end = "turn". With `eos` false they
score the target's tokens alone, the start of a longer reply: end = "prefix". A file whose
`targets` is empty is for generation only; in a directory it is skipped with a note, alone it
is refused.

A file becomes a task of one prompt. A directory (searched recursively) becomes one task per
group of files that share the same targets and weights: each file is a phrasing (a prompt whose
id is the file's name), with its own reply prefix. A group is named after the file-name stem
its files share once trailing digits and separators are dropped ("rng-0", "rng-1" -> "rng"),
else after its first file; two groups that would share a name get the names of their first
files instead. The rules are in docs/tasks.md ("Peers' prompt sets").

NoveltyBench keeps its prompts as JSON lines, one `{"id": ..., "prompt": ...}` per line, with no
answers, and in its curated set `prompt_paraphrases` (other wordings of the same question) and a
`category`. Each line is one open task (answers discovered by sampling, end = "turn", normalised
by strip, casefold and strip_punctuation), named after its id: its prompt and its paraphrases
are the task's phrasings, and its category is kept as the task's `category`. A line without
paraphrases is a task of one phrasing (which the analysis refuses as a stage with too few
prompts, as any such task).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from answerdist.engine.tasks.task import Answer, Prompt, Task, _fail, normalised
from answerdist.errors import notice
from answerdist.files import read_user_text

_KEYS = ("request", "response", "targets", "weights", "eos")


def is_prompt_set(path: str | Path) -> bool:
    """Whether a --tasks item names a peers' prompt set: a .json or .jsonl file, or a
    directory."""
    path = Path(path).expanduser()
    return str(path).endswith((".json", ".jsonl")) or path.is_dir()


def load_prompt_set(path: str | Path) -> list[Task]:
    """Tasks from a Zhang et al. JSON file or a directory of them (see the module docstring)."""
    path = Path(path).expanduser()
    if str(path).endswith(".jsonl"):
        return _open_tasks(path)
    if path.is_dir():
        # not only regular files: a FIFO or device named *.json is read, and refused, too
        files = sorted(p for p in path.rglob("*.json") if not p.is_dir())
        if not files:
            raise _fail(str(path), None, None, "holds no .json prompt files; check the path")
    elif path.exists():
        files = [path]
    else:
        raise _fail(str(path), None, None, "prompt file not found; check the path")
    groups: dict[tuple, list[tuple[Path, dict]]] = {}
    for file in files:
        entry = _read(file)
        if not entry["targets"]:
            if len(files) == 1 and file == path:
                raise _fail(str(file), None, "targets", "is empty: a file for generation only "
                            "has no answers to score; give its targets")
            notice(f"{file}: skipped, its targets are empty (a prompt for generation only)")
            continue
        key = (tuple(entry["targets"]), entry["weights"], entry["end"])
        groups.setdefault(key, []).append((file, entry))
    if not groups:
        raise _fail(str(path), None, None, "holds only files with empty targets (for "
                    "generation only); nothing to score")
    names = [_group_name([f for f, _ in members]) for members in groups.values()]
    clashing = {n for n in names if names.count(n) > 1}
    tasks = []
    for name, ((targets, weights, end), members) in zip(names, groups.items(), strict=True):
        if name in clashing:
            name = _slug(members[0][0].stem)
        source = str(members[0][0] if len(members) == 1 else path)
        # the request is literal text: its braces ("like this: {number}") are no placeholders
        prompts = tuple(Prompt(_prompt_id(file, path),
                               entry["request"].replace("{", "{{").replace("}", "}}"),
                               response_prefix=entry["response"]) for file, entry in members)
        tasks.append(Task(name, f"{len(prompts)} prompt(s) from {path.name}",
                          tuple(Answer(t, (t,)) for t in targets), prompts, source=source,
                          target=weights, end=end))
    seen = {}
    for t in tasks:
        if t.name in seen:
            raise _fail(t.source, t.name, None, f"two groups of files are both named {t.name!r} "
                        f"(also {seen[t.name]}); rename one of the files")
        seen[t.name] = t.source
    return tasks


def _open_tasks(path: Path) -> list[Task]:
    """A NoveltyBench-style JSON-lines file: one open task per line."""
    where = str(path)
    try:
        lines = read_user_text(path).splitlines()
    except FileNotFoundError:
        raise _fail(where, None, None, "prompt file not found; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(where, None, None, f"not a readable UTF-8 file ({e}); fix it") from None
    tasks, seen = [], {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        entry = f"line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise _fail(where, None, entry, f"not JSON ({e.msg})") from None
        if (not isinstance(item, dict) or not isinstance(item.get("prompt"), str)
                or not item["prompt"].strip() or not isinstance(item.get("id"), (str, int))
                or isinstance(item.get("id"), bool)):
            raise _fail(where, None, entry, 'must be an object with "id" and a non-empty '
                        '"prompt" string')
        paraphrases = item.get("prompt_paraphrases", [])
        if (not isinstance(paraphrases, list)
                or not all(isinstance(t, str) and t.strip() for t in paraphrases)):
            raise _fail(where, None, f"{entry}, prompt_paraphrases", "must be a list of "
                        "non-empty strings (other wordings of the prompt)")
        category = item.get("category", "")
        if not isinstance(category, str):
            raise _fail(where, None, f"{entry}, category", "must be a string")
        name = _slug(str(item["id"]))
        if name in seen:
            raise _fail(where, name, entry, f"has the id of line {seen[name]} (as a task name: "
                        f"{name!r}); give every line its own id")
        seen[name] = number
        # literal text: braces are no placeholders; a paraphrase equal to another is one phrasing
        texts = list(dict.fromkeys([item["prompt"], *paraphrases]))
        prompts = tuple(Prompt("prompt" if i == 0 else f"paraphrase-{i}",
                               text.replace("{", "{{").replace("}", "}}"))
                        for i, text in enumerate(texts))
        tasks.append(Task(name, f"{len(prompts)} phrasing(s) of {path.name} {entry}", (),
                          prompts, source=where, end="turn", open_answers=True,
                          normalize=("strip", "casefold", "strip_punctuation"),
                          category=category))
    if not tasks:
        raise _fail(where, None, None, "holds no prompts; one JSON object per line")
    return tasks


def _read(file: Path) -> dict:
    """One prompt file, checked: request a non-empty string; response a string or a list of
    one string; targets a list of strings (empty: generation only); weights one number per
    target, or missing or empty (uniform); eos true or false."""
    where = str(file)
    try:
        data = json.loads(read_user_text(file))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(where, None, None, f"not a readable UTF-8 JSON file ({e}); fix it") from None
    if not isinstance(data, dict):
        raise _fail(where, None, None, "must hold a JSON object with request and targets")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise _fail(where, None, f"key {unknown[0]!r}", f"unknown; the keys are {', '.join(_KEYS)}")
    request = data.get("request")
    if not isinstance(request, str) or not request.strip():
        raise _fail(where, None, "request", "must be a non-empty string (the user message)")
    response = data.get("response", "")
    if isinstance(response, list) and len(response) == 1:
        response = response[0]
    if not isinstance(response, str):
        raise _fail(where, None, "response", "must be a string or a list of one string (the "
                    "reply prefix); split a file with several into one file per prefix")
    targets = data.get("targets")
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise _fail(where, None, "targets", "must be a list of strings")
    eos = data.get("eos", True)
    if not isinstance(eos, bool):
        raise _fail(where, None, "eos", "must be true (each target is the whole reply) or false "
                    "(each target is how the reply begins)")
    weights = data.get("weights")
    if weights is None or weights == []:
        weights = tuple(normalised([1.0] * len(targets)) or ())  # their README: uniform
    else:
        distribution = (normalised(weights) if isinstance(weights, list)
                        and len(weights) == len(targets) else None)
        if distribution is None:
            raise _fail(where, None, "weights", f"must be {len(targets)} finite numbers >= 0 "
                        "(one per target), not all 0, or left out (uniform)")
        weights = distribution
    return {"request": request, "response": response, "targets": targets, "weights": weights,
            "end": "turn" if eos else "prefix"}


def _slug(text: str) -> str:
    """A task name or prompt id from a file name: other characters become '_'."""
    slug = re.sub(r"[^A-Za-z0-9_-]", "_", text).lstrip("_-")
    return slug or "prompt"


def _group_name(files: list[Path]) -> str:
    stems = [f.stem for f in files]
    common = os.path.commonprefix(stems).rstrip("-_ .0123456789") if len(stems) > 1 else ""
    return _slug(common or stems[0])


def _prompt_id(file: Path, root: Path) -> str:
    """The file's path under the directory, as a slug ("numbers/rng-0.json" -> numbers_rng-0)."""
    relative = file.relative_to(root) if root.is_dir() else Path(file.name)
    return _slug(str(relative.with_suffix("")).replace(os.sep, "_"))
