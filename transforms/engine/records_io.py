"""Image records files in and out: find the files, stream their rows, turn each row into a job.

A records file (JSON Lines, Parquet or CSV, told apart by extension) names one image per
row; a URL may name one file, a folder of them, or a glob, on any fsspec store. The
launcher only matches the URL and opens the first file's header (:func:`check_source`),
so a list of a million images costs it nothing; the workers read the files, a batch
of rows at a time, never a whole file at once.

A row that cannot become a job (no source, an unknown transport, a reference that does
not parse, nowhere to write it) is not an error of the run: it becomes a failed audit
row of kind ``invalid_input`` and the other rows go on. A file that cannot be read, or
that has no ``source`` column at all, is: :class:`RecordsError`.

An audit is itself records input (it has every column of an image record): its child
rows are skipped, since their index is rerun whole, and ``failed_only`` keeps only the
rows a retry should run again.

Beam-free: plain functions that return values or generators.
"""

from __future__ import annotations

import io
import re
from dataclasses import fields
from typing import Any, Callable, Iterable, Iterator

import fsspec
import orjson
import pyarrow as pa

from imagepush.transforms.engine.jobs import OCI, PRESERVE, V2S2, CopyJob, Output, RecordSource, Target
from imagepush.transforms.engine.naming import copy_target, source_names
from imagepush.transforms.errors import INVALID_INPUT, ImagepushError, one_line
from imagepush.transforms.formats.compression import GZIP, NONE, ZSTD
from imagepush.transforms.formats import digest as digestlib
from imagepush.transforms.formats.descriptor import Platform
from imagepush.transforms.records import (
    FAILED,
    IMAGE_RECORD_SCHEMA,
    SCHEMA_VERSION,
    AuditRow,
    ImageRecord,
    now,
)
from imagepush.transforms.stores.base import ImageEntry
from imagepush.transforms.stores.refs import ImageReference, parse_reference

JSONL, PARQUET, CSV = "jsonl", "parquet", "csv"
#: File name endings of records files, and how each is read.
SUFFIXES: dict[str, str] = {".jsonl": JSONL, ".ndjson": JSONL, ".json": JSONL, ".parquet": PARQUET, ".csv": CSV}
#: Rows read (and held) at a time from a Parquet or CSV file.
BATCH_ROWS = 4096
#: CSV is read in blocks of this many bytes, so a huge file streams.
CSV_BLOCK = 1 << 20
#: The columns ``ls --output`` writes.
LISTING_COLUMNS = ("source", "repository", "tag", "source_digest", "media_type", "schema_version")

FORMATS = (PRESERVE, OCI, V2S2)
COMPRESSIONS = (PRESERVE, GZIP, ZSTD, NONE)
_GLOB_CHARS = frozenset("*?[")
_RECORD_FIELDS = frozenset(f.name for f in fields(ImageRecord))


class RecordsError(ImagepushError):
    """A records URL that matches nothing, a file that cannot be read or lacks the ``source`` column."""

    kind = INVALID_INPUT


class _BadRow(ImagepushError):
    """One row that cannot become a job: reported in the audit, the run goes on."""

    kind = INVALID_INPUT


def record_format(url: str) -> str:
    """``jsonl``, ``parquet`` or ``csv``, by the file name's ending."""
    name = url.rsplit("/", 1)[-1].lower()
    for suffix, kind in SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    raise RecordsError(f"{url}: not a records file (name it .jsonl, .json, .parquet or .csv)")


def match_files(url: str) -> list[str]:
    """The records files a URL names (a file, a folder's records files, or a glob), sorted, as URLs."""
    try:
        fs, path = fsspec.core.url_to_fs(url)
        if any(c in path for c in _GLOB_CHARS):
            paths = [p for p in fs.glob(path) if not fs.isdir(p)]
        elif fs.isdir(path):
            paths = [p for p in fs.find(path) if _is_records_name(p)]
        elif fs.exists(path):
            paths = [path]
        else:
            raise RecordsError(f"{url}: no such records file or folder")
    except RecordsError:
        raise
    except (OSError, ValueError, ImportError) as exc:
        raise RecordsError(f"{url}: cannot be read: {one_line(exc)}") from None
    if not paths:
        raise RecordsError(f"{url}: matches no records file")
    return [_full_url(url, fs, p) for p in sorted(paths)]


def _is_records_name(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return not name.startswith((".", "_")) and any(name.lower().endswith(s) for s in SUFFIXES)


def _full_url(url: str, fs: Any, path: str) -> str:
    """A matched path as a URL the workers can open (a local path stays a path)."""
    return path if "://" not in url else fs.unstrip_protocol(path)


def columns_of(url: str) -> list[str]:
    """The column names of one records file, from its header or schema alone."""
    kind = record_format(url)
    fs, path = fsspec.core.url_to_fs(url)
    with fs.open(path, "rb") as f:
        if kind == PARQUET:
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(f).schema_arrow.names)
        if kind == CSV:
            return _csv_header(f.readline())
        for line in f:
            if line.strip():
                first = orjson.loads(line)
                if not isinstance(first, dict):
                    raise RecordsError(f"{url}: each line must be a JSON object")
                return list(first)
        return ["source"]  # an empty file holds no rows, and so no row without a source


def check_source(url: str) -> list[str]:
    """The files of a records URL, after opening the first one's header: exit-2 problems, cheaply.

    Only the first file is opened: the others are the workers' to read, and a bad one
    among them fails its rows there rather than costing the launcher a pass over them.
    """
    files = match_files(url)
    try:
        names = columns_of(files[0])
    except RecordsError:
        raise
    except (OSError, ValueError, pa.ArrowException, UnicodeDecodeError) as exc:
        raise RecordsError(f"{files[0]}: cannot be read as records: {one_line(exc)}") from None
    if "source" not in names:
        raise RecordsError(f"{files[0]}: has no 'source' column")
    return files


def read_rows(url: str, batch_rows: int = BATCH_ROWS) -> Iterator[tuple[int, dict[str, Any] | _BadRow]]:
    """(row number from 1, the row as a mapping, or the problem with it), streaming."""
    kind = record_format(url)
    fs, path = fsspec.core.url_to_fs(url)
    with fs.open(path, "rb") as f:
        if kind == JSONL:
            yield from _json_rows(f)
        elif kind == PARQUET:
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(f)
            wanted = [n for n in parquet.schema_arrow.names if n in _RECORD_FIELDS or n in ("role", "status")]
            yield from _numbered(batch.to_pylist() for batch in parquet.iter_batches(batch_rows, columns=wanted))
        else:
            yield from _numbered(batch.to_pylist() for batch in _csv_batches(f))


def _numbered(batches: Iterable[list[dict[str, Any]]]) -> Iterator[tuple[int, dict[str, Any]]]:
    n = 0
    for batch in batches:
        for row in batch:
            n += 1
            yield n, row


def _json_rows(f: io.BufferedIOBase) -> Iterator[tuple[int, dict[str, Any] | _BadRow]]:
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield n, _BadRow(f"not JSON: {exc}")
            continue
        yield n, row if isinstance(row, dict) else _BadRow("not a JSON object")


def _csv_batches(f: io.BufferedIOBase) -> Iterator[pa.RecordBatch]:
    """CSV in blocks, every column as text (a tag like ``1.10`` must not become a number)."""
    from pyarrow import csv

    names = _csv_header(f.readline())
    if not names:
        return
    reader = csv.open_csv(
        f,
        read_options=csv.ReadOptions(column_names=names, block_size=CSV_BLOCK),
        convert_options=csv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True),
    )
    yield from reader


def _csv_header(line: bytes) -> list[str]:
    import csv

    text = line.decode("utf-8-sig").strip()
    return [name.strip() for name in next(csv.reader([text]))] if text else []


def selected(row: dict[str, Any], source: RecordSource) -> bool:
    """Whether a row is an image to run: an audit's child rows never are (their index reruns whole)."""
    if row.get("role") == "child":
        return False
    return not source.failed_only or row.get("status") == FAILED


def to_record(row: dict[str, Any], pin_digest: bool = True) -> ImageRecord:
    """The image record of one row; columns it does not know are ignored, empty ones are unset."""
    values = {name: _text(row.get(name)) for name in _RECORD_FIELDS - {"platforms", "schema_version"}}
    if not values["source"]:
        raise _BadRow("no source")
    if not pin_digest:
        values["source_digest"] = None
    version = row.get("schema_version")
    try:
        version = SCHEMA_VERSION if version in (None, "") else int(version)
    except (TypeError, ValueError):
        raise _BadRow(f"schema_version {version!r} is not a number") from None
    return ImageRecord(**values, platforms=_platforms(row.get("platforms")), schema_version=version)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _platforms(value: Any) -> tuple[str, ...]:
    """A list; in CSV, ``linux/amd64,linux/arm64`` (or a JSON list) in one cell."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise _BadRow(f"platforms {value!r} is not a list") from None
        else:
            value = [p for p in re.split(r"[,\s]+", value) if p]
    if not isinstance(value, (list, tuple)):
        raise _BadRow(f"platforms {value!r} is not a list")
    return tuple(str(p) for p in value)


def record_job(record: ImageRecord, source: RecordSource) -> CopyJob:
    """The copy one record asks for; raises (``invalid_input``) when it cannot be one.

    Its ``destination`` is a full reference (a name after the location: the image is
    written under it), or a prefix that the image's repository and tag are appended
    to as ``sync`` does; without one, the records' ``to:`` outputs are used, likewise.
    """
    ref = parse_reference(record.source)
    fmt = _choice("format", record.format or source.format, FORMATS)
    compression = _choice("compression", record.compression or source.compression, COMPRESSIONS)
    platforms = record.platforms or source.platforms
    for text in platforms:
        Platform.parse(text)
    if record.destination:
        outputs: tuple[Output, ...] = (Output(record.destination, fmt, compression),)
    elif source.outputs:
        outputs = tuple(Output(o.ref, record.format or o.format, record.compression or o.compression, o.no_clobber)
                        for o in source.outputs)
    else:
        raise _BadRow("no destination (give the records a destination column, or DST_PREFIX / to:)")
    for out in outputs:
        if out.compression == ZSTD and out.format == V2S2:
            raise _BadRow("zstd needs OCI manifests; it cannot be combined with format v2s2")
    entry = _entry(ref, record)
    image, digest = ref.selection()
    shown = str(ref)
    if record.source_digest:
        digestlib.validate(record.source_digest)
        image, digest = None, record.source_digest
    return CopyJob(
        source_store=ref.store,
        source=shown,
        image=image,
        digest=digest,
        targets=tuple(_target(out, entry) for out in outputs),
        platforms=tuple(platforms),
        repository=entry.repository or None,
        tag=entry.tag,
    )


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise _BadRow(f"{name} {value!r} is not one of {', '.join(allowed)}")
    return value


def _entry(ref: ImageReference, record: ImageRecord) -> ImageEntry:
    """The record as a listed image, for a prefix destination's name mapping.

    The record's own ``repository`` and ``tag`` (what ``ls`` writes) win; otherwise
    they come from the source reference: a registry's whole repository path below its
    host, a layout's ``REPO:TAG`` ref name (or ``TAG`` alone).
    """
    repository, tag = source_names(ref)
    repository = record.repository if record.repository is not None else (repository or "")
    tag = record.tag or tag
    name = f"{repository}:{tag}" if repository and tag else (tag or "")
    return ImageEntry(ref=name, repository=repository, tag=tag, digest=record.source_digest or "",
                      media_type=record.media_type or "")


def _target(out: Output, entry: ImageEntry) -> Target:
    """A destination with a name is the image's own; one without is a prefix, mapped as a sync maps it.

    The reference knows its transport's rule (a ``dir:`` takes the image unnamed, a
    source-only store refuses).
    """
    destination = parse_reference(out.ref)
    if destination.ref:
        return copy_target(out)
    synced = destination.synced(entry)
    return Target(destination=str(synced), store=synced.store, name=synced.ref, format=out.format,
                  compression=out.compression)


def jobs_from_file(url: str, source: RecordSource, run_id: str,
                   clock: Callable[[], Any] = now) -> Iterator[CopyJob | AuditRow]:
    """Every selected row of one file as a job, or as failed ``invalid_input`` rows; streaming.

    A file that cannot be read past the rows already given yields one failed row naming
    it: the rows before it are still done.
    """
    n = 0
    try:
        for n, row in read_rows(url):
            if isinstance(row, _BadRow):
                yield from _invalid(source, run_id, {}, f"{url} row {n}: {row}", clock)
                continue
            if not selected(row, source):
                continue
            try:
                yield record_job(to_record(row, source.pin_digest), source)
            except Exception as exc:
                yield from _invalid(source, run_id, row, f"{url} row {n}: {one_line(exc)}", clock)
    except Exception as exc:
        where = f"{url} after row {n}" if n else url
        yield from _invalid(source, run_id, {}, f"{where}: cannot be read as records: {one_line(exc)}", clock)


def _invalid(source: RecordSource, run_id: str, row: dict[str, Any], error: str,
             clock: Callable[[], Any]) -> Iterator[AuditRow]:
    """Failed rows for a record that is no job: one per destination it would have had."""
    text = _text(row.get("source")) or ""
    own = _text(row.get("destination"))
    destinations = [own] if own else [o.ref for o in source.outputs] or [""]
    at = clock()
    platforms = row.get("platforms")
    for destination in destinations:
        yield AuditRow(
            run_id=run_id, source=text, destination=destination, source_digest=_text(row.get("source_digest")),
            destination_digest=None, media_type=_text(row.get("media_type")), status=FAILED, error=error,
            blobs_copied=0, blobs_skipped=0, bytes_copied=0, started_at=at, finished_at=at,
            error_kind=INVALID_INPUT, repository=_text(row.get("repository")), tag=_text(row.get("tag")),
            format=_text(row.get("format")), compression=_text(row.get("compression")),
            platforms=[str(p) for p in platforms] if isinstance(platforms, (list, tuple)) else [],
        )


def listing_record(ref: ImageReference, entry: ImageEntry) -> ImageRecord:
    """What ``ls --output`` writes for one listed image."""
    return ImageRecord(source=str(ref.listed(entry)), repository=entry.repository or None, tag=entry.tag,
                       source_digest=entry.digest or None, media_type=entry.media_type or None)


def write_records(records: Iterable[ImageRecord], url: str,
                  columns: tuple[str, ...] = LISTING_COLUMNS) -> int:
    """Write records to ``url`` in the format its name says, a batch at a time; the count.

    The file appears whole: it is written under a temporary name, then moved.
    """
    kind = record_format(url)
    schema = pa.schema([IMAGE_RECORD_SCHEMA.field(name) for name in columns])
    fs, path = fsspec.core.url_to_fs(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp"
    count = 0
    with fs.open(tmp, "wb") as f:
        if kind == JSONL:
            for record in records:
                f.write(orjson.dumps({name: _value(record, name) for name in columns}) + b"\n")
                count += 1
        else:
            count = _write_table(records, f, kind, schema, columns)
    fs.mv(tmp, path)
    return count


def _value(record: ImageRecord, name: str) -> Any:
    value = getattr(record, name)
    return list(value) if isinstance(value, tuple) else value


def _write_table(records: Iterable[ImageRecord], f: Any, kind: str, schema: pa.Schema,
                 columns: tuple[str, ...]) -> int:
    if kind == PARQUET:
        import pyarrow.parquet as pq

        writer: Any = pq.ParquetWriter(f, schema)
    else:
        from pyarrow import csv

        # CSV has no lists: platforms are written as one comma-separated cell.
        schema = pa.schema([pa.field(n, pa.string()) if n == "platforms" else schema.field(n) for n in columns])
        writer = csv.CSVWriter(f, schema)
    count = 0
    batch: list[dict[str, Any]] = []
    try:
        for record in records:
            row = {name: _value(record, name) for name in columns}
            if kind == CSV and "platforms" in row:
                row["platforms"] = ",".join(row["platforms"]) or None
            batch.append(row)
            if len(batch) >= BATCH_ROWS:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count, batch = count + len(batch), []
        if batch or not count:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            count += len(batch)
    finally:
        writer.close()
    return count
