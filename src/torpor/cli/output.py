"""Small formatting helpers shared by the CLI's commands."""

from __future__ import annotations


def human_bytes(n: int | float) -> str:
    """Binary units: 512 B, 1.5 KiB, 33.4 MiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover
