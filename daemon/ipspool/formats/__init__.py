"""Input formats: which reader a file gets, how it is chunked and read, how its result is written.

The seam other parts use:

- ``select(config, name, head, size) -> Format``: the rule, default or sniffed
  kind for a file, with a delimited file's header resolved (``InputRejected``
  when it cannot be read: the file goes to failed/);
- ``needs_head(config, name)``: whether ``select`` must see the first bytes;
- ``split_chunks(fmt, fd, size, ...)``: its chunks, each carrying ``fmt``;
- ``chunk_work(fmt, data, first_line, pipeline, first_chunk)``: one chunk's
  units, rendered in batches by the worker;
- ``process_chunk(data, first_line, pipeline, alerts, fmt, first_chunk)``: the
  pure heart for any format (``pipeline.process_chunk`` for plain files).

See docs/inputs.md.
"""

from __future__ import annotations

from ipspool.formats.chunks import split_chunks
from ipspool.formats.select import head_size, needs_head, select
from ipspool.formats.spec import KINDS, Format
from ipspool.formats.work import Work, chunk_work, process_chunk

__all__ = ["KINDS", "Format", "Work", "chunk_work", "head_size", "needs_head", "process_chunk", "select",
           "split_chunks"]
