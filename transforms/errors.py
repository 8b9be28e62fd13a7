"""Turning exceptions into the one-line messages users see in the audit and on stderr."""

from __future__ import annotations

import logging

from imagepush.transforms.blobio import BlobVerificationError
from imagepush.transforms.formats.descriptor import FormatError
from imagepush.transforms.formats.digest import DigestError
from imagepush.transforms.stores.base import StoreError

#: Errors that describe the data or the store, not a bug in imagepush.
EXPECTED = (StoreError, FormatError, DigestError, BlobVerificationError, OSError)

log = logging.getLogger(__name__)


def one_line(exc: BaseException) -> str:
    """A single line naming what went wrong; unexpected errors keep their type name."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if isinstance(exc, FileNotFoundError) and exc.filename:
        text = f"not found: {exc.filename}"
    if not isinstance(exc, EXPECTED) or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        log.debug("unexpected error", exc_info=exc)
    return text
