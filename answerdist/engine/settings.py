"""A scoring run's settings: one frozen `RunSpec`, validated once when it is built (and resolved
against a checkpoint by answerdist/engine/run/plan.py).

Each setting is declared once, below: its name, default, check, help and the fronts that take
it. `answerdist score`'s flags, a sweep file's keys, `answerdist.score_checkpoint`'s keyword
arguments and the sampler's defaults are all made from these declarations (`declared`), so
adding a setting touches this file alone (and the docs). A bad value raises a `SettingError`
that names the setting; each front end words the name its own way (`--batch-tokens` on the
command line, `'batch_tokens'` in a sweep file, `batch_tokens` in Python) with
`SettingError.worded`.

This module imports neither torch nor triton (the CLIs build a RunSpec before loading either).
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from answerdist.engine.tasks import END_RULES, Task, load_tasks
from answerdist.engine.text.chat import RENDER_MAX_BYTES, RENDER_MAX_CHARS, RENDER_SECONDS
from answerdist.errors import EngineError

# auto: chat when the checkpoint (or --chat-template) has a template
MODES = ("auto", "chat", "base")
DTYPES = ("float32", "bfloat16")  # the dtypes the kernels and the references both support
TOKENIZATIONS = ("canonical", "all")
# A directory name under --out: never a path, never hidden (the store's own files start with a
# dot: .lock), short enough for any file system.
LABEL = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
DEFAULT_OUT = "results"  # the results root of the CLI and the sweep (the API scores in memory)


class SettingError(EngineError):
    """A setting has a value it cannot take. `key` is the setting's name in RunSpec, `problem`
    what is wrong with the value ("must be an integer from 1 to 1,000,000,000, got 0")."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key} {problem}")
        self.key, self.problem = key, problem

    def worded(self, name: str) -> str:
        """The message with the setting called `name` (a flag, a sweep key)."""
        return f"{name} {self.problem}"


# -- the checks: each returns what is wrong with a value, or None --------------------------------


def shown(value) -> str:
    """A value as an error message quotes it: its repr, cut short (a label template can expand
    to 100,000 characters)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:50] + "..." + text[-7:]


# Upper bounds: a value past them is a typo or an attack, and each would otherwise reach an
# allocation, a timer or a loop sized by it (a week of seconds; counts far beyond any real run).
MOST_SECONDS = 7 * 24 * 3600.0
MOST = 10**9  # tokens per pass, characters of a rendered prompt
MOST_SAMPLES = 10**6  # --discover, --max-new-tokens (also held to the model's context)
MOST_RANKS = 4096  # --tp
MOST_TOKENIZATIONS = 10**6
TEMPERATURE_FLOOR = 1e-3  # below it the softmax of float64 logits / temperature overflows


def _int_in(low: int, high: int):
    def check(value) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"must be an integer from {low:,} to {high:,}, got {shown(value)}"
        return None
    return check


_positive_int = _int_in(1, MOST)


def _positive_seconds(value) -> str | None:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not 0 < value <= MOST_SECONDS):
        return (f"must be a positive number of seconds, at most {MOST_SECONDS:,.0f} (a week), "
                f"got {shown(value)}")
    return None


def _one_of(allowed: tuple[str, ...]):
    def check(value) -> str | None:
        if not isinstance(value, str) or value not in allowed:
            return f"must be one of {', '.join(allowed)}, got {shown(value)}"
        return None
    return check


def _flag(value) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {shown(value)}"


def _optional_flag(value) -> str | None:
    return None if value is None else _flag(value)


def label_problem(value) -> str | None:
    """What is wrong with a label (a plain directory name under the results root), or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not LABEL.fullmatch(value):
        return ("must be a plain name of at most 128 letters, digits, '.', '_', '-', not "
                f"starting with '.' (not a path), got {shown(value)}")
    return None


def device_problem(value) -> str | None:
    """What is wrong with a device name (auto, cpu, cuda, cuda:N), or None."""
    if not isinstance(value, str) or not DEVICE.fullmatch(value):
        return f"must be auto, cpu, cuda or cuda:N, got {shown(value)}"
    return None


def _optional_path(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        return f"must be a path, got {shown(value)}"
    return None


def _template_source(value) -> str | None:
    problem = _optional_path(value)
    if problem or value is None:
        return problem
    if not os.path.exists(value):
        return f"must be a checkpoint directory or a template file, and {shown(value)} is not found"
    return None


def _date(value) -> str | None:
    problem = f"must be a date YYYY-MM-DD, got {shown(value)}"
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return problem
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        return problem
    return None


def _tasks(value) -> str | None:
    if isinstance(value, tuple) and all(isinstance(t, Task) for t in value) and value:
        return None
    return ("must be 'all', a group, task names ('coin,die'), a task file, or a list of Task, "
            f"got {shown(value)}")


def _optional_end(value) -> str | None:
    return None if value is None else _one_of(END_RULES)(value)


def _token_names(value) -> str | None:
    if value is None:
        return None
    if (not isinstance(value, tuple) or not value
            or not all(isinstance(v, str) and v and len(v) <= 256 for v in value)):
        return f"must name tokens by their text ('<eos>,<end_of_turn>'), got {shown(value)}"
    return None


def _optional_samples(value) -> str | None:
    return None if value is None else _int_in(1, MOST_SAMPLES)(value)


def _temperature(value) -> str | None:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not TEMPERATURE_FLOOR <= value < 1e6):
        return f"must be a number from {TEMPERATURE_FLOOR:g} to 1e6, got {shown(value)}"
    return None


def _top_p(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        return f"must be a number in (0, 1], got {shown(value)}"
    return None


def _seed(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        return f"must be an integer >= 0, got {shown(value)}"
    return None


def _labels(value) -> str | None:
    if value is None:
        return None
    if (not isinstance(value, tuple) or not value
            or any(label_problem(v) or not isinstance(v, str) for v in value)):
        return f"must be labels under the results root ('base,sft'), got {shown(value)}"
    return None


# Where a setting can be given. Every setting is a keyword argument of score_checkpoint; most are
# also a flag of `answerdist score` and a key of a sweep file.
API, CLI, SWEEP = "api", "cli", "sweep"
EVERYWHERE = (API, CLI, SWEEP)


def _setting(default, check, help: str, metavar: str | None = None,
             fronts: tuple[str, ...] = EVERYWHERE, command_default=None):
    """One setting's declaration: its default, its check (what is wrong with a value, or None),
    its help, and the fronts that take it. `command_default`: the default of the command line
    and the sweep where it differs from the API's (the results root: the API scores in memory).
    The CLI's flags, the sweep's keys, score_checkpoint's keywords and the sampling defaults
    are all made from these declarations."""
    return field(default=default, metadata={
        "check": check, "help": help, "metavar": metavar, "fronts": fronts,
        "command_default": default if command_default is None else command_default})


def _choices(allowed: tuple[str, ...]) -> str:
    return "{" + ",".join(allowed) + "}"


@dataclass(frozen=True)
class RunSpec:
    """Every setting of a scoring run, as README and `answerdist score --help` describe."""

    tasks: tuple[Task, ...] = _setting(
        "all", _tasks,
        "all (the 15-task suite) | large (hundreds to 1000 answers each) | open (answers found "
        "by sampling: with --discover) | name,name | path/to/tasks.toml | prompts.json or a "
        "directory of them (Zhang et al.'s format), or a comma-separated mix; from Python also "
        "a list of Task")
    mode: str = _setting(
        "auto", _one_of(MODES),
        "chat: user message through the chat template; base: plain completion; auto: chat "
        "when a template exists", _choices(MODES), fronts=(API, CLI))  # a sweep has `modes`
    dtype: str = _setting(
        "float32", _one_of(DTYPES),
        "weights and activations; float32 is the exact reference", _choices(DTYPES))
    device: str = _setting("auto", device_problem, "auto | cpu | cuda | cuda:N")
    out: Path | None = _setting(
        None, _optional_path,
        "results root directory, resumed as it holds finished tasks (from Python None: score "
        "in memory, write nothing)", command_default=DEFAULT_OUT)
    label: str | None = _setting(
        None, label_problem, "name of this checkpoint's results (default: the directory name)",
        fronts=(API, CLI))  # a sweep has a label template
    batch_tokens: int = _setting(
        8192, _positive_int, "tokens per forward pass on the packed (CUDA) path", "N")
    chat_template: str | None = _setting(
        None, _template_source,
        "borrow a chat template from another checkpoint directory or a .jinja file",
        "PATH_OR_CHECKPOINT")
    overwrite: bool = _setting(
        False, _flag,
        "rescore the given tasks even if finished or scored from another checkpoint or "
        "settings; other tasks under the label are left as they are", fronts=(API, CLI))
    progress: bool | None = _setting(
        None, _optional_flag, "a progress bar on stderr (None: on a terminal or in Jupyter)",
        fronts=(API,))  # the CLI shows one on a terminal; a sweep has its own
    tokenizations: str = _setting(
        "canonical", _one_of(TOKENIZATIONS),
        "canonical: each answer's own tokens; all: every token sequence that spells it (P of "
        "the answer's text), with the non-canonical share reported", _choices(TOKENIZATIONS))
    max_tokenizations: int = _setting(
        256, _int_in(1, MOST_TOKENIZATIONS),
        "with --tokenizations all, refuse a variant with more than N", "N")
    tp: int = _setting(
        1, _int_in(1, MOST_RANKS),
        "split the model across N ranks launched by torchrun --nproc-per-node N (tensor "
        "parallelism)", "N")
    batch_invariant: bool = _setting(
        False, _flag,
        "on the GPU, a forward pass per prompt instead of packing prompts together: results "
        "bitwise independent of --batch-tokens and of the other prompts, as they always are on "
        "the CPU (slower)")
    dist_timeout: float = _setting(
        1800.0, _positive_seconds,
        "how long a rank waits for the others at a collective before giving up", "SECONDS")
    # What a template's strftime_now renders (Llama 3.1 to 3.3 put the date in the prompt): a
    # fixed day, so that a run is the same on any day; this one is the date Llama 3.1's own
    # template falls back to.
    template_date: str = _setting(
        "2024-07-26", _date,
        "the date a chat template's strftime_now renders (Llama 3.x templates put it in the "
        "prompt), fixed so that a run is the same any day", "YYYY-MM-DD")
    # Bounds on rendering one prompt through a chat template.
    template_timeout: float = _setting(
        RENDER_SECONDS, _positive_seconds,
        "give up on a chat template that takes longer to render one prompt", "SECONDS")
    template_max_chars: int = _setting(
        RENDER_MAX_CHARS, _positive_int,
        "give up on a chat template that renders a prompt longer than N characters", "N")
    template_max_bytes: int = _setting(
        RENDER_MAX_BYTES, _int_in(2**26, 2**40),
        "give up on a chat template that needs more than N bytes of memory to render a prompt "
        "(templates render in a child process of that address space)", "N")
    # What follows an answer, for every task (None: each task's own `end`, docs/tasks.md).
    end: str | None = _setting(
        None, _optional_end,
        "what follows every answer, overriding each task's end: boundary (a token that ends a "
        "word), turn (the whole reply, then the end of the turn), line (a newline or the end of "
        "the turn), prefix (anything: the reply begins with the answer); default: each "
        "task's own", _choices(END_RULES))
    # The tokens that end a reply, for every task (None: each task's own `end_tokens`, else
    # every token at which generation stops).
    end_tokens: tuple[str, ...] | None = _setting(
        None, _token_names,
        "the tokens that end a reply under end turn or line, by their text, overriding each "
        "task's end_tokens; default: every token at which generation stops (the template's end "
        "of turn, generation_config.json's eos_token_id, the tokenizer's EOS), their "
        "probabilities summed", "TOKEN[,TOKEN]")
    # Open tasks: replies sampled per prompt to discover the answers, and how they are drawn.
    discover: int | None = _setting(
        None, _optional_samples,
        "open tasks (answers = \"open\"): sample N replies per prompt to find the answers, then "
        "score every answer found exactly", "N")
    temperature: float = _setting(1.0, _temperature, "sampling temperature for --discover")
    top_p: float | None = _setting(
        None, _top_p,
        "nucleus sampling for --discover: draw from the smallest set of tokens holding "
        "probability P (default: the whole vocabulary)", "P")
    max_new_tokens: int = _setting(
        32, _int_in(1, MOST_SAMPLES),
        "a sampled reply longer than N tokens is counted as unfinished (at most the model's "
        "context)", "N")
    seed: int = _setting(
        0, _seed,
        "seed of the sampled replies; reply i of a prompt depends only on the seed, the task, "
        "the prompt and i")
    # Labels under `out` whose discovered answers an open task is also scored on (their union).
    answers_from: tuple[str, ...] | None = _setting(
        None, _labels,
        "open tasks: also score the answers discovered under these labels of --out (their "
        "union), so that a ladder's checkpoints share one answer set", "LABEL[,LABEL]")

    def __post_init__(self):
        if isinstance(self.end_tokens, str):  # "<eos>,<end_of_turn>" as the flag gives it
            self._set("end_tokens", tuple(s.strip() for s in self.end_tokens.split(",")))
        elif isinstance(self.end_tokens, list):
            self._set("end_tokens", tuple(self.end_tokens))
        if isinstance(self.answers_from, str):  # "base,sft" as the flag gives it
            self._set("answers_from", tuple(s.strip() for s in self.answers_from.split(",")))
        elif isinstance(self.answers_from, list):
            self._set("answers_from", tuple(self.answers_from))
        if isinstance(self.tasks, (str, os.PathLike)):
            self._set("tasks", tuple(load_tasks(os.fspath(self.tasks))))  # TaskError names it
        elif isinstance(self.tasks, list):
            self._set("tasks", tuple(self.tasks))
        if type(self.device).__module__ == "torch":  # a torch.device, as answerdist.load takes
            self._set("device", str(self.device))
        for f in fields(self):
            problem = f.metadata["check"](getattr(self, f.name))
            if problem:
                raise SettingError(f.name, problem)
        if self.end is not None:  # every task under this end rule, checked as the task file's
            self._set("tasks", tuple(replace(t, end=self.end) for t in self.tasks))
        if self.end_tokens is not None:
            self._set("tasks", tuple(replace(t, end_tokens=tuple(dict.fromkeys(self.end_tokens)))
                                     for t in self.tasks))
        self._check_discovery()
        if self.out is not None:
            self._set("out", Path(self.out))
        if self.chat_template is not None:
            self._set("chat_template", os.fspath(self.chat_template))

    def _check_discovery(self) -> None:
        """--discover goes with open tasks, and open tasks with --discover."""
        open_tasks = [t.name for t in self.tasks if t.open_answers]
        closed = [t.name for t in self.tasks if not t.open_answers]
        for name in ("discover", "answers_from"):
            if getattr(self, name) is not None and closed:
                raise SettingError(name, f"applies to open tasks only, and task {closed[0]!r} "
                                   "lists its answers; leave it out of the tasks")
        if self.discover is None and self.answers_from is None and open_tasks:
            raise SettingError("discover", f"must be given for the open task {open_tasks[0]!r} "
                               "(its answers are found by sampling): the number of replies to "
                               "sample per prompt, or --answers-from LABEL")
        if self.answers_from is not None and self.out is None:
            raise SettingError("answers_from", "reads other labels' results: give the results "
                               "root (out) they are under")

    def sampling(self) -> SamplingSettings:
        """The sampler's settings."""
        return SamplingSettings(self.temperature, self.top_p, self.max_new_tokens, self.seed)

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)  # normalising in __post_init__ of a frozen class

    def replace(self, **changes) -> RunSpec:
        """A copy with some settings changed, validated like the original."""
        return replace(self, **changes)


@dataclass(frozen=True)
class SamplingSettings:
    """How replies are drawn (RunSpec's sampling settings, with their defaults)."""

    temperature: float = RunSpec.temperature
    # nucleus sampling: the smallest set of tokens reaching top_p
    top_p: float | None = RunSpec.top_p
    max_new_tokens: int = RunSpec.max_new_tokens
    seed: int = RunSpec.seed


def check_setting(name: str, value) -> None:
    """Raise a SettingError if RunSpec's setting `name` cannot take `value` (for functions that
    take one setting alone, such as answerdist.load's tp)."""
    problem = next(f for f in fields(RunSpec) if f.name == name).metadata["check"](value)
    if problem:
        raise SettingError(name, problem)


def declared(front: str) -> list:
    """The settings `front` (API, CLI or SWEEP) takes, in declaration order, as dataclass fields:
    `name`, `default` (the API's), `metadata` ("check", "help", "metavar", "fronts",
    "command_default": the command line's and the sweep's default)."""
    return [f for f in fields(RunSpec) if front in f.metadata["fronts"]]


def default_for(front: str, name: str):
    """A setting's default on `front`."""
    f = next(f for f in fields(RunSpec) if f.name == name)
    return f.default if front == API else f.metadata["command_default"]
