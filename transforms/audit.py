"""The Parquet audit report: one row per (manifest, destination) of a run.

Written with pyarrow through fsspec so that any URL the user can name works, on any
runner; the rows of a run are few (one per manifest), so they are gathered into one
file by a single writer at the end of the pipeline.
"""

from __future__ import annotations

from typing import Iterable

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from imagepush.transforms.records import AUDIT_COLUMNS, AUDIT_SCHEMA, AuditRow

def to_table(rows: Iterable[AuditRow]) -> pa.Table:
    ordered = sorted(rows, key=lambda r: (r.source, r.destination, r.role != "index", r.source_digest or ""))
    columns = {name: [getattr(r, name) for r in ordered] for name in AUDIT_COLUMNS}
    return pa.table(columns, schema=AUDIT_SCHEMA)


def write(rows: Iterable[AuditRow], url: str) -> None:
    """Write the report; the file appears whole (write to a temp name, then move)."""
    table = to_table(rows)
    fs, path = fsspec.core.url_to_fs(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp"
    with fs.open(tmp, "wb") as f:
        pq.write_table(table, f)
    fs.mv(tmp, path)


def read(url: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = fsspec.core.url_to_fs(url)
    with fs.open(path, "rb") as f:
        # ParquetFile, not read_table: one file needs no pyarrow.dataset (an import that
        # costs a noticeable share of a run that has nothing to do).
        return pq.ParquetFile(f).read(columns=columns)


def read_rows(url: str) -> list[AuditRow]:
    """The rows of a report, as records (for merging one report into another).

    Columns a report of an older schema version lacks take their defaults.
    """
    return [AuditRow(**row) for row in read(url).to_pylist()]


def remove(url: str) -> None:
    """Delete a report if it is there."""
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path)
