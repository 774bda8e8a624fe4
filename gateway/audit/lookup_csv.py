"""CSV for spreadsheets: one row per lookup (default) or per record, streamed.

A spreadsheet user counts rows, so the default CSV has one row per request: the
outcome joined to its intent (:mod:`gateway.audit.lookups`), never two rows for
one lookup. ``records=True`` gives the raw records instead, one row each.

Rows are produced one at a time (:func:`iter_csv_rows`), so a CSV of any size is
written in constant memory, to a file or to an HTTP response. The CSV carries no
hashes or signatures and cannot be verified; it holds no person's identifier
(format-1 pseudonyms appear only in ``--records`` rows, as in the records).

Cells a spreadsheet would run as a formula (leading ``=``, ``+``, ``-``, ``@``,
tab, CR) are prefixed with ``'`` (OWASP "CSV injection").
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import IO

from gateway.audit.lookups import Lookup, iter_events, people_of, read_record
from gateway.audit.record import AuditRecord

__all__ = ["LOOKUP_COLUMNS", "RECORD_COLUMNS", "iter_csv_chunks", "iter_csv_rows", "write_csv"]

LOOKUP_COLUMNS = (
    "request_id", "time", "client", "client_kind", "purpose", "upstream", "route",
    "decision", "rules", "policy_version", "outcome", "upstream_status", "status",
    "latency_ms", "error", "people", "withheld", "called_upstream", "complete", "seq",
)  # fmt: skip

RECORD_COLUMNS = (
    "seq", "v", "time", "kind", "request_id", "client", "client_kind", "purpose", "upstream",
    "route", "subjects", "people", "decision", "rules", "policy_version", "outcome",
    "upstream_status", "status", "latency_ms", "error", "detail", "actor", "role", "count",
)  # fmt: skip

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _lookup_row(lookup: Lookup) -> list[str]:
    return [_cell(getattr(lookup, name)) for name in LOOKUP_COLUMNS]


def iter_csv_rows(
    records: Iterable[tuple[int, bytes]],
    *,
    raw_records: bool = False,
    since: str | None = None,
    until: str | None = None,
) -> Iterator[list[str]]:
    """The header row, then one row per lookup (or per record with ``raw_records``)."""
    if raw_records:
        yield list(RECORD_COLUMNS)
        for seq, body in records:
            view = read_record(body)
            if (since is not None and view.time < since) or (
                until is not None and view.time >= until
            ):
                continue
            row = [str(seq)]
            for name in RECORD_COLUMNS[1:]:
                value: object = getattr(view, name, None)
                if name == "v":
                    value = 2 if isinstance(view, AuditRecord) else 1
                elif name == "people":
                    value = [f"{p.c}:{p.r}:{p.o or ''}" for p in people_of(view)]
                row.append(_cell(value))
            yield row
        return
    yield list(LOOKUP_COLUMNS)
    for event in iter_events(records, since=since, until=until):
        if isinstance(event, Lookup):
            yield _lookup_row(event)


def write_csv(
    records: Iterable[tuple[int, bytes]],
    out: IO[str],
    *,
    raw_records: bool = False,
    since: str | None = None,
    until: str | None = None,
) -> int:
    """Write the CSV to ``out``; return the number of data rows."""
    writer = csv.writer(out, lineterminator="\n")
    count = -1
    for row in iter_csv_rows(records, raw_records=raw_records, since=since, until=until):
        writer.writerow(row)
        count += 1
    return count


def iter_csv_chunks(
    records: Iterable[tuple[int, bytes]],
    *,
    raw_records: bool = False,
    since: str | None = None,
    until: str | None = None,
    chunk_size: int = 64 * 1024,
) -> Iterator[bytes]:
    """The CSV as UTF-8 chunks of about ``chunk_size`` bytes, for a streaming response."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in iter_csv_rows(records, raw_records=raw_records, since=since, until=until):
        writer.writerow(row)
        if buffer.tell() >= chunk_size:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()
