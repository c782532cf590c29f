"""`answerdist demo [--out demo] [--small] [--force]`: build (or reuse) the toy ladder, score it,
analyse it, and say what was found (answerdist/lab/demo.py; `make demo`)."""

from __future__ import annotations

from answerdist.errors import ArgumentParser
from answerdist.lab import demo


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="answerdist demo", description=demo.__doc__.split("\n")[0])
    p.add_argument("--out", default="demo", help="output directory (default: demo)")
    p.add_argument("--small", action="store_true", help="the small, fast configuration")
    p.add_argument("--force", action="store_true", help="rebuild the ladder")
    args = p.parse_args(argv)
    return demo.run(args.out, small=args.small, force=args.force)
