"""A measured figure checked against a bar: the same record in every benchmark's JSON."""

from __future__ import annotations


def check(bars: dict[str, tuple[str, float]], name: str, value: float | None) -> dict:
    """{"value", "bar", "met"}: value against bars[name] = (">=" or "<=", limit); met is
    None when there is no value."""
    op, limit = bars[name]
    met = None if value is None else (value >= limit if op == ">=" else value <= limit)
    return {"value": value, "bar": f"{op} {limit:g}", "met": met}
