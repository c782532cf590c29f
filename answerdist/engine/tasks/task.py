"""The task data model: `Task`, `Answer` and `Prompt`, and every check on them. Constructing a
`Task` runs the tokenizer-free checks (`TaskError` at the first problem, one line naming the
source, the task and the entry); `check_variants_tokenize` is the one check that needs a
tokenizer. The rules are in docs/tasks.md (Validation)."""

from __future__ import annotations

import functools
import math
import re
import string
import unicodedata
from dataclasses import dataclass
from typing import Callable

import regex

from answerdist.errors import TaskError

DEFAULT_BASE_FORMAT = "{prompt}\nAnswer:"
# What follows an answer (docs/tasks.md, "End rules"): a boundary token; the end of the turn
# (the whole reply is the answer); a newline-starting token or the end of the turn; anything
# (the reply begins with the answer: Zhang et al.'s `eos: false`).
END_RULES = ("boundary", "turn", "line", "prefix")
# The steps an open task's `normalize` list may name, applied in order to a sampled reply.
NORMALIZERS = ("strip", "casefold", "strip_punctuation")
# A `normalize` pattern may search one reply this long (the `regex` package's timeout): a
# pattern that backtracks catastrophically is refused in one line instead of hanging the run.
NORMALIZE_SECONDS = 1.0

_PROMPT_PLACEHOLDERS = ("options", "n")
_BASE_PLACEHOLDERS = ("prompt",)
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")


# ---------------------------------------------------------------------------------------------
# Data model


@dataclass(frozen=True)
class Answer:
    """A canonical answer and its surface variants (the first variant is the answer itself)."""

    name: str
    variants: tuple[str, ...]


@dataclass(frozen=True)
class Prompt:
    """One phrasing of a task; `text` may hold the placeholders {options} and {n}.
    `response_prefix`: this prompt's reply prefix (None: the task's)."""

    id: str
    text: str
    response_prefix: str | None = None


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
    # The distribution the task asks for ("pick at random": uniform), one probability per
    # answer in order, or None. Only the analysis reads it (distance to the target), so it is
    # not part of the task's identity (task_hash).
    target: tuple[float, ...] | None = None
    end: str = "boundary"  # one of END_RULES
    # The reply starts with this text and the answer follows it (in both modes).
    response_prefix: str = ""
    # An open task (answers = "open" in its file) has no answer list: its answers are
    # discovered by sampling (answerdist/engine/scoring/discovery.py), which fills `answers` with
    # each normalised reply and its sampled surface forms as variants. `normalize`: the steps
    # (NORMALIZERS) that map a reply to its answer, or a regular expression whose one group is the
    # answer.
    open_answers: bool = False
    normalize: tuple[str, ...] | str = ()
    # A label from the task's source (NoveltyBench's `category`); recorded, never scored.
    category: str = ""
    # The tokens that end a reply under end = "turn" or "line", by their text; () for every
    # token at which generation stops (answerdist/engine/scoring/scorer.py's `stop_tokens`).
    end_tokens: tuple[str, ...] = ()

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

    def reply_prefix(self, prompt: Prompt) -> str:
        """The text the reply to `prompt` starts with, before the answer."""
        return self.response_prefix if prompt.response_prefix is None else prompt.response_prefix

    def render_base(self, prompt: Prompt) -> str:
        """The base-mode prompt: base_format around the filled text (the scorer adds the space)."""
        return self.base_format.format(prompt=self.prompt_text(prompt))


# ---------------------------------------------------------------------------------------------
# Errors


def normalised(weights) -> tuple[float, ...] | None:
    """Weights as a distribution (each over their sum), or None unless they are finite numbers
    >= 0, not all 0: the one check of a task file's `target` and Zhang et al.'s `weights`. An
    integer too large for a float (10**400) is not finite; weights whose sum overflows (two of
    1e308) are scaled by the largest first."""
    values = []
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            return None
        try:
            value = float(w)
        except OverflowError:
            return None
        if not (math.isfinite(value) and value >= 0):
            return None
        values.append(value)
    total = sum(values)
    if not total > 0:
        return None
    if not math.isfinite(total):
        top = max(values)
        values = [v / top for v in values]
        total = sum(values)
    return tuple(v / total for v in values)


def _fail(source: str, task: str | None, entry: str | None, problem: str) -> TaskError:
    """Build a one-line TaskError: '<source>: task '<name>': <entry>: <problem>'."""
    parts = [source]
    if task is not None:
        parts.append(f"task {task!r}")
    if entry:
        parts.append(entry)
    parts.append(problem)
    return TaskError(": ".join(parts).replace("\r", " ").replace("\n", " "))


# ---------------------------------------------------------------------------------------------
# Validation of a constructed Task (no tokenizer needed)


def _validate(task: Task) -> None:
    """Run every tokenizer-free check on a task; raise TaskError at the first problem."""
    fail = functools.partial(_fail, task.source, task.name)
    if not isinstance(task.name, str) or not _SLUG.match(task.name):
        raise _fail(task.source, None, f"task name {task.name!r}",
                    "must be letters, digits, '_' or '-', starting with a letter or digit")
    if task.open_answers:
        _check_open(task, fail)
    elif not task.answers:
        raise fail("answers", "the answer set is empty; list at least one answer")
    elif task.normalize:
        raise fail("normalize", 'only an open task (answers = "open") normalizes replies')
    if not task.prompts:
        raise fail("prompts", "no prompts; add at least one [[prompts]] table")
    if task.end not in END_RULES:
        raise fail(f"end {task.end!r}", f"must be one of {', '.join(END_RULES)}")
    if not isinstance(task.response_prefix, str):
        raise fail("response_prefix", "must be a string")
    _check_answers(task.answers, fail, first_is_name=not task.open_answers)
    _check_variants([(a.name, v) for a in task.answers for v in a.variants], fail, task.end)
    _check_prompts(task.prompts, fail)
    _check_base_format(task.base_format, fail)
    if task.target is not None:
        _check_target(task.target, len(task.answers), fail)


def _check_target(target, k: int, fail: Callable[..., TaskError]) -> None:
    """One finite, non-negative probability per answer, summing to 1 within 1e-6."""
    if len(target) != k:
        raise fail("target", f"gives {len(target)} probabilities for {k} answers")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in target):
        raise fail("target", "probabilities must be finite numbers >= 0")
    if abs(sum(target) - 1.0) > 1e-6:
        raise fail("target", f"sums to {sum(target)!r}, not 1")


def _check_open(task: Task, fail: Callable[..., TaskError]) -> None:
    """An open task can end (turn or line: a boundary token ends nearly every reply at its
    first word) and has a normaliser that can give an answer."""
    if task.end in ("boundary", "prefix"):
        raise fail("end", 'an open task needs end = "turn" or "line": its replies must end '
                          "where the reply does")
    if isinstance(task.normalize, str):
        try:
            groups = regex.compile(task.normalize).groups
        except regex.error as e:
            raise fail(f"normalize {task.normalize!r}", f"not a regular expression ({e})") from None
        if groups != 1:
            raise fail(f"normalize {task.normalize!r}", f"has {groups} groups; give exactly one, "
                                                        "the answer (e.g. '\\{(.+?)\\}')")
        return
    if not isinstance(task.normalize, tuple) or not all(isinstance(s, str) for s in
                                                            task.normalize):
        raise fail("normalize", "must be a list of steps or a regular expression")
    unknown = [s for s in task.normalize if s not in NORMALIZERS]
    if unknown:
        raise fail("normalize", f"unknown step {unknown[0]!r}; the steps are "
                                f"{', '.join(NORMALIZERS)}")


def normalize_reply(task: Task, text: str) -> str:
    """The answer a reply gives under the task's normaliser ("" when it gives none: a regular
    expression that does not match, or nothing left). Whitespace at the ends never counts."""
    if isinstance(task.normalize, str):
        try:
            found = regex.search(task.normalize, text, timeout=NORMALIZE_SECONDS)
        except TimeoutError:
            raise TaskError(f"task {task.name}: normalize {task.normalize!r} took over "
                            f"{NORMALIZE_SECONDS:g} s on a reply of {len(text)} characters "
                            "(catastrophic backtracking); simplify the pattern, e.g. no "
                            "repeated group of overlapping alternatives") from None
        answer = None if found is None else found.group(1)  # None: the group took no part
        return "" if answer is None else answer.strip()
    for step in task.normalize:
        if step == "strip":
            text = text.strip()
        elif step == "casefold":
            text = text.casefold()
        else:  # strip_punctuation: at both ends, any Unicode punctuation or symbol
            text = _strip_punctuation(text)
    return text.strip()


def _strip_punctuation(text: str) -> str:
    def is_mark(c):
        return unicodedata.category(c)[0] in "PS"

    start, stop = 0, len(text)
    while start < stop and (is_mark(text[start]) or text[start].isspace()):
        start += 1
    while stop > start and (is_mark(text[stop - 1]) or text[stop - 1].isspace()):
        stop -= 1
    return text[start:stop]


def _check_answers(answers: tuple[Answer, ...], fail: Callable[..., TaskError],
                   first_is_name: bool = True) -> None:
    """Answer names are unique, and (but for discovered answers, named by their normalised
    form) each answer's first variant is the answer itself."""
    seen: set[str] = set()
    for a in answers:
        if a.name in seen:
            raise fail(f"answer {a.name!r}", "duplicate answer; list each answer once")
        seen.add(a.name)
        if not a.variants:
            raise fail(f"answer {a.name!r}", "variants is empty; omit it to use the answer alone")
        if first_is_name and a.variants[0] != a.name:
            raise fail(f"answer {a.name!r}",
                       f"first variant is {a.variants[0]!r}; the first variant must be the "
                       "answer itself")


def _check_variants(pairs: list[tuple[str, str]], fail: Callable[..., TaskError],
                    end: str = "boundary") -> None:
    """Variants are non-empty, unpadded, distinct (also to the eye), and no variant can absorb
    another under the end rule."""
    owner: dict[str, str] = {}
    seen_as: dict[str, str] = {}  # lookalike key -> the variant that has it
    for answer, v in pairs:
        entry = f"answer {answer!r}, variant {v!r}"
        if not v.strip():
            raise fail(entry, "variant is empty or whitespace; remove it")
        if v != v.strip():
            raise fail(entry, "variant has leading or trailing whitespace; remove the whitespace")
        if v in owner:
            where = "twice" if owner[v] == answer else f"also under answer {owner[v]!r}"
            raise fail(entry, f"duplicate variant (listed {where}); variants must be distinct")
        key = lookalike(v)
        if not key:
            raise fail(entry, "variant is made of invisible characters only; remove it")
        if key in seen_as:
            other = seen_as[key]
            raise fail(entry, f"looks the same as variant {other!r} (answer {owner[other]!r}): "
                              "they differ only in Unicode normalisation or invisible characters "
                              "(zero-width, bidi controls); keep one spelling")
        owner[v], seen_as[key] = answer, v
    pair = _absorbing_pair(list(owner), end)
    if pair:
        short, long = pair
        raise fail(f"answer {owner[short]!r}, variant {short!r}",
                   f"is a prefix of variant {long!r} (answer {owner[long]!r}) followed by "
                   f"{long[len(short)]!r}, so under end = {end!r} it would absorb that "
                   "variant's probability; remove or rename one of them")


# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt): characters a reader never
# sees, beyond category Cf (U+034F, the combining grapheme joiner, is Mn; variation selectors
# are Mn; the Hangul fillers are Lo). Python's unicodedata does not expose the property.
_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")


def lookalike(text: str) -> str:
    """What a reader sees of `text`: NFC-normalised, without format characters (Unicode category
    Cf: zero-width spaces and joiners, bidi controls, soft hyphens) or any other default-ignorable
    code point (the combining grapheme joiner, variation selectors, Hangul fillers)."""
    visible = _IGNORABLE.sub("", "".join(c for c in text if unicodedata.category(c) != "Cf"))
    return unicodedata.normalize("NFC", visible)


def ends_answer(end: str, char: str) -> bool:
    """Whether, under the end rule, an answer can end where the text goes on with `char`: a
    non-alphanumeric character for boundary, a newline for line, any for prefix; never for turn
    (the reply's end is a special token, which no text holds)."""
    if end == "boundary":
        return not char.isalnum()
    return end == "prefix" or (end == "line" and char in "\r\n")


def _absorbing_pair(variants: list[str], end: str = "boundary") -> tuple[str, str] | None:
    """A pair (short, long) where long = short + a character that ends answers under the end
    rule + ..., if any."""
    if end == "turn":
        return None
    ordered = sorted(variants)
    for i, short in enumerate(ordered):
        # Strings that start with `short` sit right after it in sorted order.
        for long in ordered[i + 1:]:
            if not long.startswith(short):
                break
            if ends_answer(end, long[len(short)]):
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
        if p.response_prefix is not None and not isinstance(p.response_prefix, str):
            raise fail(entry, "response_prefix must be a string")
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
