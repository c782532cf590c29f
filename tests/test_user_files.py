"""One bounded reader for the files a user gives (answerdist/files.py `read_user_file`): every
reader (task, Zhang et al. and NoveltyBench prompt files, sweep, series, config, tokenizer,
borrowed chat template, trainer_state) refuses a FIFO without blocking and a file over the size
limit without reading it, in one line. And no other code reads such files directly."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from answerdist.analysis.dynamics import read_series_file
from answerdist.engine.model.checkpoint import load_tokenizer
from answerdist.engine.model.config import read_json
from answerdist.engine.run.sweep import load_sweep, trainer_step
from answerdist.engine.tasks import load_tasks
from answerdist.engine.text.chat import load_chat_template
from answerdist.errors import EngineError
from answerdist.files import MAX_FILE_BYTES_ENV, FileRefused, read_user_file
from tests.budget import budget

ROOT = Path(__file__).resolve().parents[1]

# reader: (file name, the call that reads it from a directory holding that file)
READERS = {
    "task file": ("tasks.toml", lambda d: load_tasks(str(d / "tasks.toml"))),
    "Zhang et al. prompt file": ("prompt.json", lambda d: load_tasks(str(d / "prompt.json"))),
    "NoveltyBench JSONL": ("curated.jsonl", lambda d: load_tasks(str(d / "curated.jsonl"))),
    "sweep file": ("sweep.toml", lambda d: load_sweep(d / "sweep.toml")),
    "series file": ("series.json", lambda d: read_series_file(str(d / "series.json"))),
    "config.json": ("config.json", lambda d: read_json(d / "config.json", "config.json")),
    "tokenizer.json": ("tokenizer.json", lambda d: load_tokenizer(d)),
    "borrowed template": ("t.jinja", lambda d: load_chat_template(d / "t.jinja", {}, "x")),
}


class Hung(Exception):
    pass


def bounded(call, seconds=20):
    """`call()` under an alarm: a reader that blocks fails the test instead of hanging it."""
    def ring(*_):
        raise Hung(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        return call()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def make(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    else:  # sparse: a terabyte that takes no disk
        with open(path, "wb") as f:
            f.truncate(10**12)


@pytest.mark.parametrize("kind", ["fifo", "huge"])
@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_refuses_a_fifo_or_a_huge_file_in_one_line(tmp_path, reader, kind):
    name, call = READERS[reader]
    make(tmp_path / name, kind)
    with pytest.raises(EngineError) as err:
        bounded(lambda: call(tmp_path))
    message = str(err.value)
    assert "\n" not in message and name in message
    assert ("not a regular file (a FIFO)" if kind == "fifo" else "-byte limit") in message


@pytest.mark.parametrize("kind", ["fifo", "huge"])
def test_a_damaged_trainer_state_gives_no_step_and_no_hang(tmp_path, kind):
    make(tmp_path / "trainer_state.json", kind)
    assert bounded(lambda: trainer_step(tmp_path)) is None


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 200])
def test_the_limit_is_exact_and_settable(tmp_path, monkeypatch, size):
    monkeypatch.setenv(MAX_FILE_BYTES_ENV, "64")
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256))[:size] if size <= 256 else b"x" * size)
    if size <= 64:
        assert read_user_file(path) == path.read_bytes()
    else:
        with pytest.raises(FileRefused, match="over the 64-byte limit"):
            read_user_file(path)


# Reads of files in answerdist/ other than through answerdist/files.py, each with its reason.
# Anything else that reads a file is a user file read around the one door: add it here only
# with a reason why it is not a user's file.
# (path prefix, a text the line must hold, or "" for any line of it): reason.
ALLOWED = {
    ("answerdist/files.py", ""): "the door itself",
    ("answerdist/engine/results/guard.py", ""): "the store's own files, through its one "
                                                "door that follows no link",
    ("answerdist/engine/model/weights.py", ""): "safetensors headers and tensors, bounded by "
                                                "the header's own checks",
    ("answerdist/engine/tasks/loader.py", "resources.files"): "the shipped task files",
    ("answerdist/lab/", ""): "the toy ladder's own files, written by this program",
}
READS = re.compile(r"\.read_text\(|\.read_bytes\(|(?<![\w.])open\(|json\.load\(|from_file\(")


def test_no_other_code_reads_a_file_directly():
    offenders = []
    for path in sorted((ROOT / "answerdist").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if READS.search(line) and not any(rel.startswith(prefix) and holds in line
                                              for prefix, holds in ALLOWED):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert offenders == []


# Writes, renames, deletes and raw opens: only the store's door, the outputs' door (files.py),
# and the toy ladder's own files; plus two read-only opens named here.
WRITES = re.compile(r"os\.replace\(|\.unlink\(|os\.unlink\(|rmtree\(|atomic_write\(|\.mkdir\(|"
                    r"write_bytes\(|write_text\(|os\.open\(|os\.rename\(|Path\(.*\)\.rename\(")
WRITERS = {
    ("answerdist/engine/results/guard.py", ""): "the results store's one door",
    ("answerdist/files.py", ""): "the user's outputs (staged, atomic) and inputs (bounded)",
    ("answerdist/lab/", ""): "the toy ladder's own files",
    ("answerdist/engine/model/weights.py", "os.O_RDONLY"): "safetensors, read only",
    ("answerdist/cli/__init__.py", "os.devnull"): "stdout to /dev/null once its pipe closed",
}


def test_nothing_else_writes_renames_or_deletes_a_file():
    offenders = []
    for path in sorted((ROOT / "answerdist").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if WRITES.search(line) and not any(rel.startswith(prefix) and holds in line
                                               for prefix, holds in WRITERS):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert offenders == []


# A valid file for each reader: cut anywhere, it must still read or be refused in one line.
SAMPLES = {
    "task file": 'name = "t"\nanswers = ["Heads", "Tails"]\n[[prompts]]\nid = "p"\n'
                 'text = "Flip a coin."\n',
    "Zhang et al. prompt file": '{"request": "Flip a coin.", "response": ["It landed on"], '
                                '"targets": ["{Heads}", "{Tails}"], "weights": [0.5, 0.5]}',
    "NoveltyBench JSONL": '{"id": "story", "prompt": "Tell a story.", "prompt_paraphrases": '
                          '["Write a story.", "Narrate a tale."], "category": "creativity"}\n'
                          '{"id": "poem", "prompt": "Write a poem."}\n',
    "sweep file": 'checkpoints = ["a", "b"]\ntasks = "coin"\nmodes = ["base"]\nout = "r"\n',
    "series file": '{"points": [{"label": "step100", "position": 100, "stage": "sft"}, '
                   '{"label": "step200", "position": 200, "stage": "sft"}]}',
    "config.json": '{"architectures": ["LlamaForCausalLM"], "model_type": "llama", '
                   '"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 301}',
    "borrowed template": "{% for m in messages %}{{ '<|user|>\\n' + m['content'] }}"
                         "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}"
                         "{% endif %}",
}


def _tokenizer_sample() -> str:
    from tests import tiny

    return tiny.train_tokenizer().to_str()


@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_reads_a_truncated_file_or_refuses_it_in_one_line(tmp_path, reader):
    """Every cut of a valid file (hypothesis draws the cut points): read, or one line."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    name, call = READERS[reader]
    data = (_tokenizer_sample() if reader == "tokenizer.json" else SAMPLES[reader]).encode()

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(cut=st.integers(0, len(data) - 1))
    def truncated(cut):
        directory = tmp_path / f"cut{cut}"
        directory.mkdir(exist_ok=True)
        (directory / name).write_bytes(data[:cut])
        try:
            with budget((reader, cut), seconds=10, mib=200):
                bounded(lambda: call(directory))
        except EngineError as e:
            assert "\n" not in str(e) and str(e), (cut, str(e))

    truncated()
