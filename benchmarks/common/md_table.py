"""Markdown table helpers shared by the benchmark reports."""

from __future__ import annotations


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    """``value`` formatted, or "-" for a figure that was not measured."""
    return "-" if value is None else f"{format(value, spec)}{suffix}"


def table(header: list[str], body: list[list[str]], right_from: int = 1) -> list[str]:
    """A GitHub Markdown table; columns from ``right_from`` on are right-aligned (numbers)."""
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    return lines + ["| " + " | ".join(row) + " |" for row in body]
