"""`python -m analysis RESULTS_DIR --ladder ...`: the same CLI as `python -m analysis.phases`."""

import sys

from analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
