"""Which reader a file gets: the first ``[[inputs]]`` rule whose glob matches
its name (and whose ``subdir`` glob matches the producer subdirectory it came
from), else a default by extension, else a look at its first bytes.

``name`` is the file's name in incoming/ (``SUB/NAME`` from a producer
subdirectory) or its job name (``SUB~NAME``), which a start-up recovery
passes: both give the same choice (``spool.job_source``).

``select`` runs in the supervisor when a file is claimed, before it is split.
For a delimited file it also reads the header (the first record), finds the
address column and the carried ones, and notes where the records begin; a
file whose header has no address column is refused with a reason that names
what the header holds (``InputRejected``: the file goes to failed/ unread).
"""

from __future__ import annotations

import os
from fnmatch import fnmatchcase

import orjson

from ipspool.config import Config, InputRule
from ipspool.formats import delimited
from ipspool.formats.spec import Format
from ipspool.spool import InputRejected, job_source

__all__ = ["ADDRESS_COLUMNS", "ADDRESS_PATHS", "BY_EXTENSION", "needs_head", "rule_for", "select",
           "subdir_notes"]

BY_EXTENSION = {
    "": "plain", ".txt": "plain",
    ".csv": "delimited", ".tsv": "delimited",
    ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".log": "text", ".eml": "text",
}
ADDRESS_COLUMNS = ("ip", "ip_address", "src_ip", "source_ip", "srcip", "src", "address", "addr", "host",
                   "client_ip")
ADDRESS_PATHS = ("ip", "src_ip", "source_ip", "source.ip", "client.ip", "remote_addr")
_DELIMITERS = ",;\t|"
_BOM = b"\xef\xbb\xbf"
HEAD_BYTES = 1 << 16  # read to sniff a file of unknown kind


def _unnumbered(base: str) -> str:
    """``base`` without a trailing ``.N``: the number a claim adds to make a job's name unique
    (``x.csv.1``), and logrotate to a rotated file (``auth.log.1``)."""
    stem, dot, number = base.rpartition(".")
    return stem if dot and stem and number.isdigit() and number.isascii() else base


def rule_for(config: Config, name: str) -> InputRule | None:
    """The first rule whose ``match`` glob matches the file's name, with or without a trailing ``.N``,
    and whose ``subdir`` glob matches its subdirectory."""
    sub, base = job_source(name)
    plain = _unnumbered(base)
    return next((rule for rule in config.inputs
                 if (fnmatchcase(base, rule.match) or fnmatchcase(plain, rule.match))
                 and (rule.subdir is None or fnmatchcase(sub, rule.subdir))), None)


def subdir_notes(config: Config) -> list[str]:
    """What ``check-config`` says of rules whose ``subdir`` matches none of ``spool.subdirs`` (a typo,
    or a directory made some other way)."""
    notes = []
    for n, rule in enumerate(config.inputs):
        if rule.subdir and not any(fnmatchcase(sub, rule.subdir) for sub in config.spool.subdirs):
            notes.append(f"inputs.{n}.subdir: {rule.subdir!r} matches none of spool.subdirs "
                         f"{list(config.spool.subdirs)}; the rule applies only to a directory made otherwise")
    return notes


def _by_extension(name: str) -> str | None:
    """The default reader for the name's extension; past a trailing ``.N`` when what it hides is one
    of ours (``x.csv.1`` is a CSV; ``ips.1`` says nothing, as before)."""
    base = job_source(name)[1]
    hidden = os.path.splitext(_unnumbered(base))[1].lower()
    return BY_EXTENSION[hidden] if hidden and hidden in BY_EXTENSION else BY_EXTENSION.get(
        os.path.splitext(base)[1].lower())


def needs_head(config: Config, name: str) -> bool:
    """Whether ``select`` must see the file's first bytes (a header, or content to sniff)."""
    rule = rule_for(config, name)
    kind = rule.format if rule is not None and rule.format != "auto" else _by_extension(name)
    return kind in (None, "delimited")


def head_size(config: Config) -> int:
    """How many bytes of the file ``select`` wants: a whole header record, at least."""
    return max(HEAD_BYTES, config.spool.max_line_bytes + 1)


def _first_line(head: bytes) -> bytes:
    return head.removeprefix(_BOM).split(b"\n", 1)[0]


def _sniff(head: bytes) -> str:
    """A kind from content, for a name that says nothing: JSON object lines, a header with an address column."""
    line = _first_line(head).strip()
    if line.startswith(b"{"):
        try:
            if isinstance(orjson.loads(line), dict):
                return "jsonl"
        except orjson.JSONDecodeError:
            return "plain"
    delimiter = _sniff_delimiter(line, "")
    if delimiter in line.decode("utf-8", "replace"):
        names = [part.strip().strip('"').lower() for part in line.decode("utf-8", "replace").split(delimiter)]
        if any(name in ADDRESS_COLUMNS for name in names):
            return "delimited"
    return "plain"


def _sniff_delimiter(line: bytes, name: str) -> str:
    if name.lower().endswith(".tsv"):
        return "\t"
    counts = {d: line.count(d.encode()) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: counts[d])  # ties: the first, ","
    return best if counts[best] else ","


def _column(header: list[str], wanted: str) -> int:
    lowered = [h.strip().lower() for h in header]
    for candidate in ((wanted,) if wanted else ADDRESS_COLUMNS):
        if candidate.lower() in lowered:
            return lowered.index(candidate.lower())
    return -1


def _delimited(fmt: Format, rule: InputRule | None, name: str, head: bytes, size: int) -> Format:
    if size == 0:
        return fmt  # nothing to read: an empty result
    bom = len(_BOM) if head.startswith(_BOM) else 0
    delimiter = (rule.delimiter if rule is not None and rule.delimiter else
                 _sniff_delimiter(_first_line(head), name))
    rows = delimited.records(delimited.split_lines_kept(head[bom:]), delimiter, fmt.max_record_bytes)
    row = next(rows, None)
    if row is None:
        return fmt  # only blank space
    _, lines, end, fields, error = row
    cut = len(head) < size and not head[:bom + end].endswith(b"\n")
    if fields is None or cut:
        why = error or "it does not end within the first bytes read"
        raise InputRejected("bad_header", f"the header (first record) cannot be read: {why}")
    header = [field.strip() for field in fields]
    wanted = rule.column if rule is not None else ""
    address = _column(header, wanted)
    if address < 0:
        expected = repr(wanted) if wanted else "one of " + ", ".join(ADDRESS_COLUMNS)
        raise InputRejected("no_address_column", (
            f"the header {header!r} (delimiter {delimiter!r}) has no address column: expected {expected} "
            "(case-insensitive); name it with column = in an [[inputs]] rule"))
    carry = []
    for wanted_carry in (rule.carry if rule is not None else ()):
        at = _column(header, wanted_carry)
        if at < 0:
            raise InputRejected("missing_column", f"the header {header!r} has no column {wanted_carry!r} "
                                                  "named in carry")
        carry.append((header[at], at))
    return Format("delimited", fmt.output, delimiter, tuple(header), address, tuple(carry),
                  body_start=bom + end, header_lines=lines, max_record_bytes=fmt.max_record_bytes)


def select(config: Config, name: str, head: bytes = b"", size: int = 0) -> Format:
    """The format of file ``name`` (its first bytes ``head``, its ``size``); InputRejected if unreadable."""
    rule = rule_for(config, name)
    kind = rule.format if rule is not None and rule.format != "auto" else _by_extension(name)
    if kind is None:
        kind = _sniff(head)
    fmt = Format(kind, rule.output if rule is not None else "jsonl", max_record_bytes=config.spool.max_line_bytes)
    if kind == "delimited":
        return _delimited(fmt, rule, name, head, size)
    if rule is None or rule.format == "auto":
        return Format(kind, fmt.output, paths=ADDRESS_PATHS, max_record_bytes=fmt.max_record_bytes)
    return Format(kind, fmt.output, paths=(rule.field,) if rule.field else ADDRESS_PATHS, mode=rule.mode,
                  skip_reserved=rule.skip_reserved, expand_cap=rule.expand_cap,
                  max_record_bytes=fmt.max_record_bytes)
