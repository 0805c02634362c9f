"""What a chunk carries about its file's format: small, frozen, picklable.

The supervisor picks a ``Format`` once per file (``select.py``) and every
chunk of that file carries it to whichever worker runs it, local or on a
cluster, so a reader never has to look at another chunk (the header of a
delimited file, the delimiter, the address column) to make sense of its own.
A plain file with JSON-lines output travels as ``None``: today's chunk,
today's fast path.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KINDS", "Format"]

KINDS = ("plain", "delimited", "jsonl", "text", "networks")


@dataclass(frozen=True, slots=True)
class Format:
    """How to read one file and how to write its result."""

    kind: str = "plain"           # one of KINDS
    output: str = "jsonl"         # "jsonl" or "csv"
    # delimited: the header as found, the address column and carried columns (indices into it)
    delimiter: str = ","
    header: tuple[str, ...] = ()
    address: int = -1
    carry: tuple[tuple[str, int], ...] = ()
    body_start: int = 0           # byte offset of the first record after the header
    header_lines: int = 0         # physical lines the header (and a BOM) took
    # jsonl: candidate field paths, each split on dots, and the record shape
    paths: tuple[str, ...] = ()
    mode: str = "annotate"
    # text
    skip_reserved: bool = False
    # networks
    expand_cap: int = 0
    # every format: the longest record read (spool.max_line_bytes)
    max_record_bytes: int = 4096

    @property
    def is_default(self) -> bool:
        """Plain lines written as JSON lines: the unchanged fast path."""
        return self.kind == "plain" and self.output == "jsonl"

    @property
    def suffix(self) -> str:
        """The result file's suffix."""
        return ".csv" if self.output == "csv" else ".jsonl"
