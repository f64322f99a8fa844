"""Tables as text: one formatter for Markdown tables (reports, notebooks) and one for aligned terminal
tables, so every table cnnlab prints or writes looks the same."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def format_cell(value: Any, digits: int | None = 4) -> str:
    """None as an empty cell, floats rounded to ``digits`` (None: as ``str`` writes them)."""
    if value is None:
        return ""
    if isinstance(value, float) and digits is not None:
        return f"{value:.{digits}f}"
    return str(value)


def _cells(rows: Sequence, columns: Sequence[str] | None, digits: int | None) -> tuple[list[str], list[list[str]]]:
    """Rows of mappings (columns default to the first row's keys) or of sequences, as strings."""
    if columns is None:
        columns = list(rows[0]) if rows else []
    lines = [[row.get(c) for c in columns] if isinstance(row, Mapping) else list(row) for row in rows]
    return [str(c) for c in columns], [[format_cell(v, digits) for v in line] for line in lines]


def markdown_table(
    rows: Sequence,
    columns: Sequence[str] | None = None,
    *,
    title: str | None = None,
    align: str | None = None,
    digits: int | None = 4,
) -> str:
    """A Markdown table; ``align`` gives one letter per column ('l' or 'r'), else no alignment marks."""
    names, cells = _cells(rows, columns, digits)
    if not names:
        return ""
    marks = ["---:" if a == "r" else "---" for a in align] if align else ["---"] * len(names)
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(names) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in cells]
    return "\n".join(lines)


def text_table(
    rows: Sequence,
    columns: Sequence[str] | None = None,
    *,
    left: Sequence[str] = (),
    digits: int | None = 4,
) -> str:
    """An aligned plain-text table: each column as wide as its widest cell, numbers right-aligned,
    the columns named in ``left`` left-aligned, two spaces between columns."""
    names, cells = _cells(rows, columns, digits)
    widths = [max(len(name), *(len(line[i]) for line in cells)) for i, name in enumerate(names)]

    def line(values: Sequence[str]) -> str:
        parts = [
            value.ljust(width) if name in left else value.rjust(width)
            for name, value, width in zip(names, values, widths, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(names), *(line(values) for values in cells)])
