"""`answerdist analyse RESULTS_DIR --ladder ...`: the phases of each ladder.

Reads the results store (answerdist/engine/results/), computes the phase metrics
(answerdist/analysis/phases.py), prints them as text tables, writes phases.json and, with
--report, the HTML report (answerdist/analysis/report.py). Bad input: one line and exit status
2, nothing written.
"""

import json
import sys
from pathlib import Path

from answerdist.analysis.bootstrap import BOOTSTRAP, MIN_BOOTSTRAP
from answerdist.analysis.ladders import ladder_list
from answerdist.analysis.null import LEVEL
from answerdist.analysis.phases import (
    MIN_COVERAGE,
    TAU,
    analyse,
    check_settings,
    load_results,
    seed_verdict,
)
from answerdist.analysis.report import build_report
from answerdist.engine.results.store import check_writable
from answerdist.errors import AnalysisError, ArgumentParser, EngineError
from answerdist.files import staged


def _fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


# The intervals printed under each task's table: (column head, metric, in settling, digits).
INTERVAL_COLUMNS = (("H/logK", "entropy_norm", False, 2), ("effK", "effective_support", False, 1),
                    ("liquid", "liquidity", False, 3), ("nucl", "nucleation", False, 2),
                    ("retain", "retention", True, 3), ("drift", "drift", True, 3),
                    ("gamma", "gamma", True, 2))


def _interval_rows(t):
    """95% intervals of the main figures, one row per stage, under a task's table."""
    cells = [f"{head:>16}" for head, *_ in INTERVAL_COLUMNS]
    lines = [f"    {'95% interval':<32}" + "".join(cells)]
    for stage, m in t.stages.items():
        row = []
        for _, metric, settled, digits in INTERVAL_COLUMNS:
            figure = (t.settling.get(stage, {}) if settled else m.figures).get(metric)
            ci = None if figure is None else figure.ci
            text = "-" if ci is None else f"[{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]"
            row.append(f"{text:>16}")
        lines.append(f"    {stage:<32}" + "".join(row))
    return lines


def format_tables(phases):
    """Compact text tables of a Phases result: one block per ladder and task, one row per
    stage, then the 95% intervals of the main figures; beside each phase, the share of
    resamples that agree. effK and consK are the effective support sizes (per prompt, of the
    consensus) in answers."""
    head = (
        f"{'stage':<8}{'label':<24}{'H':>7}{'H/logK':>8}{'effK':>8}{'consK':>8}{'liquid':>8}"
        f"{'dist':>6}{'disp':>7}"
        f"{'cover':>7}{'nucl':>8}{'retain':>8}{'drift':>7}{'rho':>7}  phase"
    )
    lines = []
    for name, body in phases.ladders.items():
        stages = ", ".join(f"{s}={label}" for s, label in body.stages)
        lines.append(f"ladder {name} ({stages})")
        for task, t in body.tasks.items():
            seed = t.seed
            lines.append(
                f"  task {task}  K={len(t.answers)}  seed ({seed.stage}): "
                f"{seed_verdict(seed)}, nearest {seed.nearest_prompt_id} "
                f"JS {_fmt(seed.value('js'))} vs median {_fmt(seed.value('median_js'))}"
            )
            lines.append("    " + head)
            for stage, m in t.stages.items():
                st = {k: f.value for k, f in t.settling.get(stage, {}).items()}
                v = m.value
                lines.append(
                    f"    {stage:<8}{m.label[:23]:<24}{_fmt(v('entropy_bits'), 2):>7}"
                    f"{_fmt(v('entropy_norm'), 2):>8}{_fmt(v('effective_support'), 1):>8}"
                    f"{_fmt(v('consensus_support'), 1):>8}{_fmt(v('liquidity')):>8}"
                    f"{v('distinct'):>6}"
                    f"{_fmt(v('dispersion')):>7}{_fmt(v('coverage')):>7}"
                    f"{_fmt(v('nucleation'), 2):>8}{_fmt(st.get('retention')):>8}"
                    f"{_fmt(st.get('drift')):>7}{_fmt(st.get('spearman'), 2):>7}  {m.phase}"
                    f" ({m.phase_support:.0%})"
                )
            lines += _interval_rows(t)
    for pair in phases.cross_ladder:
        a, b = pair.ladders
        lines.append(f"seeds, {a} vs {b}")
        for task, c in pair.tasks.items():
            ids = " / ".join(str(x) for x in c.seed_prompt_ids)
            same = ("same prompt" if c.same_prompt else
                    "compatible (their seed sets share a prompt)" if c.compatible else
                    "different or missing seed")
            lines.append(f"  {task}: {ids}  JS {_fmt(c.js_between_seeds)}  {same}")
    return "\n".join(lines + LEGEND)


# Every column of the tables, said under them (docs/metrics.md defines each).
LEGEND = [
    "columns: H entropy (bits); H/logK entropy over its maximum; effK, consK effective number "
    "of answers per prompt and of the consensus; liquid liquidity (mean pairwise JS between "
    "phrasings, bits); dist phrasings distinct at --tau; disp dispersion (mean JS to the "
    "consensus, bits); cover coverage (mass on the answers); nucl nucleation (1 - liquidity / "
    "the base's); retain retention (consensus mass in the seed's support); drift JS to the "
    "seed stage's consensus (bits); rho Spearman correlation with the seed prompt; phase "
    "(share of resamples giving the same label); no_answer: coverage below --min-coverage; "
    "- : undefined or not applicable",
]


def check_output_file(path: Path) -> None:
    """A file can be written at `path` (its directory exists or can be made, and is writable)."""
    if path.is_dir():
        raise AnalysisError(f"--out {path}: is a directory; give a file path such as "
                            f"{path / 'phases.json'}")
    check_writable(path.parent)


def _parse_args(argv):
    parser = ArgumentParser(
        prog="answerdist analyse",
        description="Phase metrics (liquid / nucleated / settled) of answer distributions.",
    )
    parser.add_argument("results_dir", help="folder with <label>/<task>.parquet")
    parser.add_argument(
        "--ladder",
        action="append",
        required=True,
        metavar="[NAME:]base=LABEL,sft=LABEL,...",
        help="ordered stages of one ladder; the first is the base (repeat for more ladders)",
    )
    parser.add_argument("--tau", type=float, default=TAU, help="JS threshold for `distinct`")
    parser.add_argument("--level", type=float, default=LEVEL,
                        help=f"p-value below which a seed is found (default {LEVEL})")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP, metavar="N",
                        help=f"resamples of the prompts behind every interval (default "
                             f"{BOOTSTRAP}, at least {MIN_BOOTSTRAP})")
    parser.add_argument(
        "--out", help="where to write phases.json (default RESULTS_DIR/phases.json)"
    )
    parser.add_argument("--min-coverage", type=float, default=MIN_COVERAGE, metavar="C",
                        help="a stage whose answers hold less mass than this does not answer in "
                             "the scored format: phase no_answer, and a ladder whose seed stage "
                             f"does not answer is refused (default {MIN_COVERAGE})")
    parser.add_argument("--report", metavar="DIR", help="also write DIR/index.html with plots")
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse_args(argv)
    try:
        check_settings(args.tau, args.level, args.bootstrap, spelling="--",
                       min_coverage=args.min_coverage)
        ladders = ladder_list(args.ladder)
        labels = list(dict.fromkeys(label for _, stages in ladders for _, label in stages))
        out = Path(args.out) if args.out else Path(args.results_dir) / "phases.json"
        check_output_file(out)  # before anything is written: no report without its phases.json
        if args.report:
            check_writable(Path(args.report))
        results = load_results(args.results_dir, labels)
        phases = analyse(results, ladders, args.tau, args.level, args.bootstrap,
                         args.min_coverage)
        text = json.dumps(phases.to_json(), indent=1, allow_nan=False)
        with staged() as stage:  # the report and the JSON both land, or neither
            if args.report:
                build_report(phases, results, stage.directory(args.report))
            stage.file(out, text)
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in phases.warnings:
        print(f"warning: {line}", file=sys.stderr)
    print(format_tables(phases))
    print(f"wrote {out}" + (f" and {Path(args.report) / 'index.html'}" if args.report else ""))
    return 0


