"""One name, one house: every setting declared once and reachable the same way from the three
fronts (the CLI's flags, a sweep file's keys, score_checkpoint's keywords), and one front door
(`answerdist COMMAND` = `python -m answerdist COMMAND`) whose commands all answer --help."""

from __future__ import annotations

import inspect
import subprocess
import sys
from dataclasses import fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import answerdist
from answerdist.cli import COMMANDS
from answerdist.cli import score as score_cli
from answerdist.engine.run import sweep
from answerdist.engine.run.api import score_checkpoint
from answerdist.engine.settings import (
    API,
    CLI,
    SWEEP,
    RunSpec,
    SamplingSettings,
    declared,
    default_for,
)
from tests.cli import ENV, ROOT

# Settings a front leaves out on purpose, with the reason (what takes their place there).
NOT_ON_CLI = {"progress": "a bar on a terminal"}
NOT_IN_A_SWEEP = {"mode": "'modes'", "label": "the 'label' template",
                  "overwrite": "a sweep resumes", "progress": "the sweep's own bar"}


def test_every_setting_is_declared_with_a_check_and_help():
    built = RunSpec()  # every default passes its own check (after normalising: tasks are loaded)
    for f in fields(RunSpec):
        meta = f.metadata
        assert callable(meta["check"]) and meta["help"].strip(), f.name
        assert meta["check"](getattr(built, f.name)) is None, f.name
        assert API in meta["fronts"], f"{f.name} must be a keyword of score_checkpoint"


def test_every_setting_reaches_every_front_with_the_same_default():
    parser = score_cli.parser()
    flags = {a.dest: a for a in parser._actions}
    signature = inspect.signature(score_checkpoint).parameters
    for f in fields(RunSpec):
        # the API: a keyword of the same name and default
        assert signature[f.name].default == f.default, f.name
        # the CLI: a flag --name-with-dashes whose default is the command's default
        if f.name in NOT_ON_CLI:
            assert f.name not in flags
        else:
            action = flags[f.name]
            assert action.option_strings == ["--" + f.name.replace("_", "-")]
            expected = default_for(CLI, f.name)
            assert action.default == (False if f.type == "bool" else expected), f.name
            assert f.metadata["help"] in action.help
        # a sweep file: a setting key of the same name (label is also the sweep's own template)
        assert (f.name in sweep.SETTINGS) == (f.name not in NOT_IN_A_SWEEP), f.name
    assert set(signature) == {"checkpoint"} | {f.name for f in fields(RunSpec)}
    assert [s.name for s in declared(SWEEP)] == list(sweep.SETTINGS)


def test_the_command_defaults_differ_from_the_api_only_where_declared():
    differing = {f.name for f in fields(RunSpec)
                 if default_for(CLI, f.name) != default_for(API, f.name)}
    assert differing == {"out"}  # the API scores in memory, the commands into results/
    assert default_for(CLI, "out") == default_for(SWEEP, "out") == "results"


def test_a_cli_run_without_flags_is_the_api_run_with_no_keywords(tmp_path):
    """The RunSpec the CLI builds from bare flags equals the one score_checkpoint builds from no
    keywords (out aside), so a setting's default cannot drift between the two."""
    from_cli = score_cli.spec_of(score_cli.parse_args(["ckpt"]))
    from_api = RunSpec()
    assert from_cli.replace(out=None) == from_api


def test_the_sampling_defaults_are_the_settings_defaults():
    assert SamplingSettings() == RunSpec().sampling()


def test_score_checkpoint_refuses_an_unknown_keyword_as_a_function_does():
    with pytest.raises(TypeError, match="bogus"):
        score_checkpoint("ckpt", bogus=1)
    with pytest.raises(TypeError):
        score_checkpoint()


def test_the_package_exposes_its_api_lazily():
    for name in ("load", "score_checkpoint", "ScoreResult", "Checkpoint", "EngineError"):
        assert getattr(answerdist, name) is not None
    from answerdist import analysis
    for name in ("load", "analyse", "from_table", "trajectory"):
        assert callable(getattr(analysis, name))
    assert not hasattr(answerdist, "nothing_of_that_name")


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_answers_help(command):
    argv = ["--help"] if command is None else [command, "--help"]
    result = subprocess.run([sys.executable, "-m", "answerdist", *argv], capture_output=True,
                            text=True, env=ENV, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert ("answerdist " + (command or "")).strip() in result.stdout
    if command is None:
        assert all(name in result.stdout for name in COMMANDS)


def test_the_console_script_is_python_m_answerdist():
    script = ROOT / ".venv" / "bin" / "answerdist"
    if not script.exists():
        pytest.skip("the console script is installed by `make setup` into .venv")
    via_script = subprocess.run([str(script), "tasks", "all"], capture_output=True, text=True,
                                env=ENV, cwd=ROOT, timeout=120)
    via_module = subprocess.run([sys.executable, "-m", "answerdist", "tasks", "all"],
                                capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert via_script.returncode == via_module.returncode == 0
    assert via_script.stdout == via_module.stdout and "coin" in via_script.stdout


def test_tasks_lists_what_score_list_tasks_lists():
    by_command = subprocess.run([sys.executable, "-m", "answerdist", "tasks"],
                                capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    by_flag = subprocess.run([sys.executable, "-m", "answerdist", "score", "--list-tasks"],
                             capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert by_command.returncode == by_flag.returncode == 0
    assert by_command.stdout == by_flag.stdout
    for group in ("all:", "large:", "open:"):
        assert group in by_command.stdout


def test_output_cut_short_by_a_pipe_is_no_traceback():
    """`answerdist tasks | head -1`: the command stops quietly when the reader is gone."""
    result = subprocess.run(f"{sys.executable} -m answerdist tasks | head -1", shell=True,
                            capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert result.stdout == "all:\n" and result.stderr == "", result.stderr


_JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-10**30, 10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.binary(max_size=4),
    st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_setting_refuses_ill_typed_values_in_one_line(data):
    """Generated from the settings' one declaration, so a new setting is covered as it lands:
    any value for any setting either makes a RunSpec or raises one project error line (a
    SettingError naming the setting, or a TaskError for a task spec), never a TypeError,
    ValueError or OverflowError from inside."""
    from answerdist.engine.settings import RunSpec, SettingError
    from answerdist.errors import EngineError

    for f in fields(RunSpec):
        value = data.draw(_JUNK, label=f.name)
        try:
            RunSpec(**{f.name: value})
        except SettingError as err:
            assert err.key in (f.name, "discover", "answers_from") and "\n" not in str(err)
        except EngineError as err:
            assert "\n" not in str(err)
