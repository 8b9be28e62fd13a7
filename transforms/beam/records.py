"""Image records files as the input of a run, read on the workers.

    url ─ Create ─ MatchFiles ─ (shard, file) ─ GroupByKey ─ ReadFiles ─ CopyJob | AuditRow

Only the URL travels in the job graph: the workers match it into files and read them,
so the launcher never holds the list, however long. Files are spread over shard keys,
a worker reading the files of its shard a batch of rows at a time. No ``beam.io.Read``
(the Dask runner runs no Read transforms) and nothing emitted from ``finish_bundle``.
Rows that cannot become jobs come out as failed audit rows in the same PCollection,
which :class:`~imagepush.transforms.beam.migrate.MigrateImages` passes through.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import apache_beam as beam

from imagepush.transforms.beam.fns import shard_of
from imagepush.transforms.engine.jobs import CopyJob, RecordSource
from imagepush.transforms.engine.records_io import jobs_from_file, match_files
from imagepush.transforms.errors import describe
from imagepush.transforms.records import FAILED, AuditRow, now


class MatchRecordFilesFn(beam.DoFn):
    """RecordSource -> (RecordSource, file URL) for every records file its URL names.

    A URL that matches nothing on the worker (the launcher saw files, a worker does
    not) gives one failed row per destination instead of failing the run.
    """

    def __init__(self, run_id: str) -> None:
        self._run_id = run_id

    def process(self, source: RecordSource) -> Iterator[tuple[RecordSource, str] | AuditRow]:
        try:
            files = match_files(source.url)
        except Exception as exc:
            error, kind = describe(exc)
            at = now()
            for destination in [o.ref for o in source.outputs] or [""]:
                yield AuditRow(run_id=self._run_id, source=source.url, destination=destination, source_digest=None,
                               destination_digest=None, media_type=None, status=FAILED, error=error,
                               blobs_copied=0, blobs_skipped=0, bytes_copied=0, started_at=at, finished_at=at,
                               error_kind=kind)
            return
        for url in files:
            yield source, url


class ReadRecordFilesFn(beam.DoFn):
    """(shard, [(RecordSource, file URL)]) -> a CopyJob per row, or failed ``invalid_input`` rows.

    A generator over each file: jobs flow on while the file is still being read.
    """

    def __init__(self, run_id: str) -> None:
        self._run_id = run_id

    def process(self, element: tuple[int, Iterable[tuple[RecordSource, str]]]) -> Iterator[CopyJob | AuditRow]:
        _, files = element
        for source, url in files:
            yield from jobs_from_file(url, source, self._run_id)


class ReadRecords(beam.PTransform):
    """PBegin -> PCollection[CopyJob | AuditRow]: the images that records files name.

    ``sources`` are :class:`RecordSource` values (a URL and the defaults of its rows)
    or bare URLs. ``shards`` spreads the files over that many keys (1 on one machine).
    The output feeds ``MigrateImages`` as any jobs do::

        p | ReadRecords(run_id, ["s3://bucket/images/*.parquet"]) | MigrateImages(run_id) | WriteAudit(url)
    """

    def __init__(self, run_id: str, sources: Iterable[RecordSource | str], *, shards: int = 1) -> None:
        super().__init__()
        self._run_id = run_id
        self._sources = [s if isinstance(s, RecordSource) else RecordSource(s) for s in sources]
        self._shards = max(1, shards)

    def expand(self, pbegin):
        shards, run_id = self._shards, self._run_id
        matched = (
            pbegin
            | "Sources" >> beam.Create(self._sources)
            | "MatchFiles" >> beam.ParDo(MatchRecordFilesFn(run_id))
        )
        unmatched = matched | "Unmatched" >> beam.Filter(lambda item: isinstance(item, AuditRow))
        read = (
            matched
            | "Files" >> beam.Filter(lambda item: not isinstance(item, AuditRow))
            | "ShardFiles" >> beam.MapTuple(lambda source, url: (shard_of(url, shards), (source, url)))
            | "GroupFiles" >> beam.GroupByKey()
            | "ReadFiles" >> beam.ParDo(ReadRecordFilesFn(run_id))
        )
        return (read, unmatched) | "AllRecords" >> beam.Flatten()
