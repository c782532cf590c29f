"""The commands' printed tables (answerdist/cli/tables.py): every column starts at the same place
on every line whatever the length of a task name, label or path, and every row is one line even
when a cell holds a newline or another control character."""

from __future__ import annotations

import contextlib
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from answerdist.cli.tables import print_table
from answerdist.errors import one_line

CELL = st.one_of(st.text(max_size=70), st.integers(-10**12, 10**12))


@settings(max_examples=200, deadline=None)
@given(data=st.data(), columns=st.integers(1, 6))
def test_columns_line_up_for_cells_of_any_length(data, columns):
    header = [f"c{i}" for i in range(columns)]
    rows = data.draw(st.lists(st.lists(CELL, min_size=columns, max_size=columns), max_size=8))
    right = tuple(data.draw(st.lists(st.sampled_from(header), unique=True)))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_table(header, rows, right=right)
    lines = out.getvalue().split("\n")[:-1]
    assert len(lines) == len(rows) + 1  # one line per row: control characters were escaped
    cells = [[one_line(v) for v in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(columns)]
    full = sum(widths) + 2 * (columns - 1)
    for line, row in zip(lines, cells, strict=True):
        assert line == line.rstrip()
        line = line.ljust(full)  # trailing blanks are not printed
        start = 0
        for i, cell in enumerate(row):
            last = i == columns - 1
            width = len(cell) if last and header[i] not in right else widths[i]
            field = line[start:start + width]
            if header[i] in right:
                assert field == cell.rjust(width)
            elif last:
                assert line[start:].rstrip() == cell.rstrip()
            else:
                assert field == cell.ljust(width)
            start += width + 2
