"""`answerdist sweep SWEEP.toml`: score a ladder of checkpoints, resumably, on one process
or across GPUs and nodes under torchrun.

SWEEP.toml (relative paths are relative to the file's directory):

    checkpoints = ["/models/olmo2-1b/step*", "/models/olmo2-1b-sft"]  # paths or globs, in order
    tasks = "all"            # all | "name,name" | a task file | a list of names (default: all)
    modes = ["base"]         # auto | chat | base, one or several (default: auto)
    dtype = "bfloat16"       # float32 | bfloat16 (default: float32)
    out = "results"          # the results store (default: results)
    label = "{name}"         # {name} {parent} {mode} {dtype}; default "{name}", or "{name}-{mode}"
                             # with several modes
    # device = "auto", tp = 1, batch_tokens = 8192, chat_template = "/models/olmo2-1b-sft",
    # tokenizations = "canonical", max_tokenizations = ..., batch_invariant = false
    # (as answerdist.cli.score's options)
    # dist_timeout = 1800 (seconds a rank waits for the others of its group)
    # discover = 16, temperature, top_p, max_new_tokens, seed: open tasks (docs/tasks.md)
    # answers_from = "{name}": labels, or a label template standing for the label it gives
    #                          every checkpoint of this sweep (the union of a discovered ladder)
    stages = ["base", "sft"] # optional: the stage of each 'checkpoints' entry's matches
    series = "series.json"   # optional: write label, position and stage of every checkpoint
                             # scored, for `answerdist trajectory` ({mode} with several
                             # modes); the position is the step in each directory's name
                             # (step1000, stepNNN-tokensNNNB) when all have increasing ones,
                             # else trainer_state.json's global_step when all have increasing
                             # ones, else the checkpoint's index

A glob's matches are sorted naturally (step200 before step1000). Every process running the
sweep is a worker (a torchrun group of `tp` ranks is one worker, answerdist/engine/model/
distributed.py): it takes the next checkpoint no other worker holds, the largest first, under a
claim on each of its labels (answerdist/engine/run/ledger.py: an flock the kernel drops when its
holder dies), scores it, and goes on. Any number of workers, alone, under torchrun, as Slurm
array tasks or on several machines sharing `out`, share one store; two never score the same
label at once, and a dead worker's labels go to the next worker that reaches them. `--shard I/N`
restricts a worker to checkpoints I, I + N, ... of the list (docs/cluster.md).

Resuming: every label is written through the results store (answerdist/engine/results/), which skips
finished tasks and rescores damaged ones; a checkpoint whose labels are complete is skipped
without reading its weights (`answerdist.engine.run.api.finished`). A label that fails has its
error recorded in the store (OUT/.sweep/LABEL.failed) until it is scored; `--status` reads it.

Exit status: 0 when every checkpoint was scored, skipped, or held by another worker; 1 when
the sweep ran to the end but some checkpoints failed (each one named in the summary with its
error: a corrupt or missing checkpoint does not stop the others); 2 for bad input before any
work (the sweep file, the world size against tp, an `out` that cannot be written or locked),
with one line and nothing written.
"""

from __future__ import annotations

import gc
import glob
import json
import os
import re
import socket
import string
import sys
import time
import tomllib
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from answerdist.engine.model import distributed
from answerdist.engine.model.checkpoint import load
from answerdist.engine.model.loading import weight_paths
from answerdist.engine.results.schema import step_in_name
from answerdist.engine.results.store import check_writable, read_manifest
from answerdist.engine.run import ledger
from answerdist.engine.run.api import finished, run_spec
from answerdist.engine.settings import (
    SWEEP,
    RunSpec,
    SettingError,
    check_setting,
    declared,
    default_for,
    label_problem,
    shown,
)
from answerdist.engine.tasks.loader import is_builtin
from answerdist.errors import EngineError, OutputError, TaskError
from answerdist.files import read_user_text, write_output

# The sweep's own keys, then the RunSpec settings a sweep file may set (declared in
# answerdist/engine/settings.py; mode and label are set per checkpoint, from `modes` and the
# `label` template).
OWN_KEYS = ("checkpoints", "modes", "label", "stages", "series")
SETTINGS = tuple(s.name for s in declared(SWEEP))
KEYS = OWN_KEYS + SETTINGS


class SweepError(EngineError):
    """The sweep file or a sweep option is invalid, or its results store cannot be used."""


@dataclass
class Sweep:
    """A parsed, validated sweep file."""

    source: Path
    patterns: list[str]  # absolute paths or globs
    modes: list[str]
    label: str  # the template, e.g. "{name}-{mode}"
    spec: RunSpec  # every other setting, shared by all the checkpoints
    stages: list[str] | None = None  # the stage of each pattern's checkpoints
    series: str | None = None  # the series file to write (a template with {mode})
    answers_from: tuple[str, ...] | None = None  # label templates, when any has a field


@dataclass
class Item:
    """One checkpoint of the sweep and the label of each mode it is scored in."""

    index: int
    checkpoint: str
    labels: list[tuple[str, str]]  # (mode, label)
    stage: str | None = None
    position: float = 0.0  # along the series: the step in its name, else its index
    size: int = 0  # bytes of its weight files: the largest are claimed first


@dataclass
class Row:
    """One line of the summary: a checkpoint scored in one mode under one label."""

    label: str
    checkpoint: str
    group: int
    status: str  # scored | skipped | failed
    scored: int = 0
    skipped: int = 0
    seconds: float = 0.0
    error: str = field(default="")


def load_sweep(path) -> Sweep:
    """Read and check a sweep file; every problem is one SweepError line naming the key."""
    path = Path(path)
    try:
        data = tomllib.loads(read_user_text(path))
    except OSError as e:
        raise SweepError(f"{path}: cannot read the sweep file ({e.strerror or e})") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise SweepError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown key {unknown[0]!r}; the keys are {', '.join(KEYS)}")
    base = path.resolve().parent

    def where(p):
        # paths are relative to the sweep file; a value of another type is left to RunSpec
        return str(base / Path(p).expanduser()) if isinstance(p, str) and p else p

    def strings(key, default=None) -> list[str]:
        value = data.get(key, default)
        if isinstance(value, str):
            value = [value]
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, str) and v for v in value)):
            raise SweepError(f"{path}: {key!r} must be a non-empty string or list of strings")
        return value

    patterns = [where(p) for p in strings("checkpoints")]
    settings = {key: data[key] for key in SETTINGS if key in data}
    # Whatever is not a built-in group or task is a path (a task file, a prompt directory, a
    # bare directory name such as "zp"), found beside the sweep file, never in the working
    # directory.
    items = [i.strip() for value in strings("tasks", default_for(SWEEP, "tasks"))
             for i in value.split(",")]
    settings["tasks"] = ",".join(i if is_builtin(i) else where(i) for i in items if i)
    settings["out"] = where(data.get("out", default_for(SWEEP, "out")))
    if "chat_template" in settings:
        settings["chat_template"] = where(settings["chat_template"])
    modes = list(dict.fromkeys(strings("modes", RunSpec.mode)))
    label = data.get("label", "{name}" if len(modes) == 1 else "{name}-{mode}")
    if not isinstance(label, str):
        raise SweepError(f"{path}: 'label' must be a string such as \"{{name}}\" or "
                         f"\"{{parent}}-{{name}}\"")
    check_label_template(path, label)
    templates = answers_from_templates(path, settings)
    if len(modes) > 1 and "{mode}" not in label:
        raise SweepError(f"{path}: several modes need '{{mode}}' in 'label' "
                         f"(e.g. \"{{name}}-{{mode}}\"), "
                         "or each mode would overwrite the other's results")
    try:
        for mode in modes:
            check_setting("mode", mode)
        spec = RunSpec(**settings)
    except SettingError as e:
        raise SweepError(
            f"{path}: {e.worded(repr('modes' if e.key == 'mode' else e.key))}") from None
    except TaskError as e:
        raise SweepError(f"{path}: tasks: {e}") from None
    stages = strings("stages") if "stages" in data else None
    if stages is not None and len(stages) != len(patterns):
        raise SweepError(f"{path}: 'stages' names {len(stages)} stage(s) for "
                         f"{len(patterns)} 'checkpoints' entries; give one per entry")
    series = data.get("series")
    if series is not None:
        if not isinstance(series, str) or not series.endswith(".json"):
            raise SweepError(f"{path}: 'series' must be a file name ending in .json, such as "
                             "\"series.json\"")
        if len(modes) > 1 and "{mode}" not in series:
            raise SweepError(f"{path}: several modes need '{{mode}}' in 'series' "
                             "(e.g. \"series-{mode}.json\"): one series per mode")
        series = where(series)
    return Sweep(path, patterns, modes, label, spec, stages, series, templates)


LABEL_FIELDS = ("name", "parent", "mode", "dtype")


def check_label_template(path: Path, template: str, key: str = "label") -> None:
    """Only plain {name} {parent} {mode} {dtype} fields: no format spec or conversion (a width
    such as {name:a>100000} would make a label of any length)."""
    wrong = f"{path}: {key!r} {shown(template)}: its fields must be plain {{name}}, {{parent}}, " \
            "{mode} or {dtype}"
    try:
        fields_ = [f for f in string.Formatter().parse(template) if f[1] is not None]
    except ValueError as e:
        raise SweepError(f"{wrong} ({e})") from None
    if any(name not in LABEL_FIELDS or spec or conversion for _, name, spec, conversion in fields_):
        raise SweepError(wrong)


def answers_from_templates(path: Path, settings: dict) -> tuple[str, ...] | None:
    """The sweep's answers_from when it holds label templates ("{name}": the label that template
    gives every checkpoint of the sweep, so a ladder of any length borrows from all its
    checkpoints), else None (plain labels are used as they are). Each template is checked,
    and `settings` gets one expansion of them for RunSpec's own checks."""
    value = settings.get("answers_from")
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None  # RunSpec says what is wrong with it
    if not any("{" in v or "}" in v for v in value):
        return None
    filled = []
    for template in value:
        check_label_template(path, template, "answers_from")
        filled.append(template.format(name="name", parent="parent", mode="mode", dtype="dtype"))
        problem = label_problem(filled[-1])
        if problem:
            raise SweepError(f"{path}: 'answers_from' {shown(template)}: the labels it makes "
                             f"{problem}; change 'answers_from'")
    settings["answers_from"] = tuple(filled)
    return tuple(value)


def borrowed_labels(sweep: Sweep, items: list[Item]) -> dict[str, tuple[str, ...]] | None:
    """{mode: the labels answers_from names for that mode}, its templates filled in for every
    checkpoint of the sweep; None when it has no templates."""
    if sweep.answers_from is None:
        return None
    borrowed = {}
    for mode in sweep.modes:
        labels = []
        for template in sweep.answers_from:
            labels += [fill_label(sweep, "answers_from", template, item.checkpoint, mode)
                       for item in items]
        borrowed[mode] = tuple(dict.fromkeys(labels))
    return borrowed


def natural(text: str):
    """Sort key that orders digit runs by value: step200 before step1000."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def expand(sweep: Sweep) -> list[Item]:
    """The checkpoints in sweep order (each once) with their labels; a pattern matching no
    directory, or two checkpoints given one label, is an error."""
    checkpoints, stage_of = [], {}
    for p_index, pattern in enumerate(sweep.patterns):
        if glob.has_magic(pattern):
            matches = sorted((m for m in glob.glob(pattern) if Path(m).is_dir()), key=natural)
            if not matches:
                raise SweepError(f"{sweep.source}: checkpoints pattern {pattern!r} "
                                 "matches no directory")
        elif Path(pattern).is_dir():
            matches = [pattern]
        else:
            raise SweepError(f"{sweep.source}: checkpoint {pattern!r} is not a directory; "
                             "fix 'checkpoints'")
        checkpoints += [os.path.abspath(m) for m in matches]  # symlinks keep their own names
        for m in matches:
            stage_of.setdefault(os.path.abspath(m), sweep.stages[p_index] if sweep.stages
                                else None)
    checkpoints = list(dict.fromkeys(checkpoints))
    positions = series_positions(checkpoints)
    items, owner = [], {}
    for index, checkpoint in enumerate(checkpoints):
        labels = []
        for mode in sweep.modes:
            label = fill_label(sweep, "label", sweep.label, checkpoint, mode)
            if label in owner:
                raise SweepError(f"{sweep.source}: {owner[label]} and {checkpoint} would both be "
                                 f"labelled {label!r}; use a label template that tells them "
                                 f"apart (e.g. \"{{parent}}-{{name}}\")")
            owner[label] = checkpoint
            labels.append((mode, label))
        items.append(Item(index, checkpoint, labels, stage_of[checkpoint], positions[index],
                          weight_bytes(checkpoint)))
    return items


def weight_bytes(checkpoint: str) -> int:
    """The size of a checkpoint's weight files (0 when they cannot be listed: scoring then says
    why, in its row)."""
    try:
        return sum(path.stat().st_size for path in weight_paths(Path(checkpoint)))
    except (EngineError, OSError):
        return 0


def fill_label(sweep: Sweep, key: str, template: str, checkpoint: str, mode: str) -> str:
    """The label the template of sweep file key `key` gives a checkpoint in a mode."""
    path = Path(checkpoint)
    label = template.format(name=path.name, parent=path.parent.name, mode=mode,
                            dtype=sweep.spec.dtype)
    problem = label_problem(label)
    if problem:
        raise SweepError(f"{sweep.source}: {key!r} gives {checkpoint} a label that {problem}; "
                         f"change {key!r}")
    return label


def series_positions(checkpoints: list[str]) -> list[float]:
    """Where each checkpoint lies along the series: the training step its directory name gives
    (`step1000`, OLMo's `stepNNN-tokensNNNB`) when every name has one and they increase along
    the list; else the `global_step` of each directory's trainer_state.json (as the Hugging
    Face Trainer writes in its `checkpoint-NNN` directories) when every one has it and they
    increase; else its index in the list."""
    for steps in ([step_in_name(Path(c).name) for c in checkpoints],
                  [trainer_step(Path(c)) for c in checkpoints]):
        if all(s is not None for s in steps):
            numbers = [float(s) for s in steps]
            if all(b > a for a, b in zip(numbers, numbers[1:], strict=False)):
                return numbers
    return [float(i) for i in range(len(checkpoints))]


def trainer_step(checkpoint: Path) -> int | None:
    """`global_step` of CHECKPOINT/trainer_state.json, None when absent or unreadable (the
    position then comes from the list's order, so a damaged file is no reason to stop)."""
    try:
        step = json.loads(read_user_text(checkpoint / "trainer_state.json"))["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def write_series(sweep: Sweep, items: list[Item], rows: list[Row],
                 borrowed: dict[str, tuple[str, ...]] | None = None) -> list[Path]:
    """The series file of each mode: label, position and stage of every checkpoint of the sweep
    whose label is finished in the store (scored or found finished here, or by another worker),
    in order, for `answerdist trajectory`. Each worker writes it when it ends (atomically), so
    the last one to end writes the whole ladder."""
    if sweep.series is None:
        return []
    ours = {r.label: r.status != "failed" for r in rows if r.status != "claimed"}
    done = set()
    for item in items:
        for label, spec in label_specs(sweep, item, borrowed).items():
            if ours.get(label, False) or (label not in ours and finished(item.checkpoint, spec)):
                done.add(label)
    written = []
    for mode in sweep.modes:
        points = [{"label": label, "position": item.position, "stage": item.stage}
                  for item in items for m, label in item.labels if m == mode and label in done]
        path = Path(sweep.series.format(mode=mode))
        write_output(path, json.dumps({"mode": mode, "points": points}, indent=1) + "\n")
        written.append(path)
    return written


@dataclass
class LabelState:
    """Where one label of the sweep stands in its store (`answerdist sweep --status`)."""

    label: str
    checkpoint: str
    state: str  # done | claimed | failed | partial | pending
    detail: str = ""  # claimed: its holder; failed: its last error; partial: what it lacks
    tasks_done: list[str] = field(default_factory=list)  # this sweep's tasks it holds
    tasks_missing: list[str] = field(default_factory=list)


STATES = ("done", "claimed", "failed", "partial", "pending")


def label_states(sweep: Sweep, items: list[Item],
                 borrowed: dict[str, tuple[str, ...]] | None = None) -> list[LabelState]:
    """Every label's state, read from the store without reading weights: claimed while a live
    worker holds its claim; done when a rerun would skip it (`answerdist.engine.run.api.finished`);
    failed when its last attempt failed; partial when it holds some of the sweep's tasks; else
    pending."""
    out, states = sweep.spec.out, []
    for item in items:
        for label, spec in label_specs(sweep, item, borrowed).items():
            names = [task.name for task in spec.tasks]
            try:
                held = (read_manifest(out, label) or {"tasks": {}})["tasks"]
            except OutputError:
                held = {}
            have = [n for n in names if n in held]
            state = LabelState(label, item.checkpoint, "pending", "", have,
                               [n for n in names if n not in held])
            holder = ledger.holder(out, label)
            failure = ledger.read_failure(out, label)
            if holder:
                state.state, state.detail = "claimed", holder
            elif finished(item.checkpoint, spec):
                state.state, state.tasks_done, state.tasks_missing = "done", names, []
            elif failure:
                state.state, state.detail = "failed", str(failure.get("error", ""))[:500]
            elif have:
                state.state = "partial"
                state.detail = (f"{len(have)} of {len(names)} tasks; lacks "
                                f"{', '.join(state.tasks_missing) or 'none (other settings)'}")
            states.append(state)
    return states


def start(path):
    """Parse the sweep file, set up the launch and expand the checkpoints and the labels
    answers_from names (rank 0's view, shared with every rank). Every rank raises the same error
    on bad input."""
    try:
        sweep = load_sweep(path)
    except EngineError as e:  # the same file on every rank: the same verdict
        raise distributed.everywhere(e) from None
    spec = sweep.spec
    layout = distributed.setup(spec.tp, spec.device, spec.dist_timeout)
    with layout.world_group.step("listing the checkpoints"):
        if layout.rank == 0:
            items = expand(sweep)
            plan = items, borrowed_labels(sweep, items)
        else:
            plan = None
    return layout, sweep, *layout.world_group.broadcast(plan, "sharing the checkpoint list")


def check_store(sweep: Sweep, items: list[Item]) -> None:
    """Before any work: `out` is writable, takes advisory locks, and holds no claim file that is
    not a regular file; a SweepError line otherwise."""
    try:
        check_writable(sweep.spec.out)
        ledger.check_ledger(sweep.spec.out, [label for item in items for _, label in item.labels])
    except EngineError as e:
        raise SweepError(str(e)) from None


def shard(items: list[Item], which: tuple[int, int] | None) -> list[Item]:
    """Shard I of N: checkpoints I, I + N, I + 2N, ... of the sweep's order (N shards cover
    every checkpoint once, whatever the sizes; the order depends only on the listing)."""
    if which is None:
        return items
    i, n = which
    return items[i::n]


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' with 0 <= I < N, as `sbatch --array=0-(N-1)` numbers its tasks."""
    match = re.fullmatch(r"\s*(\d{1,9})\s*/\s*(\d{1,9})\s*", text)
    if not match:
        raise SweepError(f"--shard {shown(text)}: give I/N, shard I of N counted from 0, "
                         "such as 0/4 (e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    i, n = int(match[1]), int(match[2])
    if n == 0 or i >= n:
        raise SweepError(f"--shard {i}/{n}: I must be from 0 to N - 1 and N at least 1 "
                         f"(shards 0/{max(n, 1)} to {max(n, 1) - 1}/{max(n, 1)})")
    return i, n


def run_group(sweep: Sweep, items: list[Item], layout,
              borrowed: dict[str, tuple[str, ...]] | None = None) -> list[Row]:
    """This group's share of the sweep: it claims the checkpoints one at a time, the largest
    first, and scores those it gets; a checkpoint another worker holds is left to it and tried
    once more at the end (its holder may have died meanwhile). A failing checkpoint is recorded
    in the store, not fatal. borrowed: {mode: labels} for answers_from templates."""
    group = layout.tp
    rows: list[Row] = []
    local_groups = int(os.environ.get("LOCAL_WORLD_SIZE", layout.world)) // max(1, group.size)
    position = layout.dp_rank % max(1, local_groups)
    order = sorted(items, key=lambda item: (-item.size, item.index))
    with tqdm(total=len(order), unit="ckpt", desc=f"group {layout.dp_rank}", file=sys.stderr,
              position=position, disable=None if group.lead else True) as bar:
        held: dict[int, str] = {}
        for _pass in range(2):  # the second retries what other workers held in the first
            held = {}
            for item in order:
                bar.set_postfix_str(Path(item.checkpoint).name)
                done = claim_and_score(sweep, item, layout, borrowed, bar)
                if isinstance(done, str):
                    held[item.index] = done
                    continue
                rows += done
                bar.update(1)
            order = [item for item in order if item.index in held]
        rows += [Row(label, item.checkpoint, layout.dp_rank, "claimed", error=held[item.index])
                 for item in order for _, label in item.labels]
    return rows


def claim_and_score(sweep: Sweep, item: Item, layout, borrowed, bar) -> list[Row] | str:
    """Score a checkpoint under the group's claims on its labels (taken by the group's first
    rank); when another worker holds one of them, that worker's record instead."""
    group, out = layout.tp, sweep.spec.out
    labels = [label for _, label in item.labels]
    claims = ledger.Claims(out, labels) if group.lead else None
    with group.step(f"claiming {labels[0]}"):
        held_by = None if claims is None or claims.take() else claims.holder
    held_by = group.broadcast(held_by, "sharing the claim")
    if held_by is not None:
        return held_by
    try:
        rows = score_item(sweep, item, layout, borrowed)
        with group.step("recording the outcome"):
            if group.lead:
                for row in rows:
                    if row.status == "failed":
                        bar.write(f"failed: {row.label}: {row.error}", file=sys.stderr)
                        ledger.record_failure(out, row.label, item.checkpoint, row.error)
                    else:
                        ledger.clear_failure(out, row.label)
        return rows
    finally:
        if claims:
            claims.release()


def label_specs(sweep: Sweep, item: Item,
                borrowed: dict[str, tuple[str, ...]] | None) -> dict[str, RunSpec]:
    """{label: the settings it is scored with} for each mode of the checkpoint."""
    return {label: sweep.spec.replace(mode=mode, label=label, progress=False,
                                      **({} if borrowed is None
                                         else {"answers_from": borrowed[mode]}))
            for mode, label in item.labels}


def score_item(sweep: Sweep, item: Item, layout,
               borrowed: dict[str, tuple[str, ...]] | None = None) -> list[Row]:
    """Score one checkpoint in each of its modes; failures become failed rows. `seconds` is the
    checkpoint's time (loading and every mode)."""
    group, shared = layout.tp, sweep.spec
    specs = label_specs(sweep, item, borrowed)
    rows = {label: Row(label, item.checkpoint, layout.dp_rank, "failed") for label in specs}
    n_tasks = len(shared.tasks)
    started = time.perf_counter()
    ck = None
    try:
        with group.step("checking for finished work"):
            done = ([finished(item.checkpoint, spec) for spec in specs.values()] if group.lead
                    else None)
        done = group.broadcast(done, "sharing finished work")
        todo = []
        for label, is_done in zip(specs, done, strict=True):
            if is_done:
                rows[label].status, rows[label].skipped = "skipped", n_tasks
            else:
                todo.append(label)
        if todo:
            if group.lead:  # in a worker's log: which worker scored what (a checkpoint another
                # worker finished is skipped here, silently, under its claim)
                tqdm.write(f"scoring {', '.join(todo)} (pid {os.getpid()} on "
                           f"{socket.gethostname()})", file=sys.stderr)
            ck = load(item.checkpoint, dtype=shared.dtype, device=shared.device, tp=shared.tp)
        for label in todo:
            row = rows[label]
            try:
                result = run_spec(ck, specs[label])
            except Exception as e:
                row.error = _message(e)
            else:
                row.skipped = result.manifest["timings"]["skipped_tasks"]
                row.scored = n_tasks - row.skipped
                row.status = "scored" if row.scored else "skipped"
    except Exception as e:  # loading failed: every mode still to score failed with it
        for row in rows.values():
            if row.status == "failed" and not row.error:
                row.error = _message(e)
    finally:
        del ck  # free this checkpoint before the next one
        gc.collect()
    seconds = round(time.perf_counter() - started, 2)  # loading included
    for row in rows.values():
        row.seconds = seconds
    return list(rows.values())


def _message(error: Exception) -> str:
    if isinstance(error, EngineError):
        return str(error)
    traceback.print_exc()  # a bug: the traceback, and the sweep goes on
    return f"{type(error).__name__}: {error}"
