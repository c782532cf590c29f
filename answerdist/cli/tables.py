"""Tables printed by the commands: columns as wide as their widest cell, whatever the length of a
task name, label or checkpoint path, and every cell on one line (a control character in an
answer or a name is escaped, as in error messages)."""

from __future__ import annotations

from answerdist.errors import one_line


def print_table(header: list[str], rows: list[list], right: tuple[str, ...] = ()) -> None:
    """Print `rows` under `header`; the columns named in `right` (numbers) align right. The last
    column is not padded."""
    cells = [[one_line(v) for v in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        padded = [f"{v:>{w}}" if name in right else f"{v:<{w}}"
                  for v, w, name in zip(row, widths, header, strict=True)]
        padded[-1] = row[-1] if header[-1] not in right else padded[-1]
        print("  ".join(padded).rstrip())
