"""Text formatting shared by the report's sections: numbers, intervals and tables (as the template wants them)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def fmt(value: Any, digits: int = 3, scale: float = 1.0, suffix: str = "") -> str:
    return f"{value * scale:.{digits}f}{suffix}" if finite(value) else "n/a"


def pct(value: Any, digits: int = 1) -> str:
    return fmt(value, digits, 100, " %")


def interval(mean: Any, lo: Any, hi: Any, scale: float = 100, signed: bool = False) -> str:
    """``81.7 [78.1, 85.0]``: a mean with its interval, in percent (points) by default."""
    if not finite(mean):
        return "n/a"
    sign = "+" if signed else ""
    text = f"{mean * scale:{sign}.1f}"
    if finite(lo) and finite(hi):
        text += f" [{lo * scale:{sign}.1f}, {hi * scale:{sign}.1f}]"
    return text


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> dict[str, Any]:
    """Cells as text, plus which columns hold numbers (right-aligned on the page)."""
    body = [[str(cell) for cell in row] for row in rows]
    numeric = [bool(body) and all(_looks_numeric(row[i]) for row in body) for i in range(len(header))]
    return {"header": list(header), "rows": body, "numeric": numeric}


def _looks_numeric(text: str) -> bool:
    return text == "n/a" or (bool(text) and (text[0].isdigit() or (text[0] in "+-" and text[1:2].isdigit())))
