"""imagepush's Beam transforms, engine, image formats and stores.

The public PTransforms a Beam user composes are importable from here::

    from imagepush.transforms import ListSyncs, MigrateImages, ReadRecords, WriteAudit

    jobs | MigrateImages(run_id, options) | WriteAudit("s3://bucket/audit.parquet")
    p | ReadRecords(run_id, ["gs://bucket/images.parquet"]) | MigrateImages(run_id) | ...

They are loaded on first use, so code that only needs formats or stores (and the
command line's fast paths) never imports Beam. See docs/architecture.md for the layers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ListSyncs", "MigrateImages", "ReadRecords", "WriteAudit"]

#: Which module of ``beam/`` defines each public transform.
_MODULES = {"ReadRecords": "records"}


def __getattr__(name: str) -> Any:
    if name in __all__:
        import importlib

        module = importlib.import_module(f"imagepush.transforms.beam.{_MODULES.get(name, 'migrate')}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
