"""Plain text for logs, errors and tool output: tables, and short forms of long values (standard library only)."""

from __future__ import annotations

import math
from typing import Any, Callable, List, Sequence


def format_number(value: Any, digits: int = 3) -> str:
    """A float with ``digits`` decimals; ``None`` and NaN print as "-" (not measured / not available)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A pipe table: text columns left-aligned, numeric columns right-aligned."""
    cells: List[List[str]] = [[format_number(value, digits) for value in row] for row in rows]
    widths = [max(map(len, column)) for column in zip(headers, *cells)]
    numeric = [
        bool(rows) and all(isinstance(row[i], (int, float)) or row[i] is None for row in rows)
        for i in range(len(headers))
    ]

    def line(texts: Sequence[str]) -> str:
        padded = [text.rjust(w) if num else text.ljust(w) for text, w, num in zip(texts, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rules = [("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)]
    separator = "|" + "|".join(rules) + "|"
    return "\n".join([line(headers), separator] + [line(row) for row in cells])


def first_line(error: BaseException) -> str:
    """An exception as one short line for a one-line error message (its type name when it has no text)."""
    # str() of a KeyError is the repr of its message.
    text = str(error.args[0] if isinstance(error, KeyError) and error.args else error).strip().strip("'\"")
    return text.splitlines()[0][:300] if text else type(error).__name__


def first_items(items: Sequence[Any], count: int = 4, show: Callable[[Any], str] = repr) -> str:
    """The first ``count`` items as ``show`` writes them, and how many there are in all when some are left out."""
    items = list(items)
    shown = ", ".join(show(item) for item in items[:count])
    return shown + (f", ... ({len(items)} in all)" if len(items) > count else "")
