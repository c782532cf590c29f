"""A scoring run's settings: one frozen `RunSpec`, validated once when it is built, and resolved
once against a checkpoint (`resolve`) into what the run does: its mode, label, chat template and
packing, and the run key that identifies its results.

`python -m engine.score`'s flags, a sweep file's keys and `engine.score_checkpoint`'s keyword
arguments all become a RunSpec, so every default and every check of a setting lives here. A bad
value raises a `SettingError` that names the setting; each front end words the name its own
way (`--batch-tokens` on the command line, `'batch_tokens'` in a sweep file, `batch_tokens` in
Python) with `SettingError.worded`.

This module imports neither torch nor triton (the CLIs build a RunSpec before loading either).
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import engine
from engine.chat import (
    RENDER_MAX_CHARS,
    RENDER_SECONDS,
    ChatTemplate,
    chat_template_for,
    load_chat_template,
)
from engine.errors import EngineError, OutputError
from engine.tasks import END_RULES, Task, load_tasks

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
    what is wrong with the value ("must be a positive integer, got 0")."""

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


def _positive_int(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"must be a positive integer, got {shown(value)}"
    return None


def _positive_seconds(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return f"must be a positive number of seconds, got {shown(value)}"
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


def _optional_positive_int(value) -> str | None:
    return None if value is None else _positive_int(value)


def _temperature(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
        return f"must be a positive number, got {shown(value)}"
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


def _setting(default, check):
    return field(default=default, metadata={"check": check})


@dataclass(frozen=True)
class RunSpec:
    """Every setting of a scoring run, as README and `python -m engine.score --help` describe."""

    tasks: tuple[Task, ...] = _setting("all", _tasks)  # a --tasks spec, or Task objects
    mode: str = _setting("auto", _one_of(MODES))
    dtype: str = _setting("float32", _one_of(DTYPES))
    device: str = _setting("auto", device_problem)
    out: Path | None = _setting(None, _optional_path)  # the results root; None: in memory
    label: str | None = _setting(None, label_problem)  # None: the checkpoint directory's name
    batch_tokens: int = _setting(8192, _positive_int)  # tokens per forward pass when packing
    batch_invariant: bool = _setting(False, _flag)  # a forward pass per prompt on the GPU too
    chat_template: str | None = _setting(None, _template_source)  # a directory or file to borrow
    tokenizations: str = _setting("canonical", _one_of(TOKENIZATIONS))
    # What follows an answer, for every task (None: each task's own `end`, docs/tasks.md).
    end: str | None = _setting(None, _optional_end)
    # Open tasks: replies sampled per prompt to discover the answers, and how they are drawn.
    discover: int | None = _setting(None, _optional_positive_int)
    temperature: float = _setting(1.0, _temperature)
    top_p: float | None = _setting(None, _top_p)
    max_new_tokens: int = _setting(32, _positive_int)
    seed: int = _setting(0, _seed)
    # Labels under `out` whose discovered answers an open task is also scored on (their union).
    answers_from: tuple[str, ...] | None = _setting(None, _labels)
    max_tokenizations: int = _setting(256, _positive_int)  # per variant, with tokenizations all
    tp: int = _setting(1, _positive_int)  # ranks of a torchrun launch to split the model across
    dist_timeout: float = _setting(1800.0, _positive_seconds)  # seconds at a collective
    overwrite: bool = _setting(False, _flag)  # rescore the given tasks whatever the store holds
    progress: bool | None = _setting(None, _optional_flag)  # None: on a terminal or in Jupyter
    # What a template's strftime_now renders (Llama 3.1 to 3.3 put the date in the prompt): a
    # fixed day, so that a run is the same on any day; this one is the date Llama 3.1's own
    # template falls back to.
    template_date: str = _setting("2024-07-26", _date)
    # Bounds on rendering one prompt through a chat template.
    template_timeout: float = _setting(RENDER_SECONDS, _positive_seconds)
    template_max_chars: int = _setting(RENDER_MAX_CHARS, _positive_int)

    def __post_init__(self):
        if isinstance(self.answers_from, str):  # "base,sft" as the flag gives it
            self._set("answers_from", tuple(s.strip() for s in self.answers_from.split(",")))
        elif isinstance(self.answers_from, list):
            self._set("answers_from", tuple(self.answers_from))
        if isinstance(self.tasks, (str, os.PathLike)):
            self._set("tasks", tuple(load_tasks(os.fspath(self.tasks))))  # TaskError names it
        elif isinstance(self.tasks, list):
            self._set("tasks", tuple(self.tasks))
        if type(self.device).__module__ == "torch":  # a torch.device, as engine.load takes
            self._set("device", str(self.device))
        for f in fields(self):
            problem = f.metadata["check"](getattr(self, f.name))
            if problem:
                raise SettingError(f.name, problem)
        if self.end is not None:  # every task under this end rule, checked as the task file's
            self._set("tasks", tuple(replace(t, end=self.end) for t in self.tasks))
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

    def sampling(self):
        """The sampler's settings (engine.sampler.SamplingSettings)."""
        from engine.sampler import SamplingSettings

        return SamplingSettings(self.temperature, self.top_p, self.max_new_tokens, self.seed)

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)  # normalising in __post_init__ of a frozen class

    def replace(self, **changes) -> RunSpec:
        """A copy with some settings changed, validated like the original."""
        return replace(self, **changes)


def check_setting(name: str, value) -> None:
    """Raise a SettingError if RunSpec's setting `name` cannot take `value` (for functions that
    take one setting alone, such as engine.load's tp)."""
    problem = next(f for f in fields(RunSpec) if f.name == name).metadata["check"](value)
    if problem:
        raise SettingError(name, problem)


@dataclass(frozen=True)
class Resolved:
    """A RunSpec resolved against one checkpoint: what the run does, decided once."""

    spec: RunSpec
    mode: str  # "chat" or "base"
    label: str
    chat: ChatTemplate | None  # what chat mode renders prompts with; None in base mode
    packs: bool  # whether prompts share forward passes (engine.scorer.packs_sequences)
    own_special_source: str  # the checkpoint's tokenizer_config.json, which its fingerprint covers

    def key(self, fingerprint: str) -> dict:
        """What identifies the results (the `run` of the manifest and of each task): a rerun with
        an equal key skips finished tasks; a different one never mixes with them silently."""
        spec, chat = self.spec, self.chat
        key = {
            "fingerprint": fingerprint,
            "dtype": spec.dtype,
            "mode": self.mode,
            "chat_template": chat.text if chat is not None else None,
            # Qwen 3's hybrid-reasoning switch: thinking off unless the template says otherwise.
            "enable_thinking": (chat.enable_thinking
                                if chat is not None and chat.uses_thinking_switch else None),
            "tokenizations": (spec.tokenizations if spec.tokenizations == "canonical"
                              else f"all<={spec.max_tokenizations}"),
            "engine_version": engine.__version__,
            "batch_invariant": not self.packs,
            # Packed results depend on how prompts share rows; invariant ones do not.
            "batch_tokens": spec.batch_tokens if self.packs else None,
        }
        # tensor parallelism sums in another order: within rounding, not bit for bit
        if spec.tp > 1:
            key["tp"] = spec.tp
        if spec.end is not None:
            key["end"] = spec.end
        if spec.discover is not None or spec.answers_from is not None:
            key["discovery"] = {"replies": spec.discover, "temperature": spec.temperature,
                                "top_p": spec.top_p, "max_new_tokens": spec.max_new_tokens,
                                "seed": spec.seed,
                                "answers_from": (list(spec.answers_from)
                                                 if spec.answers_from is not None else None)}
        if self.template_date is not None:
            key["template_date"] = self.template_date
        if chat is not None and chat.special_source != self.own_special_source:
            # A borrowed template's special tokens: the fingerprint covers only the checkpoint's.
            key["template_special_tokens"] = chat.special_tokens
        return key

    @property
    def template_date(self) -> str | None:
        """The date the prompts hold, where the template renders one."""
        return self.spec.template_date if self.chat is not None and self.chat.uses_date else None


def resolve(spec: RunSpec, checkpoint) -> Resolved:
    """Decide mode, label, chat template and packing of `spec` for one checkpoint.

    `checkpoint` is a loaded `engine.Checkpoint` or the `Metadata` that `engine.sweep` reads
    without the weights: its path names the default label, and its chat template (or the one
    `spec.chat_template` borrows) decides what auto mode means."""
    from engine.checkpoint import resolve_device
    from engine.scorer import packs_sequences

    own_special_source = str(checkpoint.path / "tokenizer_config.json")
    borrowed = None
    if spec.chat_template:
        borrowed = load_chat_template(spec.chat_template, checkpoint.special_tokens,
                                      own_special_source)
    mode = spec.mode
    if mode == "auto":
        mode = "chat" if borrowed is not None or checkpoint.chat_template is not None else "base"
    chat = (chat_template_for(borrowed, checkpoint.chat_template, checkpoint.path)
            .for_run(spec.template_date, spec.template_timeout, spec.template_max_chars)
            if mode == "chat" else None)
    label = spec.label or checkpoint.path.resolve().name
    if label_problem(label):
        raise OutputError(f"{checkpoint.path}: its directory name {shown(label)} cannot be a "
                          "label; pass a label")
    packs = packs_sequences(resolve_device(spec.device), spec.batch_invariant)
    return Resolved(spec, mode, label, chat, packs, own_special_source)
