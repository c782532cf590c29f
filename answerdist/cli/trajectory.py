"""`answerdist trajectory RESULTS_DIR --series NAME=SPEC ...`: order parameters along many
checkpoints and where they jump (answerdist/analysis/dynamics.py); writes trajectory.json and,
with --report, its HTML report. Bad input: one line and exit status 2, nothing written.
"""

import json
import sys
from pathlib import Path

from answerdist.analysis.bootstrap import BOOTSTRAP, CONFIDENCE, MIN_BOOTSTRAP, check_resamples
from answerdist.analysis.checks import number_in
from answerdist.analysis.dynamics import check_series, parse_series, trajectory
from answerdist.analysis.phases import MIN_COVERAGE, load_results
from answerdist.analysis.report import build_trajectory_report
from answerdist.cli.analyse import check_output_file
from answerdist.engine.results.store import check_writable, labels_in
from answerdist.errors import AnalysisError, ArgumentParser, EngineError
from answerdist.files import staged


def _trajectory_args(argv):
    parser = ArgumentParser(
        prog="answerdist trajectory",
        description="Order parameters along many checkpoints, and where they jump.",
    )
    parser.add_argument("results_dir", help="folder with <label>/<task>.parquet")
    parser.add_argument("--series", action="append", required=True, metavar="NAME=SPEC",
                        help="SPEC: a label glob (step positions read from the labels), a "
                             "comma list of labels or label@position, or a series file that "
                             "answerdist.engine.run.sweep wrote (repeat for more series)")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP, metavar="N",
                        help=f"resamples of the prompts behind every interval (default "
                             f"{BOOTSTRAP}, at least {MIN_BOOTSTRAP})")
    parser.add_argument("--out", help="where to write trajectory.json (default "
                                      "RESULTS_DIR/trajectory.json)")
    parser.add_argument("--min-coverage", type=float, default=MIN_COVERAGE, metavar="C",
                        help="a point whose answers hold less mass than this does not answer in "
                             "the scored format and enters no fit but coverage's (default "
                             f"{MIN_COVERAGE})")
    parser.add_argument("--report", metavar="DIR", help="also write DIR/index.html with plots")
    return parser.parse_args(argv)


def main(argv=None):
    """`answerdist trajectory ...`: points and located transitions of each series."""
    args = _trajectory_args(argv)
    try:
        check_resamples(args.bootstrap, "--bootstrap")
        number_in(args.min_coverage, "--min-coverage", 0.0, 1.0, default=MIN_COVERAGE)
        out = Path(args.out) if args.out else Path(args.results_dir) / "trajectory.json"
        check_output_file(out)
        if args.report:
            check_writable(Path(args.report))
        present = labels_in(args.results_dir)
        series = {}
        for spec in args.series:
            name, points = parse_series(spec, present)
            if name in series:
                raise AnalysisError(f"--series {spec!r}: the name {name!r} is given twice")
            check_series(name, points)
            series[name] = points
        labels = list(dict.fromkeys(p[0] for points in series.values() for p in points))
        result = trajectory(load_results(args.results_dir, labels), series, args.bootstrap,
                            args.min_coverage)
        text = json.dumps({"bootstrap": args.bootstrap, "confidence": CONFIDENCE,
                           "series": {name: [{"label": p[0], "position": p[1], "stage": p[2]}
                                             for p in points] for name, points in series.items()},
                           "points": result.points.to_pylist(),
                           "transitions": result.transitions.to_pylist()},
                          indent=1, allow_nan=False)
        with staged() as stage:  # the report and the JSON both land, or neither
            if args.report:
                build_trajectory_report(result, stage.directory(args.report))
            stage.file(out, text)
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_transitions(result.transitions))
    print(f"wrote {out}" + (f" and {Path(args.report) / 'index.html'}" if args.report else ""))
    return 0


def format_transitions(table):
    """One line per series, task and order parameter: where it jumps, and how sharply (no
    position: flat, or a straight line fits at least as well as a step)."""
    lines = [f"{'series':<12}{'task':<16}{'parameter':<20}{'position':>12}{'95% interval':>26}"
             f"{'dAIC':>9}  kind"]
    for r in table.to_pylist():
        if r["position"] is None:  # flat, too few answering points, or a line fits better
            drift = r["delta_aic"] < 0
            lines.append(f"{r['series'][:11]:<12}{r['task'][:15]:<16}{r['metric']:<20}"
                         f"{'-':>12}{'-':>26}"
                         + (f"{r['delta_aic']:>9.1f}  not located (a line fits better)" if drift
                            else f"{'-':>9}  flat"))
            continue
        ci = ("-" if r["position_lo"] is None
              else f"[{r['position_lo']:.6g}, {r['position_hi']:.6g}]")
        lines.append(f"{r['series'][:11]:<12}{r['task'][:15]:<16}{r['metric']:<20}"
                     f"{r['position']:>12.6g}{ci:>26}{r['delta_aic']:>9.1f}  "
                     + ("sharp" if r["sharp"] else "crossover"))
    return "\n".join(lines)
