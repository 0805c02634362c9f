"""An oracle for physical lines, independent of ``ipspool.pipeline.split_lines``."""

from __future__ import annotations

__all__ = ["physical_lines"]


def physical_lines(data: bytes) -> list[bytes]:
    """The lines of ``data``, counted by hand, without their newlines.

    ``bytes.splitlines(keepends=True)`` restricted to ``\\n``: every ``\\n``
    ends one line; a last piece without one is a line too; nothing follows a
    final newline (so ``b""`` has no lines and ``b"\\n"`` one empty line).
    ``\\r`` and the other separators ``splitlines`` knows are data here.
    """
    lines: list[bytes] = []
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            end = len(data)
        lines.append(data[start:end])
        start = end + 1
    return lines
