"""`python -m answerdist COMMAND ...`, the same as the `answerdist` console script."""

import sys

from answerdist.cli import main

if __name__ == "__main__":
    sys.exit(main())
