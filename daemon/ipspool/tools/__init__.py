"""Build-time and demo tools: the man page, shell completion, the
configuration reference and ``make demo``.

Each module runs as ``python -m ipspool.tools.NAME`` (from the Makefile, the
Debian package build or by hand) and writes something for people to read.
The daemon never imports this package: nothing under ``ipspool`` outside
``ipspool.tools`` may import from it (tests/unit/test_imports.py checks it).
"""

from __future__ import annotations

__all__: list[str] = []
