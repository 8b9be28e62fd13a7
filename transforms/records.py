"""The records a run reads and writes, defined once: image records in, audit rows out.

An *image record* names one image to migrate (what ``ls`` prints and a records file
holds); an *audit row* is the outcome of one manifest at one destination. Both carry
``schema_version`` so readers can tell which columns to expect; later versions only
add columns, and readers of an older file fill the new ones with nulls.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

#: Version of both schemas below; bumped when a column is added (3: ``converted_from``).
SCHEMA_VERSION = 3

#: Audit statuses: written (``copied``), already there and nothing written (``current``),
#: left alone on purpose (``skipped``), or ``failed``.
COPIED = "copied"
CURRENT = "current"
SKIPPED = "skipped"
FAILED = "failed"
#: What schema version 1 wrote for copied and current alike; readers still accept it.
OK = "ok"
#: Every status a report of this version holds, in the order summaries name them.
STATUSES = (COPIED, CURRENT, SKIPPED, FAILED)


def status_of(status: str) -> str:
    """A row's status as this version names it: version 1's ``ok`` reads as ``copied``.

    Version 1 did not tell a copy from an image found current; counting its ``ok`` as
    copied keeps every image that was not failed counted as done, as it was then.
    """
    return COPIED if status == OK else status


@dataclass(frozen=True)
class ImageRecord:
    """One image a run should copy: the source, and optionally where and how."""

    source: str
    destination: str | None = None
    repository: str | None = None
    tag: str | None = None
    source_digest: str | None = None
    media_type: str | None = None
    format: str | None = None
    compression: str | None = None
    platforms: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION


@dataclass
class AuditRow:
    """The outcome of one manifest (an image, an index, or an index's child) at one destination."""

    run_id: str
    source: str
    destination: str
    source_digest: str | None
    destination_digest: str | None
    media_type: str | None
    status: str
    error: str | None
    blobs_copied: int
    blobs_skipped: int
    bytes_copied: int
    started_at: dt.datetime
    finished_at: dt.datetime
    #: "image", "index" or "child": lets a reader count images without double-counting children.
    role: str = "image"
    #: One of :data:`imagepush.transforms.errors.KINDS` when ``status`` is failed.
    error_kind: str | None = None
    schema_version: int = SCHEMA_VERSION
    #: The source image's repository and tag, when it has them.
    repository: str | None = None
    tag: str | None = None
    #: ``os/arch[/variant]`` of an index's child.
    platform: str | None = None
    #: The record's settings, so a failed row can be run again as it was asked for.
    format: str | None = None
    compression: str | None = None
    platforms: list[str] = field(default_factory=list)
    #: Blobs made present by a cross-repository mount (counted apart from skipped).
    blobs_mounted: int = 0
    #: Bytes of every blob the manifest references, copied or not.
    bytes_total: int = 0
    #: Retries it took: requests sent again after a transient failure, and interrupted
    #: blob uploads started again (each blob's count on the first manifest that uses it).
    retries: int = 0
    #: The source manifest's media type when what was written differs from it (a
    #: ``preserve`` copy into a store that cannot hold the source's type converts too,
    #: and changes the digest); None when the manifest was written in its own type.
    converted_from: str | None = None

    def failed(self, error: str, kind: str, finished_at: dt.datetime | None = None) -> "AuditRow":
        row = AuditRow(**asdict(self))
        row.status, row.error, row.error_kind = FAILED, error, kind
        if finished_at is not None:
            row.finished_at = finished_at
        return row


AUDIT_COLUMNS = tuple(f.name for f in fields(AuditRow))


def __getattr__(name: str) -> Any:
    """``IMAGE_RECORD_SCHEMA`` and ``AUDIT_SCHEMA``, built on first use.

    pyarrow costs a tenth of a second to import, and most commands (``--help``, ``ls``,
    a small copy until its audit is written) never need a schema.
    """
    if name in ("IMAGE_RECORD_SCHEMA", "AUDIT_SCHEMA"):
        return _schemas()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _schemas() -> dict[str, "pa.Schema"]:
    import pyarrow as pa

    IMAGE_RECORD_SCHEMA = pa.schema(
        [
            ("source", pa.string()),
            ("destination", pa.string()),
            ("repository", pa.string()),
            ("tag", pa.string()),
            ("source_digest", pa.string()),
            ("media_type", pa.string()),
            ("format", pa.string()),
            ("compression", pa.string()),
            ("platforms", pa.list_(pa.string())),
            ("schema_version", pa.int32()),
        ]
    )
    AUDIT_SCHEMA = pa.schema(
        [
            ("run_id", pa.string()),
            ("source", pa.string()),
            ("destination", pa.string()),
            ("source_digest", pa.string()),
            ("destination_digest", pa.string()),
            ("media_type", pa.string()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("blobs_copied", pa.int64()),
            ("blobs_skipped", pa.int64()),
            ("bytes_copied", pa.int64()),
            ("started_at", pa.timestamp("us", tz="UTC")),
            ("finished_at", pa.timestamp("us", tz="UTC")),
            ("role", pa.string()),
            ("error_kind", pa.string()),
            ("schema_version", pa.int32()),
            ("repository", pa.string()),
            ("tag", pa.string()),
            ("platform", pa.string()),
            ("format", pa.string()),
            ("compression", pa.string()),
            ("platforms", pa.list_(pa.string())),
            ("blobs_mounted", pa.int64()),
            ("bytes_total", pa.int64()),
            ("retries", pa.int64()),
            ("converted_from", pa.string()),
        ]
    )
    assert AUDIT_COLUMNS == tuple(AUDIT_SCHEMA.names), "AuditRow and AUDIT_SCHEMA must list the same columns"
    return {"IMAGE_RECORD_SCHEMA": IMAGE_RECORD_SCHEMA, "AUDIT_SCHEMA": AUDIT_SCHEMA}


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
