"""Plain-text tables and their cells: what the CLI prints and the report's table is made of."""
from __future__ import annotations

from typing import Any, Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None) -> str:
    """A plain aligned text table (a rule under the headers; right-aligned where right[i])."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    right = right or [False] * len(headers)
    lines = []
    for n, row in enumerate(cells):
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def pm(value: float | None, error: float | None, fmt: str) -> str:
    """'value ± error' in one format ('' without a value, the value alone without an error)."""
    if value is None:
        return ""
    return f"{value:{fmt}} ± {error:{fmt}}" if error is not None else f"{value:{fmt}}"


def num(value: float | None, fmt: str) -> str:
    """A number in a format, '' when there is none."""
    return "" if value is None else f"{value:{fmt}}"
