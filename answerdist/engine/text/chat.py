"""Chat templates: found where Hugging Face stores them, rendered in a jinja2 sandbox.

Templates are untrusted input (they come with downloaded checkpoints), so they run in an
`ImmutableSandboxedEnvironment` with the globals and filters that transformers provides, and
nothing else. Every failure becomes a `ChatTemplateError` naming the template's source.

Thinking switch: templates of hybrid reasoning models (Qwen 3) read `enable_thinking`; with it
false they close an empty `<think>` block after the generation prompt, so that the answer is
scored right after it. Every template is rendered with `enable_thinking=False` unless asked
otherwise (`ChatTemplate.enable_thinking`, or per call); `uses_thinking_switch` tells whether
the setting changed anything, for the results' manifest.
"""

from __future__ import annotations

import copy
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time as time_module
import weakref
from contextlib import contextmanager
from datetime import date, datetime, time, timezone
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from answerdist.errors import ChatTemplateError
from answerdist.files import read_user_text

MAX_TEMPLATE_CHARS = 1 << 20  # real templates are a few thousand characters, the largest ~50k
# Default bounds on rendering one prompt (templates come with downloaded checkpoints: one that
# never ends must not stall a sweep); a run's own are RunSpec.template_timeout / _max_chars.
_EPOCH = re.compile(r"(?<!%)((?:%%)*)%s")  # a %s directive, not an escaped %%s
RENDER_SECONDS = 10.0
RENDER_MAX_CHARS = 1_000_000
# A run's templates render in a child process whose address space is bounded (RLIMIT_AS): what a
# template allocates ("x" ~ "x" doubled in a loop, center(10**9)) cannot take the machine's
# memory. The child itself needs some 30 MB.
RENDER_MAX_BYTES = 1 << 30
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                      "mask_token")


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; here it
    only renders its body, as transformers does when no mask is requested."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Like transformers: jinja's own tojson would HTML-escape the text.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


class _Namespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore names, as transformers' does."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"underscore attribute {name!r} on a namespace")


class _OutOfBounds(Exception):
    """A render ran past its time or its output bound (`problem` says which)."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, watching the clock at every call, attribute and item a template touches (a
    render off the main thread has no alarm, see `_alarm`), and refusing repetitions and powers
    whose result alone would pass the output bound ("a" * 10**10 is one step of C code that no
    clock check could interrupt)."""

    intercepted_binops = frozenset({"*", "**"})
    deadline = float("inf")
    max_chars = 10**6

    def _tick(self) -> None:
        if time_module.monotonic() > self.deadline:
            raise _OutOfBounds("time")

    def call(__self, __context, __obj, *args, **kwargs):  # jinja's signature
        __self._tick()
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj, attribute):
        self._tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        self._tick()
        return super().getitem(obj, argument)

    def call_binop(self, context, operator, left, right):
        self._tick()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and \
                        len(seq) * n > self.max_chars:
                    raise _OutOfBounds("size")
        elif isinstance(left, int) and isinstance(right, int) and \
                abs(left) > 1 and right * abs(left).bit_length() > 8 * self.max_chars:
            raise _OutOfBounds("size")
        return super().call_binop(context, operator, left, right)


def _environment() -> ImmutableSandboxedEnvironment:
    env = _BoundedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["namespace"] = _Namespace
    # jinja's text generator runs in C-speed Python for as long as asked; no template needs it.
    env.globals.pop("lipsum", None)
    return env


@contextmanager
def _alarm(seconds: float):
    """SIGALRM after `seconds`, raising _OutOfBounds wherever the render is (between two
    bytecodes, even in a loop that calls nothing); only the main thread receives signals, and
    elsewhere the environment's clock checks alone bound the render."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise _OutOfBounds("time")

    previous = signal.signal(signal.SIGALRM, expire)
    delay, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time_module.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if delay:  # someone else's alarm (a test timeout, say) goes on as it was set
            left = delay - (time_module.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), interval)


class ChatTemplate:
    """A compiled chat template plus the special-token strings it may refer to.

    `enable_thinking` (default False: score with thinking disabled) is passed to the template
    on every render unless a call overrides it."""

    def __init__(self, source: str, text: str, special_tokens: dict[str, object],
                 enable_thinking: bool = False, special_source: str | None = None):
        self.source = source  # where it came from, for error messages
        self.text = text
        self.special_tokens = special_tokens
        self.special_source = special_source  # the tokenizer_config the special tokens come from
        self.enable_thinking = enable_thinking
        self.today: date | None = None  # what strftime_now renders; None: the real today
        self.seconds = RENDER_SECONDS  # bounds on one render (`for_run`)
        self.max_chars = RENDER_MAX_CHARS
        if len(text) > MAX_TEMPLATE_CHARS:
            raise ChatTemplateError(f"{source}: the chat template is {len(text):,} characters; "
                                    f"more than {MAX_TEMPLATE_CHARS:,} is no chat template")
        environment = self._environment = _environment()
        try:
            self._template = environment.from_string(text)
            self._variables = jinja2.meta.find_undeclared_variables(environment.parse(text))
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise ChatTemplateError(
                f"{source}: chat template syntax error at line {e.lineno}: {e.message}; "
                "fix the template"
            ) from None

    def for_run(self, today: str, seconds: float = RENDER_SECONDS,
                max_chars: int = RENDER_MAX_CHARS,
                max_bytes: int | None = RENDER_MAX_BYTES) -> ChatTemplate:
        """This template with `strftime_now` fixed at `today` (YYYY-MM-DD), so that a prompt
        renders the same on any day, and each render bounded to `seconds` and `max_chars`, in a
        child process of at most `max_bytes` of memory (None: in this process)."""
        fixed = copy.copy(self)
        fixed.today, fixed.seconds, fixed.max_chars = date.fromisoformat(today), seconds, max_chars
        fixed._box = _RenderBox(fixed, max_bytes) if max_bytes is not None else None
        return fixed

    @property
    def uses_date(self) -> bool:
        """Whether the template reads the date (`strftime_now`: Llama 3.1 to 3.3)."""
        return "strftime_now" in self._variables

    def _bounded(self, variables: dict) -> str:
        """jinja's render, piece by piece, within the time and output bounds."""
        env = self._environment
        env.deadline, env.max_chars = time_module.monotonic() + self.seconds, self.max_chars
        pieces, size = [], 0
        try:
            with _alarm(self.seconds):
                for piece in self._template.generate(**variables):
                    size += len(piece)
                    if size > self.max_chars:
                        raise _OutOfBounds("size")
                    pieces.append(piece)
        finally:
            env.deadline = float("inf")
        return "".join(pieces)

    def _strftime_now(self, fmt: str) -> str:
        if self.today is None:
            return datetime.now().strftime(fmt)
        # %s (seconds since the epoch) is the C library's, which counts from local midnight:
        # the fixed day's own, at midnight UTC, so that a prompt is the same in every time zone
        epoch = int(datetime.combine(self.today, time(), tzinfo=timezone.utc).timestamp())
        fmt = _EPOCH.sub(lambda m: m.group(1) + str(epoch), str(fmt))
        return datetime.combine(self.today, time()).strftime(fmt)

    @property
    def uses_thinking_switch(self) -> bool:
        """Whether the template reads `enable_thinking` (Qwen 3's hybrid-reasoning switch)."""
        return "enable_thinking" in self._variables

    def render(self, messages: list[dict], add_generation_prompt: bool = True,
               **template_kwargs) -> str:
        """The rendered conversation. `template_kwargs` are extra template variables, as for
        transformers' apply_chat_template (e.g. enable_thinking=True for this call only)."""
        if getattr(self, "_box", None) is not None:
            return self._box.render(messages, add_generation_prompt, template_kwargs)
        return self.render_here(messages, add_generation_prompt, **template_kwargs)

    def render_here(self, messages: list[dict], add_generation_prompt: bool = True,
                    **template_kwargs) -> str:
        """`render` in this process (the render box's child calls it)."""
        variables = {**self.special_tokens, "enable_thinking": self.enable_thinking,
                     "strftime_now": self._strftime_now, **template_kwargs}
        try:
            return self._bounded(dict(messages=messages, tools=None, documents=None,
                                      add_generation_prompt=add_generation_prompt, **variables))
        except _OutOfBounds as e:
            given = sum(len(str(m.get("content", ""))) for m in messages)
            if e.problem != "time" and given > self.max_chars:  # the prompt, not the template
                raise ChatTemplateError(
                    f"{self.source}: the prompt itself holds {given:,} characters, more than "
                    f"--template-max-chars {self.max_chars:,} lets a rendered prompt hold; "
                    "shorten it or raise --template-max-chars") from None
            bound = (f"took more than {self.seconds:g} s" if e.problem == "time"
                     else f"renders more than {self.max_chars:,} characters")
            raise ChatTemplateError(
                f"{self.source}: the chat template {bound} (a template that never ends?); fix "
                "it, pass --chat-template, or raise --template-timeout / --template-max-chars"
            ) from None
        except jinja2.exceptions.SecurityError as e:
            raise ChatTemplateError(
                f"{self.source}: chat template tried to leave its sandbox ({e}); "
                "use a trusted template"
            ) from None
        except MemoryError:
            raise  # the render box's child says which bound it passed
        except Exception as e:  # a template is a program: any failure is the template's
            raise ChatTemplateError(
                f"{self.source}: chat template failed to render: {type(e).__name__}: {e}; "
                "fix the template or pass --chat-template"
            ) from None


def find_template_text(directory: Path, tokenizer_config: dict) -> tuple[str, str] | None:
    """(source, text) of a checkpoint's chat template, or None when it has none.

    Precedence as in transformers: chat_template.jinja, then chat_template.json, then the
    `chat_template` key of tokenizer_config.json (a string, or a list of named templates of
    which "default" is used).
    """
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return str(jinja_file), _read_text(jinja_file)
    json_file = directory / "chat_template.json"
    if json_file.is_file():
        try:
            text = json.loads(_read_text(json_file))["chat_template"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ChatTemplateError(
                f"{json_file}: expected a JSON object with a 'chat_template' string; "
                "fix or delete the file"
            ) from None
        return str(json_file), text
    value = tokenizer_config.get("chat_template")
    source = str(directory / "tokenizer_config.json")
    if value is None:
        return None
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
        if value is None:
            raise ChatTemplateError(f"{source}: chat_template list has no 'default' entry; add one")
    if not isinstance(value, str):
        raise ChatTemplateError(f"{source}: chat_template must be a string; "
                                "fix tokenizer_config.json")
    return source, value


def special_tokens(tokenizer_config: dict) -> dict[str, object]:
    """Special-token strings as chat templates see them (`bos_token`, `eos_token`, ...)."""
    out: dict[str, object] = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = tokenizer_config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    extra = (tokenizer_config.get("additional_special_tokens")
             or tokenizer_config.get("extra_special_tokens"))
    if isinstance(extra, list):
        out["additional_special_tokens"] = [t.get("content") if isinstance(t, dict) else t
                                            for t in extra]
    return out


def chat_template_for(borrowed: ChatTemplate | None, own: ChatTemplate | None, checkpoint: Path
                      ) -> ChatTemplate:
    """The template chat mode renders with: the borrowed one (`--chat-template`), else the
    checkpoint's own; an error when there is neither."""
    template = borrowed or own
    if template is None:
        raise ChatTemplateError(
            f"{checkpoint}: chat mode needs a chat template and the checkpoint has none; "
            "use --mode base or --chat-template PATH_OR_CHECKPOINT")
    return template


def load_chat_template(path, special: dict[str, object], special_source: str) -> ChatTemplate:
    """A template to borrow (`--chat-template`): a checkpoint directory (its template, with that
    directory's special tokens when its tokenizer_config.json names any), a .jinja file, or a
    JSON file with a "chat_template" key. Otherwise the template sees `special`, the special
    tokens of the checkpoint being scored, read from `special_source`; `special_source` of the
    result says which (the manifest records it)."""
    path = Path(path)
    if path.is_dir():
        config_path = path / "tokenizer_config.json"
        config = {}
        if config_path.is_file():
            try:
                config = json.loads(_read_text(config_path))
            except json.JSONDecodeError as e:
                raise ChatTemplateError(f"{config_path}: not valid JSON ({e})") from None
        found = find_template_text(path, config)
        if found is None:
            raise ChatTemplateError(f"{path}: checkpoint has no chat template to borrow; "
                                    "pass one that has")
        donor = special_tokens(config)
        return ChatTemplate(found[0], found[1], donor or special,
                            special_source=str(config_path) if donor else special_source)
    if not path.exists():
        raise ChatTemplateError(f"{path}: chat template not found; "
                                "pass a checkpoint directory or a .jinja file")
    text = _read_text(path)
    if path.suffix == ".json":
        try:
            text = json.loads(text)["chat_template"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ChatTemplateError(f"{path}: expected a JSON object with a 'chat_template' "
                                    "string") from None
    return ChatTemplate(str(path), text, special, special_source=special_source)


def _read_text(path: Path) -> str:
    try:
        return read_user_text(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ChatTemplateError(f"{path}: cannot read chat template ({e})") from None


class _RenderBox:
    """A child process rendering one run's template (started at its first prompt, one per
    checkpoint's run, so its cost is paid once) under RLIMIT_AS of `max_bytes`, with the time and
    output bounds applied inside it. A render that needs more memory, or kills the child, is one
    ChatTemplateError line."""

    def __init__(self, template: ChatTemplate, max_bytes: int):
        self.template, self.max_bytes = template, max_bytes
        self.process: subprocess.Popen | None = None

    def render(self, messages, add_generation_prompt: bool, kwargs: dict) -> str:
        if self.process is None or self.process.poll() is not None:
            self._start()
        try:
            self._send({"messages": messages, "add_generation_prompt": add_generation_prompt,
                        "kwargs": kwargs})
            line = self.process.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.process = None
            raise ChatTemplateError(
                f"{self.template.source}: the chat template's renderer died (it may have needed "
                f"more than --template-max-bytes {self.max_bytes:,}); fix the template or pass "
                "--chat-template")
        reply = json.loads(line)
        if "error" in reply:
            raise ChatTemplateError(reply["error"])
        return reply["text"]

    def _start(self) -> None:
        t = self.template
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from answerdist.engine.text.chat import serve_renders; "
             "serve_renders()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, encoding="utf-8", env=env)
        weakref.finalize(self, _stop, self.process)
        self._send({"source": t.source, "text": t.text, "special": t.special_tokens,
                    "enable_thinking": t.enable_thinking, "today": t.today.isoformat(),
                    "seconds": t.seconds, "max_chars": t.max_chars, "max_bytes": self.max_bytes})

    def _send(self, message: dict) -> None:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout):
        try:
            stream.close()
        except OSError:
            pass


def serve_renders() -> None:
    """The render box's child: the template from the first line of stdin, then one rendered
    prompt (or one error line) per request line, under RLIMIT_AS."""
    config = json.loads(sys.stdin.readline())
    limit = config["max_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    template = ChatTemplate(config["source"], config["text"], config["special"],
                            config["enable_thinking"]).for_run(
        config["today"], config["seconds"], config["max_chars"], max_bytes=None)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"text": template.render_here(request["messages"],
                                                  request["add_generation_prompt"],
                                                  **request["kwargs"])}
        except ChatTemplateError as e:
            reply = {"error": str(e)}
        except MemoryError:
            reply = {"error": f"{config['source']}: the chat template needed more than "
                              f"--template-max-bytes {limit:,} bytes of memory to render one "
                              "prompt; fix it, pass --chat-template, or raise the bound"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
