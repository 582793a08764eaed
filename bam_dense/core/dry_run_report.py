"""The summary every ``--dry-run`` prints (pretraining, mmseg/mmdet): labelled lines in one format."""

from __future__ import annotations

from typing import Any


def line(label: str, text: str) -> str:
    """One labelled line of a dry-run summary."""
    return f"  {label:<14} {text}"


def changed_line(changed: dict[str, tuple[Any, Any]]) -> str:
    """What the dry-run changed against the full run: ``key: full -> dry`` for each key."""
    return line("changed", "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()) or "nothing")


def closing_lines(peak_memory_mb: float, memory_kind: str, notes: list[str]) -> list[str]:
    """Peak memory and the notes, the last lines of every summary."""
    return [line("peak memory", f"{peak_memory_mb:.0f} MiB ({memory_kind})"), *(line("note", n) for n in notes)]
