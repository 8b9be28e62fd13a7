"""The Parquet audit report: one row per (manifest, destination) of a run.

Written with pyarrow through fsspec so that any URL the user can name works, on any
runner. Workers write the rows they produce as sorted part files beside the report;
one last step merges the parts into the single file the user named, streaming (a
k-way merge, a batch of rows at a time), so no worker ever holds every row of a run.
"""

from __future__ import annotations

import heapq
import threading
from typing import TYPE_CHECKING, Iterable, Iterator

import fsspec

from imagepush.transforms import records
from imagepush.transforms.records import AUDIT_COLUMNS, AuditRow, status_of

if TYPE_CHECKING:
    import pyarrow as pa

#: Rows per Parquet batch when merging parts.
MERGE_BATCH = 4096


def _order(row: AuditRow | dict) -> tuple:
    """Report order: by image and destination, an index before its children."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
    return (get("source"), get("destination"), get("role") != "index", get("source_digest") or "")


def import_in_background() -> None:
    """Start importing pyarrow's Parquet writer on a thread of its own.

    pyarrow is imported only when a report is written or read; a run that knows it will
    write one soon (a small direct run) starts the import at once, so that it overlaps
    the copy instead of following it.
    """
    threading.Thread(target=lambda: (_parquet(), records.AUDIT_SCHEMA), name="imagepush-import-pyarrow",
                     daemon=True).start()


def _parquet():
    import pyarrow.parquet as pq

    return pq


def to_table(rows: Iterable[AuditRow]) -> "pa.Table":
    import pyarrow as pa

    ordered = sorted(rows, key=_order)
    columns = {name: [getattr(r, name) for r in ordered] for name in AUDIT_COLUMNS}
    return pa.table(columns, schema=records.AUDIT_SCHEMA)


def part_url(url: str, shard: int) -> str:
    """Where a worker writes the rows of one shard before they are merged into ``url``."""
    return f"{url}.parts/part-{shard:05d}.parquet"


def merge(parts: list[str], url: str) -> int:
    """Merge sorted part files into the report at ``url`` (written whole, then moved); the row count."""
    import pyarrow as pa

    pq = _parquet()
    schema = records.AUDIT_SCHEMA
    fs, path = _prepared(url)
    readers = [_rows(part) for part in parts]
    count = 0
    tmp = f"{path}.tmp"
    with fs.open(tmp, "wb") as f, pq.ParquetWriter(f, schema) as writer:
        batch: list[dict] = []
        for row in heapq.merge(*readers, key=_order):
            batch.append(row)
            if len(batch) >= MERGE_BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count += len(batch)
                batch = []
        writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        count += len(batch)
    fs.mv(tmp, path)
    return count


def _rows(url: str) -> Iterator[dict]:
    """The rows of one part, a batch at a time; columns an older part lacks come back null."""
    pq = _parquet()
    fs, path = fsspec.core.url_to_fs(url)
    with fs.open(path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=MERGE_BATCH):
            yield from batch.to_pylist()


def remove_parts(url: str) -> None:
    """Delete the part files of a report once it is merged."""
    fs, path = fsspec.core.url_to_fs(f"{url}.parts")
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _prepared(url: str):
    fs, path = fsspec.core.url_to_fs(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    return fs, path


def write(rows: Iterable[AuditRow], url: str) -> None:
    """Write the report; the file appears whole (write to a temp name, then move)."""
    table = to_table(rows)
    pq = _parquet()
    fs, path = _prepared(url)
    tmp = f"{path}.tmp"
    with fs.open(tmp, "wb") as f:
        pq.write_table(table, f)
    fs.mv(tmp, path)


def read(url: str, columns: list[str] | None = None) -> "pa.Table":
    pq = _parquet()
    fs, path = fsspec.core.url_to_fs(url)
    with fs.open(path, "rb") as f:
        # ParquetFile, not read_table: one file needs no pyarrow.dataset (an import that
        # costs a noticeable share of a run that has nothing to do).
        return pq.ParquetFile(f).read(columns=columns)


def read_rows(url: str) -> list[AuditRow]:
    """The rows of a report, as records (for merging one report into another).

    Columns a report of an older schema version lacks (or holds as null) take their
    defaults, and its ``ok`` reads as ``copied``: merged into a new report, an old row
    says what this version would.
    """
    return [_record(row) for row in read(url).to_pylist()]


#: Defaults of the columns that are not nullable in an :class:`AuditRow`.
_NOT_NULL = {"platforms": list, "blobs_mounted": int, "bytes_total": int, "retries": int}


def _record(row: dict) -> AuditRow:
    known = {name: value for name, value in row.items() if name in AUDIT_COLUMNS}
    for name, default in _NOT_NULL.items():
        if known.get(name) is None:
            known[name] = default()
    known["status"] = status_of(known["status"])
    return AuditRow(**known)


def remove(url: str) -> None:
    """Delete a report if it is there."""
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path)
