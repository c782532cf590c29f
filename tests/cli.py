"""Running `answerdist score` as a user does, in a subprocess, and reading its error line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The subprocess gets torch's default thread count, as the test process has (conftest.py keeps
# it): results compared bit for bit across the two must come from the same count.
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "answerdist", "score", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=timeout, cwd=ROOT)


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 2 and one `error:` line (notes aside) containing every fragment."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
